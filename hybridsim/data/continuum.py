"""Fluid (2D and 3D smoke) and MPM samples of a generate job: guarded rollout, gates, render, encode.

Both write the entries every sample has (see :mod:`hybridsim.data.job`):

* 2D ``[fluid]``: ``hybridsim.sim.fluid.fluid_rollout`` (its guard stops non-finite fields and CFL
  numbers above 5), the gates of :func:`~hybridsim.data.gates.evaluate_fluid_gates` (density
  against the inflow budget, CFL), ``hybridsim.render.fluid.render_fluid_frames`` (a fixed
  camera: a moving one is a SceneError). states.npz holds the density and the cell-centred
  velocity on every ``field_stride``-th cell.
* 3D ``[fluid]`` (``cells = [nx, ny, nz]``): the same with ``fluid_rollout3d`` (its guard also
  stops density above twice the inflow budget), ``hybridsim.render.fluid3d.render_fluid3d_frames``
  (smoke ray-marched over the ground and obstacles; cameras may move, e.g. ``[camera.orbit]``
  with ``sweep_deg``, the surfaces then rasterised every frame). states.npz holds the density
  and the cell-centred 3D velocity on every ``field_stride``-th cell of each axis.
* 2D ``[fluid]`` with ``[[objects]]`` (boxes and spheres coupled two-way with the smoke):
  ``hybridsim.sim.fluid_rigid.fluid_rigid_rollout`` with the fluid's guard applied to its frames
  afterwards (the rollout itself stops on non-finite body states), the gates of
  :func:`~hybridsim.data.gates.fluid_rigid_initial_gates` (bodies overlapping at t = 0 or sticking
  out of the fluid's domain) and :func:`~hybridsim.data.gates.evaluate_fluid_rigid_gates` (the
  fluid's, penetration, bodies inside the domain; no energy gate: the smoke does work on the
  bodies), ``hybridsim.render.fluid_rigid.render_fluid_rigid_frames`` (segmentation 1 smoke,
  k + 2 object k; flow: the bodies' rigid motion on them). states.npz: the 2D fluid's arrays plus
  the body states under the names ``hybridsim render`` writes (``body_position``, ...), masses
  and inertia; the json: the fluid's labels (with its ``density``), the objects as rigid samples
  label them, springs, joints, ground.
* ``[mpm]``: ``hybridsim.sim.mpm.mpm_rollout`` (``MPMGuard``: non-finite particles, particles
  leaving the grid, particle CFL above 1), the gates of
  :func:`~hybridsim.data.gates.evaluate_mpm_gates` (kinetic + gravitational energy gain, CFL),
  ``hybridsim.render.particles.render_mpm_layers`` (cameras may move). states.npz holds at most
  ``max_state_particles`` particles, an evenly strided subset, with their indices.

Determinism: distributions make scenes deterministic unless they say otherwise; the MPM solver's
deterministic mode then scatters in particle order (Warp on the CPU always does; Taichi
serialises P2G/G2P), so the same draw gives the same bytes in any process.
"""

from __future__ import annotations

import time

from .job import Draw, GenerateJob, base_meta, finish_meta, non_finite_layers, reject, sample_entries

__all__ = ["fluid_attempt", "fluid_rigid_attempt", "mpm_attempt", "particle_subset"]

_FLOW_LAYERS = ("alpha", "normal", "flow_forward", "flow_backward")  # depth is inf off the bodies


def fluid_attempt(job: GenerateJob, draw: Draw, rejected: list, timing: dict) -> dict | None:
    """One draw of a ``[fluid]`` scene: the entries, or None after recording why it was rejected."""
    import torch

    from ..errors import SceneError, SimulationError
    from ..render import Camera
    from ..render.camera_io import camera_moves
    from ..render.fluid import render_fluid_frames
    from ..sim.fluid import fluid_rollout
    from .gates import evaluate_fluid_gates
    from .sample import camera_layers

    world, spec = draw.world, draw.spec
    if spec.fluid.dimension == 2 and camera_moves(spec.camera):
        raise SceneError("generate renders [fluid] scenes with a fixed camera (drop camera.orbit.sweep_deg and "
                         "[[camera.keyframes]])", file=job.distribution_name, field="camera")
    start = time.perf_counter()
    try:
        with torch.no_grad():
            trajectory = fluid_rollout(world, check=True)
    except SimulationError as error:
        timing["simulate_s"] += time.perf_counter() - start
        reject(rejected, draw, [_fluid_blow_up(error)])
        return None
    measured, failures = evaluate_fluid_gates(world, trajectory, job.gates)
    timing["simulate_s"] += time.perf_counter() - start
    if failures:
        reject(rejected, draw, failures)
        return None

    if spec.fluid.dimension == 3:
        return _fluid3d_entries(job, draw, trajectory, measured, rejected, timing)
    start = time.perf_counter()
    camera = Camera.from_spec(spec.camera)
    with torch.no_grad():
        rendered = render_fluid_frames(camera, spec.fluid, trajectory, 1.0 / spec.time.fps)
    from ..render import to_uint8

    rgb = to_uint8(rendered.pop("rgb").numpy())
    layers = {key: _numpy_layer(value) for key, value in rendered.items()}
    layers.update(camera_layers([camera] * rgb.shape[0]))
    timing["render_s"] += time.perf_counter() - start
    if non_finite_layers(rejected, draw, layers, ("alpha", "density", "normal", "flow_forward", "flow_backward")):
        return None

    stride = int(job.option("field_stride") or 1)
    states = _fluid_states(trajectory, spec.fluid.cells, stride)
    frame_count = rgb.shape[0]
    meta = base_meta(job, draw, layers, "fluid", frame_count)
    meta["fluid"] = _fluid_record(spec, stride)
    finish_meta(meta, job, draw, measured, rejected, {
        "mp4": f"H.264 video, {frame_count} frames of {spec.camera.width}x{spec.camera.height} at {spec.time.fps:g} fps",
        "layers.npz": "alpha (T,H,W) [smoke opacity], density (T,H,W) [the grid density seen by each pixel], depth "
                      "(T,H,W) m [inf off the fluid plane], normal (T,H,W,3) camera space, segmentation (T,H,W) int32 "
                      "[1 where alpha > 0.5], flow_forward/flow_backward (T,H,W,2) px [the fluid velocity over one "
                      "frame], occlusion_forward/occlusion_backward (T,H,W) bool, intrinsics (T,3,3), extrinsics "
                      "(T,4,4) world to camera (OpenCV axes)",
        "states.npz": _fluid_states_note(spec, stride, states),
    })
    return sample_entries(job, draw, meta, rgb, layers, states, timing)


def _fluid_record(spec, stride: int) -> dict:
    """The json's ``fluid`` labels of a 2D smoke sample."""
    fluid = spec.fluid
    return {
        "cells": list(fluid.cells), "cell_size": fluid.cell_size, "origin": list(fluid.origin),
        "boundary": list(fluid.boundary), "wall_slip": fluid.wall_slip, "buoyancy": fluid.buoyancy,
        "vorticity": fluid.vorticity, "viscosity": fluid.viscosity, "advection": fluid.advection,
        "density_advection": fluid.density_advection, "smoke_color": list(fluid.smoke_color),
        "background": list(fluid.background), "opacity": fluid.opacity,
        "inflows": [_shape_record(inflow, rate=inflow.rate, temperature=inflow.temperature) for inflow in fluid.inflows],
        "obstacles": [_shape_record(obstacle, velocity=list(obstacle.velocity), angle=obstacle.angle,
                                    angular_velocity=obstacle.angular_velocity) for obstacle in fluid.obstacles],
        "obstacle_color": list(fluid.obstacle_color),
        "temperature": None if fluid.temperature is None else {
            "ambient": fluid.temperature.ambient, "buoyancy": fluid.temperature.buoyancy,
            "cooling": fluid.temperature.cooling, "density_weight": fluid.temperature.density_weight},
        "dt": spec.dt,
        "field_stride": stride,
    }


def _fluid_states_note(spec, stride: int, states: dict) -> str:
    fluid = spec.fluid
    temperature = ", temperature (T,nx',ny') K" if "temperature" in states else ""
    return (f"every {stride}-th cell (field_stride) of the {fluid.cells[0]}x{fluid.cells[1]} grid, grid x = "
            "world x, grid y = world z: density (T,nx',ny'), velocity (T,nx',ny',2) m/s [cell-centred, "
            f"averaged from the MAC faces]{temperature}, times (T,) s, field_stride () int64 "
            "(cell i of these arrays is grid cell field_stride * i; cell_size and origin: the json's fluid)")


def fluid_rigid_attempt(job: GenerateJob, draw: Draw, rejected: list, timing: dict) -> dict | None:
    """One draw of a 2D ``[fluid]`` scene with ``[[objects]]`` (two-way coupled bodies): the entries,
    or None after recording why it was rejected (module docstring)."""
    import numpy as np
    import torch

    from ..errors import SceneError, SimulationError
    from ..render import Camera, to_uint8
    from ..render.camera_io import camera_moves
    from ..render.fluid_rigid import render_fluid_rigid_frames
    from ..render.rigid import rigid_poses
    from .gates import evaluate_fluid_rigid_gates, fluid_rigid_initial_gates
    from .job import _rigid_object_record, rigid_links_meta
    from .sample import camera_layers

    world, spec = draw.world, draw.spec
    if camera_moves(spec.camera):
        raise SceneError("generate renders [fluid] scenes with a fixed camera (drop camera.orbit.sweep_deg and "
                         "[[camera.keyframes]])", file=job.distribution_name, field="camera")
    start = time.perf_counter()
    initial, failures = fluid_rigid_initial_gates(world, job.gates)  # before the rollout: cheap, a clear reason
    if failures:
        timing["simulate_s"] += time.perf_counter() - start
        reject(rejected, draw, failures)
        return None
    try:
        with torch.no_grad():
            trajectory = _fluid_rigid_rollout(world)
    except SimulationError as error:
        timing["simulate_s"] += time.perf_counter() - start
        reject(rejected, draw, [_fluid_blow_up(error)])
        return None
    measured, failures = evaluate_fluid_rigid_gates(world, trajectory, job.gates)
    timing["simulate_s"] += time.perf_counter() - start
    if failures:
        reject(rejected, draw, failures)
        return None

    start = time.perf_counter()
    camera = Camera.from_spec(spec.camera)
    with torch.no_grad():
        rendered = render_fluid_rigid_frames(world, camera, trajectory)
        poses = rigid_poses(world, trajectory.rigid).detach().cpu().double().numpy()
    rgb = to_uint8(rendered.pop("rgb").numpy())
    layers = {key: _numpy_layer(value) for key, value in rendered.items()}
    layers.update(camera_layers([camera] * rgb.shape[0]))
    layers["object_poses"] = poses
    timing["render_s"] += time.perf_counter() - start
    if non_finite_layers(rejected, draw, layers, ("alpha", "density", "normal", "flow_forward", "flow_backward")):
        return None

    stride = int(job.option("field_stride") or 1)
    rigid = trajectory.rigid
    model = rigid.model
    bodies = tuple(int(b) for b in rigid.body_objects)
    numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
    states = _fluid_states(trajectory.fluid, spec.fluid.cells, stride)
    states.update({  # the names `hybridsim render` writes for these scenes
        "body_position": numpy(rigid.positions), "body_orientation": numpy(rigid.orientations),
        "body_velocity": numpy(rigid.velocities), "body_angular_velocity": numpy(rigid.angular_velocities),
        "body_objects": np.asarray(bodies, dtype=np.int64),
        "body_mass": numpy(model.body_mass).astype(np.float64),
        "body_inertia": numpy(model.body_inertia).astype(np.float64),
        "body_inertia_rotation": numpy(model.body_inertia_rotation).astype(np.float64),
    })
    frame_count = rgb.shape[0]
    meta = base_meta(job, draw, layers, "fluid_rigid", frame_count)
    meta["fluid"] = {**_fluid_record(spec, stride), "density": spec.fluid.density}
    body_of = {k: b for b, k in enumerate(bodies)}
    meta["objects"] = []
    for k in range(len(spec.objects)):
        record = _rigid_object_record(spec, k, body_of.get(k), model)
        record["segmentation_id"] = k + 2  # 1 is the smoke
        meta["objects"].append(record)
    meta.update(rigid_links_meta(spec))
    finish_meta(meta, job, draw, {**initial, **measured}, rejected, {
        "mp4": f"H.264 video, {frame_count} frames of {spec.camera.width}x{spec.camera.height} at {spec.time.fps:g} fps",
        "layers.npz": "alpha (T,H,W) [smoke opacity, 1 on a body], density (T,H,W) [the grid density seen by each "
                      "pixel], depth (T,H,W) m [inf off the fluid plane], normal (T,H,W,3) camera space, segmentation "
                      "(T,H,W) int32 [0 background, 1 where the smoke's alpha > 0.5, k + 2 scene object k (bodies lie "
                      "in the fluid plane, in front of the smoke)], flow_forward/flow_backward (T,H,W,2) px [the fluid "
                      "velocity over one frame; on a body its rigid motion], occlusion_forward/occlusion_backward "
                      "(T,H,W) bool, intrinsics (T,3,3), extrinsics (T,4,4) world to camera (OpenCV axes), "
                      "object_poses (T,K,7) [quaternion x, y, z, w]",
        "states.npz": _fluid_states_note(spec, stride, states) + "; rigid bodies b = 0..B-1 (body b is scene object "
                      "body_objects[b]): body_position (T,B,3) m [centre of mass, y = 0], body_orientation (T,B,4) "
                      "quaternion x, y, z, w [about y], body_velocity (T,B,3) m/s, body_angular_velocity (T,B,3) "
                      "rad/s [world frame], body_objects (B,) int64, body_mass (B,) kg, body_inertia (B,3) kg m^2 "
                      "[principal moments], body_inertia_rotation (B,4) [principal axes in the body frame, x, y, z, w]",
    }, FLUID_RIGID_POSE_NOTE)
    return sample_entries(job, draw, meta, rgb, layers, states, timing)


FLUID_RIGID_POSE_NOTE = ("object_poses (T, K, 7): for every scene object k (segmentation id k + 2; 1 is the smoke), "
                         "the position x, y, z [m] of its centre of mass (y = 0: the fluid plane) and its orientation "
                         "as a unit quaternion x, y, z, w (a rotation about y; the rigid solver's order, as states.npz "
                         "body_orientation and `hybridsim render`)")


def _fluid_rigid_rollout(world):
    """``fluid_rigid_rollout`` with the fluid's blow-up guard (``FluidGuard``: non-finite fields,
    CFL above 5) applied to its frames afterwards: a SimulationError naming the first bad frame,
    as ``fluid_rollout(world, check=True)`` raises (the coupled rollout itself stops only on
    non-finite body states)."""
    from ..sim.fluid_rigid import fluid_rigid_rollout
    from ..sim.guards import FluidGuard, blow_up

    spec = world.spec
    trajectory = fluid_rigid_rollout(world)
    fluid = trajectory.fluid
    guard = FluidGuard(dt=spec.dt, cell_size=spec.fluid.cell_size, substeps=spec.time.substeps, cells=spec.fluid.cells)
    violation = guard.first_violation(fluid.velocity_x[1:], fluid.velocity_y[1:], fluid.density[1:])
    if violation is not None:
        raise blow_up(spec, violation, frame=violation.offset + 1, substeps=spec.time.substeps,
                      what="fluid-rigid simulation")
    return trajectory


def _fluid3d_entries(job: GenerateJob, draw: Draw, trajectory, measured: dict, rejected: list, timing: dict):
    """Render, encode and label one 3D smoke draw that passed its gates (``fluid_attempt``)."""
    import torch

    from ..render import to_uint8
    from ..render.camera_io import scene_cameras
    from ..render.fluid3d import render_fluid3d_frames
    from .sample import camera_layers

    world, spec = draw.world, draw.spec
    fluid = spec.fluid
    start = time.perf_counter()
    cameras = scene_cameras(spec.camera, int(trajectory.density.shape[0]), spec.time.fps)
    with torch.no_grad():
        rendered = render_fluid3d_frames(world, trajectory, cameras, 1.0 / spec.time.fps)
    rgb = to_uint8(rendered.pop("rgb").numpy())
    layers = {key: _numpy_layer(value) for key, value in rendered.items()}
    layers.update(camera_layers(cameras))
    timing["render_s"] += time.perf_counter() - start
    if non_finite_layers(rejected, draw, layers, _FLOW_LAYERS):
        return None

    stride = int(job.option("field_stride") or 1)
    states = _fluid_states(trajectory, fluid.cells, stride)
    frame_count = rgb.shape[0]
    meta = base_meta(job, draw, layers, "fluid", frame_count)
    meta["fluid"] = {
        "cells": list(fluid.cells), "cell_size": fluid.cell_size, "origin": list(fluid.origin),
        "boundary": list(fluid.boundary), "wall_slip": fluid.wall_slip, "buoyancy": fluid.buoyancy,
        "vorticity": fluid.vorticity, "viscosity": fluid.viscosity, "advection": fluid.advection,
        "density_advection": fluid.density_advection, "smoke_color": list(fluid.smoke_color),
        "opacity": fluid.opacity,
        "inflows": [_shape_record(inflow, rate=inflow.rate, temperature=inflow.temperature)
                    for inflow in fluid.inflows],
        "obstacles": [_shape_record(obstacle, velocity=[float(c) for c in obstacle.velocity])  # m/s, world
                      for obstacle in fluid.obstacles],
        "obstacle_color": list(fluid.obstacle_color),
        "temperature": None if fluid.temperature is None else {
            "ambient": fluid.temperature.ambient, "buoyancy": fluid.temperature.buoyancy,
            "cooling": fluid.temperature.cooling, "density_weight": fluid.temperature.density_weight},
        "dt": spec.dt,
        "field_stride": stride,
    }
    meta["ground_height"] = spec.ground.height
    smoke_id = len(fluid.obstacles) + 1
    temperature = ", temperature (T,nx',ny',nz') K" if "temperature" in states else ""
    cells = "x".join(str(n) for n in fluid.cells)
    finish_meta(meta, job, draw, measured, rejected, {
        "mp4": f"H.264 video, {frame_count} frames of {spec.camera.width}x{spec.camera.height} at {spec.time.fps:g} fps",
        "layers.npz": "alpha (T,H,W) [smoke coverage], depth (T,H,W) m [the smoke's expected camera z where it "
                      "covers, else the ground / obstacle behind, inf sky], normal (T,H,W,3) camera space [of the "
                      f"surfaces], segmentation (T,H,W) int32 [0 ground / sky, k + 1 obstacle k, {smoke_id} smoke "
                      "where alpha >= 0.5], flow_forward/flow_backward (T,H,W,2) px [the smoke moved by +/- frame t's "
                      "velocity over one frame, seen by the next / previous frame's camera; off the smoke the "
                      "static surfaces' motion under the camera's], occlusion_forward/occlusion_backward (T,H,W) bool, "
                      "intrinsics (T,3,3), extrinsics (T,4,4) world to camera (OpenCV axes)",
        "states.npz": f"every {stride}-th cell (field_stride) of each axis of the {cells} grid, grid (i, j, k) = world "
                      "(x, y, z): density (T,nx',ny',nz'), velocity (T,nx',ny',nz',3) m/s [cell-centred, averaged "
                      f"from the MAC faces]{temperature}, times (T,) s, field_stride () int64 (cell i of these arrays "
                      "is grid cell field_stride * i; cell_size and origin: the json's fluid)",
    })
    return sample_entries(job, draw, meta, rgb, layers, states, timing)


def _fluid_blow_up(error) -> dict:
    """The rejection reason of a fluid rollout stopped by its guard (CFL above 5 counts as ``cfl``)."""
    from .gates import blow_up_reason

    reason = blow_up_reason(error)
    if getattr(error, "quantity", None) == "cfl":
        reason["gate"] = "cfl"
    return reason


def _numpy_layer(tensor):
    import numpy as np

    value = tensor.detach().cpu().numpy()
    return value.astype(np.float32) if value.dtype.kind == "f" else value


def _shape_record(shape, **extra) -> dict:
    record = {"shape": shape.shape, "center": list(shape.center)}
    if shape.shape in ("disc", "sphere"):
        record["radius"] = shape.radius
    else:
        record["half_size"] = list(shape.half_size)
    record.update(extra)
    return record


def _fluid_states(trajectory, cells, stride: int) -> dict:
    import numpy as np

    from ..render.fluid import cell_velocity
    from ..render.fluid3d import cell_velocity3d

    if len(cells) == 3:
        velocity = np.stack([cell_velocity3d(u, v, w, tuple(cells)).detach().cpu().numpy() for u, v, w in
                             zip(trajectory.velocity_x, trajectory.velocity_y, trajectory.velocity_z)])
    else:
        velocity = np.stack([cell_velocity(u, v, tuple(cells)).detach().cpu().numpy()
                             for u, v in zip(trajectory.velocity_x, trajectory.velocity_y)])
    every = (slice(None), *[slice(None, None, stride)] * len(cells))  # (T, every stride-th cell of each axis)
    states = {"density": trajectory.density.detach().cpu().numpy()[every], "velocity": velocity[every]}
    if getattr(trajectory, "temperature", None) is not None:
        states["temperature"] = trajectory.temperature.detach().cpu().numpy()[every]
    states["times"] = trajectory.times.detach().cpu().numpy()
    states["field_stride"] = np.asarray(stride, dtype=np.int64)
    return states


# --------------------------------------------------------------------------------------------
# MPM
# --------------------------------------------------------------------------------------------


def particle_subset(count: int, limit: int | None):
    """Indices of at most ``limit`` of ``count`` particles, evenly strided (all when ``limit`` is None)."""
    import numpy as np

    if limit is None or count <= limit:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.floor(np.arange(limit) * (count / limit)).astype(np.int64))


def mpm_attempt(job: GenerateJob, draw: Draw, rejected: list, timing: dict) -> dict | None:
    """One draw of an ``[mpm]`` scene: the entries, or None after recording why it was rejected."""
    import numpy as np
    import torch

    from ..errors import HybridsimError, SimulationError
    from ..render.camera_io import scene_cameras
    from ..render.particles import render_mpm_layers
    from ..sim.mpm import mpm_rollout
    from .gates import blow_up_reason, evaluate_mpm_gates, mpm_particle_mass
    from .sample import camera_layers

    world, spec = draw.world, draw.spec
    if spec.objects:
        raise HybridsimError("generate draws [mpm] scenes without [[objects]] only (coupled MPM + rigid scenes are "
                             "not supported yet)", file=job.distribution_name)
    start = time.perf_counter()
    try:
        with torch.no_grad():
            trajectory = mpm_rollout(world)
    except SimulationError as error:
        timing["simulate_s"] += time.perf_counter() - start
        reason = blow_up_reason(error)
        if getattr(error, "quantity", None) == "cfl":
            reason["gate"] = "cfl"
        reject(rejected, draw, [reason])
        return None
    measured, failures = evaluate_mpm_gates(world, trajectory, job.gates)
    timing["simulate_s"] += time.perf_counter() - start
    if failures:
        reject(rejected, draw, failures)
        return None

    start = time.perf_counter()
    cameras = scene_cameras(spec.camera, trajectory.frame_count, spec.time.fps)
    rgb, layers = render_mpm_layers(world, trajectory, cameras=cameras)
    layers.update(camera_layers(cameras))
    timing["render_s"] += time.perf_counter() - start
    if non_finite_layers(rejected, draw, layers, _FLOW_LAYERS):
        return None

    model = trajectory.model
    count = model.particle_count
    keep = particle_subset(count, job.option("max_state_particles"))
    index = torch.from_numpy(keep)
    numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
    states = {
        "positions": numpy(trajectory.world_positions()[:, index]),  # (T, n, 3) world
        "velocities": numpy(_lift(trajectory.velocities)[:, index]),
        "times": numpy(trajectory.times),
        "particle_index": keep,
        "particle_material": numpy(model.particle_material[index]).astype(np.int64),
        "particle_body": numpy(trajectory.particle_body[index]).astype(np.int64),
        "particle_color": numpy(model.particle_color[index]).astype(np.float32),
        "particle_volume": numpy(model.particle_volume[index]),
        "particle_mass": numpy(mpm_particle_mass(model)[index]),
        "particle_count": np.asarray(count, dtype=np.int64),
    }
    mpm = spec.mpm
    masses = mpm_particle_mass(model)
    bodies = []
    for b, body in enumerate(mpm.bodies):
        mine = trajectory.particle_body == b
        record = {"name": body.name, "shape": body.shape, "material": body.material,
                  "particles": int(mine.sum()), "mass": float(masses[mine].sum())}
        for name in ("center", "half_size", "position", "velocity", "color"):
            value = getattr(body, name)
            if value is not None:
                record[name] = list(value)
        for name in ("radius", "file", "scale"):
            value = getattr(body, name)
            if value is not None and not (name == "scale" and body.shape != "mesh"):
                record[name] = value
        bodies.append(record)
    frame_count = rgb.shape[0]
    meta = base_meta(job, draw, layers, "mpm", frame_count)
    meta["substeps"] = trajectory.substeps  # MPM substeps come from [mpm], not [time]
    meta["mpm"] = {
        "dim": mpm.dim, "resolution": list(model.grid.resolution), "dx": model.grid.dx, "dt": trajectory.dt,
        "wall_mode": mpm.wall_mode, "particle_count": count, "state_particles": int(len(keep)),
        "materials": [{"name": m.name, "kind": m.kind, "youngs_modulus": float(model.youngs_modulus[i]),
                       "poisson_ratio": float(model.poisson_ratio[i]), "bulk_modulus": m.bulk_modulus,
                       "viscosity": m.viscosity, "density": m.density, "color": list(m.display_color),
                       "segmentation_id": i + 1} for i, m in enumerate(mpm.materials)],
        "bodies": bodies,
    }
    meta["ground_height"] = spec.ground.height
    finish_meta(meta, job, draw, measured, rejected, {
        "mp4": f"H.264 video, {frame_count} frames of {spec.camera.width}x{spec.camera.height} at {spec.time.fps:g} fps",
        "layers.npz": "alpha (T,H,W), depth (T,H,W) m [inf background], normal (T,H,W,3) camera space, segmentation "
                      "(T,H,W) int32 [0 background, material m + 1], flow_forward/flow_backward (T,H,W,2) px, "
                      "occlusion_forward/occlusion_backward (T,H,W) bool, intrinsics (T,3,3), extrinsics (T,4,4) "
                      "world to camera (OpenCV axes)",
        "states.npz": f"n = {len(keep)} of {count} particles (particle_index (n,), evenly strided; max_state_particles): "
                      "positions (T,n,3) m and velocities (T,n,3) m/s in world axes (2D: (x, 0, z)), times (T,) s, "
                      "particle_material, particle_body (n,) int64, particle_color (n,3), particle_volume (n,) "
                      "m^dim, particle_mass (n,) kg, particle_count () [all particles]",
    })
    return sample_entries(job, draw, meta, rgb, layers, states, timing)


def _lift(velocities):
    from ..sim.mpm import lift_positions

    return lift_positions(velocities)
