"""A multigrid V-cycle that preconditions the pressure CG (MGPCG).

The pressure matrix is M = L / dx^2 with L p = sum over a cell's faces of a_f (p_c - p_n): a_f
the face's open fraction, p_n = 0 beyond an open side, faces wrapped on periodic axes, and a
wall (or solid) face a_f = 0. Every level keeps that form. A coarse cell is a 2 x 2 block of fine
cells; a coarse face's coefficient is the mean of the two fine faces it covers (the operator
re-discretised on the coarse grid, so obstacles and open sides carry over); the residual is
restricted by summing the four children and the correction prolonged by injection (R = P^T).
Each level smooths with damped Jacobi, the same sweeps before and after the coarse correction,
so the V-cycle is a symmetric operator, positive definite because the smoother contracts; the
coarsest level (at most ``MAX_COARSEST`` cells) is solved exactly with a precomputed
pseudo-inverse, which also handles the constant null space of a closed box.

Every operation is a vectorised torch op (CPU or CUDA), shared by the Warp and Taichi backends,
so both run the same preconditioner. It needs the cell counts to halve evenly down to a small
coarsest grid; ``Multigrid.supports`` says whether they do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["Multigrid", "MAX_COARSEST"]

MAX_COARSEST = 256
"""Largest coarsest level (cells) solved by a dense pseudo-inverse."""


class _Level:
    def __init__(self, ax: torch.Tensor, ay: torch.Tensor, periodic: tuple[bool, bool], omega: float):
        self.ax, self.ay, self.periodic = ax, ay, periodic
        self.shape = (ay.shape[0], ax.shape[1])
        nx, ny = self.shape
        diag = torch.zeros(self.shape, dtype=ax.dtype, device=ax.device)
        if periodic[0]:
            diag += ax + torch.roll(ax, -1, 0)
        else:
            diag += ax[:-1] + ax[1:]
        if periodic[1]:
            diag += ay + torch.roll(ay, -1, 1)
        else:
            diag += ay[:, :-1] + ay[:, 1:]
        self.weight = torch.where(diag > 0, omega / torch.where(diag > 0, diag, torch.ones_like(diag)),
                                  torch.zeros_like(diag))

    def apply(self, p: torch.Tensor) -> torch.Tensor:
        """L p (dimensionless: no 1/dx^2)."""
        if self.periodic[0]:
            flux = self.ax * (p - torch.roll(p, 1, 0))
            out = flux - torch.roll(flux, -1, 0)
        else:
            padded = F.pad(p, (0, 0, 1, 1))
            flux = self.ax * (padded[1:] - padded[:-1])
            out = flux[:-1] - flux[1:]
        if self.periodic[1]:
            flux = self.ay * (p - torch.roll(p, 1, 1))
            out += flux - torch.roll(flux, -1, 1)
        else:
            padded = F.pad(p, (1, 1))
            flux = self.ay * (padded[:, 1:] - padded[:, :-1])
            out += flux[:, :-1] - flux[:, 1:]
        return out

    def coarsen(self, omega: float) -> "_Level":
        # coarse face I sits on fine face 2I; it spans two fine faces across
        ax = self.ax[0::2]
        ax = 0.5 * (ax[:, 0::2] + ax[:, 1::2])
        ay = self.ay[:, 0::2]
        ay = 0.5 * (ay[0::2] + ay[1::2])
        return _Level(ax.contiguous(), ay.contiguous(), self.periodic, omega)


def _restrict(r: torch.Tensor) -> torch.Tensor:
    nx, ny = r.shape
    return r.view(nx // 2, 2, ny // 2, 2).sum(dim=(1, 3))


def _prolong(e: torch.Tensor) -> torch.Tensor:
    nx, ny = e.shape
    return e[:, None, :, None].expand(nx, 2, ny, 2).reshape(2 * nx, 2 * ny)


class Multigrid:
    """V-cycle preconditioner for the pressure matrix M = L / dx^2 of face fractions ``area_x``
    (Fx, ny), ``area_y`` (nx, Fy); ``periodic`` per axis.

    Args:
        smoothing: Jacobi sweeps before and after each coarse correction.
        omega: Jacobi damping.
    """

    def __init__(self, area_x: torch.Tensor, area_y: torch.Tensor, *, cell_size: float,
                 periodic: tuple[bool, bool], smoothing: int = 2, omega: float = 0.8):
        if not self.supports((area_y.shape[0], area_x.shape[1])):
            raise ValueError(f"multigrid needs cell counts that halve evenly down to at most {MAX_COARSEST} "
                             f"cells; got {(area_y.shape[0], area_x.shape[1])}")
        self.scale = float(cell_size) ** 2
        self.smoothing, self.omega = int(smoothing), float(omega)
        self.levels = [_Level(area_x.contiguous(), area_y.contiguous(), tuple(bool(p) for p in periodic), omega)]
        while self.levels[-1].shape[0] * self.levels[-1].shape[1] > MAX_COARSEST:
            self.levels.append(self.levels[-1].coarsen(omega))
        coarsest = self.levels[-1]
        cells = coarsest.shape[0] * coarsest.shape[1]
        basis = torch.eye(cells, dtype=torch.float64, device=area_x.device)
        level64 = _Level(coarsest.ax.double(), coarsest.ay.double(), coarsest.periodic, omega)
        matrix = torch.stack([level64.apply(column.view(coarsest.shape)).reshape(-1) for column in basis], dim=1)
        self.coarsest_inverse = torch.linalg.pinv(matrix, hermitian=True).to(area_x.dtype)

    @staticmethod
    def supports(shape: tuple[int, int]) -> bool:
        """Whether the cell counts halve evenly down to at most MAX_COARSEST cells."""
        nx, ny = shape
        while nx * ny > MAX_COARSEST:
            if nx % 2 or ny % 2 or nx < 4 or ny < 4:
                return False
            nx, ny = nx // 2, ny // 2
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
