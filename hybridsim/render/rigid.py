"""Rendering rigid-body rollouts (``hybridsim.sim.rigid``) with the triangle-mesh renderer.

Every scene object is one mesh: spheres as icospheres, boxes, capsules, meshes from their files,
static boxes and static meshes (from their files). Object k of the scene draws as segmentation id
k + 1 (0 is ground / sky), as in the sphere path, static objects included. Poses (K, 7) are
position [m] + quaternion (x, y, z, w) of each object's centre of mass (static boxes: their
centre; static meshes: the file's origin, as placed by ``position``); mesh vertices are kept in that frame, which is
also the frame object textures (``texture`` in the scene) live in. The scene's ``[light]``
(directional or spot, ``object_shadows``) is used as given; learnable light values in ``params``
reach the image.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from .camera import Camera
from .camera_io import scene_cameras
from .mesh import box_mesh, capsule_mesh, mesh_flow, render_meshes, transform_meshes, trimesh_to_mesh

__all__ = ["rigid_object_meshes", "rigid_poses", "rigid_textures", "scene_light_options", "render_rigid",
           "render_rigid_layers", "ICOSPHERE_SUBDIVISIONS"]

ICOSPHERE_SUBDIVISIONS = 2  # 320 faces per sphere


def rigid_object_meshes(world, model, dtype=torch.float64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per scene object: (vertices (V, 3) in the object's pose frame [m], faces (T, 3) long)."""
    import trimesh

    from ..assets import load_mesh
    from ..sim.rigid import mesh_file, rigid_body_objects

    spec = world.spec
    body_of = {i: b for b, i in enumerate(rigid_body_objects(spec))}
    meshes = []
    for i, obj in enumerate(spec.objects):
        if obj.type == "sphere":
            sphere = trimesh.creation.icosphere(subdivisions=ICOSPHERE_SUBDIVISIONS, radius=obj.radius)
            verts, faces = trimesh_to_mesh(sphere, dtype)
        elif obj.type in ("box", "static_box"):
            verts, faces = box_mesh(obj.half_extents, dtype)
        elif obj.type == "capsule":
            verts, faces = capsule_mesh(obj.radius, obj.half_height, dtype=dtype)
        elif obj.type in ("mesh", "static_mesh"):
            loaded = load_mesh(mesh_file(spec, i))  # limits, no side files, AssetError naming the file
            loaded.apply_scale(obj.scale)
            if loaded.volume < 0:
                loaded.invert()
            verts, faces = trimesh_to_mesh(loaded, dtype)
        else:
            raise ValueError(f"no render mesh for object type {obj.type!r}")
        if i in body_of:  # into the body frame centred on the centre of mass
            shape = next(s for s in model.shapes if s.body == body_of[i])
            offset = torch.as_tensor(np.asarray(shape.position, dtype=float), dtype=dtype)
            verts = verts + offset
        meshes.append((verts, faces))
    return meshes


def rigid_poses(world, trajectory) -> torch.Tensor:
    """Object poses per frame, (F+1, K, 7), differentiable w.r.t. the trajectory's states."""
    from ..solvers.rigid import quat_from_rotation_vector

    spec = world.spec
    positions, orientations = trajectory.positions, trajectory.orientations
    frames, dtype = positions.shape[0], positions.dtype
    body_of = {i: b for b, i in enumerate(trajectory.body_objects)}
    columns = []
    for i, obj in enumerate(spec.objects):
        if i in body_of:
            b = body_of[i]
            columns.append(torch.cat([positions[:, b], orientations[:, b]], dim=-1))
        else:
            q = quat_from_rotation_vector(torch.tensor(obj.orientation, dtype=dtype))
            pose = torch.cat([torch.tensor(obj.position, dtype=dtype), q])
            columns.append(pose.expand(frames, 7))
    return torch.stack(columns, dim=1)


def _colors(world, params, dtype) -> torch.Tensor:
    return torch.stack([world.value(f"objects[{i}].color", params).to(dtype).reshape(3)
                        for i in range(len(world.spec.objects))])


def rigid_textures(world) -> list:
    """Per scene object: its ``hybridsim.render.textures.Texture`` (images read now, relative to the
    scene file's folder) or None."""
    from .textures import texture_from_spec

    spec = world.spec
    return [None if getattr(obj, "texture", None) is None else
            texture_from_spec(obj.texture, spec.source, field=f"objects[{i}].texture")
            for i, obj in enumerate(spec.objects)]


def scene_light_options(world, params: Mapping[str, torch.Tensor] | None = None) -> dict:
    """``render_meshes`` keyword arguments for the scene's ground and ``[light]`` (directional or
    spot, object shadows); light values given in ``params`` (learnable) are used as tensors."""
    spec = world.spec
    ground, light = spec.ground, spec.light
    options = dict(ground_height=ground.height, checker_size=ground.checker_size, checker_colors=ground.colors,
                   sky_color=light.sky_color, light_direction=light.direction, light_intensity=light.intensity,
                   ambient=light.ambient, light_type=light.type, object_shadows=light.object_shadows)
    if light.type == "spot":
        options.update(light_position=light.position, cone_deg=light.cone_deg, falloff=light.falloff)
    for key, field in (("light_direction", "direction"), ("light_intensity", "intensity"), ("ambient", "ambient"),
                       ("light_position", "position"), ("cone_deg", "cone_deg"), ("falloff", "falloff")):
        path = f"light.{field}"
        if params is not None and path in params and key in options:
            options[key] = world.value(path, params)
    return options


def _render_frame(world, camera, meshes, poses, colors, softness, coverage_weights=None, look=None) -> dict:
    """One frame; ``look`` = (light options, textures) from ``_look`` (made here when None)."""
    verts, faces, owner = transform_meshes([m[0] for m in meshes], [m[1] for m in meshes], poses)
    options, textures = look if look is not None else _look(world, None, meshes)
    return render_meshes(camera, verts, faces, owner, colors, poses=poses, coverage_weights=coverage_weights,
                         softness=softness, shadows=True, **options, **textures)


def _look(world, params, meshes, dtype=None) -> tuple[dict, dict]:
    """(light options, texture arguments) of ``render_meshes`` for the scene."""
    textures = rigid_textures(world)
    extra = {}
    if any(t is not None for t in textures):
        coords = torch.cat([m[0] for m in meshes])  # each vertex in its object's frame: textures stick to it
        extra = dict(textures=textures, texture_coords=coords if dtype is None else coords.to(dtype))
    return scene_light_options(world, params), extra


def render_rigid(world, trajectory, params: Mapping[str, torch.Tensor] | None = None, *,
                 frames: slice | None = None, softness: float = 0.5, camera: Camera | None = None) -> dict:
    """Render (a slice of) the frames of a rigid trajectory; layers stacked over frames
    (``rgb`` (F, H, W, 3) etc., as ``render_meshes``), differentiable w.r.t. the trajectory (poses)
    and the learnable colours in ``params``. ``coverage`` (F, H, W) is the soft coverage of the
    moving objects alone (static boxes and meshes excluded, but hiding what is behind them)."""
    from ..scene.schema import STATIC_TYPES

    dtype = trajectory.positions.dtype
    meshes = rigid_object_meshes(world, trajectory.model, dtype)
    poses = rigid_poses(world, trajectory)
    cameras = [camera] * poses.shape[0] if camera is not None else \
        scene_cameras(world.spec.camera, poses.shape[0], world.spec.time.fps)
    if frames is not None:
        poses, cameras = poses[frames], cameras[frames]
    colors = _colors(world, params, dtype)
    moving = torch.tensor([float(obj.type not in STATIC_TYPES) for obj in world.spec.objects], dtype=dtype)
    look = _look(world, params, meshes, dtype)
    layers = [_render_frame(world, cam, meshes, pose, colors, softness, moving, look)
              for cam, pose in zip(cameras, poses)]
    return {key: torch.stack([layer[key] for layer in layers]) for key in layers[0]}


def render_rigid_layers(world, trajectory, *, progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict]:
    """Render every frame (no gradients) plus exact flow; returns (rgb uint8 (F+1, H, W, 3), layers)
    where layers holds depth, segmentation, normal, alpha, object_coordinates, flow_forward /
    flow_backward (F+1, H, W, 2) [px] with occlusion masks (forward flow is zero and occluded in the
    last frame, backward in the first), object_poses (F+1, K, 7), per-frame intrinsics (F+1, 3, 3) and extrinsics (F+1, 4, 4)."""
    from ..data.sample import camera_layers
    from .spheres import to_uint8

    keys = ("rgb", "depth", "segmentation", "normal", "alpha", "object_coordinates")
    with torch.no_grad():
        dtype = trajectory.positions.dtype
        meshes = rigid_object_meshes(world, trajectory.model, dtype)
        poses = rigid_poses(world, trajectory).detach().cpu()
        cameras = scene_cameras(world.spec.camera, poses.shape[0], world.spec.time.fps)
        camera = cameras[0]
        colors = _colors(world, None, dtype)
        look = _look(world, None, meshes, dtype)
        frames = [None] * poses.shape[0]
        for t in range(poses.shape[0]):
            frames[t] = {k: v.cpu() for k, v in _render_frame(world, cameras[t], meshes, poses[t], colors, 0.5,
                                                              look=look).items() if k in keys}
            if progress is not None:
                progress(t + 1)
        count = len(frames)
        height, width = camera.height, camera.width
        flow = {"flow_forward": torch.zeros((count, height, width, 2), dtype=dtype),
                "flow_backward": torch.zeros((count, height, width, 2), dtype=dtype),
                "occlusion_forward": torch.ones((count, height, width), dtype=torch.bool),
                "occlusion_backward": torch.ones((count, height, width), dtype=torch.bool)}
        for t in range(count - 1):
            pair = mesh_flow(cameras[t], cameras[t + 1], frames[t], frames[t + 1], poses[t], poses[t + 1])
            flow["flow_forward"][t], flow["occlusion_forward"][t] = pair["flow_forward"], pair["occlusion_forward"]
            flow["flow_backward"][t + 1], flow["occlusion_backward"][t + 1] = pair["flow_backward"], pair["occlusion_backward"]
    stacked = {key: torch.stack([f[key] for f in frames]).numpy() for key in keys}
    rgb = to_uint8(stacked.pop("rgb"))
    for key in ("depth", "normal", "alpha", "object_coordinates"):
        stacked[key] = stacked[key].astype(np.float32)
    for key, value in flow.items():
        stacked[key] = value.numpy().astype(np.float32) if value.is_floating_point() else value.numpy()
    stacked["object_poses"] = poses.numpy().astype(np.float32)
    stacked.update(camera_layers(cameras))
    return rgb, stacked
