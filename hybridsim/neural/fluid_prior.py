"""A divergence-free motion prior for the 2D grid fluid.

The prior adds a learned residual acceleration field to every step of a grid-fluid rollout (the
``control`` hook of :func:`hybridsim.solvers.grid_fluid.rollout_grid_fluid`, or
``fluid_rollout(..., motion_prior=)``). The field is the curl of a learned stream function psi on
the grid's nodes (cell corners), discretised on the staggered faces as

    a_x[i, j] =  (psi[i, j+1] - psi[i, j]) / h      (x-faces, shape (Fx, ny))
    a_y[i, j] = -(psi[i+1, j] - psi[i, j]) / h      (y-faces, shape (nx, Fy))

so the discrete divergence of every cell, (a_x[i+1,j] - a_x[i,j] + a_y[i,j+1] - a_y[i,j]) / h,
cancels term by term: it is zero by construction (to rounding), periodic axes included. psi is
held at zero on the nodes of wall sides, so the field has no flux through walls either.

psi comes from a small CNN over per-cell features of the current state (density, cell-centred
velocity, normalised position), averaged to the nodes; its last layer starts at zero, so an
untrained prior leaves the simulation unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DivergenceFreeFluidPrior", "stream_to_faces", "face_divergence"]


def stream_to_faces(psi: torch.Tensor, cell_size: float, periodic: tuple[bool, bool] = (False, False)):
    """Face fields (a_x (Fx, ny), a_y (nx, Fy)) of the curl of ``psi`` on nodes (Nx, Ny).

    Nodes: Nx = nx + 1 (nx when x is periodic, the last node being the first), likewise Ny."""
    px, py = periodic
    next_y = torch.roll(psi, -1, dims=1) if py else psi[:, 1:]
    a_x = (next_y - (psi if py else psi[:, :-1])) / cell_size
    next_x = torch.roll(psi, -1, dims=0) if px else psi[1:, :]
    a_y = -(next_x - (psi if px else psi[:-1, :])) / cell_size
    return a_x, a_y


def face_divergence(a_x: torch.Tensor, a_y: torch.Tensor, cell_size: float,
                    periodic: tuple[bool, bool] = (False, False)) -> torch.Tensor:
    """Plain (unweighted) discrete divergence per cell (nx, ny) of a staggered face field."""
    px, py = periodic
    dx = (torch.roll(a_x, -1, dims=0) - a_x) if px else (a_x[1:] - a_x[:-1])
    dy = (torch.roll(a_y, -1, dims=1) - a_y) if py else (a_y[:, 1:] - a_y[:, :-1])
    return (dx + dy) / cell_size


class DivergenceFreeFluidPrior(nn.Module):
    """``prior(step, state) -> GridFluidControl`` adding a divergence-free residual acceleration [m/s^2].

    ``cell_count`` (nx, ny), ``cell_size`` [m] and ``boundary`` (one kind or four: x_lo, x_hi, y_lo,
    y_hi) describe the grid; :meth:`for_model` reads them from a GridFluidModel.
    """

    def __init__(self, cell_count: tuple[int, int], cell_size: float, boundary="wall", *, hidden: int = 16,
                 layers: int = 2, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cell_count = (int(cell_count[0]), int(cell_count[1]))
        self.cell_size = float(cell_size)
        sides = (boundary,) * 4 if isinstance(boundary, str) else tuple(boundary)
        self.periodic = (sides[0] == "periodic", sides[2] == "periodic")
        blocks, width = [], 5
        for _ in range(layers):
            blocks += [nn.Conv2d(width, hidden, 3, padding=1), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        nx, ny = self.cell_count
        mask = torch.ones(nx + (0 if self.periodic[0] else 1), ny + (0 if self.periodic[1] else 1))
        if sides[0] == "wall":
            mask[0] = 0.0
        if sides[1] == "wall":
            mask[-1] = 0.0
        if sides[2] == "wall":
            mask[:, 0] = 0.0
        if sides[3] == "wall":
            mask[:, -1] = 0.0
        self.register_buffer("node_mask", mask, persistent=False)
        self.to(dtype)

    @classmethod
    def for_model(cls, model, **kwargs) -> "DivergenceFreeFluidPrior":
        kwargs.setdefault("dtype", model.dtype)
        return cls(model.cell_count, model.cell_size, tuple(model.boundary), **kwargs).to(model.device)

    def features(self, state) -> torch.Tensor:
        """(1, 5, nx, ny): density, cell-centred velocity (x, y) and position in [-1, 1]."""
        u, v, density = state.tensors()
        nx, ny = self.cell_count
        uc = 0.5 * (u + torch.roll(u, -1, 0)) if self.periodic[0] else 0.5 * (u[1:] + u[:-1])
        vc = 0.5 * (v + torch.roll(v, -1, 1)) if self.periodic[1] else 0.5 * (v[:, 1:] + v[:, :-1])
        dtype = self.head.weight.dtype
        xs = torch.linspace(-1.0, 1.0, nx, dtype=dtype, device=density.device)[:, None].expand(nx, ny)
        ys = torch.linspace(-1.0, 1.0, ny, dtype=dtype, device=density.device)[None, :].expand(nx, ny)
        return torch.stack([density.to(dtype), uc.to(dtype), vc.to(dtype), xs, ys])[None]

    def stream_function(self, state) -> torch.Tensor:
        """psi on the nodes (Nx, Ny) [m^2/s^2]."""
        cells = self.head(self.body(self.features(state)))  # (1, 1, nx, ny)
        pad_x = "circular" if self.periodic[0] else "replicate"
        pad_y = "circular" if self.periodic[1] else "replicate"
        padded = F.pad(F.pad(cells, (0, 0, 1, 1), mode=pad_x), (1, 1, 0, 0), mode=pad_y)
        nodes = F.avg_pool2d(padded, 2, stride=1)[0, 0]  # (nx + 1, ny + 1): mean of the 4 cells around a node
        # node i sits at the lower-left corner of cell i; on a periodic axis node nx is node 0
        if self.periodic[0]:
            nodes = nodes[:-1]
        if self.periodic[1]:
            nodes = nodes[:, :-1]
        return nodes * self.node_mask

    def accelerations(self, state) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_x on x-faces, a_y on y-faces) [m/s^2], in the state's dtype."""
        a_x, a_y = stream_to_faces(self.stream_function(state), self.cell_size, self.periodic)
        dtype = state.tensors()[2].dtype
        return a_x.to(dtype), a_y.to(dtype)

    def forward(self, step: int, state):
        from ..solvers.grid_fluid.model import GridFluidControl

        a_x, a_y = self.accelerations(state)
        return GridFluidControl(acceleration_x=a_x, acceleration_y=a_y)
