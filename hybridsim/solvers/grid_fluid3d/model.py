"""Model, State and Control of the 3D grid fluid (smoke), and the builder that makes a Model.

Grid index (i, j, k) is world (x, y, z), z up; gravity defaults to -z. Cell (i, j, k) is centred
at ``origin + (i + 1/2, j + 1/2, k + 1/2) * cell_size``. Velocities live on a staggered MAC grid:
``velocity_x`` (nx + 1, ny, nz) on x-faces, ``velocity_y`` (nx, ny + 1, nz), ``velocity_z``
(nx, ny, nz + 1); a periodic axis has n faces instead of n + 1 (no duplicated unknowns).

Positions (inflow and obstacle centres) are world coordinates [m]. Obstacles are spheres or
axis-aligned boxes, static or translating with a prescribed constant velocity (centre(t) =
center + velocity t; no rotation); the open fraction of every face is computed in torch from
their centres (``face_fractions``, ``obstacle_faces(time)``): the exact area of the face square
outside the obstacle, so the projection is differentiable with respect to an obstacle's position
and velocity (for a box only across its sides: the face it cuts along its normal switches
discretely). A moving obstacle also imposes its velocity on the faces it covers: the solid
velocity u_s normal to each face (that of the obstacle covering most of it), so the projection
makes the composite flux A u + (1 - A) u_s divergence-free (as in 2D). There is no angular
velocity in 3D: a sphere spinning about its centre covers the same faces and has no normal
velocity on them, so with free-slip obstacles (the only kind: the cut faces carry normal flux
only) it would change nothing; an axis-aligned box would stop being axis-aligned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from ...errors import HybridsimError
from ..grid_fluid.model import BOUNDARY_KINDS

__all__ = ["GridFluid3DModel", "GridFluid3DState", "GridFluid3DControl", "GridFluid3DBuilder", "SIDES_3D"]

SIDES_3D = ("x_lo", "x_hi", "y_lo", "y_hi", "z_lo", "z_hi")


@dataclass
class GridFluid3DModel:
    """Constants of one 3D smoke domain (tensors may carry gradients where marked learnable)."""

    cell_count: tuple[int, int, int]
    """Cells along x, y and z, (nx, ny, nz)."""
    cell_size: float
    """Edge length dx of a cubic cell [m]."""
    origin: tuple[float, float, float]
    """World position of the grid's low corner [m]."""
    boundary: tuple[str, str, str, str, str, str]
    """Kind of each side (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi): "wall", "open" or "periodic"."""
    wall_slip: str
    """Tangential velocity at walls: "free_slip" or "no_slip"."""
    face_fraction_x: torch.Tensor
    """Open fraction of each x-face [1], shape (Fx, ny, nz); 0 at walls and inside obstacles (no grad)."""
    face_fraction_y: torch.Tensor
    """Open fraction of each y-face [1], shape (nx, Fy, nz)."""
    face_fraction_z: torch.Tensor
    """Open fraction of each z-face [1], shape (nx, ny, Fz)."""
    gravity_direction: tuple[float, float, float]
    """Unit vector of gravity; buoyancy acts against it."""
    buoyancy: torch.Tensor
    """Upward acceleration per unit density [m/s^2], shape (1,); learnable."""
    vorticity_strength: torch.Tensor
    """Vorticity confinement coefficient epsilon [1], shape (1,); learnable."""
    viscosity: torch.Tensor
    """Kinematic viscosity [m^2/s], shape (1,), solved implicitly; learnable."""
    inflow_center: torch.Tensor
    """World centres of the inflow sources [m], shape (S, 3); learnable."""
    inflow_size: torch.Tensor
    """Sphere radius (in every column) or box half extents of each source [m], shape (S, 3)."""
    inflow_rate: torch.Tensor
    """Density added per second inside each source [1/s], shape (S,); learnable."""
    inflow_is_box: torch.Tensor
    """1 for a box source, 0 for a sphere, shape (S,)."""
    obstacle_center: torch.Tensor
    """World centres of the static obstacles [m], shape (O, 3); learnable (through the face fractions)."""
    obstacle_size: torch.Tensor
    """Sphere radius (in every column) or box half extents of each obstacle [m], shape (O, 3)."""
    obstacle_is_box: torch.Tensor
    """1 for a box obstacle, 0 for a sphere, shape (O,)."""
    obstacle_velocity: torch.Tensor | None = None
    """Prescribed constant velocity of each obstacle's centre [m/s], shape (O, 3) (world frame);
    learnable. None or zeros: static obstacles. The centre at time t is ``obstacle_center +
    obstacle_velocity * t``."""
    temperature_buoyancy: torch.Tensor | None = None
    """Upward acceleration per unit temperature excess [m/s^2/K], shape (1,); learnable. None: the
    model has no temperature field."""
    ambient_temperature: torch.Tensor | None = None
    """Reference temperature T_ambient [K], shape (1,): no lift at it, cooling relaxes towards it."""
    cooling_rate: torch.Tensor | None = None
    """Exponential cooling rate towards the ambient temperature [1/s], shape (1,); learnable."""
    inflow_temperature: torch.Tensor | None = None
    """Temperature each source holds inside its shape [K], shape (S,); learnable."""
    inflow_heats: torch.Tensor | None = None
    """1 for a source that sets the temperature, 0 for one that only adds density, shape (S,)."""

    @property
    def inflow_count(self) -> int:
        return int(self.inflow_rate.shape[0])

    @property
    def obstacle_count(self) -> int:
        return int(self.obstacle_center.shape[0])

    @property
    def has_moving_obstacles(self) -> bool:
        """Whether an obstacle moves (a non-zero velocity, or one that records gradients)."""
        velocity = self.obstacle_velocity
        return (self.obstacle_count > 0 and velocity is not None
                and (velocity.requires_grad or bool((velocity.detach() != 0).any())))

    @property
    def obstacle_pose_requires_grad(self) -> bool:
        """Whether an obstacle's centre or velocity records gradients (the solver then recomputes
        the face fractions and solid face velocities as differentiable tensors every step)."""
        return self.obstacle_count > 0 and any(t is not None and t.requires_grad
                                               for t in (self.obstacle_center, self.obstacle_velocity))

    def obstacle_centers(self, time: float = 0.0) -> torch.Tensor:
        """World centres of the obstacles at ``time`` [s], shape (O, 3) (differentiable)."""
        if self.obstacle_velocity is None or float(time) == 0.0:
            return self.obstacle_center
        return self.obstacle_center + self.obstacle_velocity.to(self.obstacle_center.dtype) * float(time)

    def obstacle_faces(self, time: float) -> tuple[torch.Tensor, ...]:
        """Face open fractions (area_x, area_y, area_z) with every obstacle where it is at ``time``
        [s], and the solid velocity normal to each face (solid_x, solid_y, solid_z) [m/s]: the
        velocity of the obstacle covering most of the face (0 where none covers it).
        Differentiable with respect to ``obstacle_center`` and ``obstacle_velocity``."""
        return _face_fractions(self, self.obstacle_centers(time), with_solid=True)

    @property
    def has_temperature(self) -> bool:
        """Whether the model carries a temperature field (Boussinesq lift, cooling, heating sources)."""
        return self.temperature_buoyancy is not None

    @property
    def dtype(self) -> torch.dtype:
        return self.face_fraction_x.dtype

    @property
    def device(self) -> torch.device:
        return self.face_fraction_x.device

    @property
    def periodic(self) -> tuple[bool, bool, bool]:
        """Whether the x, y and z axes wrap around."""
        return tuple(self.boundary[2 * axis] == "periodic" for axis in range(3))

    def face_shape(self, axis: int) -> tuple[int, int, int]:
        """Shape of the face array normal to ``axis`` (0 x, 1 y, 2 z)."""
        shape = list(self.cell_count)
        shape[axis] += 0 if self.periodic[axis] else 1
        return tuple(shape)

    @property
    def face_shapes(self) -> tuple[tuple[int, int, int], ...]:
        return tuple(self.face_shape(axis) for axis in range(3))

    @property
    def boundary_flags(self) -> int:
        """The boundary packed as kernel bits (see kernels/warp/grid_fluid3d.py)."""
        flags = sum(int(p) << axis for axis, p in enumerate(self.periodic))
        for index, side in enumerate(self.boundary):
            if side == "wall" and self.wall_slip == "no_slip":
                flags |= 1 << (3 + index)
        return flags

    @property
    def pressure_is_singular(self) -> bool:
        """True when no side is open: pressure is defined up to a constant (mean removed)."""
        return "open" not in self.boundary

    def state(self, requires_grad: bool = False) -> GridFluid3DState:
        """A fluid at rest with zero density (and the ambient temperature, when the model has one)."""
        make = lambda shape: torch.zeros(shape, dtype=self.dtype, device=self.device, requires_grad=requires_grad)  # noqa: E731
        temperature = None
        if self.has_temperature:
            ambient = float(self.ambient_temperature.detach().reshape(-1)[0])
            temperature = torch.full(self.cell_count, ambient, dtype=self.dtype, device=self.device,
                                     requires_grad=requires_grad)
        return GridFluid3DState(*(make(shape) for shape in self.face_shapes), make(self.cell_count),
                                temperature=temperature)

    def cell_centers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World cell-centre coordinates (x, y, z) [m], each of shape (nx, ny, nz)."""
        axes = [self.origin[a] + (torch.arange(n, dtype=self.dtype, device=self.device) + 0.5) * self.cell_size
                for a, n in enumerate(self.cell_count)]
        return torch.meshgrid(*axes, indexing="ij")

    def face_fractions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Open fraction of every face (x, y, z), computed from the obstacles' centres at time 0;
        differentiable with respect to ``obstacle_center``."""
        return _face_fractions(self, self.obstacle_center)


@dataclass
class GridFluid3DState:
    """Time-varying fluid state; ``step()`` reads one State and writes another."""

    velocity_x: torch.Tensor
    """x-velocity on x-faces [m/s], shape (Fx, ny, nz) (Fx = nx + 1, or nx when x is periodic)."""
    velocity_y: torch.Tensor
    """y-velocity on y-faces [m/s], shape (nx, Fy, nz)."""
    velocity_z: torch.Tensor
    """z-velocity on z-faces [m/s], shape (nx, ny, Fz)."""
    density: torch.Tensor
    """Smoke density at cell centres [1], shape (nx, ny, nz)."""
    step_count: int = 0
    """Steps taken since the initial state (names the step in errors)."""
    time: float = 0.0
    """Simulated time [s]."""
    temperature: torch.Tensor | None = None
    """Temperature at cell centres [K], shape (nx, ny, nz); None for a model without temperature."""

    def _with(self, fn) -> GridFluid3DState:
        return GridFluid3DState(*(fn(t) for t in self.tensors()), self.step_count, self.time,
                                None if self.temperature is None else fn(self.temperature))

    def clone(self) -> GridFluid3DState:
        return self._with(torch.clone)

    def detach(self) -> GridFluid3DState:
        return self._with(torch.Tensor.detach)

    def empty_like(self) -> GridFluid3DState:
        return self._with(torch.empty_like)

    @property
    def velocities(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.velocity_x, self.velocity_y, self.velocity_z

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(velocity_x, velocity_y, velocity_z, density); the temperature is ``temperature``."""
        return self.velocity_x, self.velocity_y, self.velocity_z, self.density


@dataclass
class GridFluid3DControl:
    """Inputs applied during a step; None = none."""

    acceleration_x: torch.Tensor | None = None
    """Extra acceleration on x-faces [m/s^2], shape (Fx, ny, nz)."""
    acceleration_y: torch.Tensor | None = None
    """Extra acceleration on y-faces [m/s^2], shape (nx, Fy, nz)."""
    acceleration_z: torch.Tensor | None = None
    """Extra acceleration on z-faces [m/s^2], shape (nx, ny, Fz)."""
    inflow_rate: torch.Tensor | None = None
    """Replaces the model's inflow rates for this step [1/s], shape (S,)."""

    def replace(self, **changes) -> GridFluid3DControl:
        return replace(self, **changes)


@dataclass
class _Shape:
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    is_box: bool
    rate: float = 0.0
    temperature: float | None = None
    velocity: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _vector(value, name: str, field_name: str) -> tuple[float, float, float]:
    try:
        vector = tuple(float(c) for c in value)
    except TypeError:
        vector = ()
    if len(vector) != 3 or not all(math.isfinite(c) for c in vector):
        raise HybridsimError(f"{name} must be 3 finite numbers, got {value!r}", field=field_name)
    return vector


@dataclass
class GridFluid3DBuilder:
    """Collects a 3D smoke domain in plain Python values; ``finalize()`` makes a GridFluid3DModel.

    ``boundary`` is one kind for every side ("wall", "open", "periodic") or six kinds
    (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi); periodic sides come in pairs. Centres are world
    coordinates [m]; ``origin`` is the world position of the grid's low corner.
    """

    cell_count: tuple[int, int, int]
    cell_size: float = 1.0
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    boundary: str | tuple[str, ...] = "wall"
    wall_slip: str = "free_slip"
    gravity_direction: tuple[float, float, float] = (0.0, 0.0, -1.0)
    buoyancy: float = 0.0
    vorticity_strength: float = 0.0
    viscosity: float = 0.0
    inflows: list = field(default_factory=list)
    obstacles: list = field(default_factory=list)
    temperature_buoyancy: float | None = None
    """Set (with ``ambient_temperature``, ``cooling_rate``) to give the model a temperature field."""
    ambient_temperature: float = 0.0
    cooling_rate: float = 0.0

    def _add(self, shapes: list, kind: str, center, size, is_box: bool, rate: float = 0.0,
             temperature: float | None = None, velocity=(0.0, 0.0, 0.0)) -> int:
        index = f"{kind}[{len(shapes)}]"
        center = _vector(center, "center", f"{index}.center")
        size = _vector(size, "half_size" if is_box else "radius", f"{index}.{'half_size' if is_box else 'radius'}")
        if min(size) <= 0:
            raise HybridsimError(f"{kind[:-1]} {'half_size' if is_box else 'radius'} must be positive, got "
                                 f"{size if is_box else size[0]}", field=f"{index}.{'half_size' if is_box else 'radius'}")
        velocity = _vector(velocity, "velocity", f"{index}.velocity")
        shapes.append(_Shape(center, size, is_box, float(rate), None if temperature is None else float(temperature),
                             velocity))
        return len(shapes) - 1

    def add_inflow_sphere(self, center, radius: float, rate: float, temperature: float | None = None) -> int:
        """Add a spherical source of ``rate`` density per second [1/s]; returns its index. With
        ``temperature`` (a model with temperature) the source also holds that temperature inside it."""
        return self._add(self.inflows, "inflows", center, (radius,) * 3, False, rate, temperature)

    def add_inflow_box(self, center, half_size, rate: float, temperature: float | None = None) -> int:
        """Add an axis-aligned box source with half extents ``half_size`` [m]; returns its index."""
        return self._add(self.inflows, "inflows", center, half_size, True, rate, temperature)

    def add_obstacle_sphere(self, center, radius: float, *, velocity=(0.0, 0.0, 0.0)) -> int:
        """Add a solid sphere; faces it cuts get their exact open area fraction. ``velocity`` [m/s]
        (world frame) makes it translate (prescribed, constant)."""
        return self._add(self.obstacles, "obstacles", center, (radius,) * 3, False, velocity=velocity)

    def add_obstacle_box(self, center, half_size, *, velocity=(0.0, 0.0, 0.0)) -> int:
        """Add an axis-aligned solid box; ``velocity`` [m/s] makes it translate (no rotation)."""
        return self._add(self.obstacles, "obstacles", center, half_size, True, velocity=velocity)

    def finalize(self, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> GridFluid3DModel:
        cells = tuple(int(n) for n in self.cell_count)
        if len(cells) != 3:
            raise HybridsimError(f"cell_count needs 3 entries (nx, ny, nz), got {self.cell_count}", field="cell_count")
        if min(cells) < 3:
            raise HybridsimError(f"the grid needs at least 3 cells per axis, got {self.cell_count}", field="cell_count")
        if not self.cell_size > 0:
            raise HybridsimError(f"cell_size must be positive, got {self.cell_size}", field="cell_size")
        if self.wall_slip not in ("free_slip", "no_slip"):
            raise HybridsimError(f"wall_slip must be 'free_slip' or 'no_slip', got {self.wall_slip!r}",
                                 field="wall_slip")
        gravity = _vector(self.gravity_direction, "gravity_direction", "gravity_direction")
        norm = math.sqrt(sum(c * c for c in gravity))
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
        to = dict(dtype=dtype, device=device)
        tensor = lambda values, shape: torch.tensor(values, **to).reshape(shape)  # noqa: E731
        model = GridFluid3DModel(
            cell_count=cells, cell_size=float(self.cell_size), origin=_vector(self.origin, "origin", "origin"),
            boundary=_parse_boundary(self.boundary), wall_slip=self.wall_slip,
            face_fraction_x=torch.ones(1, **to), face_fraction_y=torch.ones(1, **to), face_fraction_z=torch.ones(1, **to),
            gravity_direction=tuple(c / norm for c in gravity),
            buoyancy=tensor([float(self.buoyancy)], (1,)), vorticity_strength=tensor([float(self.vorticity_strength)], (1,)),
            viscosity=tensor([float(self.viscosity)], (1,)),
            inflow_center=tensor([s.center for s in self.inflows], (-1, 3)),
            inflow_size=tensor([s.size for s in self.inflows], (-1, 3)),
            inflow_rate=tensor([s.rate for s in self.inflows], (-1,)),
            inflow_is_box=tensor([float(s.is_box) for s in self.inflows], (-1,)),
            obstacle_center=tensor([s.center for s in self.obstacles], (-1, 3)),
            obstacle_size=tensor([s.size for s in self.obstacles], (-1, 3)),
            obstacle_is_box=tensor([float(s.is_box) for s in self.obstacles], (-1,)),
            obstacle_velocity=tensor([s.velocity for s in self.obstacles], (-1, 3)),
        )
        if has_temperature:
            model.temperature_buoyancy = tensor([float(self.temperature_buoyancy)], (1,))
            model.ambient_temperature = tensor([float(self.ambient_temperature)], (1,))
            model.cooling_rate = tensor([float(self.cooling_rate)], (1,))
            model.inflow_temperature = tensor([self.ambient_temperature if s.temperature is None else s.temperature
                                               for s in self.inflows], (-1,))
            model.inflow_heats = tensor([float(s.temperature is not None) for s in self.inflows], (-1,))
        with torch.no_grad():
            model.face_fraction_x, model.face_fraction_y, model.face_fraction_z = model.face_fractions()
        return model


def _parse_boundary(boundary) -> tuple[str, ...]:
    sides = (boundary,) * 6 if isinstance(boundary, str) else tuple(boundary)
    if len(sides) != 6:
        raise HybridsimError(f"boundary needs one kind or six (x_lo, x_hi, y_lo, y_hi, z_lo, z_hi), got {boundary!r}",
                             field="boundary")
    for name, kind in zip(SIDES_3D, sides):
        if kind not in BOUNDARY_KINDS:
            raise HybridsimError(f"unknown boundary kind {kind!r}; expected one of {BOUNDARY_KINDS}",
                                 field=f"boundary.{name}")
    for axis, name in enumerate("xyz"):
        lo, hi = sides[2 * axis: 2 * axis + 2]
        if (lo == "periodic") != (hi == "periodic"):
            raise HybridsimError(f"periodic boundaries come in pairs: {name}_lo is {lo!r} but {name}_hi is {hi!r}",
                                 field=f"boundary.{name}")
    return sides


# ------------------------------------------------------------------ face fractions (torch, differentiable)
class _DiscPrimitive(torch.autograd.Function):
    """H(s, r) = integral from 0 to s of sqrt(r^2 - t^2) dt for |s| <= r, with the clean partials
    dH/ds = sqrt(r^2 - s^2) and dH/dr = r asin(s / r) (autograd of the formula is 0 * inf at s = r)."""

    @staticmethod
    def forward(ctx, s, r):
        t = (s / r).clamp(-1.0, 1.0)
        angle = torch.asin(t)
        half_chord = r * (1.0 - t * t).clamp(min=0.0).sqrt()
        ctx.save_for_backward(r, angle, half_chord)
        return 0.5 * (r * t * half_chord + r * r * angle)

    @staticmethod
    def backward(ctx, grad):
        r, angle, half_chord = ctx.saved_tensors
        return grad * half_chord, grad * r * angle


def _disc_corner(r: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """C(x, y) = area of {(s, t): -r <= s <= x, t <= y, ... } measured as the integral over s in [-r, x]
    of clamp(y, -h(s), h(s)), h the disc's half chord; the rectangle area is its signed corner sum.
    The break points (the disc's edge, the chord where h = |y|) are detached: the integrand is
    continuous there, so the area is stationary in them."""
    primitive = _DiscPrimitive.apply
    r_fixed = r.detach()
    xc = torch.minimum(torch.maximum(x, -r_fixed), r_fixed)
    w = (r_fixed * r_fixed - y.detach() * y.detach()).clamp(min=0.0).sqrt()
    xw = torch.minimum(torch.maximum(xc, -w), w)
    sign = torch.sign(y.detach())
    return y * (xw + w) + sign * (primitive(xc, r) - primitive(-r_fixed, r) - primitive(xw, r) + primitive(-w, r))


def _disc_rectangle_area(r, x0, x1, y0, y1) -> torch.Tensor:
    """Exact area of the disc of radius r at the origin inside the rectangle [x0, x1] x [y0, y1]."""
    return _disc_corner(r, x1, y1) - _disc_corner(r, x0, y1) - _disc_corner(r, x1, y0) + _disc_corner(r, x0, y0)


def _face_fractions(model: GridFluid3DModel, centers: torch.Tensor, with_solid: bool = False) -> tuple[torch.Tensor, ...]:
    """Open fractions (x, y, z) with the obstacles at ``centers`` (O, 3); ``with_solid`` appends
    the solid velocity normal to each face (that of the obstacle covering most of it)."""
    dx = model.cell_size
    # in float64 whatever the model's dtype (cast at the end): in float32 the disc areas' cancelling
    # primitives (r^2 / dx^2 larger than the face) left ~1e-6 errors in the fractions, a divergence
    # that a float64 check against the same obstacles sees
    dtype, device = torch.float64, centers.device
    centers = centers.to(dtype)
    origin = torch.tensor(model.origin, dtype=dtype, device=device)
    velocity = model.obstacle_velocity
    if velocity is None:
        velocity = torch.zeros((model.obstacle_count, 3), dtype=dtype, device=device)
    fractions, solids = [], []
    for axis in range(3):
        shape = model.face_shape(axis)
        # per tensor dimension: the face plane coordinate (axis) or the cell span [lo, lo + dx]
        coords = []
        for dim in range(3):
            view = [1, 1, 1]
            view[dim] = shape[dim]
            coords.append((torch.arange(shape[dim], dtype=dtype, device=device) * dx).reshape(view))
        blocked = torch.zeros(shape, dtype=dtype, device=device)
        solid = torch.zeros(shape, dtype=dtype, device=device)
        b, c = [d for d in range(3) if d != axis]
        for index in range(model.obstacle_count):
            center = centers[index] - origin
            size = model.obstacle_size[index].to(dtype)
            offset = coords[axis] - center[axis]
            lo_b, lo_c = coords[b] - center[b], coords[c] - center[c]
            if float(model.obstacle_is_box[index]) > 0.5:
                inside = (offset.abs() < size[axis]).to(dtype)
                span_b = (torch.minimum(lo_b + dx, size[b]) - torch.maximum(lo_b, -size[b])).clamp(min=0.0)
                span_c = (torch.minimum(lo_c + dx, size[c]) - torch.maximum(lo_c, -size[c])).clamp(min=0.0)
                area = inside * span_b * span_c
            else:  # the sphere cuts the face plane in a disc of radius sqrt(R^2 - offset^2)
                radius_sq = (size[0] * size[0] - offset * offset).expand(shape)
                cuts = radius_sq > 0
                radius = torch.where(cuts, radius_sq, torch.ones_like(radius_sq)).sqrt()
                area = _disc_rectangle_area(radius, lo_b.expand(shape), (lo_b + dx).expand(shape),
                                            lo_c.expand(shape), (lo_c + dx).expand(shape))
                area = torch.where(cuts, area, torch.zeros_like(area))
            area = area.expand(shape)
            if with_solid:  # the obstacle covering most of the face owns it
                solid = torch.where(area > blocked, velocity[index, axis].to(dtype).expand(shape), solid)
            blocked = torch.maximum(blocked, area)
        open_fraction = (1.0 - blocked / (dx * dx)).clamp(0.0, 1.0)
        # faces closed to a sliver are solid (keeps the pressure system well conditioned)
        open_fraction = torch.where(open_fraction < 1e-3, torch.zeros_like(open_fraction), open_fraction)
        lo_side, hi_side = model.boundary[2 * axis], model.boundary[2 * axis + 1]
        keep = torch.ones(shape[axis], dtype=dtype, device=device)
        if lo_side == "wall":
            keep[0] = 0.0
        if hi_side == "wall":
            keep[-1] = 0.0
        view = [1, 1, 1]
        view[axis] = shape[axis]
        open_fraction = open_fraction * keep.reshape(view)
        fractions.append(open_fraction.to(dtype=model.buoyancy.dtype))
        # solid velocity only on faces (partly) covered by an obstacle, not on the domain's walls
        solid = torch.where(blocked > 0, solid, torch.zeros_like(solid)) * keep.reshape(view)
        solids.append(solid.to(dtype=model.buoyancy.dtype))
    return (*fractions, *solids) if with_solid else tuple(fractions)
