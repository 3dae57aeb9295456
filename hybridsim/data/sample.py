"""Simulate a world and render every layer: the shared core of ``hybridsim render`` and ``generate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Rendering", "simulate", "render_layers", "simulate_and_render", "camera_layers", "simulate_rigid",
           "render_rigid_sample"]


@dataclass
class Rendering:
    """A rendered rollout of one world. T = frames + 1 (frame 0 is the initial state)."""

    rgb: Any
    """Colour frames, numpy uint8 (T, H, W, 3)."""
    layers: dict
    """Lossless numpy layers: albedo (T, H, W, 3) uint8 (unlit colours), depth (T, H, W) [m, inf for sky]
    float32, normal (T, H, W, 3) float32
    (camera space), alpha (T, H, W) float32, segmentation (T, H, W) int32 (0 ground/sky, k+1 sphere k),
    flow_forward / flow_backward (T, H, W, 2) [px] float32, occlusion_forward / occlusion_backward
    (T, H, W) bool, intrinsics (T, 3, 3) and extrinsics (T, 4, 4) float64 (world to camera, per frame:
    the camera may move along ``[[camera.keyframes]]``)."""
    trajectory: Any
    """The :class:`~hybridsim.sim.rollout.Trajectory` (positions, velocities (T, 1, N, 3), times, model), or
    for a rigid scene the :class:`~hybridsim.sim.rigid.RigidTrajectory` (positions (T, B, 3), orientations
    (T, B, 4) x, y, z, w, velocities, angular velocities, times, body_objects, model)."""
    camera: Any
    """The :class:`~hybridsim.render.camera.Camera` of the first frame."""
    flow: dict
    """The flow layers as torch tensors in the world's precision (before the float32 cast); rigid
    scenes: the float32 layers as tensors."""
    cameras: Any = None
    """One :class:`~hybridsim.render.camera.Camera` per frame."""


def simulate(world, frames: int | None = None, *, progress: Callable[[int], None] | None = None):
    """Roll out ``frames`` frames (default: the scene's) without autograd -> Trajectory (a
    RigidTrajectory for a scene with rigid objects, ``world.rigid``)."""
    import torch

    if world.rigid:
        return simulate_rigid(world, frames, progress=progress)
    from ..sim.rollout import rollout

    with torch.no_grad():
        return rollout(world, frames=frames, progress=progress)


def simulate_rigid(world, frames: int | None = None, *, progress: Callable[[int], None] | None = None):
    """Roll out a rigid-body scene without autograd, blow-up guards on -> RigidTrajectory
    (SimulationError when a guard fires)."""
    import torch

    from ..sim.rigid import rigid_rollout

    with torch.no_grad():
        return rigid_rollout(world, frames=frames, progress=progress, check=True)


def render_rigid_sample(world, trajectory, *, progress: Callable[[int], None] | None = None) -> Rendering:
    """Render every frame of a RigidTrajectory with the mesh renderer plus exact flow: layers as
    :func:`hybridsim.render.rigid.render_rigid_layers` (also ``object_coordinates`` (T, H, W, 3) and
    ``object_poses`` (T, K, 7), position + quaternion x, y, z, w of every scene object)."""
    import torch

    from ..render.camera_io import scene_cameras
    from ..render.rigid import render_rigid_layers

    rgb, layers = render_rigid_layers(world, trajectory, progress=progress)
    cameras = scene_cameras(world.spec.camera, trajectory.frame_count, world.spec.time.fps)
    flow = {key: torch.from_numpy(layers[key]) for key in
            ("flow_forward", "flow_backward", "occlusion_forward", "occlusion_backward")}
    return Rendering(rgb=rgb, layers=layers, trajectory=trajectory, camera=cameras[0], flow=flow, cameras=cameras)


def render_layers(world, trajectory, *, progress: Callable[[int], None] | None = None) -> Rendering:
    """Render every frame of ``trajectory`` (one frame at a time, bounding memory) plus exact flow."""
    import numpy as np

    if world.rigid:
        return render_rigid_sample(world, trajectory, progress=progress)
    import torch

    from ..render import to_uint8
    from ..render.camera_io import scene_cameras
    from ..render.flow import optical_flow
    from ..render.scene import render_trajectory

    cameras = scene_cameras(world.spec.camera, trajectory.frame_count, world.spec.time.fps)
    layers: dict[str, list] = {"rgb": [], "albedo": [], "depth": [], "segmentation": [], "normal": [], "alpha": []}
    with torch.no_grad():
        for index in range(trajectory.frame_count):
            frame = render_trajectory(world, trajectory, frames=slice(index, index + 1), camera=cameras[index],
                                      albedo=True)
            for key in layers:
                layers[key].append(frame[key][0])
            if progress is not None:
                progress(index + 1)
    tensors = {key: torch.stack(value).cpu() for key, value in layers.items()}
    flow = optical_flow(cameras, tensors["depth"], tensors["segmentation"], trajectory.positions[:, 0])
    stacked = {key: value.numpy() for key, value in tensors.items()}
    rgb = to_uint8(stacked.pop("rgb"))
    for key in ("depth", "normal", "alpha"):
        stacked[key] = stacked[key].astype(np.float32)
    stacked["albedo"] = to_uint8(stacked["albedo"])  # unlit colours, quantised like rgb
    for key, value in flow.items():
        stacked[key] = value.numpy().astype(np.float32) if value.is_floating_point() else value.numpy()
    stacked.update(camera_layers(cameras))
    return Rendering(rgb=rgb, layers=stacked, trajectory=trajectory, camera=cameras[0], flow=flow, cameras=cameras)


def camera_layers(cameras) -> dict:
    """Per-frame ``intrinsics`` (T, 3, 3) and world-to-camera ``extrinsics`` (T, 4, 4), float64 numpy."""
    import numpy as np
    import torch

    return {"intrinsics": np.stack([c.intrinsics(dtype=torch.float64).numpy() for c in cameras]),
            "extrinsics": np.stack([c.extrinsics(dtype=torch.float64).numpy() for c in cameras])}


def simulate_and_render(world, frames: int | None = None, *, sim_progress: Callable[[int], None] | None = None,
                        render_progress: Callable[[int], None] | None = None) -> Rendering:
    """Simulate ``world`` for ``frames`` frames and render rgb plus every ground-truth layer."""
    trajectory = simulate(world, frames, progress=sim_progress)
    return render_layers(world, trajectory, progress=render_progress)
