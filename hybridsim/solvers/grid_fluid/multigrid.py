"""A multigrid V-cycle that preconditions the pressure CG (MGPCG), in 2D and 3D.

The pressure matrix is M = L / dx^2 with L p = sum over a cell's faces of a_f (p_c - p_n): a_f
the face's open fraction, p_n = 0 beyond an open side, faces wrapped on periodic axes, and a
wall (or solid) face a_f = 0. Every level keeps that form. A coarse cell is a 2 x 2 (x 2) block
of fine cells; a coarse face's coefficient is the mean of the fine faces it covers (2 in 2D, 4 in
3D: the operator re-discretised on the coarse grid, so obstacles and open sides carry over; in 3D
a level's operator also doubles with the spacing, face area over distance); the residual is
restricted by summing the children and the correction prolonged by injection (R = P^T).
Each level smooths with damped Jacobi, the same sweeps before and after the coarse correction,
so the V-cycle is a symmetric operator, positive definite because the smoother contracts; the
coarsest level (at most ``MAX_COARSEST`` cells) is solved exactly with a precomputed
pseudo-inverse, which also handles the constant null space of a closed box.

Every operation is a vectorised torch op (CPU or CUDA), shared by the Warp and Taichi backends,
so both run the same preconditioner. It needs the cell counts to halve evenly down to a small
coarsest grid; ``Multigrid.supports`` says whether they do.

The cycle works in place on buffers allocated once per level: each level's correction lives in a
zero-bordered array (the border is the p_n = 0 beyond open sides; periodic axes copy the
opposite layer into it before each sweep), the operator is split as L = D - N into its diagonal
and the precomputed neighbour couplings, so a Jacobi sweep z <- (1 - W D) z + W (r + N z), W =
omega D^-1 (0 on cells without open faces), is a handful of fused multiply-adds over shifted
views; the restriction sums strided views and the prolongation adds the coarse correction
through a broadcast view: no allocation per cycle. ``bind_operator`` gives the CG the fine
level's M p the same way (on CPU several times faster than a per-cell kernel launch).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

__all__ = ["Multigrid", "MAX_COARSEST"]

MAX_COARSEST = 256
"""Largest coarsest level (cells) solved by a dense pseudo-inverse."""


def _pad_axis(p: torch.Tensor, axis: int) -> torch.Tensor:
    """p with one zero layer before and after along ``axis``."""
    pad = [0, 0] * (p.dim() - axis)
    pad[-2:] = [1, 1]
    return F.pad(p, pad)


def _pairs(t: torch.Tensor, axis: int, start: int) -> torch.Tensor:
    """Every other slice of ``t`` along ``axis`` from ``start``."""
    index = [slice(None)] * t.dim()
    index[axis] = slice(start, None, 2)
    return t[tuple(index)]


class _Padded:
    """A cell array with a one-cell border of zeros (p_n = 0 beyond open sides), with views of each
    cell's lower / upper neighbour per axis; ``wrap`` copies the opposite layer into the border of
    periodic axes."""

    def __init__(self, shape: tuple[int, ...], periodic: tuple[bool, ...], **like):
        self.padded = torch.zeros(tuple(n + 2 for n in shape), **like)
        inner = tuple(slice(1, n + 1) for n in shape)
        self.interior = self.padded[inner]
        self.shifted = []
        for axis, n in enumerate(shape):
            below, above = list(inner), list(inner)
            below[axis], above[axis] = slice(0, n), slice(2, n + 2)
            self.shifted.append((self.padded[tuple(below)], self.padded[tuple(above)]))
        self.halo = [(self.padded.narrow(axis, 0, 1), self.padded.narrow(axis, n, 1),
                      self.padded.narrow(axis, n + 1, 1), self.padded.narrow(axis, 1, 1))
                     for axis, n in enumerate(shape) if periodic[axis]]
        # the interior as (n0/2, 2, n1/2, 2, ...): a coarse correction broadcasts over the 2 (x 2) children
        strides, offset = self.padded.stride(), self.interior.storage_offset()
        self.children = self.padded.as_strided(
            tuple(m for n in shape for m in (n // 2, 2)), tuple(m for s in strides for m in (2 * s, s)), offset) \
            if all(n % 2 == 0 for n in shape) else None

    def wrap(self) -> None:
        for low_border, last, high_border, first in self.halo:
            low_border.copy_(last)
            high_border.copy_(first)


class _Level:
    """One grid: face coefficients per axis and the operator ``factor * sum_f a_f (p_c - p_n)``."""

    def __init__(self, areas: tuple[torch.Tensor, ...], periodic: tuple[bool, ...], omega: float, factor: float):
        self.areas, self.periodic, self.factor = areas, periodic, float(factor)
        count = len(areas)
        self.shape = tuple(int(areas[(d + 1) % count].shape[d]) for d in range(count))
        diag = torch.zeros(self.shape, dtype=areas[0].dtype, device=areas[0].device)
        for axis, a in enumerate(areas):
            n = self.shape[axis]
            diag += a + torch.roll(a, -1, axis) if periodic[axis] else a.narrow(axis, 0, n) + a.narrow(axis, 1, n)
        diag *= self.factor
        self.weight = torch.where(diag > 0, omega / torch.where(diag > 0, diag, torch.ones_like(diag)),
                                  torch.zeros_like(diag))
        self.diagonal = diag
        self._prepare_sweeps()

    def _prepare_sweeps(self) -> None:
        """Buffers and the split L = D - N for in-place sweeps (see the module docstring)."""
        shape = self.shape
        lower, upper = [], []  # per axis: coupling to the neighbour below / above each cell
        for axis, a in enumerate(self.areas):
            n = shape[axis]
            low, high = (a, torch.roll(a, -1, axis)) if self.periodic[axis] else (a.narrow(axis, 0, n),
                                                                                 a.narrow(axis, 1, n))
            lower.append((low * self.factor).contiguous())
            upper.append((high * self.factor).contiguous())
        self.couplings = tuple(zip(lower, upper))
        self.keep = 1.0 - self.weight * self.diagonal  # 1 - omega on fluid cells, 1 where weight = 0
        like = dict(dtype=self.diagonal.dtype, device=self.diagonal.device)
        self.work = _Padded(shape, self.periodic, **like)
        self.z = self.work.interior  # this level's correction
        self.scratch = torch.empty(shape, **like)
        self.scratch_children = _children(self.scratch) if self.work.children is not None else None
        self.rhs = torch.empty(shape, **like)  # a coarse level's restricted residual
        broadcast = self.z  # the correction as (n0, 1, n1, 1, ...), to add onto the finer level's children
        for axis in reversed(range(len(shape))):
            broadcast = broadcast.unsqueeze(axis + 1)
        self.z_broadcast = broadcast

    def _neighbours(self, out: torch.Tensor, buffer: "_Padded | None" = None,
                    start: torch.Tensor | None = None) -> torch.Tensor:
        """out = start + N x (start: default 0) for x the interior of ``buffer`` (default: this
        level's correction z)."""
        buffer = buffer or self.work
        buffer.wrap()
        for axis, ((lower, upper), (below, above)) in enumerate(zip(self.couplings, buffer.shifted)):
            if axis > 0:
                out.addcmul_(lower, below)
            elif start is None:
                torch.mul(lower, below, out=out)
            else:
                torch.addcmul(start, lower, below, out=out)
            out.addcmul_(upper, above)
        return out

    def sweep(self, r: torch.Tensor) -> None:
        """One damped Jacobi sweep on this level's correction for right-hand side r."""
        t = self._neighbours(self.scratch, start=r)
        self.z.mul_(self.keep).addcmul_(self.weight, t)

    def residual(self, r: torch.Tensor) -> torch.Tensor:
        """r - L z into the scratch buffer."""
        return self._neighbours(self.scratch, start=r).addcmul_(self.diagonal, self.z, value=-1.0)

    def apply(self, p: torch.Tensor) -> torch.Tensor:
        """The level's operator on p."""
        out = torch.zeros_like(p)
        for axis, a in enumerate(self.areas):
            n = self.shape[axis]
            if self.periodic[axis]:
                flux = a * (p - torch.roll(p, 1, axis))
                out += flux - torch.roll(flux, -1, axis)
            else:
                padded = _pad_axis(p, axis)
                flux = a * (padded.narrow(axis, 1, n + 1) - padded.narrow(axis, 0, n + 1))
                out += flux.narrow(axis, 0, n) - flux.narrow(axis, 1, n)
        return out.mul_(self.factor) if self.factor != 1.0 else out

    def coarsen(self, omega: float) -> "_Level":
        # coarse face I sits on fine face 2I; its coefficient is the mean of the 2 (2D) or 4 (3D)
        # fine faces it spans; in 3D the face area over the spacing doubles per level
        areas = []
        for axis, a in enumerate(self.areas):
            a = _pairs(a, axis, 0)
            for other in range(a.dim()):
                if other != axis:
                    a = 0.5 * (_pairs(a, other, 0) + _pairs(a, other, 1))
            areas.append(a.contiguous())
        return _Level(tuple(areas), self.periodic, omega, self.factor * 2.0 ** (len(areas) - 2))


def _children(r: torch.Tensor) -> list[torch.Tensor]:
    """The 4 (2D) or 8 (3D) strided views of r, one per position in its 2 x 2 (x 2) blocks."""
    return [r[tuple(slice(o, None, 2) for o in offsets)] for offsets in itertools.product((0, 1), repeat=r.dim())]


def _restrict(r: torch.Tensor, out: torch.Tensor | None = None, children: list | None = None) -> torch.Tensor:
    """Sum of each 2 x 2 (x 2) block of r (into ``out``): strided views added, no reduction kernel;
    ``children``: ``_children(r)``, precomputed."""
    children = children or _children(r)
    out = torch.add(children[0], children[1], out=out)
    for child in children[2:]:
        out.add_(child)
    return out


class Multigrid:
    """V-cycle preconditioner for the pressure matrix M = L / dx^2 of face fractions per axis
    (2D: ``area_x`` (Fx, ny), ``area_y`` (nx, Fy); 3D: (Fx, ny, nz), (nx, Fy, nz), (nx, ny, Fz));
    ``periodic`` per axis.

    Args:
        smoothing: Jacobi sweeps before and after each coarse correction.
        omega: Jacobi damping.

    The cycle runs in buffers owned by the instance: one V-cycle at a time per instance (the CG
    calls it sequentially; share no instance between threads).
    """

    def __init__(self, *areas: torch.Tensor, cell_size: float, periodic: tuple[bool, ...], smoothing: int = 2,
                 omega: float = 0.8):
        if len(areas) not in (2, 3) or len(periodic) != len(areas):
            raise ValueError(f"multigrid takes 2 or 3 face arrays and one periodic flag per axis, got {len(areas)} "
                             f"and {len(periodic)}")
        level = _Level(tuple(a.contiguous() for a in areas), tuple(bool(p) for p in periodic), omega, 1.0)
        if not self.supports(level.shape):
            raise ValueError(f"multigrid needs cell counts that halve evenly down to at most {MAX_COARSEST} "
                             f"cells; got {level.shape}")
        self.scale = float(cell_size) ** 2
        self.smoothing, self.omega = int(smoothing), float(omega)
        self.levels = [level]
        while math.prod(self.levels[-1].shape) > MAX_COARSEST:
            self.levels.append(self.levels[-1].coarsen(omega))
        coarsest = self.levels[-1]
        basis = torch.eye(math.prod(coarsest.shape), dtype=torch.float64, device=areas[0].device)
        level64 = _Level(tuple(a.double() for a in coarsest.areas), coarsest.periodic, omega, coarsest.factor)
        matrix = torch.stack([level64.apply(column.view(coarsest.shape)).reshape(-1) for column in basis], dim=1)
        self.coarsest_inverse = torch.linalg.pinv(matrix, hermitian=True).to(areas[0].dtype)
        self._operator_buffer = None

    @staticmethod
    def supports(shape: tuple[int, ...]) -> bool:
        """Whether the cell counts halve evenly down to at most MAX_COARSEST cells."""
        shape = tuple(shape)
        while math.prod(shape) > MAX_COARSEST:
            if any(n % 2 or n < 4 for n in shape):
                return False
            shape = tuple(n // 2 for n in shape)
        return True

    def _cycle(self, index: int, r: torch.Tensor) -> None:
        """One V-cycle from ``index`` down for right-hand side r: leaves it in ``levels[index].z``."""
        level = self.levels[index]
        if index == len(self.levels) - 1:
            level.z.copy_(torch.mv(self.coarsest_inverse, r.reshape(-1)).view(level.shape))
            return
        torch.mul(level.weight, r, out=level.z)  # the first sweep, from z = 0
        for _ in range(self.smoothing - 1):
            level.sweep(r)
        coarse = self.levels[index + 1]
        _restrict(level.residual(r), out=coarse.rhs, children=level.scratch_children)
        self._cycle(index + 1, coarse.rhs)
        level.work.children.add_(coarse.z_broadcast)  # prolongation by injection
        for _ in range(self.smoothing):
            level.sweep(r)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        """z ~ M^-1 r for r of the fine cell shape (or flat); a new tensor."""
        shape = self.levels[0].shape
        self._cycle(0, r.reshape(shape))
        return (self.levels[0].z * self.scale).reshape(r.shape)

    def bind_operator(self, p: torch.Tensor, out: torch.Tensor):
        """A callable writing M p = L p / dx^2 into ``out`` (the CG operator interface, p and out
        fixed buffers): the fine level's operator as vectorised torch ops (the matrix of the
        backends' apply_pressure_operator kernel, up to round-off; several times faster on CPU)."""
        level = self.levels[0]
        buffer = self._operator_buffer  # p with its border (solves run one at a time: one buffer)
        if buffer is None:
            buffer = self._operator_buffer = _Padded(level.shape, level.periodic, dtype=p.dtype, device=p.device)
        p_view, out_view, inverse_scale = p.view(level.shape), out.view(level.shape), 1.0 / self.scale

        def run() -> None:
            buffer.interior.copy_(p_view)
            level._neighbours(out_view, buffer).neg_().addcmul_(level.diagonal, buffer.interior).mul_(inverse_scale)

        return run

    def bind(self, r: torch.Tensor, z: torch.Tensor):
        """A callable writing M^-1 r into z (the CG preconditioner interface)."""
        shape = self.levels[0].shape
        r_view, z_view = r.view(shape), z.view(shape)

        def run() -> None:
            self._cycle(0, r_view)
            torch.mul(self.levels[0].z, self.scale, out=z_view)

        return run
