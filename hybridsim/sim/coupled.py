"""Two-way coupling of MPM material (``[mpm]``) with rigid bodies (``[[objects]]``) in one scene.

How it works (docs/mpm.md, "Coupling with rigid bodies"):

* **Common substep.** One MPM substep and one rigid step of the same dt alternate: MPM substep n
  sees the bodies at the start of the step (pose and velocity n), and the rigid step n receives
  the impulse that substep put into the grid. dt is the MPM's (``mpm_substeps``: the stable bound
  of the stiffest material); ``[time].substeps`` is not used. Explicit coupling with a lagged
  body velocity over several MPM substeps would let a light body overshoot (added-mass
  instability) and delay the push-back; a rigid step costs less than an MPM substep here, so
  the common substep is the cheap, stable choice, and it transfers every impulse exactly once.
* **Bodies displace material** (a grid hook, ``SolverMPM(grid_hooks=[coupling])``): after the
  grid update, every node with mass whose signed distance to a body (``RigidBoundary``) is below
  ``band`` (0.75 dx) gets the body's velocity on its normal component: ``separate`` removes the
  approaching part of the relative normal velocity, ``slip`` all of it, ``no_slip`` the whole
  relative velocity (the mode is ``mpm.wall_mode``, the same rule as the domain walls).
* **Material pushes bodies.** The momentum the hook adds to those nodes,
  ``m_i (v_i' - v_i)``, is summed per body (the body nearest each node) into a force
  ``-sum / dt`` and a torque about the body's centre of mass, handed to the next rigid step by
  ``RigidBoundary.apply_forces`` / ``control``. Linear momentum of material + bodies is
  therefore conserved to round-off (the grid and the rigid integrator both change momentum by
  exactly these impulses).
* **2D** (``mpm.dim = 2``, the x-z plane): the bodies are 3D rigid bodies restricted to the plane
  (position y = 0, rotation about y only: after every rigid step the y velocity, the x/z angular
  velocity and the off-plane rotation are projected out) and the coupling uses the slice y = 0.
  A 2D MPM domain is a slab 1 m thick, so a body acts as a prism along y: its mass per metre is
  ``M A / V`` (A: the area of its slice, V: its volume, i.e. its own density times its slice),
  which the coupling implements by multiplying the slab's force on the body by the body's
  effective depth ``V / A`` (a box: 2 hy). Conserved: material momentum (per metre) +
  sum_b M_b v_b / depth_b.
* Static boxes are immovable obstacles for the material (the same rule with zero velocity);
  bodies collide with them, with each other and with ``[ground]`` through the rigid solver. The
  MPM domain walls act on the material only: put ``[ground]`` at the domain's floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch

from ..errors import HybridsimError, SceneError, SimulationError

__all__ = ["MPMRigidCoupling", "CoupledSolver", "CoupledTrajectory", "coupled_system", "coupled_rollout",
           "total_momentum", "COUPLING_MODES", "SLICE_EXTENT", "BAND_CELLS"]

COUPLING_MODES = ("separate", "slip", "no_slip")
BAND_CELLS = 0.75
"""Default coupling band in grid spacings: nodes closer than 0.75 dx to a body (or inside it) are
coupled (docs/mpm.md, "Coupling with rigid bodies", for how it was chosen)."""
SLICE_EXTENT = 1.0e4
"""Half extent [m] along y that box shapes get for the 2D slice distance (so y never becomes the
nearest face inside a box)."""


# ----------------------------------------------------------------------------------- slice geometry
def _slice_shape(shape):
    """The shape as its 2D coupling sees it: boxes endless along y (the slice's distance is the
    in-plane one), mesh hull planes facing +-y dropped; spheres and capsules are exact as they are."""
    import numpy as np

    from ..solvers.rigid.shapes import SHAPE_BOX, SHAPE_MESH

    if shape.kind == SHAPE_BOX:
        return replace(shape, size=(shape.size[0], SLICE_EXTENT, shape.size[2]))
    if shape.kind == SHAPE_MESH and shape.mesh_planes is not None:
        planes = np.asarray(shape.mesh_planes, dtype=float)
        keep = np.abs(planes[:, 1]) < 0.999
        if keep.any():
            return replace(shape, mesh_planes=planes[keep])
    return shape


def _slice_area(shape) -> float:
    """Area [m^2] of the shape's cross-section with the plane through its centre normal to y
    (the shape may be rotated about y only)."""
    from ..solvers.rigid.shapes import SHAPE_BOX, SHAPE_CAPSULE, SHAPE_SPHERE

    if shape.kind == SHAPE_BOX:
        return 4.0 * shape.size[0] * shape.size[2]
    if shape.kind == SHAPE_SPHERE:
        return math.pi * shape.size[0] ** 2
    if shape.kind == SHAPE_CAPSULE:
        return 4.0 * shape.size[0] * shape.size[1] + math.pi * shape.size[0] ** 2
    # a mesh: count samples inside its hull planes on a fine grid of the plane y = 0 (shape frame)
    import numpy as np

    planes = np.asarray(shape.mesh_planes, dtype=float)
    vertices = np.asarray(shape.mesh_vertices, dtype=float)
    reach = float(np.abs(vertices[:, [0, 2]]).max()) * 1.05
    n = 400
    axis = (np.arange(n) + 0.5) / n * 2.0 * reach - reach
    x, z = np.meshgrid(axis, axis, indexing="ij")
    points = np.stack([x.ravel(), np.zeros(x.size), z.ravel()], axis=1)
    inside = (points @ planes[:, :3].T - planes[:, 3] <= 0.0).all(axis=1)
    return float(inside.sum()) * (2.0 * reach / n) ** 2


def _effective_depths(rigid_model) -> list[float]:
    """Per body: volume / slice area [m], the depth of the prism a 2D slab of 1 m sees."""
    depths = []
    for b in range(rigid_model.body_count):
        shapes = [s for s in rigid_model.shapes if s.body == b]
        volume = sum(s.mass_properties()[0] / s.density for s in shapes)
        area = sum(_slice_area(s) for s in shapes)
        if not area > 0.0:
            raise HybridsimError(f"body {b} does not cut the plane y = 0 of the 2D MPM domain", field="objects")
        depths.append(volume / area)
    return depths


# ------------------------------------------------------------------------------------------- hook
class MPMRigidCoupling:
    """A ``SolverMPM`` grid hook coupling the material with the dynamic bodies of a RigidModel.

    Set ``coupling.state`` (a RigidState) before each MPM substep; the hook imposes the bodies'
    boundary condition on the grid and accumulates the reaction force and torque on each body in
    ``coupling.boundary`` (a ``RigidBoundary``): ``coupling.boundary.control(base)`` hands them to
    the rigid step. All torch, differentiable (the selection of coupled nodes and the
    ``separate`` switch are piecewise constant).

    Args:
        rigid_model: the bodies (and static boxes, obstacles for the material).
        dim: the MPM dimension; 2 couples in the world's x-z plane (y = 0) with per-body effective
            depths (module docstring).
        mode: ``separate``, ``slip`` or ``no_slip`` (see the module docstring).
        band: nodes with signed distance below ``band`` [m] are coupled (0: the nodes inside).
    """

    def __init__(self, rigid_model, dim: int, *, mode: str = "separate", band: float = 0.0):
        from ..solvers.rigid import RigidBoundary

        if mode not in COUPLING_MODES:
            raise HybridsimError(f"unknown coupling mode {mode!r}; expected one of {list(COUPLING_MODES)}",
                                 field="mode")
        if dim not in (2, 3):
            raise HybridsimError(f"MPM dim must be 2 or 3, got {dim}", field="dim")
        self.model, self.dim, self.mode, self.band = rigid_model, int(dim), mode, float(band)
        self.boundary = RigidBoundary(rigid_model)
        self._bodies = []
        for b in range(rigid_model.body_count):
            boundary = RigidBoundary(rigid_model)
            boundary.shapes = [(i, _slice_shape(s) if dim == 2 else s) for i, s in boundary.shapes if s.body == b]
            self._bodies.append(boundary)
        dtype, device = rigid_model.dtype, rigid_model.device
        depths = _effective_depths(rigid_model) if dim == 2 else [1.0] * rigid_model.body_count
        self.depth = torch.tensor(depths, dtype=dtype, device=device)
        """Per-body force scale (B,): the effective depth V / A [m] in 2D, 1 in 3D."""
        from ..solvers.rigid.shapes import SHAPE_BOX

        statics = [s for s in rigid_model.shapes if s.body < 0 and s.kind == SHAPE_BOX]
        self._static = [(torch.as_tensor(s.position, dtype=dtype, device=device),
                         torch.as_tensor(s.rotation, dtype=dtype, device=device),
                         torch.as_tensor((_slice_shape(s) if dim == 2 else s).size, dtype=dtype, device=device))
                        for s in statics]
        self.state = None
        self.last_force = None
        """Force [N] (B, 3) the last hook call put on the bodies (after the depth scale)."""
        self.last_torque = None
        self._lifted = None

    def _lift(self, node_position: torch.Tensor) -> torch.Tensor:
        if self._lifted is None or self._lifted[0] is not node_position:
            from .mpm import lift_positions

            self._lifted = (node_position, lift_positions(node_position).to(self.model.dtype))
        return self._lifted[1]

    def _project(self, delta: torch.Tensor, relative: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        if self.mode == "no_slip":
            return -relative
        normal_speed = (relative * normal).sum(-1, keepdim=True)
        if self.mode == "separate":
            normal_speed = torch.clamp(normal_speed, max=0.0)
        return -normal_speed * normal

    def __call__(self, grid, node_position: torch.Tensor, dt: float) -> torch.Tensor:
        from .mpm import lift_positions

        if self.state is None:
            raise HybridsimError("MPMRigidCoupling.state is not set (the bodies' RigidState of this substep)")
        state, points = self.state, self._lift(node_position)
        velocity = lift_positions(grid.velocity)
        mass = grid.mass
        has_mass = mass > 0.0
        count = len(self._bodies)
        if count:
            phis, normals, velocities = zip(*(b.signed_distance_and_velocity(state, points) for b in self._bodies))
            phi = torch.stack(phis)  # (B, G)
            owner = phi.detach().argmin(0) if count > 1 else torch.zeros_like(phi[0], dtype=torch.int64)
            pick = owner[None, :, None].expand(1, -1, 3)
            normal = torch.stack(normals).gather(0, pick)[0]
            body_velocity = torch.stack(velocities).gather(0, pick)[0]
            phi = phi.gather(0, owner[None])[0]
            if self.dim == 2:  # in-plane normals (the slice's), in-plane body velocity
                plane = normal.new_tensor([1.0, 0.0, 1.0])
                normal = normal * plane
                normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(normal.dtype).eps)
                body_velocity = body_velocity * plane
            active = (phi.detach() < self.band) & has_mass
            delta = self._project(velocity, velocity - body_velocity, normal)
            delta = torch.where(active[:, None], delta, torch.zeros_like(delta))
            # the grid gains m dv; the body gets the opposite, as a force over this substep
            node_force = -(mass[:, None] * delta) / dt
            depth = self.depth[owner][:, None]
            node_force = node_force * depth
            arm = points - state.body_position[owner]
            zeros = torch.zeros(count, 3, dtype=node_force.dtype, device=node_force.device)
            force = zeros.index_add(0, owner, node_force)
            torque = zeros.index_add(0, owner, torch.cross(arm, node_force, dim=1))
            self.boundary.apply_forces(force, torque)
            self.last_force, self.last_torque = force, torque
            velocity = velocity + delta
        for centre, rotation, half in self._static:  # immovable obstacles (no reaction)
            from ..solvers.rigid.model import quat_rotate

            conj = torch.cat([-rotation[:3], rotation[3:]])
            local = quat_rotate(conj.expand(points.shape[0], 4), points - centre)
            q = local.abs() - half
            outside = q.clamp_min(0.0)
            out_len = outside.norm(dim=1)
            inside = q.max(dim=1)
            phi = torch.where(out_len > 0, out_len, inside.values)
            sign = torch.where(local < 0, -1.0, 1.0).to(local.dtype)
            n_local = torch.where((out_len > 0)[:, None],
                                  sign * outside / out_len.clamp_min(torch.finfo(local.dtype).eps)[:, None],
                                  sign * torch.nn.functional.one_hot(inside.indices, 3).to(local.dtype))
            normal = quat_rotate(rotation.expand(points.shape[0], 4), n_local)
            active = (phi.detach() < self.band) & has_mass
            delta = self._project(velocity, velocity, normal)
            velocity = velocity + torch.where(active[:, None], delta, torch.zeros_like(delta))
        if self.dim == 2:
            return torch.stack([velocity[:, 0], velocity[:, 2]], dim=1)
        return velocity


def _planar(state):
    """Project a RigidState onto the x-z plane: y = 0, no y velocity, rotation about y only."""
    from ..solvers.rigid import RigidState

    plane = state.body_position.new_tensor([1.0, 0.0, 1.0])
    axis = state.body_position.new_tensor([0.0, 1.0, 0.0])
    q = state.body_orientation * state.body_orientation.new_tensor([0.0, 1.0, 0.0, 1.0])
    q = q / q.norm(dim=1, keepdim=True)
    return RigidState(state.body_position * plane, q, state.body_velocity * plane,
                      state.body_angular_velocity * axis, state.contact_impulse)


# ------------------------------------------------------------------------------------------ solver
class CoupledSolver:
    """SolverMPM + SolverRigid stepped together with a common substep (module docstring).

    ``band`` [m] defaults to ``BAND_CELLS`` (0.75) grid spacings: with it, a 2D box of density
    ratio 0.25-0.75 floats with its immersion within 5% of the closed form (docs/mpm.md; with
    band 0, particles seep into the body and it floats 60% too deep, with one dx it floats
    ~1/4 dx too high).

    ``step(mpm_state, rigid_state, dt)`` -> (mpm_state, rigid_state), differentiable (torch
    autograd through both solvers and the coupling); under ``torch.no_grad()`` it is a plain run.
    """

    def __init__(self, mpm_model, rigid_model, *, backend: str = "warp", deterministic: bool = False,
                 mode: str = "separate", band: float | None = None):
        from ..solvers.mpm import SolverMPM
        from ..solvers.rigid import SolverRigid

        band = BAND_CELLS * mpm_model.grid.dx if band is None else band
        self.coupling = MPMRigidCoupling(rigid_model, mpm_model.dim, mode=mode, band=band)
        self.mpm = SolverMPM(mpm_model, backend=backend, deterministic=deterministic, grid_hooks=[self.coupling])
        self.rigid = SolverRigid(rigid_model, backend=backend, device=rigid_model.device)
        self.dim = mpm_model.dim

    def step(self, mpm_state, rigid_state, dt: float, *, parameters=None, mpm_control=None, rigid_control=None):
        """One common substep of ``dt`` [s]: the MPM substep sees the bodies at ``rigid_state``;
        the rigid step gets the reaction of the material (plus ``rigid_control``'s loads)."""
        self.coupling.state = rigid_state
        mpm_next = self.mpm.step_differentiable(mpm_state, mpm_control, dt, parameters=parameters)
        control = self.coupling.boundary.control(rigid_control)
        rigid_next = self.rigid.step_differentiable(rigid_state, control, dt)
        if self.dim == 2:
            rigid_next = _planar(rigid_next)
        return mpm_next, rigid_next


def total_momentum(mpm_state, particle_mass: torch.Tensor, rigid_state, body_mass: torch.Tensor,
                   depth: torch.Tensor | None = None) -> torch.Tensor:
    """Linear momentum [kg m/s] of material + bodies in the MPM's axes (d,): in 2D, per metre of
    the slab, sum m_p v_p + sum_b M_b v_b / depth_b (``depth``: ``coupling.depth``)."""
    material = (particle_mass[:, None] * mpm_state.particle_velocity).sum(0)
    body = body_mass[:, None] * rigid_state.body_velocity
    if depth is not None:
        body = body / depth[:, None]
    body = body.sum(0)
    if material.shape[0] == 2:
        body = torch.stack([body[0], body[2]])
    return material + body


# ------------------------------------------------------------------------------------------ scenes
@dataclass
class CoupledTrajectory:
    """Per-frame states of a coupled scene rollout; frame 0 is the initial state."""

    mpm: object
    """An ``MPMSceneTrajectory`` (particle positions and velocities, model, substeps, dt)."""
    rigid: object
    """A ``RigidTrajectory`` (body positions, orientations, velocities; body_objects)."""
    times: torch.Tensor
    """Frame times [s], shape (F+1,)."""
    depth: torch.Tensor | None = None
    """Per-body effective depth [m] in 2D (``MPMRigidCoupling.depth``), None in 3D."""

    @property
    def frame_count(self) -> int:
        return int(self.times.shape[0])

    @property
    def substeps(self) -> int:
        return self.mpm.substeps

    @property
    def dt(self) -> float:
        return self.mpm.dt


@dataclass
class CoupledSystem:
    """The models and solver of a coupled scene (``coupled_system``)."""

    mpm_model: object
    rigid_model: object
    solver: CoupledSolver
    substeps: int
    dt: float


def _check_plane(world) -> None:
    """2D coupled scenes: bodies in the x-z plane (SceneError naming the field otherwise)."""
    spec = world.spec
    if abs(spec.gravity[1]) > 0.0:
        raise SceneError("must have no y component in a 2D [mpm] scene with objects (the bodies stay in the x-z "
                         "plane)", file=spec.source, field="gravity")
    for i, obj in enumerate(spec.objects):
        checks = [("position", 1), ("velocity", 1)]
        if obj.type != "sphere":
            checks += [("orientation", 0), ("orientation", 2), ("angular_velocity", 0), ("angular_velocity", 2)]
        for name, axis in checks:
            value = getattr(obj, name, None)
            if value is not None and abs(value[axis]) > 0.0:
                what = "y component" if name in ("position", "velocity") else "x and z components"
                raise SceneError(f"the {what} must be 0 in a 2D [mpm] scene (bodies move in the x-z plane at y = 0 "
                                 "and rotate about y)", file=spec.source, field=f"objects[{i}].{name}")


def coupled_system(world, params: Mapping[str, torch.Tensor] | None = None) -> CoupledSystem:
    """The scene's MPM model, rigid model (differentiable w.r.t. ``params``), the coupled solver
    and the common substep (substeps per frame, dt [s])."""
    from .mpm import mpm_model, mpm_substeps
    from .rigid import rigid_model

    spec = world.spec
    if getattr(spec, "mpm", None) is None or not spec.objects:
        raise SceneError("a coupled scene needs both [mpm] and [[objects]]", file=spec.source, field="objects")
    if spec.mpm.dim == 2:
        _check_plane(world)
    for path in spec.learnable:
        if path == "gravity":
            raise SceneError("cannot be learned in a scene with [mpm] (the MPM gravity is fixed)", file=spec.source,
                             field=path)
    mpm = mpm_model(world, params)
    rigid = rigid_model(world, params)
    substeps, dt = mpm_substeps(world, mpm)
    try:
        solver = CoupledSolver(mpm, rigid, backend=world.backend, deterministic=world.deterministic,
                               mode=spec.mpm.wall_mode)
    except HybridsimError as error:
        raise SceneError(error.message, file=spec.source, field=error.field or "objects") from None
    return CoupledSystem(mpm, rigid, solver, substeps, dt)


def coupled_rollout(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
                    progress: Callable[[int], None] | None = None, checkpoint: bool | str = "auto",
                    segment_frames: int | None = None, system: CoupledSystem | None = None) -> CoupledTrajectory:
    """Simulate a scene with ``[mpm]`` and ``[[objects]]`` for ``frames`` frames (default: the
    scene's); per-frame particle and body states, differentiable w.r.t. ``params`` (material
    constants, MPM body velocities/centres, object positions, orientations, velocities, masses or
    densities, friction, restitution). With gradients, segments of about sqrt(frames) frames are
    checkpointed (``torch.utils.checkpoint``: only segment boundaries are kept) once the rollout
    has 64 substeps. A non-finite state, a particle leaving the grid or a particle CFL number
    above the guard's limit raises SimulationError naming the frame (without gradients it
    carries ``partial``, a CoupledTrajectory of the good frames)."""
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    from ..solvers.mpm import MPMState
    from ..solvers.rigid import RigidState
    from .guards import MPMGuard
    from .mpm import MPMSceneTrajectory, mpm_initial_state
    from .rigid import RigidTrajectory, rigid_body_objects, rigid_initial_state

    scene = world.spec
    frames = scene.frame_count if frames is None else int(frames)
    system = system or coupled_system(world, params)
    solver, substeps, dt = system.solver, system.substeps, system.dt
    mpm_state, rigid_state = mpm_initial_state(system.mpm_model), rigid_initial_state(system.rigid_model)
    if system.mpm_model.dim == 2:
        rigid_state = _planar(rigid_state)
    parameters = system.mpm_model.particle_parameters()
    recording = torch.is_grad_enabled()
    if checkpoint == "auto":
        checkpoint = recording and frames * substeps >= 64
    if checkpoint and segment_frames is None:
        segment_frames = max(1, round(math.sqrt(frames)))
    segment_frames = frames if not checkpoint else max(1, int(segment_frames))
    guard = MPMGuard(system.mpm_model, dt=dt, substeps=substeps, spec=scene)

    def run_segment(count: int, *tensors):
        mpm_current, rigid_current = MPMState(*tensors[:5]), RigidState(*tensors[5:])
        record = [[] for _ in range(6)]
        for _ in range(count):
            for _ in range(substeps):
                mpm_current, rigid_current = solver.step(mpm_current, rigid_current, dt, parameters=parameters)
            for column, value in zip(record, (mpm_current.particle_position, mpm_current.particle_velocity,
                                              rigid_current.body_position, rigid_current.body_orientation,
                                              rigid_current.body_velocity, rigid_current.body_angular_velocity)):
                column.append(value)
        return (*(torch.stack(column) for column in record), *mpm_current.tensors()[2:], rigid_current.contact_impulse)

    lists = [[t] for t in (mpm_state.particle_position, mpm_state.particle_velocity, rigid_state.body_position,
                           rigid_state.body_orientation, rigid_state.body_velocity, rigid_state.body_angular_velocity)]

    def trajectory(kept: int) -> CoupledTrajectory:
        x, v, bx, bq, bv, bw = (torch.stack(column[:kept]) for column in lists)
        times = torch.arange(kept, dtype=torch.float64) / scene.time.fps
        mpm = MPMSceneTrajectory(x, v, times, system.mpm_model, system.mpm_model.particle_body, substeps, dt,
                                 mpm_state)
        rigid = RigidTrajectory(bx, bq, bv, bw, times.to(world.dtype), system.rigid_model, rigid_body_objects(scene))
        depth = solver.coupling.depth if system.mpm_model.dim == 2 else None
        return CoupledTrajectory(mpm, rigid, times, depth)

    frame = 0
    while frame < frames:
        count = min(segment_frames if recording else 1, frames - frame)
        args = (count, *mpm_state.tensors(), *rigid_state.tensors())
        try:
            if checkpoint:
                out = torch_checkpoint(run_segment, *args, use_reentrant=False)
            else:
                out = run_segment(*args)
        except SimulationError as error:
            raise _named(error, scene, frame + 1, None if recording else trajectory(frame + 1)) from None
        seg = out[:6]
        mpm_state = MPMState(seg[0][-1], seg[1][-1], out[6], out[7], out[8])
        rigid_state = RigidState(seg[2][-1], seg[3][-1], seg[4][-1], seg[5][-1], out[9])
        for k in range(count):
            violation = guard.check(seg[0][k], seg[1][k])
            bodies_ok = all(bool(torch.isfinite(s[k].detach()).all()) for s in seg[2:])
            if violation is None and not bodies_ok:
                from .guards import Violation

                violation = Violation("body_position", "rigid bodies", "body state is non-finite",
                                      "raise mpm.substeps or check the body masses (a body much lighter than the "
                                      "material it touches)")
            if violation is not None:
                error = guard.error(violation, frame + k + 1)
                if not recording:
                    error.partial = trajectory(frame + k + 1)
                raise error
            for column, values in zip(lists, seg):
                column.append(values[k])
        frame += count
        if progress is not None:
            progress(frame)
    return trajectory(frames + 1)


def _named(error: SimulationError, scene, frame: int, partial) -> SimulationError:
    named = SimulationError(f"coupled MPM-rigid simulation blew up in frame {frame}: {error.message}",
                            file=scene.source or error.file, step=error.step, quantity=error.quantity, frame=frame)
    named.partial = partial
    return named
