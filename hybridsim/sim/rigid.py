"""Scenes with rigid objects: the ``[[objects]]`` of a scene made into a RigidModel, and
differentiable rollouts of it recorded once per frame.

A scene is simulated by the rigid-body solver (``hybridsim.solvers.rigid``) when it has any
object of type ``box``, ``capsule``, ``mesh``, ``static_box`` or ``static_mesh``; its spheres then
become rigid balls too (friction 0.5, no spin at t = 0). Sphere-only scenes keep the exact sphere solver.

Every dynamic object is one body with one shape; a ``static_box`` or ``static_mesh`` is a static
shape (``RigidBuilder.add_static_box`` / ``add_static_mesh``). The model's
learnable tensors are replaced by tensors derived from ``params`` (as ``sim/fluid.py`` does), so
gradients of anything computed from a rollout reach: ``objects[i].position``, ``.orientation``
(rotation vector), ``.velocity``, ``.angular_velocity``, ``.mass`` or ``.density`` (the inertia
scales with the mass), ``.friction``, ``.restitution``, ``ground.friction``,
``ground.restitution`` and ``gravity``. Geometry (half extents, radii, mesh scale) and static
boxes and meshes (but their colour) cannot be learned: the contact slots are built from them once (SceneError if marked).

External loads: ``rigid_rollout(..., force_hook=)`` adds a force through each body's centre of mass
and a torque in every substep (through the solver's ``RigidControl``, so gradients reach whatever
the hook's loads depend on); :class:`AirDrag` is such a hook (linear or quadratic air drag).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import AssetError, HybridsimError, SceneError, SimulationError

__all__ = ["RigidTrajectory", "rigid_model", "rigid_initial_state", "rigid_rollout", "rigid_body_objects",
           "mesh_file", "AirDrag", "SPHERE_FRICTION", "RIGID_LEARNABLE"]

#: Friction of spheres in rigid scenes (SphereSpec has no friction field).
SPHERE_FRICTION = 0.5
RIGID_LEARNABLE = ("objects[i].position", "objects[i].orientation", "objects[i].velocity",
                   "objects[i].angular_velocity", "objects[i].mass", "objects[i].density", "objects[i].friction",
                   "objects[i].restitution", "objects[i].color", "ground.friction", "ground.restitution", "gravity")
_GEOMETRY = ("half_extents", "radius", "half_height", "scale")


@dataclass
class RigidTrajectory:
    """Per-frame body states of a rigid rollout; frame 0 is the initial state. Body b is scene
    object ``body_objects[b]`` (static boxes and meshes are no bodies)."""

    positions: torch.Tensor
    """Centres of mass [m], shape (F+1, B, 3)."""
    orientations: torch.Tensor
    """Orientations, quaternion (x, y, z, w), shape (F+1, B, 4)."""
    velocities: torch.Tensor
    """Centre-of-mass velocities [m/s], shape (F+1, B, 3)."""
    angular_velocities: torch.Tensor
    """World-frame angular velocities [rad/s], shape (F+1, B, 3)."""
    times: torch.Tensor
    """Frame times [s], shape (F+1,)."""
    model: object
    """The RigidModel the rollout used (shapes for rendering)."""
    body_objects: tuple[int, ...]

    @property
    def frame_count(self) -> int:
        return self.positions.shape[0]


def rigid_body_objects(spec) -> tuple[int, ...]:
    """Scene object index of each rigid body (every object except static boxes and meshes), in body order."""
    from ..scene.schema import STATIC_TYPES

    return tuple(i for i, obj in enumerate(spec.objects) if obj.type not in STATIC_TYPES)


def mesh_file(spec, index: int) -> Path:
    """The mesh file of ``objects[index]``, resolved against the scene file's folder (SceneError if
    it leaves that folder, e.g. through a symbolic link, unless HYBRIDSIM_ALLOW_OUTSIDE_PATHS=1;
    see :func:`hybridsim.assets.resolve_asset_path`)."""
    from ..assets import resolve_asset_path

    return resolve_asset_path(spec.source, spec.objects[index].file, field=f"objects[{index}].file")


def _mesh_source(spec, index: int):
    """What ``add_shape_mesh`` (``add_static_mesh``) gets for ``objects[index]``: the file, or, when
    the object gives ``mass`` (or is a static mesh, which needs no volume), the loaded mesh, replaced
    by its convex hull if it is not closed (its volume is then undefined, but a mass plus the hull's
    inertia still make a body)."""
    from ..assets import load_mesh

    path = mesh_file(spec, index)
    if spec.objects[index].type != "static_mesh" and spec.objects[index].mass is None:
        return str(path)
    mesh = load_mesh(path)
    if mesh.is_watertight:
        return mesh
    import numpy as np

    try:
        with np.errstate(all="ignore"):  # trimesh divides by the zero volume of a flat hull
            hull = mesh.convex_hull
    except Exception as error:  # qhull fails on flat or degenerate point sets
        raise AssetError(f"mesh is not watertight and has no solid convex hull (flat or degenerate?): {error}"[:300],
                         file=str(path)) from None
    hull.metadata["hybridsim_source"] = str(path)
    return hull


def _check_learnable(spec) -> None:
    for path in spec.learnable:
        if not path.startswith("objects["):
            continue
        index = int(path[len("objects["):path.index("]")])
        field = path[path.index("]") + 2:].split("[")[0].split(".")[0]
        obj = spec.objects[index]
        if field in _GEOMETRY or obj.type in ("static_box", "static_mesh") and field != "color":
            what = {"static_box": "static boxes", "static_mesh": "static meshes"}.get(obj.type, "geometry")
            raise SceneError(f"cannot be learned in a rigid scene ({what} is fixed when the contact slots are built)",
                             file=spec.source, field=path)


def _quat_numpy(rotation_vector) -> tuple[float, float, float, float]:
    from ..solvers.rigid import quat_from_rotation_vector

    return tuple(quat_from_rotation_vector(torch.tensor(rotation_vector, dtype=torch.float64)).tolist())


def _add_joints_and_springs(spec, builder, body_objects) -> None:
    """``[[joints]]`` and ``[[springs]]``: object names -> body indices (static objects and a missing
    ``b`` are the world); anchors are world points where the objects stand in the scene."""
    import numpy as np

    names = {obj.name: i for i, obj in enumerate(spec.objects)}
    body_of = {i: b for b, i in enumerate(body_objects)}

    def body(name):
        return -1 if name is None else body_of.get(names[name], -1)

    for j, joint in enumerate(spec.joints):
        try:
            builder.add_joint(joint.type, body(joint.a), body(joint.b), anchor=joint.anchor, axis=joint.axis)
        except HybridsimError as error:
            raise SceneError(getattr(error, "message", str(error)), file=spec.source, field=f"joints[{j}]") from None
    for k, spring in enumerate(spec.springs):
        a, b = body(spring.a), body(spring.b)
        local = []
        for index, point in ((a, spring.anchor_a), (b, spring.anchor_b)):
            if index < 0:
                local.append(point)
                continue
            record = builder.bodies[index]  # the builder's frame: add_body position and orientation
            from ..solvers.rigid.builder import _quat_matrix

            local.append(_quat_matrix(record["orientation"]).T @ (np.asarray(point, float) - np.asarray(record["position"], float)))
        builder.add_spring(a, b, anchor_a=local[0], anchor_b=local[1], stiffness=spring.stiffness,
                           damping=spring.damping, rest_length=spring.rest_length)


def rigid_model(world, params: Mapping[str, torch.Tensor] | None = None):
    """A RigidModel of the scene's objects, differentiable w.r.t. the learnable fields listed in
    the module docstring (``params`` from ``world.parameters()``)."""
    from ..solvers.rigid import RigidBuilder, quat_from_rotation_vector, quat_rotate

    spec = world.spec
    if world.world_count != 1:
        raise HybridsimError(f"rigid scenes run one world at a time (got world_count={world.world_count})",
                             field="world_count")
    _check_learnable(spec)
    ground = spec.ground
    builder = RigidBuilder(gravity=spec.gravity, ground=ground.enabled, ground_height=ground.height,
                           ground_friction=ground.friction, ground_restitution=ground.restitution)
    shape_objects, body_objects = [], []
    try:
        for i, obj in enumerate(spec.objects):
            field = f"objects[{i}]"
            if obj.type == "static_box":
                builder.add_static_box(obj.half_extents, position=obj.position, rotation=_quat_numpy(obj.orientation),
                                       friction=obj.friction, restitution=obj.restitution)
                shape_objects.append(i)
                continue
            if obj.type == "static_mesh":
                builder.add_static_mesh(_mesh_source(spec, i), scale=obj.scale, position=obj.position,
                                        rotation=_quat_numpy(obj.orientation), friction=obj.friction,
                                        restitution=obj.restitution)
                shape_objects.append(i)
                continue
            sphere = obj.type == "sphere"
            density = obj.density if obj.density is not None else 1000.0
            material = dict(density=density, friction=SPHERE_FRICTION if sphere else obj.friction,
                            restitution=obj.restitution)
            body = builder.add_body(position=obj.position,
                                    orientation=(0.0, 0.0, 0.0, 1.0) if sphere else _quat_numpy(obj.orientation),
                                    velocity=obj.velocity,
                                    angular_velocity=(0.0, 0.0, 0.0) if sphere else obj.angular_velocity,
                                    mass=obj.mass, name=obj.name)
            if sphere:
                builder.add_shape_sphere(body, obj.radius, **material)
            elif obj.type == "box":
                builder.add_shape_box(body, obj.half_extents, **material)
            elif obj.type == "capsule":
                builder.add_shape_capsule(body, obj.radius, obj.half_height, **material)
            elif obj.type == "mesh":
                builder.add_shape_mesh(body, _mesh_source(spec, i), scale=obj.scale, **material)
            else:  # a new object type added to the schema but not here
                raise SceneError(f"object type {obj.type!r} is not supported by the rigid solver", field=f"{field}.type")
            shape_objects.append(i)
            body_objects.append(i)
        _add_joints_and_springs(spec, builder, body_objects)
        model = builder.finalize(device=world.device, dtype=world.dtype)
    except HybridsimError as error:
        if error.file is None:
            raise SceneError(getattr(error, "message", str(error)), file=spec.source,
                             field=error.field or "objects") from None
        raise

    value = lambda path: world.value(path, params)  # noqa: E731
    dtype, device = world.dtype, world.device

    def shape_material(i: int, name: str, default: float) -> torch.Tensor:
        obj = spec.objects[i]
        if obj.type == "sphere" and name == "friction":
            return torch.tensor(default, dtype=dtype, device=device)
        return value(f"objects[{i}].{name}").reshape(())

    model.shape_friction = torch.stack([shape_material(i, "friction", SPHERE_FRICTION) for i in shape_objects])
    model.shape_restitution = torch.stack([shape_material(i, "restitution", 0.5) for i in shape_objects])
    model.ground_friction = value("ground.friction").reshape(())
    model.ground_restitution = value("ground.restitution").reshape(())
    model.gravity = value("gravity").reshape(3)
    if spec.springs:  # learnable stiffness, damping and rest length reach the spring loads (torch ops)
        spring = dict(model.spring)
        for key in ("stiffness", "damping"):
            spring[key] = torch.stack([value(f"springs[{k}].{key}").reshape(()) for k in range(len(spec.springs))])
        lengths = [value(f"springs[{k}].rest_length").reshape(()) if item.rest_length is not None
                   else model.spring["rest_length"][k] for k, item in enumerate(spec.springs)]
        spring["rest_length"] = torch.stack(lengths)
        model.spring = spring

    mass0 = model.body_mass.detach()
    masses, orientations, positions, velocities, spins = [], [], [], [], []
    for b, i in enumerate(body_objects):
        obj = spec.objects[i]
        if obj.mass is not None:
            masses.append(value(f"objects[{i}].mass").reshape(()))
        else:  # density times the (fixed) volume
            masses.append(value(f"objects[{i}].density").reshape(()) * (mass0[b] / obj.density))
        if obj.type == "sphere":
            q = model.body_orientation[b].detach()
            spins.append(torch.zeros(3, dtype=dtype, device=device))
        else:
            q = quat_from_rotation_vector(value(f"objects[{i}].orientation").reshape(3))
            spins.append(value(f"objects[{i}].angular_velocity").reshape(3))
        q0 = model.body_orientation[b].detach()
        conj = torch.cat([-q0[:3], q0[3:]])
        # centre of mass in the object's frame (non-zero for meshes whose origin is elsewhere)
        com = quat_rotate(conj, model.body_position[b].detach() - torch.tensor(obj.position, dtype=dtype, device=device))
        orientations.append(q)
        positions.append(value(f"objects[{i}].position").reshape(3) + quat_rotate(q, com))
        velocities.append(value(f"objects[{i}].velocity").reshape(3))
    mass = torch.stack(masses)
    model.body_mass = mass
    model.body_inertia = model.body_inertia.detach() * (mass / mass0)[:, None]
    model.body_orientation = torch.stack(orientations)
    model.body_position = torch.stack(positions)
    model.body_velocity = torch.stack(velocities)
    model.body_angular_velocity = torch.stack(spins)
    return model


def rigid_initial_state(model):
    """The state at t = 0 holding the model's (possibly param-derived) initial tensors, so
    gradients flow into them (``model.state()`` detaches)."""
    from ..solvers.rigid import RigidState

    return RigidState(model.body_position, model.body_orientation, model.body_velocity, model.body_angular_velocity,
                      torch.zeros(model.contact_count, 3, dtype=model.dtype, device=model.device))


@dataclass
class AirDrag:
    """A ``force_hook`` of :func:`rigid_rollout`: air drag on every body, a force through its centre
    of mass -m k v (``kind="linear"``, ``coefficient`` k [1/s]) or -m c |v| v (``"quadratic"``, c
    [1/m]), v the centre-of-mass velocity at the start of the substep, m the body's mass (the
    model's, so a learned mass keeps the drag an acceleration). Torque-free: no drag torque and no
    dependence on the shape, orientation or spin (a point-mass model of drag)."""

    kind: str
    coefficient: torch.Tensor | float
    """Differentiable scalar (gradients flow into it through the rollout)."""

    def __post_init__(self):
        if self.kind not in ("linear", "quadratic"):
            raise HybridsimError(f"drag must be linear or quadratic (got {self.kind!r})", field="drag")

    def __call__(self, step: int, state, model):
        velocity = state.body_velocity
        k = torch.as_tensor(self.coefficient, dtype=velocity.dtype, device=velocity.device).reshape(())
        if self.kind == "linear":
            acceleration = -k * velocity
        else:
            speed = torch.sqrt((velocity * velocity).sum(dim=1, keepdim=True) + 1e-12)
            acceleration = -k * speed * velocity
        return acceleration * model.body_mass.to(velocity)[:, None], None


def rigid_rollout(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
                  progress: Callable[[int], None] | None = None, check: bool = True,
                  checkpoint: bool | str = "auto", segment_frames: int | None = None,
                  force_hook: Callable | None = None) -> RigidTrajectory:
    """Simulate the scene's rigid objects for ``frames`` frames (default: the scene's) and return
    per-frame body states, differentiable w.r.t. ``params``. ``progress(frames_done)`` is called
    after each segment of frames. With ``check`` the blow-up guards (``hybridsim.sim.guards``:
    non-finite state, penetration, energy growth) run at every frame boundary; a violation raises
    SimulationError naming frame, substep, object and quantity, with ``error.partial`` the
    RigidTrajectory of the good frames before it.

    ``checkpoint="auto"`` (when recording gradients and the rollout has at least 64 steps) keeps
    only the states at segment boundaries of ``segment_frames`` frames (default about
    sqrt(frames / substeps)) and re-runs each segment in backward (``torch.utils.checkpoint``), so
    autograd memory grows with sqrt(steps) instead of steps. Gradients are the same.

    ``force_hook(step, state, model) -> (force, torque)``: external loads in every substep (``step``
    the 0-based substep index from t = 0, ``state`` the RigidState at its start, ``model`` the
    RigidModel); force [N] through each body's centre of mass and world-frame torque [N m], each
    (B, 3) or None (zero), held constant over the substep and passed to the solver as its
    ``RigidControl``, so gradients flow into them (into tensors the hook captures, too). A
    checkpointed segment calls it again with the same steps and states in backward: it must be a
    pure function of its arguments (and of tensors it holds). E.g. :class:`AirDrag`. Without a hook
    the steps get no control (no extra cost).
    """
    from torch.utils.checkpoint import checkpoint as torch_checkpoint

    from ..solvers.rigid import RigidState, SolverRigid

    spec = world.spec
    frames = spec.frame_count if frames is None else int(frames)
    substeps, dt = spec.time.substeps, spec.dt
    recording = torch.is_grad_enabled()
    if checkpoint == "auto":
        checkpoint = recording and frames * substeps >= 64
    if checkpoint and segment_frames is None:
        segment_frames = max(1, round(math.sqrt(frames / substeps)))
    segment_frames = 1 if not checkpoint else max(1, int(segment_frames))
    from .resources import check_scene_memory

    check_scene_memory(spec, frames=frames, grad=recording, precision=world.precision,
                       device=world.device, world_count=world.world_count)
    model = rigid_model(world, params)
    solver = SolverRigid(model, backend=world.backend, device=world.device)

    def advance(current, step: int):
        """One substep (``step``: 0-based from t = 0) with the hook's loads, if any."""
        control = None
        if force_hook is not None:
            from ..solvers.rigid import RigidControl

            force, torque = force_hook(step, current, model)
            control = RigidControl(body_force=force, body_torque=torque)
        return solver.step_differentiable(current, control, dt)

    state = rigid_initial_state(model)
    bodies = rigid_body_objects(spec)
    keys = ("positions", "orientations", "velocities", "angular_velocities")
    record = {key: [tensor] for key, tensor in zip(keys, state.tensors()[:4])}
    guard = None
    if check:
        from .guards import RigidGuard, describe_object

        guard = RigidGuard(model, state, substeps=substeps, spec=spec,
                           body_names=[describe_object(spec, i) for i in bodies],
                           shape_names=[describe_object(spec, i) for i in range(len(spec.objects))])

    def run_segment(first: int, count: int, *tensors):
        current = RigidState(*tensors)
        per_frame = []
        for f in range(first, first + count):
            for sub in range(substeps):
                current = advance(current, f * substeps + sub)
            per_frame.append(current.tensors())
        stacked = tuple(torch.stack([f[k] for f in per_frame]) for k in range(4))
        return (*stacked, current.contact_impulse)

    def fail(frame: int, start, violation):
        from .guards import blow_up, locate_substep

        substep = None if guard is None else locate_substep(
            lambda current, sub: advance(current, (frame - 1) * substeps + sub), start, substeps,
            lambda current: guard.check(current) is not None)
        times = torch.arange(frame, dtype=world.dtype) / spec.time.fps
        partial = RigidTrajectory(**{k: torch.stack(v).detach() for k, v in record.items()}, times=times,
                                  model=model, body_objects=bodies)
        raise blow_up(spec, violation, frame=frame, substeps=substeps, substep=substep, partial=partial)

    frame = 0
    while frame < frames:
        count = min(segment_frames, frames - frame)
        start = state
        try:
            if checkpoint:
                outputs = torch_checkpoint(run_segment, frame, count, *state.tensors(), use_reentrant=False)
            else:
                outputs = run_segment(frame, count, *state.tensors())
        except SimulationError as error:  # a solver check: name the frame, keep the good frames
            if error.frame is not None:
                raise
            from .guards import Violation

            fail(frame + 1, start, Violation(error.quantity or "state", "rigid bodies", error.message,
                                             "lower dt (more substeps) or check masses and parameters"))
        impulse = outputs[4]
        for k in range(count):
            frame_state = RigidState(*(outputs[i][k] for i in range(4)), impulse)
            violation = guard.check(frame_state) if guard is not None else None
            if violation is not None:
                fail(frame + k + 1, start, violation)
            for key, i in zip(keys, range(4)):
                record[key].append(outputs[i][k])
            start = frame_state  # the next frame's start (its warm-start impulses are approximate)
        state = RigidState(*(outputs[i][count - 1] for i in range(4)), impulse)
        frame += count
        if progress is not None:
            progress(frame)
    times = torch.arange(frames + 1, dtype=world.dtype) / spec.time.fps
    return RigidTrajectory(**{k: torch.stack(v) for k, v in record.items()}, times=times, model=model,
                           body_objects=bodies)
