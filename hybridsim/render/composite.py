"""Depth-compositing particle layers (MPM, ``hybridsim.render.particles``) with mesh layers (rigid
bodies, ``hybridsim.render.mesh``) for scenes with both ``[mpm]`` and ``[[objects]]``.

Each frame is rendered as separate layers, then merged per pixel:

* particles over a black background and no ground: premultiplied colour ``P``, coverage
  ``a_p``, depth, normal, segmentation (material m + 1) and exact particle flow;
* meshes over a black ground and sky, without ground shadows: premultiplied colour ``M``,
  coverage ``a_m``, depth, normal, segmentation (object k + 1) and rigid-motion flow;
* the background ``G`` premultiplied by ``1 - a_m``: in 2D the ``[mpm].background`` colour; in 3D
  a second mesh render with the real ground, sky and ground shadows minus ``M``.

Where the front surface at a pixel (hard depths) is a body: ``M + (1 - a_m) P + (1 - a_p) G``;
else ``P + (1 - a_p)(M + G)``. Both agree where no body covers the pixel, the rgb is
differentiable w.r.t. particle positions and colours, body poses and colours (the choice of the
front layer is not), and the hard layers come from the front layer: segmentation ids are 0 for
the background, k + 1 for scene object k (as in rigid scenes) and K + 1 + m for MPM material m
(K objects); flow is the front layer's exact flow, and a pixel is occluded when its own layer
says so or the composite shows another id at the flow's target in the other frame.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from .camera import Camera

__all__ = ["composite_frame", "render_coupled", "render_coupled_layers", "write_coupled_outputs"]

_BLACK = (0.0, 0.0, 0.0)
_LAYERS = ("rgb", "alpha", "depth", "normal", "segmentation")


def _mesh_look(world, params, meshes, dtype) -> tuple[dict, dict]:
    """``render_meshes`` keyword arguments for the scene's ground and light (and textures), as the
    rigid-body renderer uses them."""
    from . import rigid as rigid_render

    look = getattr(rigid_render, "_look", None)
    if look is not None:
        return look(world, params, meshes, dtype)
    from .scene import scene_render_options

    options = scene_render_options(world, params)
    options["checker_colors"] = tuple(tuple(c) for c in options["checker_colors"])
    return options, {}


def _object_colors(world, params, dtype) -> torch.Tensor:
    return torch.stack([world.value(f"objects[{i}].color", params).to(dtype).reshape(3)
                        for i in range(len(world.spec.objects))])


def _particle_options(world, trajectory, params):
    from .particles import _mpm_options

    options, colors, sigmas = _mpm_options(world, trajectory.mpm, params)
    options.pop("ground", None)
    options["background"] = _BLACK
    return options, colors, sigmas


def _cameras(world, count: int, cameras) -> list[Camera]:
    from .camera_io import scene_cameras

    if cameras is None:
        return scene_cameras(world.spec.camera, count, world.spec.time.fps)
    if isinstance(cameras, Camera):
        return [cameras] * count
    return list(cameras)


def composite_frame(particles: dict, meshes: dict, background: torch.Tensor, object_count: int) -> dict:
    """Merge one frame's particle layers (black background) and mesh layers (black ground and sky)
    with ``background`` (H, W, 3), the background premultiplied by ``1 - a_m``. Returns rgb,
    alpha, depth, normal, segmentation and ``front_mesh`` (H, W) bool (the body is in front)."""
    a_p, a_m = particles["alpha"], meshes["alpha"]
    p_rgb, m_rgb = particles["rgb"], meshes["rgb"]
    seg_p, seg_m = particles["segmentation"], meshes["segmentation"]
    d_p, d_m = particles["depth"].detach(), meshes["depth"].detach()
    covered_p = seg_p > 0
    front_mesh = (seg_m > 0) & (~covered_p | (d_m <= d_p))
    mesh_front = m_rgb + (1.0 - a_m)[..., None] * p_rgb + (1.0 - a_p)[..., None] * background
    particle_front = p_rgb + (1.0 - a_p)[..., None] * (m_rgb + background)
    rgb = torch.where(front_mesh[..., None], mesh_front, particle_front).clamp(0.0, 1.0)
    alpha = 1.0 - (1.0 - a_m) * (1.0 - a_p)
    depth = torch.where(front_mesh, d_m, torch.where(covered_p, d_p, d_m))  # d_m: the ground's, or inf
    normal = torch.where(front_mesh[..., None], meshes["normal"].detach(),
                         torch.where(covered_p[..., None], particles["normal"].detach(), meshes["normal"].detach()))
    seg = torch.where(front_mesh, seg_m, torch.where(covered_p, seg_p + object_count, torch.zeros_like(seg_p)))
    return {"rgb": rgb, "alpha": alpha, "depth": depth, "normal": normal, "segmentation": seg.to(torch.int32),
            "front_mesh": front_mesh}


class _MeshFrames:
    """Mesh layers of the bodies of a coupled trajectory, frame by frame."""

    def __init__(self, world, trajectory, params, dtype):
        from .rigid import rigid_object_meshes, rigid_poses

        self.world = world
        self.meshes = rigid_object_meshes(world, trajectory.rigid.model, dtype)
        self.poses = rigid_poses(world, trajectory.rigid).to(dtype)
        self.colors = _object_colors(world, params, dtype)
        self.options, self.textures = _mesh_look(world, params, self.meshes, dtype)
        self.three_d = world.spec.mpm.dim == 3

    def render(self, camera: Camera, t: int) -> tuple[dict, torch.Tensor]:
        """(mesh layers over black, background premultiplied by 1 - alpha) of frame t."""
        from .mesh import render_meshes, transform_meshes

        verts, faces, owner = transform_meshes([m[0] for m in self.meshes], [m[1] for m in self.meshes], self.poses[t])
        black = dict(self.options, sky_color=_BLACK, checker_colors=(_BLACK, _BLACK))
        layers = render_meshes(camera, verts, faces, owner, self.colors, poses=self.poses[t], shadows=False, **black,
                               **self.textures)
        if self.three_d:  # the real ground, sky and shadows, less the bodies' own colour
            full = render_meshes(camera, verts, faces, owner, self.colors, poses=self.poses[t], shadows=True,
                                 **self.options, **self.textures)
            background = full["rgb"] - layers["rgb"]
        else:
            colour = torch.as_tensor(self.world.spec.mpm.background, dtype=layers["rgb"].dtype,
                                     device=layers["rgb"].device)
            background = (1.0 - layers["alpha"])[..., None] * colour
        return layers, background


def render_coupled(world, trajectory, params: Mapping[str, torch.Tensor] | None = None, *,
                   frames: slice | None = None, cameras: Camera | Sequence[Camera] | None = None) -> dict:
    """Render (a slice of) the frames of a coupled trajectory (``hybridsim.sim.coupled``): rgb
    (F, H, W, 3), alpha, depth, normal, segmentation, stacked over frames; rgb and alpha are
    differentiable w.r.t. the particle positions, body poses, colours and light in ``params``."""
    from .particles import render_particles

    positions = trajectory.mpm.world_positions()
    indices = list(range(positions.shape[0]))
    if frames is not None:
        indices = indices[frames]
    if cameras is None:  # the scene's camera path
        every = _cameras(world, positions.shape[0], None)
        cams = [every[t] for t in indices]
    else:  # one camera, or one per rendered frame
        cams = _cameras(world, len(indices), cameras)
    options, colors, sigmas = _particle_options(world, trajectory, params)
    meshes = _MeshFrames(world, trajectory, params, positions.dtype)
    count = len(world.spec.objects)
    out = {key: [] for key in _LAYERS}
    for camera, t in zip(cams, indices):
        particle_layers = render_particles(camera, positions[t], colors, sigmas, **options)
        mesh_layers, background = meshes.render(camera, t)
        frame = composite_frame(particle_layers, mesh_layers, background, count)
        for key in _LAYERS:
            out[key].append(frame[key])
    return {key: torch.stack(value) for key, value in out.items()}


def _occlusion(flow: torch.Tensor, own: torch.Tensor, segmentation: torch.Tensor,
               other_segmentation: torch.Tensor) -> torch.Tensor:
    """The layer's own occlusion, or another composite id at the flow's target pixel."""
    height, width = segmentation.shape
    rows, cols = torch.meshgrid(torch.arange(height, device=flow.device), torch.arange(width, device=flow.device),
                                indexing="ij")
    col = torch.floor(cols + 0.5 + flow[..., 0]).long()
    row = torch.floor(rows + 0.5 + flow[..., 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
    same = other_segmentation[row.clamp(0, height - 1), col.clamp(0, width - 1)] == segmentation
    return own | ~(inside & same)


def render_coupled_layers(world, trajectory, *, cameras: Sequence[Camera] | None = None,
                          progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Render every frame (no gradients) with exact flow; returns (rgb uint8 (F+1, H, W, 3), layers)
    where layers holds depth, segmentation (0 background, k + 1 object k, K + 1 + m material m),
    normal, alpha, flow_forward / flow_backward (F+1, H, W, 2) [px] with occlusion masks,
    object_poses (F+1, K, 7), per-frame intrinsics and extrinsics."""
    from ..data.sample import camera_layers
    from .mesh import mesh_flow
    from .particles import render_particle_frames
    from .spheres import to_uint8

    with torch.no_grad():
        positions = trajectory.mpm.world_positions().detach()
        frames = positions.shape[0]
        cams = _cameras(world, frames, cameras)
        options, colors, sigmas = _particle_options(world, trajectory, None)
        particles = render_particle_frames(cams, positions, colors.detach(), sigmas.detach(), flow=True,
                                           keys=_LAYERS, **options)
        meshes = _MeshFrames(world, trajectory, None, positions.dtype)
        count = len(world.spec.objects)
        height, width = cams[0].height, cams[0].width
        result = {"rgb": [], "alpha": [], "depth": [], "normal": [], "segmentation": []}
        like = dict(dtype=positions.dtype, device=positions.device)
        flow = {"flow_forward": torch.zeros((frames, height, width, 2), **like),
                "flow_backward": torch.zeros((frames, height, width, 2), **like),
                "occlusion_forward": torch.ones((frames, height, width), dtype=torch.bool, device=positions.device),
                "occlusion_backward": torch.ones((frames, height, width), dtype=torch.bool, device=positions.device)}
        previous = None
        fronts = []
        for t in range(frames):
            mesh_layers, background = meshes.render(cams[t], t)
            frame = composite_frame({key: particles[key][t] for key in _LAYERS}, mesh_layers, background, count)
            for key in result:
                result[key].append(frame[key])
            fronts.append(frame["front_mesh"])
            if previous is not None:  # rigid-motion flow of the bodies between frames t-1 and t
                pair = mesh_flow(cams[t - 1], cams[t], previous, mesh_layers, meshes.poses[t - 1], meshes.poses[t])
                for key, at in (("flow_forward", t - 1), ("occlusion_forward", t - 1), ("flow_backward", t),
                                ("occlusion_backward", t)):
                    mine = particles[key][at]
                    flow[key][at] = torch.where((fronts[at][..., None] if mine.dim() == 3 else fronts[at]),
                                                pair[key].to(device=mine.device, dtype=mine.dtype), mine)
            previous = {key: mesh_layers[key] for key in ("depth", "segmentation")}
            if progress is not None:
                progress(t + 1)
        seg = torch.stack(result["segmentation"])
        for t in range(frames - 1):  # another id at the target pixel (across layers) is occluded
            flow["occlusion_forward"][t] = _occlusion(flow["flow_forward"][t], flow["occlusion_forward"][t], seg[t],
                                                      seg[t + 1])
            flow["occlusion_backward"][t + 1] = _occlusion(flow["flow_backward"][t + 1],
                                                           flow["occlusion_backward"][t + 1], seg[t + 1], seg[t])
    stacked = {key: torch.stack(value).cpu().numpy() for key, value in result.items()}
    rgb = to_uint8(stacked.pop("rgb"))
    for key in ("depth", "normal", "alpha"):
        stacked[key] = stacked[key].astype(np.float32)
    for key, value in flow.items():
        value = value.cpu()
        stacked[key] = value.numpy().astype(np.float32) if value.is_floating_point() else value.numpy()
    stacked["object_poses"] = meshes.poses.detach().cpu().numpy().astype(np.float32)
    stacked.update(camera_layers(cams))
    return rgb, stacked


def write_coupled_outputs(world, frames: int, out, quiet: bool, trajectory=None) -> int:
    """``hybridsim render`` for a scene with ``[mpm]`` and ``[[objects]]``: simulate (two-way
    coupling), render the composite and write OUT (video), OUT.layers.npz, OUT.flow.mp4 and
    OUT.states.npz (particle and body states)."""
    from pathlib import Path

    from tqdm import tqdm

    from ..fileio import atomic_path
    from ..sim.coupled import coupled_rollout
    from .flow import flow_to_color
    from .video import write_layers, write_video

    out = Path(out)
    spec = world.spec
    with torch.no_grad():
        with tqdm(total=frames, desc="simulate", unit="frame", disable=quiet, leave=False) as bar:
            trajectory = trajectory if trajectory is not None else \
                coupled_rollout(world, frames=frames, progress=lambda done: bar.update(done - bar.n))
        with tqdm(total=trajectory.frame_count, desc="render", unit="frame", disable=quiet, leave=False) as bar:
            rgb, stacked = render_coupled_layers(world, trajectory, progress=lambda done: bar.update(done - bar.n))
    write_video(out, rgb, fps=spec.time.fps)
    layers_path, flow_path, states_path = (out.with_suffix(s) for s in (".layers.npz", ".flow.mp4", ".states.npz"))
    write_layers(layers_path, stacked)
    write_video(flow_path, flow_to_color(stacked["flow_forward"]), fps=spec.time.fps)
    mpm, rigid = trajectory.mpm, trajectory.rigid
    model = mpm.model
    with atomic_path(states_path) as tmp:
        np.savez_compressed(tmp, positions=mpm.positions.cpu().numpy(), velocities=mpm.velocities.cpu().numpy(),
                            times=trajectory.times.numpy(), particle_material=model.particle_material.cpu().numpy(),
                            particle_body=mpm.particle_body.cpu().numpy(),
                            particle_color=model.particle_color.detach().cpu().numpy().astype(np.float32),
                            particle_volume=model.particle_volume.cpu().numpy(),
                            body_positions=rigid.positions.cpu().numpy(),
                            body_orientations=rigid.orientations.cpu().numpy(),
                            body_velocities=rigid.velocities.cpu().numpy(),
                            body_angular_velocities=rigid.angular_velocities.cpu().numpy(),
                            body_objects=np.asarray(rigid.body_objects, dtype=np.int64))
    print(f"wrote {out} ({rgb.shape[0]} frames, {rgb.shape[2]}x{rgb.shape[1]}, {spec.time.fps:g} fps, "
          f"MPM {spec.mpm.dim}D {model.particle_count} particles coupled with {len(rigid.body_objects)} rigid "
          f"bod{'ies' if len(rigid.body_objects) != 1 else 'y'}, {trajectory.substeps} common substeps/frame, "
          f"backend {world.backend}, device {world.device})")
    print(f"wrote {layers_path} (depth, segmentation: 0 background, k + 1 object k, {len(spec.objects)} + 1 + m "
          "material m; normal, alpha, flow_forward/backward + occlusion, object poses, camera)")
    print(f"wrote {flow_path} (forward flow, colour wheel)")
    print(f"wrote {states_path} (particle and body states, times, materials, bodies, colours, volumes)")
    return 0
