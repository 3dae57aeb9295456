"""Render a 3D grid fluid (a smoke volume) in its scene: ground, sky and obstacles from the mesh
rasteriser, the smoke ray-marched over them (``hybridsim.render.volume.render_volume``).

The obstacles are static, so the opaque background (rgb and depth) is rasterised once and every
frame's march stops at its depth: smoke behind an obstacle or under the ground is hidden, smoke in
front of it veils it. Layers follow the other renderers: rgb, alpha, depth [m] (the smoke's
expected depth where it covers, else the surface behind), segmentation (0 ground / sky, k + 1
obstacle k, obstacle_count + 1 smoke), camera-space normals of the surfaces, forward and backward
optical flow [px] of the smoke over one frame.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .camera import Camera

__all__ = ["cell_velocity3d", "fluid3d_background", "render_fluid3d_frames", "write_fluid3d_outputs"]

ICOSPHERE_SUBDIVISIONS = 3


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


def fluid3d_background(world, camera: Camera, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """The scene without smoke: ground, sky and the fluid's obstacles (``render_meshes`` layers)."""
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
        poses.append([*obstacle.center, 0.0, 0.0, 0.0, 1.0])
    if not meshes:  # nothing but ground and sky: a speck far below the ground stands in
        verts, faces = box_mesh((1e-3, 1e-3, 1e-3), dtype)
        meshes.append((verts, faces))
        poses.append([0.0, 0.0, world.spec.ground.height - 1e3, 0.0, 0.0, 0.0, 1.0])
    poses = torch.tensor(poses, dtype=dtype)
    verts, faces, owner = transform_meshes([m[0] for m in meshes], [m[1] for m in meshes], poses)
    colors = torch.tensor([fluid.obstacle_color] * len(meshes), dtype=dtype)
    return render_meshes(camera, verts, faces, owner, colors, poses=poses, shadows=True, **scene_light_options(world))


def render_fluid3d_frames(world, trajectory, camera: Camera, frame_dt: float,
                          background: dict | None = None) -> dict[str, torch.Tensor]:
    """Layers (F, H, W, ...) for every record of a GridFluid3DTrajectory; ``rgb`` and ``alpha`` are
    differentiable w.r.t. the density (and through it the simulation)."""
    from .volume import render_volume

    spec = world.spec
    fluid = spec.fluid
    dtype = trajectory.density.dtype
    background = background if background is not None else fluid3d_background(world, camera, dtype)
    surface_rgb = background["rgb"].to(dtype)
    surface_depth = background["depth"].to(dtype)
    smoke_id = len(fluid.obstacles) + 1
    options = dict(origin=fluid.origin, cell_size=fluid.cell_size, camera=camera, color=fluid.smoke_color,
                   opacity=fluid.opacity, background=surface_rgb, background_depth=surface_depth,
                   light_direction=spec.light.direction, segment_id=smoke_id)
    frames = trajectory.density.shape[0]
    layers: dict[str, list] = {key: [] for key in ("rgb", "alpha", "depth", "segmentation", "flow_forward",
                                                   "flow_backward")}
    for f in range(frames):
        density = trajectory.density[f]
        velocity = cell_velocity3d(trajectory.velocity_x[f], trajectory.velocity_y[f], trajectory.velocity_z[f],
                                   tuple(fluid.cells)).detach()
        out = render_volume(density, velocity=velocity, frame_dt=frame_dt, **options)
        backward = render_volume(density.detach(), velocity=velocity, frame_dt=-frame_dt, **options)["flow"]
        layers["rgb"].append(out["rgb"])
        layers["alpha"].append(out["alpha"])
        layers["depth"].append(out["depth"])
        layers["segmentation"].append(torch.where(out["mask"], out["segmentation"],
                                                  background["segmentation"].to(torch.int32)))
        layers["flow_forward"].append(out["flow"] if f < frames - 1 else torch.zeros_like(out["flow"]))
        layers["flow_backward"].append(backward if f > 0 else torch.zeros_like(backward))
    stacked = {key: torch.stack(values) for key, values in layers.items()}
    stacked["normal"] = background["normal"].to(dtype).expand(frames, *background["normal"].shape).clone()
    return stacked


def write_fluid3d_outputs(world, frames: int, out: Path, quiet: bool, trajectory=None) -> int:
    """``hybridsim render`` for a scene with a 3D grid fluid: video, layers, flow video, states."""
    import numpy as np
    from tqdm import tqdm

    from ..data.sample import camera_layers
    from ..errors import SceneError
    from ..fileio import atomic_path
    from ..sim.fluid import fluid_rollout
    from .camera_io import camera_moves
    from .flow import flow_to_color
    from .spheres import to_uint8
    from .video import write_layers, write_video

    spec = world.spec
    if camera_moves(spec.camera):
        raise SceneError("a moving camera ([[camera.keyframes]]) is not supported for [fluid] scenes yet",
                         file=spec.source, field="camera.keyframes")
    with torch.no_grad():
        with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
            trajectory = trajectory if trajectory is not None else \
                fluid_rollout(world, frames=frames, progress=lambda done: bar.update(done - bar.n))
        camera = Camera.from_spec(spec.camera)
        layers = render_fluid3d_frames(world, trajectory, camera, 1.0 / spec.time.fps)
    rgb = to_uint8(layers.pop("rgb").numpy())
    write_video(out, rgb, fps=spec.time.fps)
    stacked = {key: value.numpy().astype(np.float32) if value.is_floating_point() else value.numpy()
               for key, value in layers.items()}
    stacked.update(camera_layers([camera] * rgb.shape[0]))
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
          f"{len(spec.fluid.obstacles) + 1} smoke; normal, flow_forward/backward, camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (density, face velocities, times{', temperature' if extra else ''})")
    return 0
