"""Render a rollout of a scene: camera, ground and light from the spec, spheres from the
trajectory (and learnable appearance from ``params``)."""

from __future__ import annotations

import torch

from .camera import Camera
from .camera_io import camera_moves, scene_cameras
from .spheres import render_frames

__all__ = ["render_trajectory", "scene_render_options", "sphere_textures"]


def scene_render_options(world, params=None) -> dict:
    """Keyword arguments of ``render_spheres`` taken from the scene (light values may be learned);
    the spot-light keys (``light_type``, ``light_position``, ``cone_deg``, ``falloff``) only for a spot."""
    spec = world.spec
    options = dict(
        ground_height=spec.ground.height,
        checker_size=spec.ground.checker_size,
        checker_colors=tuple(tuple(c) for c in spec.ground.colors),
        sky_color=tuple(spec.light.sky_color),
        light_direction=tuple(spec.light.direction),
        light_intensity=spec.light.intensity,
        ambient=spec.light.ambient,
    )
    if spec.light.type == "spot":
        options.update(light_type="spot", light_position=tuple(spec.light.position), cone_deg=spec.light.cone_deg,
                       falloff=spec.light.falloff)
    for key, path in (("light_intensity", "light.intensity"), ("ambient", "light.ambient"),
                      ("light_direction", "light.direction"), ("light_position", "light.position"),
                      ("cone_deg", "light.cone_deg"), ("falloff", "light.falloff")):
        if params is not None and path in params and key in options:
            options[key] = world.value(path, params)
    return options


def sphere_textures(world) -> list:
    """Per-sphere ``Texture`` or None, in the world's sphere order (from ``[[objects]] texture``)."""
    from .textures import texture_from_spec

    spec = world.spec
    out = []
    for k in range(len(world.spheres)):
        index = world._object_index(k)
        texture = getattr(spec.objects[index], "texture", None)
        out.append(None if texture is None else
                   texture_from_spec(texture, spec.source, field=f"objects[{index}].texture"))
    return out


def render_trajectory(world, trajectory, params=None, *, world_index: int = 0,
                      frames: slice | None = None, camera: Camera | None = None,
                      albedo: bool = False) -> dict[str, torch.Tensor]:
    """Layers for every frame of one world of ``trajectory``: rgb (F,H,W,3) in [0,1], alpha,
    depth [m], segmentation (int32; 0 ground/sky, k+1 sphere k) and camera-space normals (with
    ``albedo`` also the unlit colours).

    Differentiable with respect to sphere positions, radii, colours and light (soft edges).
    """
    centers = trajectory.positions[:, world_index]
    radii = trajectory.model.radius.reshape(world.world_count, -1)[world_index]
    options = dict(scene_render_options(world, params), albedo=albedo)
    textures = sphere_textures(world)
    if any(t is not None for t in textures):
        options["textures"] = textures
    colors = world.colors(params)
    if camera is None and camera_moves(world.spec.camera):  # a camera path: one camera per frame
        cameras = scene_cameras(world.spec.camera, centers.shape[0], world.spec.time.fps)
        indices = range(centers.shape[0])[frames] if frames is not None else range(centers.shape[0])
        layers = [render_frames(cameras[i], centers[i:i + 1], radii, colors, **options) for i in indices]
        return {key: torch.cat([layer[key] for layer in layers]) for key in layers[0]}
    camera = camera or Camera.from_spec(world.spec.camera)
    if frames is not None:
        centers = centers[frames]
    return render_frames(camera, centers, radii, colors, **options)
