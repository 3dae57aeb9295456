"""Model, State and Control of the 2D grid fluid (smoke), and the builder that makes a Model.

Grid axes are x (i, first tensor axis) and y (j, second axis); for a vertical slice of a 3D
scene, grid y plays the role of world z (gravity defaults to (0, -1) in grid axes). Velocities
live on a staggered MAC grid: ``velocity_x`` on x-faces, ``velocity_y`` on y-faces, ``density``
at cell centres. On a periodic axis the last face coincides with the first, so that axis has
``nx`` faces instead of ``nx + 1`` (no duplicated unknowns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ...errors import HybridsimError

__all__ = ["GridFluidModel", "GridFluidState", "GridFluidControl", "GridFluidBuilder", "BOUNDARY_KINDS"]

BOUNDARY_KINDS = ("wall", "open", "periodic")
_SIDES = ("x_lo", "x_hi", "y_lo", "y_hi")


@dataclass
class GridFluidModel:
    """Constants of one 2D smoke domain (tensors may carry gradients where marked learnable)."""

    cell_count: tuple[int, int]
    """Cells along x and y, (nx, ny)."""
    cell_size: float
    """Edge length dx of a square cell [m]."""
    boundary: tuple[str, str, str, str]
    """Kind of each side (x_lo, x_hi, y_lo, y_hi): "wall", "open" or "periodic"."""
    wall_slip: str
    """Tangential velocity at walls: "free_slip" or "no_slip"."""
    face_fraction_x: torch.Tensor
    """Open (fluid) fraction of each x-face [1], shape (Fx, ny); 0 at walls and inside obstacles."""
    face_fraction_y: torch.Tensor
    """Open (fluid) fraction of each y-face [1], shape (nx, Fy)."""
    gravity_direction: tuple[float, float]
    """Unit vector of gravity in grid axes; buoyancy acts against it."""
    buoyancy: torch.Tensor
    """Upward acceleration per unit density [m/s^2], shape (1,); learnable."""
    vorticity_strength: torch.Tensor
    """Vorticity confinement coefficient epsilon [1], shape (1,); learnable."""
    viscosity: torch.Tensor
    """Kinematic viscosity [m^2/s], shape (1,), solved implicitly; learnable."""
    inflow_center: torch.Tensor
    """Centres of the inflow sources [m], shape (S, 2); learnable."""
    inflow_size: torch.Tensor
    """Disc radius (in both columns) or box half extents of each source [m], shape (S, 2)."""
    inflow_rate: torch.Tensor
    """Density added per second inside each source [1/s], shape (S,); learnable."""
    inflow_is_box: torch.Tensor
    """1 for a box source, 0 for a disc, shape (S,)."""

    @property
    def inflow_count(self) -> int:
        return int(self.inflow_rate.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.face_fraction_x.dtype

    @property
    def device(self) -> torch.device:
        return self.face_fraction_x.device

    @property
    def periodic(self) -> tuple[bool, bool]:
        """Whether the x and y axes wrap around."""
        return self.boundary[0] == "periodic", self.boundary[2] == "periodic"

    @property
    def face_shape_x(self) -> tuple[int, int]:
        nx, ny = self.cell_count
        return (nx if self.periodic[0] else nx + 1, ny)

    @property
    def face_shape_y(self) -> tuple[int, int]:
        nx, ny = self.cell_count
        return (nx, ny if self.periodic[1] else ny + 1)

    @property
    def boundary_flags(self) -> int:
        """The boundary packed as kernel bits (see kernels/warp/grid_fluid.py)."""
        no_slip = self.wall_slip == "no_slip"
        x_lo, x_hi, y_lo, y_hi = (side == "wall" and no_slip for side in self.boundary)
        px, py = self.periodic
        return int(px) | int(py) << 1 | int(y_lo) << 2 | int(y_hi) << 3 | int(x_lo) << 4 | int(x_hi) << 5

    @property
    def pressure_is_singular(self) -> bool:
        """True when no side is open: pressure is defined up to a constant (mean removed)."""
        return "open" not in self.boundary

    def state(self, requires_grad: bool = False) -> GridFluidState:
        """A fluid at rest with zero density."""
        make = lambda shape: torch.zeros(shape, dtype=self.dtype, device=self.device, requires_grad=requires_grad)  # noqa: E731
        return GridFluidState(make(self.face_shape_x), make(self.face_shape_y), make(self.cell_count))

    def cell_centers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell-centre coordinates (x, y) [m], each of shape (nx, ny)."""
        nx, ny = self.cell_count
        x = (torch.arange(nx, dtype=self.dtype, device=self.device) + 0.5) * self.cell_size
        y = (torch.arange(ny, dtype=self.dtype, device=self.device) + 0.5) * self.cell_size
        return torch.meshgrid(x, y, indexing="ij")


@dataclass
class GridFluidState:
    """Time-varying fluid state; ``step()`` reads one State and writes another."""

    velocity_x: torch.Tensor
    """x-velocity on x-faces [m/s], shape (Fx, ny) (Fx = nx + 1, or nx when x is periodic)."""
    velocity_y: torch.Tensor
    """y-velocity on y-faces [m/s], shape (nx, Fy)."""
    density: torch.Tensor
    """Smoke density at cell centres [1], shape (nx, ny)."""
    step_count: int = 0
    """Steps taken since the initial state (names the step in errors)."""

    def clone(self) -> GridFluidState:
        return GridFluidState(self.velocity_x.clone(), self.velocity_y.clone(), self.density.clone(), self.step_count)

    def detach(self) -> GridFluidState:
        return GridFluidState(self.velocity_x.detach(), self.velocity_y.detach(), self.density.detach(),
                              self.step_count)

    def empty_like(self) -> GridFluidState:
        return GridFluidState(torch.empty_like(self.velocity_x), torch.empty_like(self.velocity_y),
                              torch.empty_like(self.density), self.step_count)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.velocity_x, self.velocity_y, self.density


@dataclass
class GridFluidControl:
    """Inputs applied during a step (from users, controllers or motion priors); None = none."""

    acceleration_x: torch.Tensor | None = None
    """Extra acceleration on x-faces [m/s^2], shape (Fx, ny)."""
    acceleration_y: torch.Tensor | None = None
    """Extra acceleration on y-faces [m/s^2], shape (nx, Fy)."""
    inflow_rate: torch.Tensor | None = None
    """Replaces the model's inflow rates for this step [1/s], shape (S,)."""

    def replace(self, **changes) -> GridFluidControl:
        return replace(self, **changes)


@dataclass
class _Inflow:
    center: tuple[float, float]
    size: tuple[float, float]
    rate: float
    is_box: bool


@dataclass
class _Obstacle:
    center: tuple[float, float]
    size: tuple[float, float]
    is_box: bool


@dataclass
class GridFluidBuilder:
    """Collects a smoke domain in plain Python values; ``finalize()`` makes a GridFluidModel.

    ``boundary`` is one kind for every side ("wall", "open", "periodic") or four kinds
    (x_lo, x_hi, y_lo, y_hi); periodic sides come in pairs.
    """

    cell_count: tuple[int, int]
    cell_size: float = 1.0
    boundary: str | tuple[str, str, str, str] = "wall"
    wall_slip: str = "free_slip"
    gravity_direction: tuple[float, float] = (0.0, -1.0)
    buoyancy: float = 0.0
    vorticity_strength: float = 0.0
    viscosity: float = 0.0
    inflows: list = field(default_factory=list)
    obstacles: list = field(default_factory=list)

    def add_inflow_disc(self, center: tuple[float, float], radius: float, rate: float) -> int:
        """Add a disc source of ``rate`` density per second [1/s]; returns its index."""
        if radius <= 0:
            raise HybridsimError(f"inflow radius must be positive, got {radius}",
                                 field=f"inflows[{len(self.inflows)}].radius")
        self.inflows.append(_Inflow(tuple(map(float, center)), (float(radius), float(radius)), float(rate), False))
        return len(self.inflows) - 1

    def add_inflow_box(self, center: tuple[float, float], half_size: tuple[float, float], rate: float) -> int:
        """Add an axis-aligned box source with half extents ``half_size`` [m]; returns its index."""
        if min(half_size) <= 0:
            raise HybridsimError(f"inflow half_size must be positive, got {half_size}",
                                 field=f"inflows[{len(self.inflows)}].half_size")
        self.inflows.append(_Inflow(tuple(map(float, center)), tuple(map(float, half_size)), float(rate), True))
        return len(self.inflows) - 1

    def add_obstacle_disc(self, center: tuple[float, float], radius: float) -> int:
        """Add a static solid disc; faces it cuts get their open fraction (exact chord lengths)."""
        if radius <= 0:
            raise HybridsimError(f"obstacle radius must be positive, got {radius}",
                                 field=f"obstacles[{len(self.obstacles)}].radius")
        self.obstacles.append(_Obstacle(tuple(map(float, center)), (float(radius), float(radius)), False))
        return len(self.obstacles) - 1

    def add_obstacle_box(self, center: tuple[float, float], half_size: tuple[float, float]) -> int:
        """Add a static solid axis-aligned box."""
        if min(half_size) <= 0:
            raise HybridsimError(f"obstacle half_size must be positive, got {half_size}",
                                 field=f"obstacles[{len(self.obstacles)}].half_size")
        self.obstacles.append(_Obstacle(tuple(map(float, center)), tuple(map(float, half_size)), True))
        return len(self.obstacles) - 1

    def finalize(self, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> GridFluidModel:
        nx, ny = (int(n) for n in self.cell_count)
        boundary = _parse_boundary(self.boundary)
        if min(nx, ny) < 3:
            raise HybridsimError(f"the grid needs at least 3 cells per axis, got {self.cell_count}", field="cell_count")
        if not self.cell_size > 0:
            raise HybridsimError(f"cell_size must be positive, got {self.cell_size}", field="cell_size")
        if self.wall_slip not in ("free_slip", "no_slip"):
            raise HybridsimError(f"wall_slip must be 'free_slip' or 'no_slip', got {self.wall_slip!r}",
                                 field="wall_slip")
        gx, gy = (float(c) for c in self.gravity_direction)
        norm = math.hypot(gx, gy)
        if norm == 0:
            raise HybridsimError("gravity_direction must be non-zero", field="gravity_direction")
        for name in ("buoyancy", "vorticity_strength", "viscosity"):
            if not math.isfinite(getattr(self, name)):
                raise HybridsimError(f"{name} must be finite", field=name)
        if self.viscosity < 0:
            raise HybridsimError(f"viscosity must be >= 0, got {self.viscosity}", field="viscosity")

        model = GridFluidModel(
            cell_count=(nx, ny), cell_size=float(self.cell_size), boundary=boundary, wall_slip=self.wall_slip,
            face_fraction_x=torch.ones(1), face_fraction_y=torch.ones(1), gravity_direction=(gx / norm, gy / norm),
            buoyancy=_scalar(self.buoyancy, dtype, device), vorticity_strength=_scalar(self.vorticity_strength, dtype, device),
            viscosity=_scalar(self.viscosity, dtype, device),
            inflow_center=torch.tensor([s.center for s in self.inflows], dtype=dtype, device=device).reshape(-1, 2),
            inflow_size=torch.tensor([s.size for s in self.inflows], dtype=dtype, device=device).reshape(-1, 2),
            inflow_rate=torch.tensor([s.rate for s in self.inflows], dtype=dtype, device=device).reshape(-1),
            inflow_is_box=torch.tensor([float(s.is_box) for s in self.inflows], dtype=dtype, device=device).reshape(-1),
        )
        model.face_fraction_x, model.face_fraction_y = _face_fractions(model, self.obstacles, dtype, device)
        return model


def _scalar(value: float, dtype, device) -> torch.Tensor:
    return torch.tensor([float(value)], dtype=dtype, device=device)


def _parse_boundary(boundary) -> tuple[str, str, str, str]:
    sides = (boundary,) * 4 if isinstance(boundary, str) else tuple(boundary)
    if len(sides) != 4:
        raise HybridsimError(f"boundary needs one kind or four (x_lo, x_hi, y_lo, y_hi), got {boundary!r}", field="boundary")
    for name, kind in zip(_SIDES, sides):
        if kind not in BOUNDARY_KINDS:
            raise HybridsimError(f"unknown boundary kind {kind!r}; expected one of {BOUNDARY_KINDS}", field=f"boundary.{name}")
    for axis, (lo, hi) in (("x", sides[:2]), ("y", sides[2:])):
        if (lo == "periodic") != (hi == "periodic"):
            raise HybridsimError(f"periodic boundaries come in pairs: {axis}_lo is {lo!r} but {axis}_hi is {hi!r}",
                                 field=f"boundary.{axis}")
    return sides


def _segment_overlap(lo: torch.Tensor, hi: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (torch.minimum(hi, b) - torch.maximum(lo, a)).clamp(min=0.0)


def _blocked_length(obstacle: _Obstacle, across: torch.Tensor, start: torch.Tensor, dx: float, axis: int) -> torch.Tensor:
    """Length of the face segment {across} x [start, start + dx] (along ``axis``) inside the obstacle."""
    c_across, c_along = (obstacle.center[0], obstacle.center[1]) if axis == 1 else (obstacle.center[1], obstacle.center[0])
    s_across, s_along = (obstacle.size[0], obstacle.size[1]) if axis == 1 else (obstacle.size[1], obstacle.size[0])
    if obstacle.is_box:
        inside = ((across - c_across).abs() < s_across).to(start.dtype)
        half = torch.full_like(start, s_along)
    else:  # chord of the disc on the line ``across``
        inside = torch.ones_like(start)
        half = (s_across ** 2 - (across - c_across) ** 2).clamp(min=0.0).sqrt()
    return inside * _segment_overlap(c_along - half, c_along + half, start, start + dx)


def _face_fractions(model: GridFluidModel, obstacles, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    nx, ny = model.cell_count
    dx = model.cell_size
    fx_count, fy_count = model.face_shape_x[0], model.face_shape_y[1]
    # x-faces: vertical segments at x = i dx spanning y in [j dx, (j + 1) dx]
    xi, yj = torch.meshgrid(torch.arange(fx_count, dtype=torch.float64), torch.arange(ny, dtype=torch.float64), indexing="ij")
    blocked_x = torch.zeros_like(xi)
    # y-faces: horizontal segments at y = j dx spanning x in [i dx, (i + 1) dx]
    xi2, yj2 = torch.meshgrid(torch.arange(nx, dtype=torch.float64), torch.arange(fy_count, dtype=torch.float64), indexing="ij")
    blocked_y = torch.zeros_like(xi2)
    for obstacle in obstacles:
        blocked_x = torch.maximum(blocked_x, _blocked_length(obstacle, xi * dx, yj * dx, dx, axis=1))
        blocked_y = torch.maximum(blocked_y, _blocked_length(obstacle, yj2 * dx, xi2 * dx, dx, axis=0))
    open_x = (1.0 - blocked_x / dx).clamp(0.0, 1.0)
    open_y = (1.0 - blocked_y / dx).clamp(0.0, 1.0)
    # faces closed to a tiny sliver are treated as solid (keeps the pressure system well conditioned)
    open_x = torch.where(open_x < 1e-3, torch.zeros_like(open_x), open_x)
    open_y = torch.where(open_y < 1e-3, torch.zeros_like(open_y), open_y)
    x_lo, x_hi, y_lo, y_hi = model.boundary
    if x_lo == "wall":
        open_x[0] = 0.0
    if x_hi == "wall":
        open_x[-1] = 0.0
    if y_lo == "wall":
        open_y[:, 0] = 0.0
    if y_hi == "wall":
        open_y[:, -1] = 0.0
    return open_x.to(dtype=dtype, device=device), open_y.to(dtype=dtype, device=device)

