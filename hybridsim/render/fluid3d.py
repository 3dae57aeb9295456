"""Render a 3D grid fluid (a smoke volume) in its scene: ground, sky and obstacles from the mesh
rasteriser, the smoke ray-marched over them (``hybridsim.render.volume.render_volume``).

The opaque background (rgb and depth) is rasterised once per camera and obstacle placement (once
for a fixed camera and static obstacles, every frame for a moving camera, ``[[camera.keyframes]]``
or an orbit sweep, or obstacles with a ``velocity``, drawn where they are at the frame's time)
and every frame's march stops at its depth: smoke behind an obstacle or under the ground is
hidden, smoke in front of it veils it. Layers follow the other renderers: rgb, alpha, depth [m]
(the smoke's expected depth where it covers, else the surface behind), segmentation (0 ground /
sky, k + 1 obstacle k, obstacle_count + 1 smoke where alpha >= 0.5), camera-space normals of the
surfaces, forward and backward optical flow [px] over one frame with occlusion masks.

Flow: where the smoke covers (alpha >= 1e-4) a pixel moves as the opacity-weighted mean of the
projected motion of the ray's samples (``render_volume``), projected by the other frame's camera;
elsewhere it shows a surface (or the sky, a point at infinity), which moves with the camera and,
on a moving obstacle's pixels, with the obstacle's velocity (0 for a fixed camera and static
surfaces). Forward flow of frame t moves the samples by ``+v_t dt``; backward
flow of frame t by ``-v_t dt`` (frame t's velocity run backwards: the same formula, no second
field to sample, and exact for a steady velocity). ``occlusion_forward`` /
``occlusion_backward`` (True = the flow does not lead to the same content) mark pixels whose
moved position leaves the image, lands on an opaque surface nearer than its content (smoke or
surface, seen by the other frame's camera), or whose alpha there in the other frame differs by
more than ``OCCLUSION_ALPHA_CHANGE`` (smoke appearing, thinning or leaving: no correspondence);
the last frame's forward and the first frame's backward flow are 0 and all occluded, as in 2D.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .camera import Camera

__all__ = ["cell_velocity3d", "flow_occlusion", "fluid3d_background", "render_fluid3d_frames", "write_fluid3d_outputs"]

ICOSPHERE_SUBDIVISIONS = 3
OCCLUSION_ALPHA_CHANGE = 0.25  # |alpha_other(moved) - alpha(pixel)| above this: no correspondence
OCCLUSION_RELATIVE_DEPTH = 0.02  # a surface this much (relative) nearer than the moved content hides it
_ALPHA_SEEN = 1e-4  # render_volume's coverage below which a pixel has no smoke depth / flow


def cell_velocity3d(velocity_x: torch.Tensor, velocity_y: torch.Tensor, velocity_z: torch.Tensor,
                    cells: tuple[int, int, int]) -> torch.Tensor:
    """Cell-centred velocity (nx, ny, nz, 3) [m/s] from MAC faces (periodic axes have n faces)."""
    components = []
    for axis, faces in enumerate((velocity_x, velocity_y, velocity_z)):
        if faces.shape[axis] == cells[axis]:  # periodic: face i is the low face of cell i
            components.append(0.5 * (faces + torch.roll(faces, -1, dims=axis)))
        else:
            components.append(0.5 * (faces.narrow(axis, 0, cells[axis]) + faces.narrow(axis, 1, cells[axis])))
    return torch.stack(components, dim=-1)


def obstacle_velocities(world) -> list[tuple[float, float, float]]:
    """World velocity [m/s] of every obstacle of the scene's 3D fluid (zeros for a static one)."""
    return [tuple(float(c) for c in obstacle.velocity) if len(obstacle.velocity) == 3 else (0.0, 0.0, 0.0)
            for obstacle in world.spec.fluid.obstacles]


def fluid3d_background(world, camera: Camera, dtype=torch.float64, time: float = 0.0) -> dict[str, torch.Tensor]:
    """The scene without smoke: ground, sky and the fluid's obstacles where they are at ``time`` [s]
    (``render_meshes`` layers)."""
    import trimesh

    from .mesh import box_mesh, render_meshes, transform_meshes, trimesh_to_mesh
    from .rigid import scene_light_options

    fluid = world.spec.fluid
    meshes, poses = [], []
    for obstacle in fluid.obstacles:
        if obstacle.shape == "sphere":
            verts, faces = trimesh_to_mesh(trimesh.creation.icosphere(subdivisions=ICOSPHERE_SUBDIVISIONS,
                                                                      radius=obstacle.radius), dtype)
        else:
            verts, faces = box_mesh(obstacle.half_size, dtype)
        meshes.append((verts, faces))
        velocity = obstacle.velocity if len(obstacle.velocity) == 3 else (0.0, 0.0, 0.0)
        poses.append([*(c + v * float(time) for c, v in zip(obstacle.center, velocity)), 0.0, 0.0, 0.0, 1.0])
    if not meshes:  # nothing but ground and sky: a speck far below the ground stands in
        verts, faces = box_mesh((1e-3, 1e-3, 1e-3), dtype)
        meshes.append((verts, faces))
        poses.append([0.0, 0.0, world.spec.ground.height - 1e3, 0.0, 0.0, 0.0, 1.0])
    poses = torch.tensor(poses, dtype=dtype)
    verts, faces, owner = transform_meshes([m[0] for m in meshes], [m[1] for m in meshes], poses)
    colors = torch.tensor([fluid.obstacle_color] * len(meshes), dtype=dtype)
    return render_meshes(camera, verts, faces, owner, colors, poses=poses, shadows=True, **scene_light_options(world))


def _sample_image(image: torch.Tensor, pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """``image`` (H, W) sampled at pixel coordinates (H, W, 2) (x right, y down, centres at +0.5)."""
    height, width = image.shape
    norm = torch.stack([pixels[..., 0] / width, pixels[..., 1] / height], dim=-1) * 2.0 - 1.0
    finite = torch.where(torch.isfinite(image), image, torch.full_like(image, 1e30))  # inf depth: far
    return torch.nn.functional.grid_sample(finite[None, None], norm[None].to(image.dtype), mode=mode,
                                           padding_mode="border", align_corners=False)[0, 0]


def surface_points(camera: Camera, depth: torch.Tensor) -> torch.Tensor:
    """World points (H, W, 3) at camera z ``depth`` (H, W) [m] along the pixel rays; far (1e6 m) where
    the depth is inf (the sky moves like a point at infinity)."""
    origins, dirs = camera.rays(depth.device, depth.dtype)
    cos_forward = dirs @ camera.rotation(depth.device, depth.dtype)[2]
    reach = torch.where(torch.isfinite(depth), depth, torch.full_like(depth, 1e6)) / cos_forward
    return origins + reach[..., None] * dirs


def flow_occlusion(flow: torch.Tensor, alpha: torch.Tensor, moved_depth: torch.Tensor, other_alpha: torch.Tensor,
                   other_surface_depth: torch.Tensor, *, depth_tolerance: float,
                   relative_depth_tolerance: float = OCCLUSION_RELATIVE_DEPTH,
                   alpha_change: float = OCCLUSION_ALPHA_CHANGE) -> torch.Tensor:
    """(H, W) bool, True where the flow (H, W, 2) [px] from this frame (``alpha``) has no match in the
    other frame (``other_alpha``): the moved pixel leaves the image, lands on an opaque surface
    (``other_surface_depth`` [m], camera z in the other frame) nearer than this pixel's content
    (``moved_depth`` [m], its camera z in the other frame; inf: never hidden) by more than
    ``depth_tolerance`` [m] + ``relative_depth_tolerance`` x ``moved_depth`` (the farthest of the
    3 x 3 pixels around the landing point counts), or the other frame's alpha there (bilinear)
    differs by more than ``alpha_change``."""
    height, width = alpha.shape
    rows = torch.arange(height, dtype=flow.dtype, device=flow.device) + 0.5
    cols = torch.arange(width, dtype=flow.dtype, device=flow.device) + 0.5
    centres = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)
    moved = centres + flow
    outside = (moved[..., 0] < 0) | (moved[..., 0] >= width) | (moved[..., 1] < 0) | (moved[..., 1] >= height)
    # hidden only if the farthest surface of the 3x3 pixels around the landing point is nearer: grazing
    # surfaces (the ground near the horizon) change depth by several percent from pixel to pixel
    farthest = torch.nn.functional.max_pool2d(torch.nan_to_num(other_surface_depth, posinf=1e30)[None, None], 3,
                                              stride=1, padding=1)[0, 0]
    hidden = torch.isfinite(moved_depth) & (_sample_image(farthest, moved, "nearest")
                                            < moved_depth * (1.0 - relative_depth_tolerance) - depth_tolerance)
    changed = (_sample_image(other_alpha, moved, "bilinear") - alpha).abs() > alpha_change
    return outside | hidden | changed


def _move_obstacle_points(points: torch.Tensor, segmentation: torch.Tensor, velocities, dt: float) -> torch.Tensor:
    """World points (H, W, 3) shifted by ``velocities[k] * dt`` where ``segmentation`` is obstacle k
    (id k + 1); the others unchanged."""
    for k, velocity in enumerate(velocities):
        if any(velocity):
            on = (segmentation.to(points.device) == k + 1)[..., None]
            points = torch.where(on, points + torch.tensor(velocity, dtype=points.dtype, device=points.device) * dt,
                                 points)
    return points


def render_fluid3d_frames(world, trajectory, camera: Camera | Sequence[Camera], frame_dt: float,
                          background: dict | None = None) -> dict[str, torch.Tensor]:
    """Layers (F, H, W, ...) for every record of a GridFluid3DTrajectory, seen by ``camera`` (one, or
    one per record: a moving camera); ``rgb`` and ``alpha`` are differentiable w.r.t. the density
    (and through it the simulation). ``background``: ``fluid3d_background`` of a single camera,
    to reuse. Flow and occlusion as in the module docstring; with a moving camera the flow also
    carries the camera's motion (the smoke's samples and the surfaces' points are projected by
    the other frame's camera)."""
    from .volume import render_volume

    spec = world.spec
    fluid = spec.fluid
    dtype, device = trajectory.density.dtype, trajectory.density.device
    frames = trajectory.density.shape[0]
    cameras = [camera] * frames if isinstance(camera, Camera) else list(camera)
    if len(cameras) != frames:
        from ..errors import AssetError

        raise AssetError(f"got {len(cameras)} cameras for {frames} records: give one camera or one per record",
                         field="camera")
    velocities = obstacle_velocities(world)
    obstacles_move = any(any(v) for v in velocities)
    moving = any(c != cameras[0] for c in cameras[1:]) or obstacles_move  # surfaces move in the image
    times = [float(t) for t in trajectory.times.reshape(-1)] if getattr(trajectory, "times", None) is not None \
        else [f * frame_dt for f in range(frames)]
    if not moving:  # the background rasterised once
        backgrounds = [background if background is not None else fluid3d_background(world, cameras[0], dtype)] * frames
    else:
        backgrounds = [fluid3d_background(world, view, dtype, times[f]) for f, view in enumerate(cameras)]
    backgrounds = [{key: value.to(device) for key, value in surface.items() if torch.is_tensor(value)}
                   for surface in backgrounds]
    smoke_id = len(fluid.obstacles) + 1
    options = dict(origin=fluid.origin, cell_size=fluid.cell_size, color=fluid.smoke_color, opacity=fluid.opacity,
                   light_direction=spec.light.direction, segment_id=smoke_id)
    layers: dict[str, list] = {key: [] for key in ("rgb", "alpha", "depth", "segmentation", "normal",
                                                   "flow_forward", "flow_backward")}
    for f in range(frames):
        view, surface = cameras[f], backgrounds[f]
        surface_depth = surface["depth"].to(dtype)
        density = trajectory.density[f]
        velocity = cell_velocity3d(trajectory.velocity_x[f], trajectory.velocity_y[f], trajectory.velocity_z[f],
                                   tuple(fluid.cells)).detach()
        frame_options = dict(options, camera=view, background=surface["rgb"].to(dtype), background_depth=surface_depth)
        after, before = cameras[min(f + 1, frames - 1)], cameras[max(f - 1, 0)]
        out = render_volume(density, velocity=velocity, frame_dt=frame_dt, flow_camera=after, **frame_options)
        smoke_seen = out["alpha"].detach() >= _ALPHA_SEEN
        flows = {"flow_forward": out["flow"]}
        if f > 0:
            flows["flow_backward"] = render_volume(density.detach(), velocity=velocity, frame_dt=-frame_dt,
                                                   flow_camera=before, **frame_options)["flow"]
        for key, other, valid in (("flow_forward", after, f < frames - 1), ("flow_backward", before, f > 0)):
            if not valid:
                layers[key].append(torch.zeros_like(out["flow"]))
                continue
            flow = flows[key]
            if moving:  # where no smoke is seen the surfaces move by the camera's and the obstacles' motion
                points = surface_points(view, surface_depth)
                moved = _move_obstacle_points(points, surface["segmentation"], velocities,
                                              frame_dt if key == "flow_forward" else -frame_dt)
                surface_flow = other.project(moved)[0] - view.project(points)[0]
                flow = torch.where(smoke_seen[..., None], flow, surface_flow.to(dtype))
            layers[key].append(flow)
        layers["rgb"].append(out["rgb"])
        layers["alpha"].append(out["alpha"])
        layers["depth"].append(out["depth"])
        layers["segmentation"].append(torch.where(out["mask"], out["segmentation"],
                                                  surface["segmentation"].to(torch.int32)))
        layers["normal"].append(surface["normal"].to(dtype))
    stacked = {key: torch.stack(values) for key, values in layers.items()}
    alpha, depth = stacked["alpha"].detach(), stacked["depth"].detach()
    for key, step in (("forward", 1), ("backward", -1)):
        occlusion = torch.ones(alpha.shape, dtype=torch.bool, device=device)
        for f in range(frames):
            if 0 <= f + step < frames:
                other = cameras[f + step]
                moved_depth = depth[f]
                if moving:  # this pixel's content (surface or smoke at its expected depth) seen by the other camera
                    points = _move_obstacle_points(surface_points(cameras[f], depth[f]), stacked["segmentation"][f],
                                                   velocities, step * frame_dt)
                    moved_depth = torch.where(torch.isfinite(depth[f]), other.project(points)[1], depth[f])
                occlusion[f] = flow_occlusion(stacked[f"flow_{key}"][f], alpha[f], moved_depth, alpha[f + step],
                                              backgrounds[f + step]["depth"].to(dtype),
                                              depth_tolerance=float(fluid.cell_size))
        stacked[f"occlusion_{key}"] = occlusion
    return stacked


def write_fluid3d_outputs(world, frames: int, out: Path, quiet: bool, trajectory=None) -> int:
    """``hybridsim render`` for a scene with a 3D grid fluid: video, layers, flow video, states."""
    import numpy as np
    from tqdm import tqdm

    from ..data.sample import camera_layers
    from ..fileio import atomic_path
    from ..sim.fluid import fluid_rollout
    from .camera_io import scene_cameras
    from .flow import flow_to_color
    from .spheres import to_uint8
    from .video import write_layers, write_video

    spec = world.spec
    with torch.no_grad():
        with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
            trajectory = trajectory if trajectory is not None else \
                fluid_rollout(world, frames=frames, progress=lambda done: bar.update(done - bar.n))
        cameras = scene_cameras(spec.camera, int(trajectory.density.shape[0]), spec.time.fps)
        layers = render_fluid3d_frames(world, trajectory, cameras, 1.0 / spec.time.fps)
    layers = {key: value.detach().cpu() for key, value in layers.items()}
    rgb = to_uint8(layers.pop("rgb").numpy())
    write_video(out, rgb, fps=spec.time.fps)
    stacked = {key: value.numpy().astype(np.float32) if value.is_floating_point() else value.numpy()
               for key, value in layers.items()}
    stacked.update(camera_layers(cameras))
    layers_path, flow_path, states_path = (out.with_suffix(s) for s in (".layers.npz", ".flow.mp4", ".states.npz"))
    write_layers(layers_path, stacked)
    write_video(flow_path, flow_to_color(stacked["flow_forward"]), fps=spec.time.fps)
    with atomic_path(states_path) as tmp:
        extra = {} if trajectory.temperature is None else {"temperature": trajectory.temperature.numpy()}
        np.savez_compressed(tmp, density=trajectory.density.numpy(), velocity_x=trajectory.velocity_x.numpy(),
                            velocity_y=trajectory.velocity_y.numpy(), velocity_z=trajectory.velocity_z.numpy(),
                            times=trajectory.times.numpy(), **extra)
    cells = "x".join(map(str, spec.fluid.cells))
    print(f"wrote {out} ({rgb.shape[0]} frames, {rgb.shape[2]}x{rgb.shape[1]}, {spec.time.fps:g} fps, "
          f"3D grid fluid {cells}, backend {world.backend}, device {world.device})")
    print(f"wrote {layers_path} (alpha, depth, segmentation: 0 ground/sky, k + 1 obstacle k, "
          f"{len(spec.fluid.obstacles) + 1} smoke; normal, flow_forward/backward, occlusion_forward/backward, camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (density, face velocities, times{', temperature' if extra else ''})")
    return 0
