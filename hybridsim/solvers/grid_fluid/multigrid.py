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
"""

from __future__ import annotations

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


def _restrict(r: torch.Tensor) -> torch.Tensor:
    shape = []
    for n in r.shape:
        shape += [n // 2, 2]
    return r.reshape(shape).sum(dim=tuple(range(1, 2 * r.dim(), 2)))


def _prolong(e: torch.Tensor) -> torch.Tensor:
    for axis in range(e.dim()):
        e = e.repeat_interleave(2, dim=axis)
    return e


class Multigrid:
    """V-cycle preconditioner for the pressure matrix M = L / dx^2 of face fractions per axis
    (2D: ``area_x`` (Fx, ny), ``area_y`` (nx, Fy); 3D: (Fx, ny, nz), (nx, Fy, nz), (nx, ny, Fz));
    ``periodic`` per axis.

    Args:
        smoothing: Jacobi sweeps before and after each coarse correction.
        omega: Jacobi damping.
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

    @staticmethod
    def supports(shape: tuple[int, ...]) -> bool:
        """Whether the cell counts halve evenly down to at most MAX_COARSEST cells."""
        shape = tuple(shape)
        while math.prod(shape) > MAX_COARSEST:
            if any(n % 2 or n < 4 for n in shape):
                return False
            shape = tuple(n // 2 for n in shape)
        return True

    def _cycle(self, index: int, r: torch.Tensor) -> torch.Tensor:
        level = self.levels[index]
        if index == len(self.levels) - 1:
            return (self.coarsest_inverse @ r.reshape(-1)).view(level.shape)
        z = level.weight * r
        for _ in range(self.smoothing - 1):
            z += level.weight * (r - level.apply(z))
        z += _prolong(self._cycle(index + 1, _restrict(r - level.apply(z))))
        for _ in range(self.smoothing):
            z += level.weight * (r - level.apply(z))
        return z

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        """z ~ M^-1 r for r of the fine cell shape (or flat)."""
        shape = self.levels[0].shape
        return self._cycle(0, r.reshape(shape)).mul_(self.scale).reshape(r.shape)

    def bind(self, r: torch.Tensor, z: torch.Tensor):
        """A callable writing M^-1 r into z (the CG preconditioner interface)."""

        def run() -> None:
            z.copy_(self.apply(r).reshape(z.shape))

        return run
