"""Render a 2D smoke scene with rigid bodies (``[fluid]`` + ``[[objects]]``): the smoke layers of
``hybridsim.render.fluid`` with each body's cross-section (y = 0) painted opaque in its colour.

The bodies lie in the fluid plane, so where a body covers a pixel's plane point it is in front of
(and replaces) the smoke there: rgb takes the object's colour, segmentation ``2 + k`` for scene
object k (1 stays the smoke), flow the body's rigid motion over a frame (as the smoke's: none
forward from the last frame or backward from the first; occluded where the moved point leaves the
image). The rgb is differentiable w.r.t. the smoke density; the body masks are hard.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .camera import Camera
from .fluid import fluid_plane_points, render_fluid_frames

__all__ = ["render_fluid_rigid_frames", "body_masks", "write_fluid_rigid_outputs"]


def body_masks(world, trajectory, plane_xz: torch.Tensor) -> torch.Tensor:
    """(F, B, H, W) True where a plane point (world x, z) lies inside body b at frame f."""
    from ..solvers.rigid.shapes import SHAPE_BOX

    rigid = trajectory.rigid
    model = rigid.model
    frames, bodies = rigid.positions.shape[:2]
    out = torch.zeros(frames, bodies, *plane_xz.shape[:2], dtype=torch.bool)
    for b in range(bodies):
        shape = [s for s in model.shapes if s.body == b][0]
        for f in range(frames):
            position = rigid.positions[f, b].detach().double()
            q = rigid.orientations[f, b].detach().double()
            rx, rz = plane_xz[..., 0] - position[0], plane_xz[..., 1] - position[2]
            if shape.kind == SHAPE_BOX:
                theta = 2.0 * math.atan2(float(q[1]), float(q[3]))  # about +y: x -> -z
                cos, sin = math.cos(theta), math.sin(theta)
                local_x, local_z = cos * rx - sin * rz, sin * rx + cos * rz
                out[f, b] = (local_x.abs() < float(shape.size[0])) & (local_z.abs() < float(shape.size[2]))
            else:
                out[f, b] = rx * rx + rz * rz < float(shape.size[0]) ** 2
    return out


def render_fluid_rigid_frames(world, camera: Camera, trajectory) -> dict[str, torch.Tensor]:
    """Layers of ``render_fluid_frames`` with the bodies painted in (module docstring)."""
    spec = world.spec
    layers = render_fluid_frames(camera, spec.fluid, trajectory.fluid, 1.0 / spec.time.fps)
    dtype = layers["rgb"].dtype
    points, hits = fluid_plane_points(camera, dtype)
    plane_xz = torch.stack([points[..., 0], points[..., 2]], dim=-1).double()
    masks = body_masks(world, trajectory, plane_xz) & hits
    object_of_body = trajectory.rigid.body_objects
    frame_dt = 1.0 / spec.time.fps
    pixels = camera.project(points)[0]
    rigid = trajectory.rigid
    for b, obj in enumerate(object_of_body):
        color = world.value(f"objects[{obj}].color").to(dtype).reshape(3)
        mask = masks[:, b]
        layers["rgb"] = torch.where(mask[..., None], color, layers["rgb"])
        layers["alpha"] = torch.where(mask, torch.ones_like(layers["alpha"]), layers["alpha"])
        layers["segmentation"] = torch.where(mask, torch.full_like(layers["segmentation"], 2 + int(obj)),
                                             layers["segmentation"])
        frames = mask.shape[0]
        height, width = mask.shape[1:]
        for f in range(frames):
            if not bool(mask[f].any()):
                continue
            centre = rigid.positions[f, b].detach().to(dtype)
            velocity = rigid.velocities[f, b].detach().to(dtype)
            spin = rigid.angular_velocities[f, b].detach().to(dtype)
            arm = points - centre
            move = (velocity + torch.cross(spin.expand_as(arm), arm, dim=-1)) * frame_dt
            # as the smoke's flow: none forward from the last frame or backward from the first
            for sign, key, occlusion, valid in ((1.0, "flow_forward", "occlusion_forward", f < frames - 1),
                                                (-1.0, "flow_backward", "occlusion_backward", f > 0)):
                if not valid:
                    layers[key][f] = torch.where(mask[f][..., None], torch.zeros_like(layers[key][f]), layers[key][f])
                    continue
                moved = camera.project(points + sign * move)[0]
                layers[key][f] = torch.where(mask[f][..., None], moved - pixels, layers[key][f])
                in_image = ((moved[..., 0] >= 0) & (moved[..., 0] < width)
                            & (moved[..., 1] >= 0) & (moved[..., 1] < height))
                layers[occlusion][f] = torch.where(mask[f], ~in_image, layers[occlusion][f])
    return layers


def write_fluid_rigid_outputs(world, frames: int, out, quiet: bool, trajectory=None) -> int:
    """``hybridsim render`` for a 2D fluid scene with bodies: video, layers, flow video, states."""
    from tqdm import tqdm

    from ..data.sample import camera_layers
    from ..errors import SceneError
    from ..fileio import atomic_path
    from ..sim.fluid_rigid import fluid_rigid_rollout
    from . import to_uint8, write_layers, write_video
    from .camera_io import camera_moves
    from .flow import flow_to_color

    spec = world.spec
    if camera_moves(spec.camera):
        raise SceneError("a moving camera ([[camera.keyframes]]) is not supported for [fluid] scenes yet",
                         file=spec.source, field="camera.keyframes")
    with torch.no_grad():
        if trajectory is None:
            with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
                trajectory = fluid_rigid_rollout(world, frames=frames, progress=lambda done: bar.update(done - bar.n))
        camera = Camera.from_spec(spec.camera)
        layers = render_fluid_rigid_frames(world, camera, trajectory)
    rgb = to_uint8(layers.pop("rgb").numpy())
    write_video(out, rgb, fps=spec.time.fps)
    stacked = {key: value.numpy().astype(np.float32) if value.is_floating_point() else value.numpy()
               for key, value in layers.items()}
    stacked.update(camera_layers([camera] * rgb.shape[0]))
    layers_path, flow_path, states_path = (out.with_suffix(s) for s in (".layers.npz", ".flow.mp4", ".states.npz"))
    write_layers(layers_path, stacked)
    write_video(flow_path, flow_to_color(stacked["flow_forward"]), fps=spec.time.fps)
    fluid, rigid = trajectory.fluid, trajectory.rigid
    with atomic_path(states_path) as tmp:
        extra = {} if fluid.temperature is None else {"temperature": fluid.temperature.numpy()}
        np.savez_compressed(tmp, density=fluid.density.numpy(), velocity_x=fluid.velocity_x.numpy(),
                            velocity_y=fluid.velocity_y.numpy(), times=fluid.times.numpy(),
                            body_position=rigid.positions.numpy(), body_orientation=rigid.orientations.numpy(),
                            body_velocity=rigid.velocities.numpy(),
                            body_angular_velocity=rigid.angular_velocities.numpy(),
                            body_objects=np.asarray(rigid.body_objects, dtype=np.int64), **extra)
    print(f"wrote {out} ({rgb.shape[0]} frames, {rgb.shape[2]}x{rgb.shape[1]}, {spec.time.fps:g} fps, "
          f"grid fluid {spec.fluid.cells[0]}x{spec.fluid.cells[1]} + {len(rigid.body_objects)} bodies, "
          f"backend {world.backend}, device {world.device})")
    print(f"wrote {layers_path} (density, alpha, depth, segmentation (1 smoke, 2 + k object k), normal, flow, camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (density, face velocities, body states, times)")
    return 0
