"""Model, State and Control of the 2D grid fluid (smoke), and the builder that makes a Model.

Grid axes are x (i, first tensor axis) and y (j, second axis); for a vertical slice of a 3D
scene, grid y plays the role of world z (gravity defaults to (0, -1) in grid axes). Velocities
live on a staggered MAC grid: ``velocity_x`` on x-faces, ``velocity_y`` on y-faces, ``density``
at cell centres. On a periodic axis the last face coincides with the first, so that axis has
``nx`` faces instead of ``nx + 1`` (no duplicated unknowns).

Optional parts: a temperature field (cell centres, advected like density; Boussinesq buoyancy
``temperature_buoyancy * (T - ambient_temperature)``, exponential cooling, heating sources) and
obstacles that move with a prescribed velocity and angular velocity (their face fractions and the
solid velocity on the faces they cover follow them: ``obstacle_faces(time)``). The face fractions
are the exact open lengths of the faces, computed in torch from ``obstacle_center`` and
``obstacle_angle``, so they and every step are differentiable with respect to an obstacle's pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ...errors import HybridsimError

__all__ = ["GridFluidModel", "GridFluidState", "GridFluidControl", "GridFluidBuilder", "GridFluidObstacle",
           "BOUNDARY_KINDS"]

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
    temperature_buoyancy: torch.Tensor | None = None
    """Upward acceleration per unit temperature excess [m/s^2/K], shape (1,); learnable. None: the
    model has no temperature field (density buoyancy only)."""
    ambient_temperature: torch.Tensor | None = None
    """Reference temperature T_ambient [K], shape (1,): no lift at it, cooling relaxes towards it."""
    cooling_rate: torch.Tensor | None = None
    """Exponential cooling rate towards the ambient temperature [1/s], shape (1,); learnable."""
    inflow_temperature: torch.Tensor | None = None
    """Temperature each source holds inside its shape [K], shape (S,); learnable."""
    inflow_heats: torch.Tensor | None = None
    """1 for a source that sets the temperature, 0 for one that only adds density, shape (S,)."""
    obstacles: tuple = ()
    """All obstacles (GridFluidObstacle), static and moving; the face fractions are those at t = 0."""
    obstacle_center: torch.Tensor | None = None
    """Centres of the obstacles at t = 0 [m], grid coordinates, shape (O, 2); learnable: the face
    fractions (and the solid velocities of moving obstacles) are differentiable in it. None: the
    ``obstacles``' own centres (constant)."""
    obstacle_angle: torch.Tensor | None = None
    """Rotation of each obstacle at t = 0 [rad], shape (O,); learnable (boxes; a disc ignores it)."""

    @property
    def inflow_count(self) -> int:
        return int(self.inflow_rate.shape[0])

    @property
    def has_temperature(self) -> bool:
        """Whether the model carries a temperature field."""
        return self.temperature_buoyancy is not None

    @property
    def has_moving_obstacles(self) -> bool:
        return any(obstacle.moving for obstacle in self.obstacles)

    @property
    def obstacle_pose_requires_grad(self) -> bool:
        """Whether an obstacle's centre or angle records gradients (the solver then recomputes the
        face fractions as differentiable tensors every step)."""
        return bool(self.obstacles) and any(t is not None and t.requires_grad
                                            for t in (self.obstacle_center, self.obstacle_angle))

    def obstacle_faces(self, time: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Face open fractions (area_x, area_y) with every obstacle where it is at ``time`` [s], and
        the solid velocity normal to each face (solid_x on x-faces, solid_y on y-faces) [m/s]: the
        rigid velocity of the obstacle covering the face at the midpoint of its covered part (the
        mean over that part, the field being linear); zero where no moving obstacle covers it.
        Exact lengths of the covered face parts, differentiable with respect to ``obstacle_center``
        and ``obstacle_angle``: piecewise smooth, with kinks where an obstacle's outline passes a
        face's end and, for a box side parallel to a face, a jump where it passes the face's line."""
        return _moving_face_geometry(self, float(time))

    def face_fractions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Open fractions (area_x, area_y) with the obstacles where ``obstacle_center`` and
        ``obstacle_angle`` put them at t = 0; differentiable in both (``obstacle_faces``)."""
        area_x, area_y, _, _ = _moving_face_geometry(self, 0.0)
        return area_x, area_y

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
        """A fluid at rest with zero density (and the ambient temperature, when the model has one)."""
        make = lambda shape: torch.zeros(shape, dtype=self.dtype, device=self.device, requires_grad=requires_grad)  # noqa: E731
        temperature = None
        if self.has_temperature:
            ambient = float(self.ambient_temperature.detach().reshape(-1)[0])
            temperature = torch.full(self.cell_count, ambient, dtype=self.dtype, device=self.device,
                                     requires_grad=requires_grad)
        return GridFluidState(make(self.face_shape_x), make(self.face_shape_y), make(self.cell_count),
                              temperature=temperature)

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
    temperature: torch.Tensor | None = None
    """Temperature at cell centres [K], shape (nx, ny); None for a model without temperature."""
    time: float = 0.0
    """Simulated time [s] (places moving obstacles)."""

    def _with(self, fn) -> GridFluidState:
        return GridFluidState(fn(self.velocity_x), fn(self.velocity_y), fn(self.density), self.step_count,
                              None if self.temperature is None else fn(self.temperature), self.time)

    def clone(self) -> GridFluidState:
        return self._with(torch.clone)

    def detach(self) -> GridFluidState:
        return self._with(torch.Tensor.detach)

    def empty_like(self) -> GridFluidState:
        return self._with(torch.empty_like)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(velocity_x, velocity_y, density); the temperature is ``temperature``."""
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
    temperature: float | None = None


def _motion(velocity, index: int) -> tuple[float, float]:
    velocity = tuple(float(c) for c in velocity)
    if len(velocity) != 2 or not all(math.isfinite(c) for c in velocity):
        raise HybridsimError(f"obstacle velocity must be 2 finite numbers, got {velocity}", field=f"obstacles[{index}].velocity")
    return velocity


@dataclass(frozen=True)
class GridFluidObstacle:
    """A solid disc or box; it may move: centre(t) = center + velocity t, angle(t) = angle +
    angular_velocity t (counter-clockwise, grid axes)."""

    center: tuple[float, float]
    """Centre at t = 0 [m], grid coordinates."""
    size: tuple[float, float]
    """Disc radius (in both) or box half extents [m]."""
    is_box: bool
    velocity: tuple[float, float] = (0.0, 0.0)
    """Prescribed velocity of the centre [m/s]."""
    angular_velocity: float = 0.0
    """Prescribed angular velocity [rad/s]."""
    angle: float = 0.0
    """Rotation of a box at t = 0 [rad]."""

    @property
    def moving(self) -> bool:
        return any(c != 0.0 for c in self.velocity) or self.angular_velocity != 0.0

    def at(self, time: float) -> tuple[tuple[float, float], float]:
        """Centre [m] and angle [rad] at ``time``."""
        return ((self.center[0] + self.velocity[0] * time, self.center[1] + self.velocity[1] * time),
                self.angle + self.angular_velocity * time)


_Obstacle = GridFluidObstacle


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
    temperature_buoyancy: float | None = None
    """Set (with ``ambient_temperature``, ``cooling_rate``) to give the model a temperature field."""
    ambient_temperature: float = 0.0
    cooling_rate: float = 0.0

    def add_inflow_disc(self, center: tuple[float, float], radius: float, rate: float,
                        temperature: float | None = None) -> int:
        """Add a disc source of ``rate`` density per second [1/s]; returns its index. With
        ``temperature`` (a model with temperature) the source also holds that temperature inside it."""
        if radius <= 0:
            raise HybridsimError(f"inflow radius must be positive, got {radius}",
                                 field=f"inflows[{len(self.inflows)}].radius")
        self.inflows.append(_Inflow(tuple(map(float, center)), (float(radius), float(radius)), float(rate), False,
                                    None if temperature is None else float(temperature)))
        return len(self.inflows) - 1

    def add_inflow_box(self, center: tuple[float, float], half_size: tuple[float, float], rate: float,
                       temperature: float | None = None) -> int:
        """Add an axis-aligned box source with half extents ``half_size`` [m]; returns its index."""
        if min(half_size) <= 0:
            raise HybridsimError(f"inflow half_size must be positive, got {half_size}",
                                 field=f"inflows[{len(self.inflows)}].half_size")
        self.inflows.append(_Inflow(tuple(map(float, center)), tuple(map(float, half_size)), float(rate), True,
                                    None if temperature is None else float(temperature)))
        return len(self.inflows) - 1

    def add_obstacle_disc(self, center: tuple[float, float], radius: float, *,
                          velocity: tuple[float, float] = (0.0, 0.0), angular_velocity: float = 0.0) -> int:
        """Add a solid disc; faces it cuts get their open fraction (exact chord lengths). A non-zero
        ``velocity`` [m/s] or ``angular_velocity`` [rad/s] makes it move (prescribed)."""
        if radius <= 0:
            raise HybridsimError(f"obstacle radius must be positive, got {radius}",
                                 field=f"obstacles[{len(self.obstacles)}].radius")
        self.obstacles.append(_Obstacle(tuple(map(float, center)), (float(radius), float(radius)), False,
                                        _motion(velocity, len(self.obstacles)), float(angular_velocity)))
        return len(self.obstacles) - 1

    def add_obstacle_box(self, center: tuple[float, float], half_size: tuple[float, float], *,
                         velocity: tuple[float, float] = (0.0, 0.0), angular_velocity: float = 0.0,
                         angle: float = 0.0) -> int:
        """Add a solid box (rotated by ``angle`` [rad]; axis-aligned by default), static unless it
        has a ``velocity`` or ``angular_velocity``."""
        if min(half_size) <= 0:
            raise HybridsimError(f"obstacle half_size must be positive, got {half_size}",
                                 field=f"obstacles[{len(self.obstacles)}].half_size")
        self.obstacles.append(_Obstacle(tuple(map(float, center)), tuple(map(float, half_size)), True,
                                        _motion(velocity, len(self.obstacles)), float(angular_velocity), float(angle)))
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
        has_temperature = self.temperature_buoyancy is not None
        if has_temperature:
            for name in ("temperature_buoyancy", "ambient_temperature", "cooling_rate"):
                if not math.isfinite(getattr(self, name)):
                    raise HybridsimError(f"{name} must be finite", field=name)
            if self.cooling_rate < 0:
                raise HybridsimError(f"cooling_rate must be >= 0, got {self.cooling_rate}", field="cooling_rate")
        for index, source in enumerate(self.inflows):
            if source.temperature is not None and not has_temperature:
                raise HybridsimError("an inflow with a temperature needs a model with temperature (set "
                                     "temperature_buoyancy)", field=f"inflows[{index}].temperature")

        model = GridFluidModel(
            cell_count=(nx, ny), cell_size=float(self.cell_size), boundary=boundary, wall_slip=self.wall_slip,
            face_fraction_x=torch.ones(1, dtype=dtype, device=device),
            face_fraction_y=torch.ones(1, dtype=dtype, device=device), gravity_direction=(gx / norm, gy / norm),
            buoyancy=_scalar(self.buoyancy, dtype, device), vorticity_strength=_scalar(self.vorticity_strength, dtype, device),
            viscosity=_scalar(self.viscosity, dtype, device),
            inflow_center=torch.tensor([s.center for s in self.inflows], dtype=dtype, device=device).reshape(-1, 2),
            inflow_size=torch.tensor([s.size for s in self.inflows], dtype=dtype, device=device).reshape(-1, 2),
            inflow_rate=torch.tensor([s.rate for s in self.inflows], dtype=dtype, device=device).reshape(-1),
            inflow_is_box=torch.tensor([float(s.is_box) for s in self.inflows], dtype=dtype, device=device).reshape(-1),
            obstacles=tuple(self.obstacles),
        )
        if has_temperature:
            model.temperature_buoyancy = _scalar(self.temperature_buoyancy, dtype, device)
            model.ambient_temperature = _scalar(self.ambient_temperature, dtype, device)
            model.cooling_rate = _scalar(self.cooling_rate, dtype, device)
            model.inflow_temperature = torch.tensor(
                [self.ambient_temperature if s.temperature is None else s.temperature for s in self.inflows],
                dtype=dtype, device=device).reshape(-1)
            model.inflow_heats = torch.tensor([float(s.temperature is not None) for s in self.inflows], dtype=dtype,
                                              device=device).reshape(-1)
        if self.obstacles:
            model.obstacle_center = torch.tensor([o.center for o in self.obstacles], dtype=dtype, device=device)
            model.obstacle_angle = torch.tensor([o.angle for o in self.obstacles], dtype=dtype, device=device)
        with torch.no_grad():
            model.face_fraction_x, model.face_fraction_y = model.face_fractions()
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


def _as_float64(value, shape=None) -> torch.Tensor:
    """A float64 CPU tensor of ``value`` (a tensor keeps its graph: the geometry is differentiable)."""
    if isinstance(value, torch.Tensor):
        tensor = value.to(dtype=torch.float64, device="cpu")
    elif isinstance(value, (tuple, list)) and any(isinstance(c, torch.Tensor) for c in value):
        tensor = torch.stack([torch.as_tensor(c).to(dtype=torch.float64, device="cpu").reshape(()) for c in value])
    else:
        tensor = torch.tensor(value, dtype=torch.float64)
    return tensor if shape is None else tensor.reshape(shape)


def _obstacle_poses(model: GridFluidModel, time: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(centre (2,), angle ()) of every obstacle at ``time`` as float64 tensors: ``obstacle_center``
    / ``obstacle_angle`` (differentiable) plus the prescribed motion."""
    poses = []
    for index, obstacle in enumerate(model.obstacles):
        center = model.obstacle_center[index] if model.obstacle_center is not None else obstacle.center
        center = _as_float64(center, (2,))
        angle = _as_float64(model.obstacle_angle[index] if model.obstacle_angle is not None else obstacle.angle, ())
        if time != 0.0:
            center = center + _as_float64(obstacle.velocity, (2,)) * time
            angle = angle + obstacle.angular_velocity * time
        poses.append((center, angle))
    return poses


def _face_lines(model: GridFluidModel):
    """(across, start, along) of the x-faces (vertical segments x = i dx, y in [j dx, (j + 1) dx];
    along = 1) and of the y-faces (horizontal segments; along = 0), float64."""
    nx, ny = model.cell_count
    dx = model.cell_size
    f64 = dict(dtype=torch.float64)
    xi, yj = torch.meshgrid(torch.arange(model.face_shape_x[0], **f64), torch.arange(ny, **f64), indexing="ij")
    xi2, yj2 = torch.meshgrid(torch.arange(nx, **f64), torch.arange(model.face_shape_y[1], **f64), indexing="ij")
    return (xi * dx, yj * dx, 1), (yj2 * dx, xi2 * dx, 0)


def _open_fractions(model: GridFluidModel, blocked_x, blocked_y, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    dx = model.cell_size
    open_x = (1.0 - blocked_x / dx).clamp(0.0, 1.0)
    open_y = (1.0 - blocked_y / dx).clamp(0.0, 1.0)
    # faces closed to a tiny sliver are treated as solid (keeps the pressure system well conditioned)
    open_x = torch.where(open_x < 1e-3, torch.zeros_like(open_x), open_x)
    open_y = torch.where(open_y < 1e-3, torch.zeros_like(open_y), open_y)
    x_lo, x_hi, y_lo, y_hi = model.boundary
    keep_x = torch.ones(open_x.shape[0], dtype=open_x.dtype)
    keep_y = torch.ones(open_y.shape[1], dtype=open_y.dtype)
    if x_lo == "wall":
        keep_x[0] = 0.0
    if x_hi == "wall":
        keep_x[-1] = 0.0
    if y_lo == "wall":
        keep_y[0] = 0.0
    if y_hi == "wall":
        keep_y[-1] = 0.0
    open_x, open_y = open_x * keep_x[:, None], open_y * keep_y[None, :]
    return open_x.to(dtype=dtype, device=device), open_y.to(dtype=dtype, device=device)


def _covered_interval_at(center: torch.Tensor, angle: torch.Tensor, size, is_box: bool, across: torch.Tensor,
                         start: torch.Tensor, dx: float, axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The part of the face segments {across} x [start, start + dx] (segments along ``axis``: 1 for
    x-faces, running along y; 0 for y-faces) inside a disc or (rotated) box with centre ``center``
    (2,) and rotation ``angle`` () (float64 tensors): (length, and the grid coordinates (x, y) of
    its midpoint). Exact, and differentiable in the centre and angle wherever the covered interval's
    ends are not at a face's end (a kink) and, for a box side parallel to the face, not on the
    face's line (a jump: the face is covered or not, no gradient across it)."""
    cx, cy = center[0], center[1]
    if axis == 1:  # points (across, start + s)
        px, py, ex, ey = across, start, 0.0, 1.0
    else:  # points (start + s, across)
        px, py, ex, ey = start, across, 1.0, 0.0
    rx, ry = px - cx, py - cy
    lo = torch.zeros_like(start)
    hi = torch.full_like(start, dx)
    if is_box:
        cos, sin = torch.cos(angle), torch.sin(angle)
        for (ax, ay), half in (((cos, sin), float(size[0])), ((-sin, cos), float(size[1]))):
            offset = ax * rx + ay * ry  # along the box axis, at s = 0
            rate = ax * ex + ay * ey  # d offset / ds
            if abs(float(rate.detach())) < 1e-12:  # the segment runs parallel to this pair of sides
                hi = torch.where(offset.abs() >= half, lo, hi)
            else:
                a, b = (-half - offset) / rate, (half - offset) / rate
                lo, hi = torch.maximum(lo, torch.minimum(a, b)), torch.minimum(hi, torch.maximum(a, b))
    else:
        centre_s = -(rx * ex + ry * ey)
        perpendicular_sq = (rx * ey - ry * ex) ** 2
        radius_sq = float(size[0]) ** 2
        cuts = perpendicular_sq < radius_sq  # (the square root's slope is infinite at tangency: kept off it)
        half = torch.where(cuts, (radius_sq - torch.where(cuts, perpendicular_sq, torch.zeros_like(perpendicular_sq)))
                           .sqrt(), torch.zeros_like(perpendicular_sq))
        lo, hi = torch.maximum(lo, centre_s - half), torch.minimum(hi, centre_s + half)
    length = (hi - lo).clamp(min=0.0)
    middle = 0.5 * (lo + hi)
    return length, px + ex * middle, py + ey * middle


def _covered_interval(obstacle: GridFluidObstacle, time: float, across: torch.Tensor, start: torch.Tensor, dx: float,
                      axis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_covered_interval_at`` for a GridFluidObstacle where its prescribed motion puts it at ``time``."""
    center, angle = obstacle.at(time)
    return _covered_interval_at(_as_float64(center, (2,)), _as_float64(angle, ()), obstacle.size, obstacle.is_box,
                                across, start, dx, axis)


def _obstacle_cuts(model: GridFluidModel, faces, dx: float, time: float):
    """For each of the model's obstacles at ``time`` and each face axis of ``faces``
    (``_face_lines``): (axis, covered length, the solid's velocity normal to those faces)."""
    for obstacle, (center, angle) in zip(model.obstacles, _obstacle_poses(model, time)):
        (vx, vy), omega = obstacle.velocity, obstacle.angular_velocity
        for axis, (across, start, along) in enumerate(faces):
            length, mx, my = _covered_interval_at(center, angle, obstacle.size, obstacle.is_box, across, start, dx,
                                                  along)
            if obstacle.moving:
                # x-faces carry the x-velocity of the solid, y-faces its y-velocity: v + omega x (p - c)
                speed = vx - omega * (my - center[1]) if axis == 0 else vy + omega * (mx - center[0])
            else:
                speed = torch.zeros_like(length)
            yield axis, length, speed


def _moving_face_geometry(model: GridFluidModel, time: float):
    """(area_x, area_y, solid_x, solid_y) with the obstacles at ``time``: differentiable in
    ``model.obstacle_center`` and ``model.obstacle_angle`` (see ``_covered_interval_at``)."""
    dx = model.cell_size
    faces = _face_lines(model)
    blocked = [torch.zeros_like(start) for _, start, _ in faces]
    solid = [torch.zeros_like(start) for _, start, _ in faces]
    for axis, length, speed in _obstacle_cuts(model, faces, dx, time):
        closer = length > blocked[axis]
        blocked[axis] = torch.where(closer, length, blocked[axis])
        solid[axis] = torch.where(closer, speed, solid[axis])
    dtype, device = model.dtype, model.device
    area_x, area_y = _open_fractions(model, blocked[0], blocked[1], dtype, device)
    # the domain's walls are at rest
    solid_x = torch.where(blocked[0] > 0, solid[0], torch.zeros_like(solid[0]))
    solid_y = torch.where(blocked[1] > 0, solid[1], torch.zeros_like(solid[1]))
    x_lo, x_hi, y_lo, y_hi = model.boundary
    keep_x = torch.ones(solid_x.shape[0], dtype=solid_x.dtype)
    keep_y = torch.ones(solid_y.shape[1], dtype=solid_y.dtype)
    if x_lo == "wall":
        keep_x[0] = 0.0
    if x_hi == "wall":
        keep_x[-1] = 0.0
    if y_lo == "wall":
        keep_y[0] = 0.0
    if y_hi == "wall":
        keep_y[-1] = 0.0
    solid_x, solid_y = solid_x * keep_x[:, None], solid_y * keep_y[None, :]
    return area_x, area_y, solid_x.to(dtype=dtype, device=device), solid_y.to(dtype=dtype, device=device)
