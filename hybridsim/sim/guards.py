"""Blow-up guards: cheap checks, at every frame boundary, that a simulation is still physical.

Each guard turns a frame's state tensors into a few reductions and one host sync per frame (one
``bool()``); only when something is wrong does it work out which object and quantity, so the
check costs little next to the frame's substeps. What is detected:

========================  ======================================================================
non-finite state          any position, velocity, orientation or grid value is nan or inf
energy growth             spheres and rigid bodies without external input (no control forces, no
                          motion prior): E(t) - E(0) > ``energy_growth`` x (energy available at
                          t = 0 + floor). E = kinetic (+ rotational) - m g.x (+ spring) energy;
                          "available" is the initial kinetic and spring energy plus the potential
                          energy above the ground; the floor is sum m max(|g|, 1 m/s^2) size, so
                          scenes at rest still have a scale.
interpenetration          rigid: a contact point of one shape deeper than ``penetration_fraction``
                          x the smaller size (smallest half extent or radius) inside another shape
                          or the ground, beyond any overlap already present at t = 0; spheres: the
                          same against the ground.
CFL (grid fluid)          max |u| dt / dx > ``fluid_cfl`` (MacCormack / conservative transport
                          are stable past 1 but meaningless far beyond it), 2D and 3D
mass (grid fluid, 3D)     total density > (1 + ``fluid_mass_gain``) x the inflow budget (initial
                          amount + the inflows' rate x time): density made from nothing
CFL (MPM)                 max particle speed dt / dx > ``mpm_cfl`` (a particle crossing more than
                          a cell per substep breaks the transfer), plus non-finite values and
                          particles leaving the grid
========================  ======================================================================

A violation becomes a :class:`~hybridsim.errors.SimulationError` naming the frame, the substep
(found by re-running the bad frame step by step from its start state, which is cheap: one frame,
only on failure), the object (``objects[2] (box 'crate')``), the quantity and a fix, and carrying
``partial``: the good frames before it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import SimulationError

__all__ = ["GuardLimits", "LIMITS", "Violation", "SphereGuard", "RigidGuard", "FluidGuard", "MPMGuard",
           "describe_object", "blow_up", "locate_substep"]


@dataclass(frozen=True)
class GuardLimits:
    """Thresholds of the blow-up guards (see the module docstring)."""

    energy_growth: float = 10.0
    """Energy gain allowed, as a multiple of the energy available at t = 0 plus the floor."""
    penetration_fraction: float = 0.5
    """Penetration allowed, as a fraction of the smaller body's size (smallest half extent / radius)."""
    fluid_cfl: float = 5.0
    """Largest grid-fluid CFL number max|u| dt / dx at a frame boundary."""
    fluid_mass_gain: float = 1.0
    """Total density allowed above the inflow budget, as a fraction of the budget (3D fluid)."""
    mpm_cfl: float = 1.0
    """Largest MPM particle CFL number max|v| dt / dx at a frame boundary."""


LIMITS = GuardLimits()


@dataclass
class Violation:
    """What a guard found wrong in one frame."""

    quantity: str
    """Short name: ``position``, ``velocity``, ``energy``, ``penetration``, ``cfl``, ..."""
    object: str
    """The object, e.g. ``objects[2] (box 'crate')`` or ``fluid (grid 80x96)``."""
    detail: str
    """The measured value against its limit, e.g. ``velocity is nan``."""
    fix: str
    """What to change, e.g. ``lower dt: raise [time] substeps from 8 to 32``."""
    offset: int = 0
    """Index of the bad frame within the batch of frames that was checked."""


def describe_object(spec, index: int) -> str:
    """``objects[2] (box 'crate')`` for scene object ``index``."""
    obj = spec.objects[index]
    return f"objects[{index}] ({obj.type} {obj.name!r})" if getattr(obj, "name", None) else f"objects[{index}] ({obj.type})"


def _more_substeps(substeps: int, factor: float = 4.0) -> str:
    return f"raise [time] substeps from {substeps} to {max(substeps + 1, math.ceil(substeps * factor))}"


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def blow_up(spec, violation: Violation, *, frame: int, substeps: int, substep: int | None = None,
            partial=None, what: str = "simulation") -> SimulationError:
    """The SimulationError for ``violation`` in ``frame`` (1-based: the frame whose end state is bad)."""
    fps = spec.time.fps
    dt = 1.0 / (fps * substeps)
    if substep is not None:
        step = (frame - 1) * substeps + substep
        when = f"frame {frame}, substep {substep} of {substeps} (step {step}, t = {_fmt(step * dt)} s)"
    else:
        step = frame * substeps
        steps = f"steps {(frame - 1) * substeps + 1}-{step}" if substeps > 1 else f"step {step}"
        when = f"frame {frame} ({steps}, t = {_fmt((frame - 1) / fps)}-{_fmt(frame / fps)} s)"
    message = f"{what} blew up in {when}: {violation.object}: {violation.detail}; {violation.fix}"
    return SimulationError(message, file=getattr(spec, "source", None), object=violation.object, step=step,
                           quantity=violation.quantity, frame=frame, substep=substep, partial=partial)


def locate_substep(advance: Callable[[object, int], object], state, substeps: int,
                   violates: Callable[[object], bool]) -> int | None:
    """Re-run one frame from ``state`` (its start) substep by substep; the 1-based substep whose
    result ``violates``, or None. ``advance(state, substep_index)`` returns the next state."""
    try:
        with torch.no_grad():
            for sub in range(substeps):
                state = advance(state, sub)
                if violates(state):
                    return sub + 1
    except SimulationError:  # a solver's own check fired first: that is the substep
        return sub + 1
    return None


def _first(mask: torch.Tensor) -> int:
    return int(mask.nonzero()[0, 0]) if mask.dim() > 1 else int(mask.nonzero()[0])


def _nonfinite_word(values: torch.Tensor) -> str:
    return "nan" if bool(torch.isnan(values).any()) else "inf"


# ------------------------------------------------------------------------------------------ spheres
class SphereGuard:
    """Checks sphere-solver frames: non-finite state, ground penetration, energy growth.

    ``positions`` / ``velocities`` are (K, B, 3) batches of frames (B = worlds x spheres).
    """

    def __init__(self, world, model, position0: torch.Tensor, velocity0: torch.Tensor, *,
                 external_input: bool = False, limits: GuardLimits = LIMITS):
        spec = world.spec
        self.spec, self.limits = spec, limits
        self.substeps = spec.time.substeps
        self.W, self.N = world.world_count, world.sphere_count
        self.names = [describe_object(spec, world._object_index(k)) for k in range(self.N)]
        self.mass = model.mass.detach().double()
        self.radius = model.radius.detach()
        self.gravity = model.gravity.detach().double()
        self.ground = float(model.ground_height)
        self.ground_enabled = bool(getattr(spec.ground, "enabled", True))
        self.energy_check = not external_input and self.N > 0
        if self.energy_check:
            x0, v0 = position0.detach().double(), velocity0.detach().double()
            self.e0 = self._energy(x0[None], v0[None])[0]  # (W,)
            g = self.gravity.norm(dim=-1)
            height = (x0[:, 2] - self.ground - self.radius.double()).clamp(min=0.0) if self.ground_enabled else 0.0 * g
            kinetic0 = 0.5 * self.mass * (v0 * v0).sum(-1)
            available = (kinetic0 + self.mass * g * height).reshape(self.W, self.N).sum(-1)
            floor = (self.mass * g.clamp(min=1.0) * self.radius.double()).reshape(self.W, self.N).sum(-1)
            self.available = available
            self.budget = limits.energy_growth * (available + floor)

    def _energy(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        kinetic = 0.5 * self.mass * (v * v).sum(-1)
        potential = -(self.mass[:, None] * self.gravity * x).sum(-1)
        return (kinetic + potential).reshape(x.shape[0], self.W, self.N).sum(-1)  # (K, W)

    def first_violation(self, positions: torch.Tensor, velocities: torch.Tensor) -> Violation | None:
        x, v = positions.detach(), velocities.detach()
        if x.dim() == 2:
            x, v = x[None], v[None]
        finite = torch.isfinite(x).all(-1) & torch.isfinite(v).all(-1)  # (K, B)
        bad = ~finite.all(-1)
        if self.ground_enabled:
            depth = self.ground + self.radius - x[..., 2]
            bad = bad | (depth > self.limits.penetration_fraction * self.radius).any(-1)
        if self.energy_check:
            gain = self._energy(x.double(), v.double()) - self.e0
            bad = bad | (gain > self.budget).any(-1)
        if not bool(bad.any()):  # the one host sync per check
            return None
        k = _first(bad)
        return self._describe(k, x[k], v[k])

    def _body(self, b: int) -> str:
        name = self.names[b % self.N]
        return name if self.W == 1 else f"{name} in world {b // self.N}"

    def _describe(self, k: int, x: torch.Tensor, v: torch.Tensor) -> Violation:
        more = _more_substeps(self.substeps)
        for quantity, values in (("position", x), ("velocity", v)):
            finite = torch.isfinite(values).all(-1)
            if not bool(finite.all()):
                b = _first(~finite)
                return Violation(quantity, self._body(b), f"{quantity} is {_nonfinite_word(values[b])}",
                                 f"lower dt ({more}) or check forces, masses and parameters", k)
        if self.ground_enabled:
            depth = self.ground + self.radius - x[:, 2]
            ratio = depth / (self.limits.penetration_fraction * self.radius)
            if bool((ratio > 1).any()):
                b = int(ratio.argmax())
                return Violation("penetration", self._body(b),
                                 f"penetration {_fmt(float(depth[b]))} m into the ground > "
                                 f"{self.limits.penetration_fraction:g} x radius {_fmt(float(self.radius[b]))} m",
                                 f"lower dt ({more}) or check the initial position", k)
        gain = self._energy(x[None].double(), v[None].double())[0] - self.e0
        w = int((gain - self.budget).argmax())
        speed = v.reshape(self.W, self.N, 3)[w].norm(dim=-1)
        b = w * self.N + int(speed.argmax())
        return Violation("energy", self._body(b),
                         f"energy grew by {_fmt(float(gain[w]))} J with no external input (more than "
                         f"{self.limits.energy_growth:g} x the {_fmt(float(self.available[w]))} J available at t = 0 "
                         f"plus floor; speed {_fmt(float(speed.max()))} m/s)",
                         f"lower dt ({more}) or check restitution and parameters", k)


# ------------------------------------------------------------------------------------------ rigid
def _shape_size(shape) -> float:
    """A shape's smallest half size [m]: sphere/capsule radius, smallest box half extent, half the
    smallest extent of a mesh hull's bounding box."""
    if shape.kind == "sphere" or shape.kind == "capsule":
        return float(shape.size[0])
    if shape.kind == "box":
        return float(min(shape.size))
    vertices = shape.mesh_vertices
    return float((vertices.max(0) - vertices.min(0)).min() / 2.0)


class RigidGuard:
    """Checks rigid-body frames: non-finite state, energy growth, and penetration of contact points
    (box corners, sphere and capsule centres with their radii, mesh hull vertices) into the shapes
    and ground they have contact slots against."""

    _KINDS = {"ground": 0, "sphere": 1, "box": 2, "capsule": 3, "mesh": 4}

    def __init__(self, model, state, *, substeps: int, spec=None, body_names=None, shape_names=None,
                 external_input: bool = False, limits: GuardLimits = LIMITS):
        import numpy as np

        from ..solvers.rigid.builder import KIND_BOX_BOX, _quat_matrix

        self.model, self.spec, self.limits, self.substeps = model, spec, limits, substeps
        B = model.body_count
        self.body_names = list(body_names) if body_names else [f"body {b}" for b in range(B)]
        self.shape_names = list(shape_names) if shape_names else [f"shape {s}" for s in range(model.shape_count)]
        dtype, device = torch.float64, model.body_mass.device
        shapes = model.shapes
        sizes = [_shape_size(s) for s in shapes]
        self.body_size = torch.zeros(B, dtype=dtype, device=device)
        for s, shape in enumerate(shapes):
            if shape.body >= 0:
                self.body_size[shape.body] = max(float(self.body_size[shape.body]), sizes[s])

        # directed (points of shape a, solid shape b; b = -1: the ground) pairs the solver has slots for
        pairs = set()
        slot_shape = model.contact["shape"].cpu().numpy() if model.contact_count else np.zeros((0, 2), int)
        slot_kind = model.contact["kind"].cpu().numpy() if model.contact_count else np.zeros(0, int)
        for (a, b), kind in zip(slot_shape.tolist(), slot_kind.tolist()):
            pairs.add((a, b))
            if kind == KIND_BOX_BOX:
                pairs.add((b, a))
        rows = {k: [] for k in ("point", "radius", "body", "solid", "solid_body", "center", "rotation", "size", "kind",
                                "allow", "shape")}
        mesh_planes = []
        for a, b in sorted(pairs):
            sa = shapes[a]
            points, radii = sa.contact_points()
            rot = _quat_matrix(sa.rotation)
            for p, r in zip(points, radii):
                rows["point"].append(sa.position + rot @ p)
                rows["radius"].append(r)
                rows["body"].append(sa.body)
                rows["shape"].append(a)
                rows["solid"].append(b)
                if b < 0:
                    rows["solid_body"].append(-1)
                    rows["center"].append(np.array([0.0, 0.0, model.ground_height]))
                    rows["rotation"].append(np.array([0.0, 0.0, 0.0, 1.0]))
                    rows["size"].append(np.zeros(3))
                    rows["kind"].append(0)
                    rows["allow"].append(sizes[a])
                    mesh_planes.append(None)
                else:
                    sb = shapes[b]
                    rows["solid_body"].append(sb.body)
                    rows["center"].append(np.asarray(sb.position, float))
                    rows["rotation"].append(np.asarray(sb.rotation, float))
                    rows["size"].append(np.asarray(sb.size, float))
                    rows["kind"].append(self._KINDS[sb.kind])
                    rows["allow"].append(min(sizes[a], sizes[b]))
                    mesh_planes.append(sb.mesh_planes if sb.kind == "mesh" else None)
        self.row_count = len(rows["point"])
        R = self.row_count
        real = lambda x, shape: torch.as_tensor(np.asarray(x, float).reshape(shape), dtype=dtype, device=device)  # noqa: E731
        integer = lambda x: torch.as_tensor(np.asarray(x, np.int64).reshape(-1), device=device)  # noqa: E731
        self.point, self.radius = real(rows["point"], (R, 3)), real(rows["radius"], (R,))
        self.body, self.solid_body = integer(rows["body"]), integer(rows["solid_body"])
        self.solid, self.shape = integer(rows["solid"]), integer(rows["shape"])
        self.center, self.rotation = real(rows["center"], (R, 3)), real(rows["rotation"], (R, 4))
        self.size, self.kind = real(rows["size"], (R, 3)), integer(rows["kind"])
        self.allow = limits.penetration_fraction * real(rows["allow"], (R,))
        self.mesh_rows = [i for i, planes in enumerate(mesh_planes) if planes is not None]
        if self.mesh_rows:
            width = max(len(mesh_planes[i]) for i in self.mesh_rows)
            padded = np.zeros((len(self.mesh_rows), width, 4))
            padded[:, :, 3] = np.inf  # padding planes never bind
            for j, i in enumerate(self.mesh_rows):
                padded[j, :len(mesh_planes[i])] = mesh_planes[i]
            self.mesh_planes = torch.as_tensor(padded, dtype=dtype, device=device)
            self.mesh_index = torch.as_tensor(self.mesh_rows, device=device)

        with torch.no_grad():
            x0, q0 = state.body_position.detach(), state.body_orientation.detach()
            v0, w0 = state.body_velocity.detach(), state.body_angular_velocity.detach()
            # overlap already present at t = 0 is allowed on top of the limit (scene authors' choice)
            self.allow = self.allow + (self.depths(x0.double(), q0.double()).clamp(min=0.0) if R else 0.0)
            self.mass = model.body_mass.detach().double()
            self.inertia = model.body_inertia.detach().double()
            self.inertia_rotation = model.body_inertia_rotation.detach().double()
            self.gravity = model.gravity.detach().double().reshape(3)
            self.energy_check = not external_input
            if self.energy_check:
                kinetic0, potential0, spring0 = self.energy(x0.double(), q0.double(), v0.double(), w0.double())
                self.e0 = float((kinetic0 + potential0).sum() + spring0)
                g = float(self.gravity.norm())
                height = ((x0[:, 2].double() - model.ground_height).clamp(min=0.0) if model.has_ground
                          else torch.zeros_like(self.mass))
                self.available = float(kinetic0.sum() + spring0 + (self.mass * g * height).sum())
                floor = float((self.mass * max(g, 1.0) * self.body_size).sum())
                self.budget = limits.energy_growth * (self.available + floor)

    # -- geometry
    def depths(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Penetration depth of every row (point into solid) [m], (R,); negative when apart."""
        from ..solvers.rigid import quat_rotate
        from ..solvers.rigid.model import quat_multiply

        body, solid_body = self.body.clamp(min=0), self.solid_body.clamp(min=0)
        moving = (self.body >= 0)[:, None]
        point = torch.where(moving, x[body] + quat_rotate(q[body], self.point), self.point)
        solid_moving = (self.solid_body >= 0)[:, None]
        center = torch.where(solid_moving, x[solid_body] + quat_rotate(q[solid_body], self.center), self.center)
        rotation = torch.where(solid_moving, quat_multiply(q[solid_body], self.rotation), self.rotation)
        conj = torch.cat([-rotation[:, :3], rotation[:, 3:]], dim=-1)
        local = quat_rotate(conj, point - center)
        r, size = self.radius, self.size
        ground = self.center[:, 2] + r - point[:, 2]
        sphere = size[:, 0] + r - local.norm(dim=-1)
        outside = (local.abs() - size).clamp(min=0.0).norm(dim=-1)
        gap = size - local.abs()
        inside = torch.minimum(torch.minimum(gap[:, 0], gap[:, 1]), gap[:, 2])  # (min(dim) can be slow on CPU)
        box = torch.where(outside > 0, -outside, inside) + r
        t = local[:, 2].clamp(min=-size[:, 1], max=size[:, 1])
        axis = torch.stack([local[:, 0], local[:, 1], local[:, 2] - t], dim=-1)
        capsule = size[:, 0] + r - axis.norm(dim=-1)
        depth = torch.where(self.kind == 0, ground, torch.where(self.kind == 1, sphere,
                                                                torch.where(self.kind == 2, box, capsule)))
        if self.mesh_rows:
            planes = self.mesh_planes
            rel = local[self.mesh_index]
            signed = (planes[..., 3] - (planes[..., :3] * rel[:, None, :]).sum(-1)).min(dim=-1).values
            depth = depth.index_copy(0, self.mesh_index, signed + r[self.mesh_index])
        return depth

    def energy(self, x, q, v, w):
        """(kinetic per body, potential -m g.x per body, spring energy) in float64."""
        from ..solvers.rigid import quat_rotate
        from ..solvers.rigid.model import quat_multiply

        frame = quat_multiply(q, self.inertia_rotation)
        conj = torch.cat([-frame[:, :3], frame[:, 3:]], dim=-1)
        w_principal = quat_rotate(conj, w)
        kinetic = 0.5 * self.mass * (v * v).sum(-1) + 0.5 * (self.inertia * w_principal * w_principal).sum(-1)
        potential = -self.mass * (x * self.gravity).sum(-1)
        spring = 0.0
        model = self.model
        if model.spring_count:
            s = model.spring
            a, b = s["body"][:, 0], s["body"][:, 1]
            pa = x[a] + quat_rotate(q[a], s["anchor_a"].detach().double())
            bb = b.clamp(min=0)
            pb_body = x[bb] + quat_rotate(q[bb], s["anchor_b"].detach().double())
            pb = torch.where((b >= 0)[:, None], pb_body, s["anchor_b"].detach().double())
            stretch = (pa - pb).norm(dim=-1) - s["rest_length"].detach().double()
            spring = (0.5 * s["stiffness"].detach().double() * stretch * stretch).sum()
        return kinetic, potential, spring

    # -- checks
    def check(self, state) -> Violation | None:
        """Violation of one state (body_position, body_orientation, body_velocity,
        body_angular_velocity), or None; one host sync when all is well."""
        x, q = state.body_position.detach(), state.body_orientation.detach()
        v, w = state.body_velocity.detach(), state.body_angular_velocity.detach()
        finite = torch.isfinite(torch.cat([x, q, v, w], dim=-1)).all(-1)
        bad = ~finite.all()
        xd, qd, vd, wd = x.double(), q.double(), v.double(), w.double()
        if self.row_count:
            depth = self.depths(xd, qd)
            bad = bad | (depth > self.allow).any()
        if self.energy_check:
            kinetic, potential, spring = self.energy(xd, qd, vd, wd)
            gain = (kinetic + potential).sum() + spring - self.e0
            bad = bad | (gain > self.budget)
        if not bool(bad):
            return None
        more = _more_substeps(self.substeps)
        for quantity, values in (("position", x), ("orientation", q), ("velocity", v), ("angular_velocity", w)):
            ok = torch.isfinite(values).all(-1)
            if not bool(ok.all()):
                b = _first(~ok)
                return Violation(quantity, self.body_names[b], f"{quantity.replace('_', ' ')} is "
                                 f"{_nonfinite_word(values[b])}", f"lower dt ({more}) or check masses and parameters")
        if self.row_count:
            excess = depth - self.allow
            if bool((excess > 0).any()):
                i = int(excess.argmax())
                a, b = int(self.shape[i]), int(self.solid[i])
                into = "the ground" if b < 0 else self.shape_names[b]
                allowed = float(self.allow[i])
                return Violation("penetration", self.shape_names[a],
                                 f"penetration {_fmt(float(depth[i]))} m into {into} > {self.limits.penetration_fraction:g}"
                                 f" x size (limit {_fmt(allowed)} m; size = smallest half extent or radius)",
                                 f"lower dt ({more}) or reduce speeds and masses", 0)
        b = int(kinetic.argmax())
        speed = float(v[b].norm())
        return Violation("energy", self.body_names[b],
                         f"energy grew by {_fmt(float(gain))} J with no external input (more than "
                         f"{self.limits.energy_growth:g} x the {_fmt(self.available)} J available at t = 0 plus floor; "
                         f"speed {_fmt(speed)} m/s, kinetic energy {_fmt(float(kinetic[b]))} J)",
                         f"lower dt ({more}) or check springs, masses and restitution")


# ------------------------------------------------------------------------------------------ grid fluid
class FluidGuard:
    """Checks grid-fluid frames (2D or 3D): non-finite fields, the CFL number max|u| dt / dx and,
    given ``inflow_rate`` [density x cells / s] (:func:`hybridsim.data.gates.fluid_inflow_rate`),
    the total density against the inflow budget ``initial_mass + inflow_rate * t``."""

    def __init__(self, *, dt: float, cell_size: float, substeps: int, cells=None, limits: GuardLimits = LIMITS,
                 inflow_rate: float | None = None, initial_mass: float = 0.0):
        self.dt, self.dx, self.substeps, self.limits = float(dt), float(cell_size), int(substeps), limits
        self.inflow_rate, self.initial_mass = inflow_rate, float(initial_mass)
        self.name = f"fluid (grid {'x'.join(str(n) for n in cells)})" if cells is not None else "fluid"

    def first_violation(self, velocity_x: torch.Tensor, velocity_y: torch.Tensor, density: torch.Tensor,
                        velocity_z: torch.Tensor | None = None, *, first_step: int = 0) -> Violation | None:
        """(K, ...) batches of frame records, the first one ``substeps`` steps after step
        ``first_step`` -> the first bad frame's Violation, or None."""
        velocities = [t.detach() for t in (velocity_x, velocity_y, velocity_z) if t is not None]
        rho = density.detach()
        K = rho.shape[0]
        speed = torch.stack([u.abs().reshape(K, -1).amax(-1) for u in velocities]).amax(0)
        mass = rho.reshape(K, -1).sum(-1)
        total = sum(u.reshape(K, -1).sum(-1) for u in velocities) + mass
        cfl = speed * (self.dt / self.dx)
        bad = ~torch.isfinite(total) | ~torch.isfinite(speed) | (cfl > self.limits.fluid_cfl)
        budget = None
        if self.inflow_rate is not None:
            steps = first_step + self.substeps * torch.arange(1, K + 1, dtype=torch.float64)
            budget = self.initial_mass + self.inflow_rate * self.dt * steps
            # a floor of one cell's worth of density, so an empty box with no inflow has a scale
            bad |= mass.double() > (1.0 + self.limits.fluid_mass_gain) * budget + 1.0
        if not bool(bad.any()):
            return None
        k = _first(bad)
        names = ("velocity_x", "velocity_y", "velocity_z")
        for quantity, values in (*zip(names, (u[k] for u in velocities)), ("density", rho[k])):
            if not bool(torch.isfinite(values).all()):
                return Violation(quantity, self.name, f"{quantity} is {_nonfinite_word(values)}",
                                 f"lower dt ({_more_substeps(self.substeps)}), the inflow rate or the buoyancy", k)
        number = float(cfl[k])
        if number <= self.limits.fluid_cfl and budget is not None:
            return Violation("mass", self.name,
                             f"total density {_fmt(float(mass[k]))} > {1 + self.limits.fluid_mass_gain:g} x the inflow "
                             f"budget {_fmt(float(budget[k]))} (density x cells)",
                             f"lower dt ({_more_substeps(self.substeps)}) or use density_advection = "
                             "\"conservative\"", k)
        need = math.ceil(self.substeps * number / self.limits.fluid_cfl)
        return Violation("cfl", self.name,
                         f"CFL number {number:.3g} > {self.limits.fluid_cfl:g} (max |u| = {_fmt(float(speed[k]))} m/s, "
                         f"dt = {_fmt(self.dt)} s, dx = {_fmt(self.dx)} m)",
                         f"raise [time] substeps from {self.substeps} to at least {need}, or lower the buoyancy / "
                         "inflow rate", k)


# ------------------------------------------------------------------------------------------ MPM
class MPMGuard:
    """Per-frame checks of an MPM rollout: non-finite particles, particles outside the grid and the
    particle CFL number max|v| dt / dx, without touching ``hybridsim.solvers.mpm``.

    Pass ``guard.control(inner)`` as ``rollout_mpm(control=...)``: the rollout calls it before
    every substep, and at each frame boundary it checks the state (so a blow-up is caught one frame
    after it happens; the last frame is left to the rollout's own end-of-segment checks). It keeps
    references (no copies) to the frame states, so ``guard.partial()`` returns the good frames.
    """

    def __init__(self, model, *, dt: float, substeps: int, first_step: int = 0, spec=None, name: str = "mpm",
                 limits: GuardLimits = LIMITS):
        self.model, self.dt, self.substeps, self.first_step = model, float(dt), int(substeps), int(first_step)
        self.spec, self.limits = spec, limits
        n, d = model.particle_count, model.dim
        self.name = f"{name} ({n} particles, {'x'.join(map(str, model.grid.resolution))} grid)"
        self.frames: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def check(self, position: torch.Tensor, velocity: torch.Tensor) -> Violation | None:
        x, v = position.detach(), velocity.detach()
        grid = self.model.grid
        lower = torch.tensor(grid.lower, dtype=x.dtype, device=x.device)
        upper = torch.tensor(grid.upper, dtype=x.dtype, device=x.device)
        speed = v.abs().amax() if v.numel() else v.new_zeros(())
        cfl = speed * (self.dt / grid.dx)
        inside = ((x >= lower) & (x <= upper)).all()
        bad = ~torch.isfinite(x).all() | ~torch.isfinite(v).all() | ~inside | (cfl > self.limits.mpm_cfl)
        if not bool(bad):
            return None
        more = f"raise mpm.substeps from {self.substeps} to {4 * self.substeps}"
        for quantity, values in (("particle_position", x), ("particle_velocity", v)):
            ok = torch.isfinite(values).all(-1)
            if not bool(ok.all()):
                return Violation(quantity, self.name, f"{quantity.replace('_', ' ')} of {int((~ok).sum())} particles "
                                 f"is {_nonfinite_word(values)} (first: particle {_first(~ok)})",
                                 f"lower dt ({more}) or soften the materials")
        if not bool(inside):
            out = ~((x >= lower) & (x <= upper)).all(-1)
            return Violation("particle_position", self.name, f"{int(out.sum())} particles left the grid (first: "
                             f"particle {_first(out)})", f"lower dt ({more}) or enlarge the domain")
        number = float(cfl)
        need = math.ceil(self.substeps * number / self.limits.mpm_cfl)
        return Violation("cfl", self.name, f"particle CFL number {number:.3g} > {self.limits.mpm_cfl:g} (max |v| = "
                         f"{_fmt(float(speed))} m/s, dt = {_fmt(self.dt)} s, dx = {_fmt(grid.dx)} m)",
                         f"raise mpm.substeps (substeps per frame) from {self.substeps} to at least {need}")

    def control(self, inner=None):
        """A ``rollout_mpm`` control callable wrapping ``inner`` (an MPMControl, a callable or None)."""
        def guarded(state, time):
            step = int(round(time / self.dt)) - self.first_step
            if step % self.substeps == 0:
                frame = step // self.substeps
                self.frames[frame] = (state.particle_position.detach(), state.particle_velocity.detach())
                if frame > 0:
                    violation = self.check(state.particle_position, state.particle_velocity)
                    if violation is not None:
                        raise self.error(violation, frame)
            return inner(state, time) if callable(inner) else inner

        return guarded

    def partial(self, before: int | None = None):
        """(positions (F, N, d), velocities) of the recorded good frames 0 .. before-1, or None."""
        frames = sorted(f for f in self.frames if before is None or f < before)
        if not frames or frames != list(range(len(frames))):
            return None
        return (torch.stack([self.frames[f][0] for f in frames]), torch.stack([self.frames[f][1] for f in frames]))

    def error(self, violation: Violation, frame: int) -> SimulationError:
        spec = self.spec
        if spec is None:  # no scene: name the frame and step range without a file
            from types import SimpleNamespace

            spec = SimpleNamespace(source=None, time=SimpleNamespace(fps=1.0 / (self.dt * self.substeps)))
        return blow_up(spec, violation, frame=frame, substeps=self.substeps, partial=self.partial(frame),
                       what="MPM simulation")
