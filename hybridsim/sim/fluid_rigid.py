"""Two-way coupling of the 2D grid fluid (``[fluid]``, smoke) with rigid bodies (``[[objects]]``).

How it works (docs/grid_fluid.md, "Rigid bodies in the fluid"):

* **Common step.** One fluid step and one rigid step of the same dt (``[time].substeps`` per
  frame) alternate, as in the MPM coupling (``hybridsim.sim.coupled``). Fluid step n sees each body
  at its pose in rigid state n (transport) and where its velocity carries it by the end of the
  step (viscosity and projection); the body's velocity n is the solid velocity of the faces it
  covers, so a moving body pushes the smoke aside.
* **Fluid pushes bodies.** The pressure impulse of that step's projection on each body
  (``hybridsim.solvers.grid_fluid.bodies.body_impulses``: the pressure jump across the covered part
  of every face the body covers) becomes a force ``impulse * depth / dt`` [N] and a torque about
  the body's centre, handed to rigid step n through ``RigidBoundary.apply_forces`` / ``control``.
  The grid fluid is a slab 1 m thick; ``depth`` is the body's effective depth volume / slice area
  (a box: 2 hy), so a body of density rho_b feels rho_fluid / rho_b of the slab's push per unit
  mass (the same rule as the MPM coupling). Sign: the force is the one the fluid exerts on the
  body (a body moving through still fluid gets a force against its velocity). Units: ``fluid.density``
  [kg/m^3] scales the projection's pressure [m^2/s] to the physical one, p_phys = rho p / dt [Pa].
  The momentum of fluid (``rho dx^2 sum A u`` per metre) + bodies (``M v / depth``) changes only by
  what walls, prescribed obstacles and gravity put in. Viscous stress on bodies is not included.
* **Explicit.** The impulse reaches the body one step later. A body much lighter than the fluid it
  displaces (its added mass) would overshoot: keep body densities well above ``fluid.density``
  (smoke: 1.2 kg/m^3).
* **Plane.** Bodies move in the x-z plane at y = 0 and rotate about y (projected after every rigid
  step); their cross-section at y = 0 is a disc (sphere) or a box (box rotated about y).
  Grid angles are counter-clockwise from x to z: grid angle = -(rotation about world y).
* **Gradients.** Torch autograd through both solvers and the coupling: the bodies' velocities reach
  the fluid through the solid face velocities and the fluid reaches the bodies through the
  pressure. The bodies' poses (position, orientation) reach the fluid too: the open fractions of
  the faces a body cuts are exact covered lengths computed in torch from the pose, the solid face
  velocities are the rigid velocity at the covered part's midpoint, and the projection is
  differentiated with respect to both (``grid_fluid.autograd.area_gradient``); the loads' moment
  arms follow the pose as well. Which body owns a face is piecewise constant, and a fraction is
  piecewise smooth in the pose: kinks where an outline passes a face's end, and for a box side
  parallel to a face a jump where it crosses the face's line (the gradient does not see its delta).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..errors import HybridsimError, SceneError

__all__ = ["FluidRigidSolver", "FluidRigidTrajectory", "fluid_rigid_system", "fluid_rigid_rollout",
           "fluid_momentum", "body_momentum"]


def _planar(state):
    from .coupled import _planar as planar

    return planar(state)


class FluidRigidSolver:
    """SolverGridFluid + SolverRigid stepped together (module docstring).

    Args:
        fluid_model: the 2D smoke domain (GridFluidModel).
        rigid_model: the bodies; every dynamic body has one sphere or box shape at its centre of mass.
        density: the fluid's density [kg/m^3] (a float, or a tensor () to differentiate the loads in it).
        origin: world (x, z) [m] of the grid's lower-left corner.
        backend: "warp" or "taichi" (both solvers).
        **fluid_options: SolverGridFluid keyword options (advection, dtype, ...).
    """

    def __init__(self, fluid_model, rigid_model, *, density: float, origin=(0.0, 0.0), backend: str = "warp",
                 **fluid_options):
        from ..solvers.grid_fluid import SolverGridFluid
        from ..solvers.grid_fluid.solver import _auto_preconditioner
        from ..solvers.rigid import RigidBoundary, SolverRigid
        from ..solvers.rigid.shapes import SHAPE_BOX, SHAPE_SPHERE
        from .coupled import _effective_depths

        if not (math.isfinite(density) and density > 0):
            raise HybridsimError(f"fluid density must be positive, got {density}", field="density")
        device = str(rigid_model.device)
        # the bodies move: a preconditioner that is cheap to rebuild every step (not multigrid on CPU)
        fluid_options.setdefault("preconditioner", _auto_preconditioner(fluid_model.cell_count, device, True))
        self.fluid = SolverGridFluid(fluid_model, backend=backend, device=device, **fluid_options)
        self.rigid = SolverRigid(rigid_model, backend=backend, device=rigid_model.device)
        self.boundary = RigidBoundary(rigid_model)
        # a tensor density stays one: the loads on the bodies are then differentiable in it
        self.density = density if isinstance(density, torch.Tensor) else float(density)
        self.origin = tuple(float(c) for c in origin)
        self.cross_sections = []
        """Per body: (is_box, (half size x, half size z) or (radius, radius)) [m]."""
        for b in range(rigid_model.body_count):
            shapes = [s for s in rigid_model.shapes if s.body == b]
            if len(shapes) != 1 or shapes[0].kind not in (SHAPE_BOX, SHAPE_SPHERE):
                raise HybridsimError("a body in a fluid must be one sphere or one box", field=f"bodies[{b}]")
            shape = shapes[0]
            rotation = [float(c) for c in shape.rotation]
            if max(abs(float(c)) for c in shape.position) > 1e-9 or max(abs(c) for c in rotation[:3]) > 1e-9:
                raise HybridsimError("a body's shape must sit at its centre of mass, unrotated", field=f"bodies[{b}]")
            if shape.kind == SHAPE_BOX:
                self.cross_sections.append((True, (float(shape.size[0]), float(shape.size[2]))))
            else:
                self.cross_sections.append((False, (float(shape.size[0]),) * 2))
        self.depth = torch.tensor(_effective_depths(rigid_model) if rigid_model.body_count else [],
                                  dtype=rigid_model.dtype, device=rigid_model.device)
        """Per-body effective depth volume / slice area [m], shape (B,)."""
        self.last_impulse = None
        """Per-body pressure impulse of the latest step per metre of depth, grid axes [kg m/s / m], (B, 2)."""
        self.last_force = None
        """Force [N] (B, 3) and torque [N m] (B, 3) (world) handed to the latest rigid step."""
        self.last_torque = None
        self.last_geometry = None
        """The end-of-step cut of the latest step (``SolverGridFluid.body_geometry``)."""

    def fluid_bodies(self, rigid_state, ahead: float = 0.0) -> list:
        """The bodies' cross-sections as GridFluidBody (grid axes), moved on by their velocity over
        ``ahead`` [s]."""
        from ..solvers.grid_fluid import GridFluidBody

        bodies = []
        ox, oz = self.origin
        for b, (is_box, size) in enumerate(self.cross_sections):
            # the pose stays a tensor: the fluid's face fractions, solid velocities and the loads' moment
            # arms are differentiated through it
            position = rigid_state.body_position[b]
            velocity = rigid_state.body_velocity[b]
            spin = rigid_state.body_angular_velocity[b]
            q = rigid_state.body_orientation[b]
            angle = -2.0 * torch.atan2(q[1], q[3])  # rotation about +y, as a grid angle
            centre = torch.stack([position[0] - ox + velocity[0] * ahead, position[2] - oz + velocity[2] * ahead])
            angle = angle - spin[1] * ahead
            bodies.append(GridFluidBody(centre, size, is_box, angle, torch.stack([velocity[0], velocity[2]]), -spin[1]))
        return bodies

    def step(self, fluid_state, rigid_state, dt: float, *, fluid_control=None, rigid_control=None):
        """One common step of ``dt`` [s] -> (fluid state, rigid state); differentiable."""
        from ..solvers.grid_fluid import body_impulses

        dt = float(dt)
        start, end = self.fluid_bodies(rigid_state), self.fluid_bodies(rigid_state, dt)
        fluid_next, pressure, geometry = self.fluid.step_with_bodies(fluid_state, fluid_control, dt, start, end)
        self.last_geometry = geometry
        if self.cross_sections:
            linear, angular = body_impulses(self.fluid.model, geometry, pressure.to(self.depth.dtype), end,
                                            self.density)
            self.last_impulse = linear
            zero = torch.zeros_like(angular)
            force = torch.stack([linear[:, 0], zero, linear[:, 1]], dim=1) * (self.depth / dt)[:, None]
            torque = torch.stack([zero, -angular, zero], dim=1) * (self.depth / dt)[:, None]
            self.boundary.apply_forces(force, torque)
            self.last_force, self.last_torque = force, torque
        control = self.boundary.control(rigid_control)
        rigid_next = _planar(self.rigid.step_differentiable(rigid_state, control, dt))
        return fluid_next, rigid_next


def fluid_momentum(solver: FluidRigidSolver, fluid_state, time: float | None = None, rigid_state=None) -> torch.Tensor:
    """Fluid momentum per metre of depth [kg m/s / m], grid axes (2,): rho dx^2 sum A u, with the open
    fractions where the bodies of ``rigid_state`` are (and the prescribed obstacles at ``time``)."""
    bodies = solver.fluid_bodies(rigid_state) if rigid_state is not None else []
    from ..solvers.grid_fluid import body_face_geometry

    geometry = body_face_geometry(solver.fluid.model, float(fluid_state.time if time is None else time), bodies)
    dx = solver.fluid.model.cell_size
    scale = solver.density * dx * dx
    return scale * torch.stack([(geometry.area_x * fluid_state.velocity_x).sum(),
                                (geometry.area_y * fluid_state.velocity_y).sum()])


def body_momentum(solver: FluidRigidSolver, rigid_state) -> torch.Tensor:
    """Bodies' momentum per metre of the slab, sum M v / depth, grid axes (2,) [kg m/s / m]."""
    mass = solver.rigid.model.body_mass
    momentum = (mass[:, None] * rigid_state.body_velocity / solver.depth[:, None]).sum(0)
    return torch.stack([momentum[0], momentum[2]])


# ------------------------------------------------------------------------------------------ scenes
@dataclass
class FluidRigidTrajectory:
    """Per-frame states of a fluid + bodies rollout; frame 0 is the initial state."""

    fluid: object
    """A GridFluidTrajectory (face velocities, density, temperature, times)."""
    rigid: object
    """A RigidTrajectory (body positions, orientations, velocities; body_objects)."""
    times: torch.Tensor
    """Frame times [s], shape (F+1,)."""

    @property
    def frame_count(self) -> int:
        return int(self.times.shape[0])


def _check_scene(spec) -> None:
    """Bodies in a 2D fluid: spheres and boxes in the x-z plane (SceneError naming the field)."""
    if spec.fluid.dimension != 2:
        raise SceneError("objects in a [fluid] scene need a 2D fluid (cells = [nx, ny]); a 3D fluid takes "
                         "obstacles only", file=spec.source, field="fluid.cells")
    if abs(spec.gravity[1]) > 0.0:
        raise SceneError("must have no y component in a [fluid] scene with objects (the bodies stay in the x-z plane)",
                         file=spec.source, field="gravity")
    for i, obj in enumerate(spec.objects):
        if obj.type not in ("box", "sphere", "static_box"):
            raise SceneError(f"a [fluid] scene takes objects of type 'box' or 'sphere' (got {obj.type!r}): the fluid "
                             "sees their cross-section with the plane y = 0", file=spec.source, field=f"objects[{i}].type")
        if obj.type == "static_box":
            raise SceneError("a [fluid] scene takes moving boxes and spheres; put static solids in the fluid as "
                             "[[fluid.obstacles]]", file=spec.source, field=f"objects[{i}].type")
        checks = [("position", 1), ("velocity", 1)]
        if obj.type != "sphere":
            checks += [("orientation", 0), ("orientation", 2), ("angular_velocity", 0), ("angular_velocity", 2)]
        for name, axis in checks:
            value = getattr(obj, name, None)
            if value is not None and abs(value[axis]) > 0.0:
                what = "y component" if name in ("position", "velocity") else "x and z components"
                raise SceneError(f"the {what} must be 0 in a [fluid] scene (bodies move in the x-z plane at y = 0 and "
                                 "rotate about y)", file=spec.source, field=f"objects[{i}].{name}")


@dataclass
class FluidRigidSystem:
    """The models and coupled solver of a scene with ``[fluid]`` and ``[[objects]]``."""

    fluid_model: object
    rigid_model: object
    solver: FluidRigidSolver
    substeps: int
    dt: float


def fluid_rigid_system(world, params: Mapping[str, torch.Tensor] | None = None) -> FluidRigidSystem:
    """The scene's fluid model, rigid model (both differentiable w.r.t. ``params``) and the solver."""
    from .fluid import fluid_model
    from .rigid import rigid_model

    spec = world.spec
    if spec.fluid is None or not spec.objects:
        raise SceneError("a fluid-rigid scene needs both [fluid] and [[objects]]", file=spec.source, field="objects")
    _check_scene(spec)
    fluid = fluid_model(world, params)
    rigid = rigid_model(world, params)
    try:
        solver = FluidRigidSolver(fluid, rigid, density=spec.fluid.density, origin=spec.fluid.origin,
                                  backend=world.backend, dtype=world.dtype, advection=spec.fluid.advection,
                                  density_advection=spec.fluid.density_advection)
    except HybridsimError as error:
        raise SceneError(error.message, file=spec.source, field=error.field or "objects") from None
    return FluidRigidSystem(fluid, rigid, solver, spec.time.substeps, spec.dt)


def fluid_rigid_rollout(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
                        progress: Callable[[int], None] | None = None, checkpoint: bool | str = "auto",
                        system: FluidRigidSystem | None = None) -> FluidRigidTrajectory:
    """Simulate a scene with a 2D ``[fluid]`` and ``[[objects]]`` for ``frames`` frames (default: the
    scene's); per-frame fluid and body states, differentiable w.r.t. ``params`` (fluid coefficients,
    object velocities, masses, ..., also through where the bodies cut the grid, module docstring).
    With ``checkpoint`` (default: when recording gradients) every frame's substeps are re-run in
    backward (``torch.utils.checkpoint``): only the per-frame states are kept."""
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    from ..errors import SimulationError
    from ..solvers.grid_fluid import GridFluidState, GridFluidTrajectory
    from ..solvers.rigid import RigidState
    from .rigid import RigidTrajectory, rigid_body_objects, rigid_initial_state

    spec = world.spec
    frames = spec.frame_count if frames is None else int(frames)
    system = system or fluid_rigid_system(world, params)
    solver = system.solver
    fluid_state = system.fluid_model.state()
    rigid_state = _planar(rigid_initial_state(system.rigid_model))
    if checkpoint == "auto":
        checkpoint = torch.is_grad_enabled()
    has_temperature = fluid_state.temperature is not None
    # no initial projection: the first step's brings the fluid to the bodies' boundary condition and
    # hands its reaction to the bodies (momentum is exchanged, not created)
    records = [[t] for t in (fluid_state.velocity_x, fluid_state.velocity_y, fluid_state.density)]
    temperatures = [fluid_state.temperature]
    bodies = [[t] for t in (rigid_state.body_position, rigid_state.body_orientation, rigid_state.body_velocity,
                            rigid_state.body_angular_velocity)]

    def run_frame(step_count: int, time: float, *tensors):
        fluid = GridFluidState(*tensors[:3], step_count, tensors[3] if has_temperature else None, time)
        rigid = RigidState(*tensors[4:])
        for _ in range(system.substeps):
            fluid, rigid = solver.step(fluid, rigid, system.dt)
        temperature = fluid.temperature if has_temperature else fluid.density.new_zeros(())
        return (*fluid.tensors(), temperature, *rigid.tensors())

    for frame in range(frames):
        temperature = fluid_state.temperature if has_temperature else fluid_state.density.new_zeros(())
        args = (fluid_state.step_count, float(fluid_state.time), *fluid_state.tensors(), temperature,
                *rigid_state.tensors())
        out = torch_checkpoint(run_frame, *args, use_reentrant=False) if checkpoint else run_frame(*args)
        fluid_state = GridFluidState(*out[:3], fluid_state.step_count + system.substeps,
                                     out[3] if has_temperature else None,
                                     float(fluid_state.time) + system.substeps * system.dt)
        rigid_state = RigidState(*out[4:])
        for column, value in zip(records, fluid_state.tensors()):
            column.append(value)
        temperatures.append(fluid_state.temperature)
        for column, value in zip(bodies, (rigid_state.body_position, rigid_state.body_orientation,
                                          rigid_state.body_velocity, rigid_state.body_angular_velocity)):
            column.append(value)
        if not all(bool(torch.isfinite(c[-1].detach()).all()) for c in bodies):
            raise SimulationError(f"fluid-rigid simulation: body state non-finite in frame {frame + 1}; raise "
                                  "[time].substeps or make the bodies heavier than the fluid they displace",
                                  file=spec.source, frame=frame + 1)
        if progress is not None:
            progress(frame + 1)
    times = torch.arange(frames + 1, dtype=torch.float64) / spec.time.fps
    fluid = GridFluidTrajectory(*(torch.stack(c) for c in records), times.to(world.dtype),
                                None if temperatures[0] is None else torch.stack(temperatures))
    rigid = RigidTrajectory(*(torch.stack(c) for c in bodies), times.to(world.dtype), system.rigid_model,
                            rigid_body_objects(spec))
    return FluidRigidTrajectory(fluid, rigid, times)

