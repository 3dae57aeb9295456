"""Differentiable rendering of rigid triangle meshes over a checkered ground plane (z-up world).

Triangles are soft-rasterised on 16x16 screen tiles (see ``hybridsim.render.raster``): silhouette
edges are blurred by ``softness`` pixels so that image losses have gradients w.r.t. vertex
positions (hence object poses), face colours and lighting; interior edges between faces drawn
with the same facing stay hard, so flat and smooth surfaces show no seams. Shading is Lambert plus
ambient under one directional light or one spot light, with hard shadows cast on the ground and,
optionally, on other objects. Hard layers (depth, normals, segmentation, object coordinates) come
from exact pixel-centre hits and carry no gradient.

Textures and spot lights vary across a face, so with either of them the rasteriser shades every
pixel-face pair (``raster.PairShader``): texture coordinates and world positions are interpolated
perspective-correctly at each pixel centre (extrapolated into a face's blurred silhouette), with
their screen derivatives for texture filtering, and everything stays differentiable w.r.t. the
vertices. Without them, faces are shaded once (the original, cheaper path).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from hybridsim.errors import AssetError
from hybridsim.render.camera import Camera
from hybridsim.render.flow import surface_points
from hybridsim.render.raster import (CULL_SIGMAS, PairShader, chunk_budget, dense_plan, ground_shadow, plan_tiles,
                                     screen_tiles, shadow_rays, soft_rasterize)
from hybridsim.render.spheres import _ground
from hybridsim.render.textures import Texture

__all__ = [
    "render_meshes",
    "mesh_flow",
    "transform_meshes",
    "box_mesh",
    "capsule_mesh",
    "trimesh_to_mesh",
    "quaternion_to_matrix",
    "rotation_vector_to_quaternion",
]

_NEAR = 1e-6  # faces with a vertex closer than this to the camera plane [m] are not drawn (no clipping)


def render_meshes(
    camera: Camera,
    vertices: torch.Tensor,
    faces: torch.Tensor,
    face_object: torch.Tensor,
    object_colors: torch.Tensor,
    *,
    poses: torch.Tensor | None = None,
    ground_height=0.0,
    checker_size=0.5,
    checker_colors=((0.85, 0.85, 0.85), (0.35, 0.35, 0.35)),
    sky_color=(0.55, 0.7, 0.9),
    light_direction=(-0.4, 0.3, -1.0),
    light_intensity=0.8,
    ambient=0.35,
    softness=0.5,
    shadows: bool = True,
    tiled: bool = True,
    coverage_weights: torch.Tensor | None = None,
    textures: Sequence[Texture | None] | None = None,
    texture_coords: torch.Tensor | None = None,
    light_type: str = "directional",
    light_position=None,
    cone_deg=30.0,
    falloff=0.2,
    object_shadows: bool = False,
) -> dict:
    """Render K rigid meshes already placed in the world.

    Args:
        vertices: (V, 3) world positions [m], float32 or float64 (sets the output dtype).
        faces: (T, 3) long vertex indices; a closed mesh must be wound counter-clockwise seen
            from outside (outward normals) so hidden back faces can be culled.
        face_object: (T,) long object id 0..K-1 of each face.
        object_colors: (K, 3) albedo in [0, 1] (a textured object's texture is multiplied by it).
        poses: optional (K, 7) object poses (position [m], quaternion x, y, z, w) used for the
            ``object_coordinates`` layer and, without ``texture_coords``, to put textures in the
            objects' frames.
        light_direction: direction the light travels (normalised here); for a spot light the
            axis of its cone. ``light_intensity``, ``ambient``: Lambert and ambient factors.
            Lighting, ground and sky values may be tensors.
        softness: silhouette blur in pixels (> 0).
        shadows: cast hard shadows of all triangles onto the ground (not differentiable).
        tiled: False renders every face against every pixel in one dense chunk (reference only).
        coverage_weights: optional (K,) per-object weights; adds a ``coverage`` layer (H, W), the
            soft-composited weight (e.g. 1 for moving objects, 0 for static ones: the soft
            coverage of the moving objects, hidden where a static object is in front), plus, with
            ``shadows``, the ground shadow cast by the weighted objects where no object covers
            it (hard, no gradient): what background subtraction finds in a video of the scene;
            and ``coverage_objects``, the same without the shadows.
        textures: optional per-object ``hybridsim.render.textures.Texture`` or None (K entries).
            A textured object's albedo varies per pixel: the rasteriser interpolates the texture
            coordinates of every pixel-face pair perspective-correctly (with their screen
            derivatives, which set the texture filter's footprint), so the texture moves with
            the object and ``rgb`` / ``albedo`` stay differentiable w.r.t. the vertices (poses),
            ``object_colors`` and the light; not w.r.t. the texture itself.
        texture_coords: (V, 3) texture coordinates [m] of the vertices, normally each vertex in
            its object's frame (constants); default: from ``poses`` (R^T (v - t)), else world
            coordinates (then textures do not move with the objects).
        light_type: ``"directional"`` or ``"spot"``: a point light at ``light_position`` (3,) [m]
            shining along ``light_direction`` within a cone of half angle ``cone_deg`` [deg],
            fading to zero over the outer ``falloff`` fraction of that angle (smoothstep in the
            cosine); Lambert without distance attenuation. Objects and ground are shaded per
            pixel with the same formula; all these values may be tensors (differentiable).
            Ground shadows of a spot are cast from its position.
        object_shadows: objects also shadow each other (hard, not differentiable; no
            self-shadowing): each pixel's visible object point is tested against the other
            objects' triangles along the light (``raster.shadow_rays``), and the direct light of
            the objects composited at that pixel is dropped when it is shadowed (silhouette
            pixels whose hard hit is the ground take the nearest object pixel's answer).

    Returns a dict of layers (H = camera.height, W = camera.width, dtype of ``vertices``):
        ``rgb`` (H, W, 3) shaded colour in [0, 1] and ``albedo`` (H, W, 3) unlit colour, both
        soft-composited over the ground / sky and differentiable; ``alpha`` (H, W) object coverage
        in [0, 1], differentiable; ``depth`` (H, W) camera z [m] of the first hard hit (inf for
        sky); ``normal`` (H, W, 3) camera-space unit normal facing the camera (OpenCV axes, 0 for
        sky); ``segmentation`` (H, W) int32, 0 ground / sky and k+1 object k;
        ``object_coordinates`` (H, W, 3) [m] of the hit point in its object's frame when ``poses``
        is given, else world coordinates (ground: world, sky: 0). Hard layers carry no gradient.
        Without ``object_shadows`` only the ground receives shadows.
    """
    vertices, faces, face_object, object_colors = _check_mesh(vertices, faces, face_object, object_colors)
    device, dtype = vertices.device, vertices.dtype
    par = lambda x: x.to(device=device, dtype=dtype) if torch.is_tensor(x) else torch.tensor(x, device=device, dtype=dtype)  # noqa: E731
    sigma = par(softness)
    if not float(sigma) > 0.0:
        raise AssetError(f"softness must be positive, got {float(sigma)}", field="softness")
    count = object_colors.shape[0]
    light = par(light_direction)
    light = light / light.norm()
    intensity, amb = par(light_intensity), par(ambient)
    spot = _spot_light(light_type, light_position, cone_deg, falloff, par)
    textures = _check_textures(textures, count)
    height, width = camera.height, camera.width
    origins, dirs = (x.reshape(-1, 3) for x in camera.rays(device, dtype))
    rot = camera.rotation(device, dtype)
    tiles = screen_tiles(height, width, device) if shadows or object_shadows else None

    # ground: lit, unlit-by-the-sun (shadow) and albedo versions of the same filtered checker
    ground_args = (origins, dirs, float(ground_height), float(checker_size), par(checker_colors), par(sky_color))
    scale = 1.0 / camera.focal()
    bg_albedo = _ground(*ground_args, light, intensity * 0.0, amb * 0.0 + 1.0, scale, camera.orthographic)[0]
    if spot is None:
        bg_lit, t_ground, n_ground = _ground(*ground_args, light, intensity, amb, scale, camera.orthographic)
        bg_dark = _ground(*ground_args, light, intensity * 0.0, amb, scale, camera.orthographic)[0]
    else:
        t_ground, n_ground = _ground(*ground_args, light, intensity, amb, scale, camera.orthographic)[1:]
        hit = torch.isfinite(t_ground)[:, None]
        ground_points = origins + t_ground.nan_to_num(posinf=0.0)[:, None] * dirs
        spot_ground = _spot_direct(ground_points, n_ground, light, *spot)  # (P,)
        bg_lit = torch.where(hit, bg_albedo * (amb + intensity * spot_ground)[:, None], bg_albedo)
        bg_dark = torch.where(hit, bg_albedo * amb, bg_albedo)
    hit_ground = torch.isfinite(t_ground)

    # faces on screen, their facing, drawn set and per-face shading
    pixels, z = camera.project(vertices)
    tri = pixels[faces]  # (T, 3, 2)
    tri_world = vertices[faces]
    normal = torch.linalg.cross(tri_world[:, 1] - tri_world[:, 0], tri_world[:, 2] - tri_world[:, 0])
    with torch.no_grad():
        neighbour = _edge_neighbours(faces)  # (T, 3), -1 on a boundary edge
        closed = (neighbour >= 0).all(1)
        # a closed surface's silhouette from the light is that of its faces turned towards the light
        if spot is None:
            occluder = ~closed | (normal.detach() @ light.detach() <= 0)
        else:
            occluder = ~closed | (((tri_world.detach()[:, 0] - spot[0].detach()) * normal.detach()).sum(-1) <= 0)
    if shadows:
        points = origins + t_ground.nan_to_num(posinf=0.0)[:, None] * dirs
        if coverage_weights is not None:  # the shadow of the weighted (moving) objects alone
            heavy = torch.as_tensor(coverage_weights).to(device).reshape(-1)[face_object] > 0
        if spot is None:
            shade = ground_shadow(points.detach(), hit_ground, tri_world.detach()[occluder], light.detach(),
                                  float(ground_height), tiles)
            if coverage_weights is not None:
                moving_shade = ground_shadow(points.detach(), hit_ground, tri_world.detach()[occluder & heavy],
                                             light.detach(), float(ground_height), tiles)
        else:
            lit_ground = hit_ground & (spot_ground.detach() > 0)
            ground_id = torch.full((points.shape[0],), -1, dtype=torch.long, device=device)
            shade = shadow_rays(points.detach(), lit_ground, ground_id, tri_world.detach()[occluder],
                                face_object[occluder], light.detach(), tiles, position=spot[0].detach())
            if coverage_weights is not None:
                moving_shade = shadow_rays(points.detach(), lit_ground, ground_id, tri_world.detach()[occluder & heavy],
                                           face_object[occluder & heavy], light.detach(), tiles,
                                           position=spot[0].detach())
        bg_rgb = torch.where(shade[:, None], bg_dark, bg_lit)
    else:
        bg_rgb = bg_lit
    with torch.no_grad():
        if camera.orthographic:
            facing = normal @ rot[2] < 0
        else:
            facing = ((tri_world[:, 0] - par(camera.position)) * normal).sum(-1) < 0
        zf = z.detach()[faces]
        area = _screen_area(tri.detach())
        drawn = (facing | ~closed) & (zf > _NEAR).all(1) & (area.abs() > 1e-12)
        nb = neighbour.clamp(min=0)
        shared = (neighbour >= 0) & drawn[nb] & (facing[nb] == facing[:, None]) & drawn[:, None]
        owner = neighbour > torch.arange(faces.shape[0], device=device)[:, None]
        interior = torch.where(shared, torch.where(owner, 1, 2), 0).to(torch.int8)
    unit = normal / normal.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    unit = torch.where(facing[:, None], unit, -unit)  # shade the side the camera sees
    albedo = object_colors[face_object]
    if coverage_weights is not None:
        weights = torch.as_tensor(coverage_weights).to(device=device, dtype=dtype).reshape(-1)
        if weights.shape[0] != count:
            raise AssetError(f"coverage_weights needs {count} entries, got {weights.shape[0]}", field="coverage_weights")
        extra = [weights[face_object][:, None]]
    else:
        extra = []
    bg_extra = [torch.zeros_like(bg_albedo[:, :1])] * len(extra)
    textured = any(t is not None for t in textures)
    split = textured or spot is not None or object_shadows  # rgb channels as ambient + direct parts
    shader = None
    if not split:  # per-face shading, composited as before
        lit = albedo * (amb + intensity * torch.relu(-(unit @ light)))[:, None]
        feat = torch.cat([lit, albedo] + extra, dim=1)
        bg = torch.cat([bg_rgb, bg_albedo] + bg_extra, dim=1)
    else:
        bg = torch.cat([bg_rgb, torch.zeros_like(bg_rgb), bg_albedo] + bg_extra, dim=1)
        if not textured and spot is None:
            direct = (intensity * torch.relu(-(unit @ light)))[:, None]
            feat = torch.cat([albedo * amb, albedo * direct, albedo] + extra, dim=1)
        else:
            feat = torch.cat([albedo, unit] + extra, dim=1)
            shader = _pair_shader(textures, texture_coords, poses, vertices, faces, face_object, tri_world, spot,
                                  light, intensity, amb, feat.shape[1] + 3)

    ids = drawn.nonzero()[:, 0]
    reach = CULL_SIGMAS * float(sigma) + 1.0
    t_det = tri.detach()
    boxes = torch.stack([t_det[ids, :, 0].amin(1) - reach, t_det[ids, :, 0].amax(1) + reach,
                         t_det[ids, :, 1].amin(1) - reach, t_det[ids, :, 1].amax(1) + reach], dim=1)
    budget = chunk_budget(vertices.element_size(), _SHADED_VALUES_PER_PAIR if shader is not None else 80)
    plan = plan_tiles(height, width, boxes, ids, budget) if tiled else dense_plan(height, width, ids)
    xy = _pixel_centres(height, width, device, dtype)
    key_data = zf if camera.orthographic else 1.0 / zf.clamp(min=_NEAR)
    if shader is not None and not camera.orthographic:
        key_data = 1.0 / z[faces].clamp(min=_NEAR)  # differentiable: perspective-correct interpolation
    z_range = torch.stack([zf.amin(1), zf.amax(1)], dim=1)
    out, alpha, hard_z, hard_face = soft_rasterize(plan, xy, tri, key_data, z_range, interior, feat, bg, sigma,
                                                   camera.orthographic, shader)

    with torch.no_grad():
        ground_z = t_ground * (dirs @ rot[2])  # ray origins lie on the camera plane z = 0
        won = hard_z < ground_z
        depth = torch.where(won, hard_z, ground_z)
        face = hard_face.clamp(min=0)
        seg = torch.where(won, face_object[face].to(torch.int32) + 1, torch.zeros_like(face, dtype=torch.int32))
        n_world = torch.where(won[:, None], unit.detach()[face], torch.where(hit_ground[:, None], n_ground, 0.0 * n_ground))
        n_cam = n_world @ rot.T
        world = surface_points(camera, depth.reshape(height, width)).reshape(-1, 3)
        coords = world.clone()
        if poses is not None:
            poses = _check_poses(poses, count).detach().to(dtype)
            rots = quaternion_to_matrix(poses[:, 3:])
            k = face_object[face]
            local = ((world - poses[k, :3])[:, None, :] @ rots[k])[:, 0]  # R^T (p - t)
            coords = torch.where(won[:, None], local, coords)
        coords = torch.where(torch.isfinite(depth)[:, None], coords, torch.zeros_like(coords))
    if split:
        rgb = out[:, :3]
        if object_shadows:
            dark = _object_shadows(world, won, face_object[face], unit.detach()[face], tri_world.detach()[occluder],
                                   face_object[occluder], light.detach(), spot, tiles, height, width, float(sigma))
            rgb = rgb + (1.0 - dark.to(dtype))[:, None] * out[:, 3:6]
        else:
            rgb = rgb + out[:, 3:6]
        albedo_out, tail = out[:, 6:9], out[:, 9:]
    else:
        rgb, albedo_out, tail = out[:, :3], out[:, 3:6], out[:, 6:]
    layers = {
        "rgb": rgb.clamp(0.0, 1.0).reshape(height, width, 3),
        "albedo": albedo_out.clamp(0.0, 1.0).reshape(height, width, 3),
        "alpha": alpha.clamp(0.0, 1.0).reshape(height, width),
        "depth": depth.reshape(height, width),
        "normal": n_cam.reshape(height, width, 3),
        "segmentation": seg.reshape(height, width),
        "object_coordinates": coords.reshape(height, width, 3),
    }
    if coverage_weights is not None:
        coverage = tail[:, 0].clamp(0.0, 1.0)
        layers["coverage_objects"] = coverage.reshape(height, width)  # without the cast shadows
        if shadows:  # what background subtraction sees: the objects and the shadows they cast
            coverage = coverage + (1.0 - alpha.clamp(0.0, 1.0)) * moving_shade.to(dtype)
        layers["coverage"] = coverage.reshape(height, width)
    return layers


_SHADED_VALUES_PER_PAIR = 96  # (pixels, faces)-sized values alive per pair with a pair shader


def _spot_light(light_type, position, cone_deg, falloff, par):
    """(position (3,), cos of the outer cone angle, cos of the inner one) of a spot light, or None."""
    if light_type == "directional":
        return None
    if light_type != "spot":
        raise AssetError(f"light_type must be 'directional' or 'spot', got {light_type!r}", field="light_type")
    if position is None:
        raise AssetError("a spot light needs light_position", field="light_position")
    position, cone, fall = par(position).reshape(3), par(cone_deg), par(falloff)
    if not 0.0 < float(cone.detach()) < 90.0 or not 0.0 < float(fall.detach()) <= 1.0:
        raise AssetError(f"spot light needs 0 < cone_deg < 90 and 0 < falloff <= 1, got {float(cone)}, {float(fall)}",
                         field="cone_deg")
    outer = cone * (math.pi / 180.0)
    return position, torch.cos(outer), torch.cos(outer * (1.0 - fall))


def _spot_direct(points, normals, axis, position, cos_outer, cos_inner):
    """Direct-light factor of a spot light at ``points`` (..., 3) with unit ``normals`` (..., 3):
    Lambert towards the light times the smooth cone edge (no distance attenuation)."""
    to_light = position - points
    dist = to_light.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    u = to_light / dist
    cos_axis = -(u * axis).sum(-1)  # angle between the spot's axis and the direction to the point
    x = ((cos_axis - cos_outer) / (cos_inner - cos_outer).clamp(min=1e-12)).clamp(0.0, 1.0)
    cone = x * x * (3.0 - 2.0 * x)
    return cone * torch.relu((u * normals).sum(-1))


def _pair_shader(textures, texture_coords, poses, vertices, faces, face_object, tri_world, spot, light,
                 intensity, amb, channels) -> PairShader:
    """Per pixel-face shading: textured albedo and / or spot lighting. ``feat`` per face is
    [albedo (3), unit normal facing the camera (3), optional coverage weight]; the attributes are
    [texture coordinates (3) if textured, world position (3) if spot]; returns per pair
    [albedo * ambient (3), albedo * direct light (3), albedo (3), optional weight]."""
    dtype, device = vertices.dtype, vertices.device
    textured = any(t is not None for t in textures)
    attrs, params = [], [light, intensity, amb]
    if textured:
        with torch.no_grad():
            if texture_coords is not None:
                tc = torch.as_tensor(texture_coords).to(device=device, dtype=dtype)
                if tuple(tc.shape) != tuple(vertices.shape):
                    raise AssetError(f"texture_coords must have shape {tuple(vertices.shape)}, got {tuple(tc.shape)}",
                                     field="texture_coords")
            elif poses is not None:
                p = _check_poses(poses, len(textures)).detach().to(device=device, dtype=dtype)
                rots = quaternion_to_matrix(p[:, 3:])
                vertex_object = torch.zeros(vertices.shape[0], dtype=torch.long, device=device)
                vertex_object[faces.reshape(-1)] = face_object.repeat_interleave(3)
                tc = ((vertices.detach() - p[vertex_object, :3])[:, None, :] @ rots[vertex_object])[:, 0]
            else:
                tc = vertices.detach()
            tc_faces = tc[faces]  # (T, 3, 3) constants
            n_obj = torch.linalg.cross(tc_faces[:, 1] - tc_faces[:, 0], tc_faces[:, 2] - tc_faces[:, 0])
            n_obj = n_obj / n_obj.norm(dim=-1, keepdim=True).clamp(min=1e-30)  # outward, object frame
            unique = list(dict.fromkeys(t for t in textures if t is not None))  # shared textures evaluate once
            table = {id(t): i for i, t in enumerate(unique)}
            object_texture = torch.tensor([table[id(t)] if t is not None else -1 for t in textures], device=device)
            face_texture = object_texture[face_object]
        attrs.append(tc_faces)
    if spot is not None:
        attrs.append(tri_world)
        params += list(spot)
    attrs = torch.cat(attrs, dim=2)
    tex_at = 3 if textured else 0

    def fn(pix, fids, values, d_dx, d_dy, feat, light, intensity, amb, *spot_params):
        albedo = feat[:, :3]  # (L, 3) for L covered pixel-face pairs
        if textured:
            tex = torch.ones_like(albedo)
            ids = face_texture[fids]
            for index, texture in enumerate(unique):
                rows = (ids == index).nonzero()[:, 0]
                if len(rows):
                    value = texture.evaluate(values[rows, :3], d_dx[rows], d_dy[rows], n_obj[fids[rows]])
                    tex = tex.index_copy(0, rows, value)
            albedo = albedo * tex
        normal = feat[:, 3:6]
        if spot_params:
            direct = intensity * _spot_direct(values[:, tex_at:tex_at + 3], normal, light, *spot_params)
        else:
            direct = intensity * torch.relu(-(normal @ light))
        return torch.cat([albedo * amb, albedo * direct[:, None], albedo, feat[:, 6:]], dim=1)

    return PairShader(fn, attrs, params, derivatives=tex_at, channels=channels)


def _object_shadows(world, won, point_object, point_normal, occluders, occluder_object, light, spot, tiles,
                    height, width, sigma):
    """(P,) bool: pixels whose object light is shadowed by another object (hard, see render_meshes)."""
    if spot is None:
        towards = (point_normal @ light) < 0
    else:
        position, cos_o, cos_i = (x.detach() for x in spot)
        towards = _spot_direct(world, point_normal, light, position, cos_o, cos_i) > 0
    active = won & towards
    shadow = shadow_rays(world, active, torch.where(won, point_object, -1), occluders, occluder_object, light, tiles,
                         position=None if spot is None else spot[0].detach())
    # silhouette pixels whose hard hit is the ground composite a fringe of the object beside them
    reach = int(math.ceil(2.0 * sigma))
    near = torch.nn.functional.max_pool2d(shadow.reshape(1, 1, height, width).to(torch.float32), 2 * reach + 1,
                                          stride=1, padding=reach).reshape(-1) > 0
    return torch.where(won, shadow, near)


def mesh_flow(camera_t: Camera, camera_t1: Camera, layers_t: dict, layers_t1: dict, poses_t: torch.Tensor,
              poses_t1: torch.Tensor, *, rel_tol: float = 0.05) -> dict:
    """Exact optical flow between two mesh frames from rigid object motion.

    ``layers_*`` are ``render_meshes`` outputs (``depth`` and ``segmentation`` are used);
    ``poses_*`` (K, 7) are object poses (position [m], quaternion x, y, z, w) at t and t+1; the
    ground is static. Returns ``flow_forward`` (H, W, 2) [px] from t to t+1, ``flow_backward``
    (H, W, 2) from t+1 to t, and ``occlusion_forward`` / ``occlusion_backward`` (H, W) bool, True
    where the surface point is not visible in the other frame (left the image, hidden, or a
    different surface there), as in ``hybridsim.render.flow``.
    """
    k = poses_t.shape[0]
    poses_t, poses_t1 = _check_poses(poses_t, k).detach(), _check_poses(poses_t1, k).detach()
    dtype = layers_t["depth"].dtype
    poses_t, poses_t1 = poses_t.to(dtype), poses_t1.to(dtype)
    r_t, r_t1 = quaternion_to_matrix(poses_t[:, 3:]), quaternion_to_matrix(poses_t1[:, 3:])
    eye = torch.eye(3, dtype=dtype)[None]
    zero = torch.zeros((1, 3), dtype=dtype)
    # x_{t+1} = R_{t+1} R_t^T (x_t - p_t) + p_{t+1}; index 0 is the static ground / sky
    rot_fw = torch.cat([eye, r_t1 @ r_t.transpose(1, 2)])
    trans_fw = torch.cat([zero, poses_t1[:, :3] - (rot_fw[1:] @ poses_t[:, :3, None])[..., 0]])
    rot_bw = rot_fw.transpose(1, 2)
    trans_bw = -(rot_bw @ trans_fw[..., None])[..., 0]
    d_t, s_t = layers_t["depth"].detach(), layers_t["segmentation"]
    d_t1, s_t1 = layers_t1["depth"].detach(), layers_t1["segmentation"]
    flow_fw, occ_fw = _rigid_flow(camera_t, camera_t1, d_t, s_t, d_t1, s_t1, rot_fw, trans_fw, rel_tol)
    flow_bw, occ_bw = _rigid_flow(camera_t1, camera_t, d_t1, s_t1, d_t, s_t, rot_bw, trans_bw, rel_tol)
    return {"flow_forward": flow_fw, "flow_backward": flow_bw, "occlusion_forward": occ_fw, "occlusion_backward": occ_bw}


def _rigid_flow(cam_a, cam_b, depth_a, seg_a, depth_b, seg_b, rot, trans, rel_tol):
    """Flow a -> b (H, W, 2) [px] and occlusion (H, W) for per-id rigid motions rot (K+1, 3, 3), trans (K+1, 3)."""
    height, width = depth_a.shape
    points = surface_points(cam_a, depth_a)
    sky = ~torch.isfinite(depth_a)
    ids = seg_a.long()
    moved = (rot[ids] @ points[..., None])[..., 0] + trans[ids]
    moved = torch.where(sky[..., None], points, moved)
    pixels_b, z_b = cam_b.project(moved)
    flow = pixels_b - cam_a.project(points)[0]
    col, row = torch.floor(pixels_b[..., 0]).long(), torch.floor(pixels_b[..., 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (z_b > 0)
    col_c, row_c = col.clamp(0, width - 1), row.clamp(0, height - 1)
    same_id = seg_b[row_c, col_c] == seg_a
    depth_ok = ((depth_b[row_c, col_c] - z_b).abs() <= rel_tol * z_b.abs().clamp(min=1e-6)) | sky
    occluded = ~(inside & same_id & depth_ok)
    occluded = torch.where(sky & inside, torch.zeros_like(occluded), occluded)
    return flow, occluded


def transform_meshes(local_vertices_list: Sequence[torch.Tensor], faces_list: Sequence[torch.Tensor],
                     poses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Place K local meshes in the world: returns vertices (V, 3) [m], faces (T, 3) long, face_object (T,) long.

    ``poses`` (K, 7) is position [m] + quaternion (x, y, z, w) (normalised here); differentiable in
    ``poses`` and in the local vertices.
    """
    count = len(local_vertices_list)
    if len(faces_list) != count:
        raise AssetError(f"got {count} vertex arrays but {len(faces_list)} face arrays", field="faces_list")
    poses = _check_poses(poses, count)
    rots = quaternion_to_matrix(poses[:, 3:])
    verts, tris, owner, offset = [], [], [], 0
    for k, (local, fc) in enumerate(zip(local_vertices_list, faces_list)):
        local = torch.as_tensor(local).to(device=poses.device, dtype=poses.dtype)
        fc = torch.as_tensor(fc, dtype=torch.long, device=poses.device)
        verts.append(local @ rots[k].T + poses[k, :3])
        tris.append(fc + offset)
        owner.append(torch.full((fc.shape[0],), k, dtype=torch.long, device=poses.device))
        offset += local.shape[0]
    return torch.cat(verts), torch.cat(tris), torch.cat(owner)


def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Quaternions (..., 4) as (x, y, z, w), normalised here -> rotation matrices (..., 3, 3). Differentiable."""
    q = q / q.norm(dim=-1, keepdim=True)
    x, y, z, w = q.unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, -1).reshape(q.shape[:-1] + (3, 3))


def rotation_vector_to_quaternion(v: torch.Tensor) -> torch.Tensor:
    """Rotation vectors (..., 3) (axis * angle [rad]) -> quaternions (..., 4) (x, y, z, w). Differentiable at 0."""
    angle2 = (v * v).sum(-1, keepdim=True)
    angle = torch.sqrt(angle2.clamp(min=1e-30))
    small = angle2 < 1e-8
    half_sinc = torch.where(small, 0.5 - angle2 / 48.0, torch.sin(0.5 * angle) / angle)
    cos = torch.where(small, 1.0 - angle2 / 8.0, torch.cos(0.5 * angle))
    return torch.cat([v * half_sinc, cos], dim=-1)


def box_mesh(half_extents, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Box centred at the origin: vertices (8, 3) [m] and faces (12, 3) long, outward winding."""
    hx, hy, hz = (float(h) for h in half_extents)
    if min(hx, hy, hz) <= 0:
        raise AssetError(f"box half extents must be positive, got {(hx, hy, hz)}", field="half_extents")
    corners = [[sx * hx, sy * hy, sz * hz] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)]
    faces = [[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6],  # -z, +z
             [0, 1, 4], [1, 5, 4], [2, 6, 3], [3, 6, 7],  # -y, +y
             [0, 4, 2], [2, 4, 6], [1, 3, 5], [3, 7, 5]]  # -x, +x
    return torch.tensor(corners, dtype=dtype), torch.tensor(faces, dtype=torch.long)


def capsule_mesh(radius: float, half_height: float, segments: int = 16, dtype=torch.float64):
    """Capsule along z (cylinder of ``half_height`` [m] either side of the origin, hemispherical caps
    of ``radius`` [m]): vertices (V, 3) and faces (T, 3) long, closed, outward winding."""
    if radius <= 0 or half_height < 0 or segments < 3:
        raise AssetError(f"capsule needs radius > 0, half_height >= 0, segments >= 3; got {radius}, "
                         f"{half_height}, {segments}", field="capsule")
    rings = max(2, segments // 4)  # latitude rings per cap, pole excluded
    verts = [[0.0, 0.0, -half_height - radius]]
    lat = []  # (z offset, ring radius) from the bottom pole to the top pole
    for i in range(1, rings + 1):
        phi = -0.5 * math.pi + 0.5 * math.pi * i / rings
        lat.append((-half_height + radius * math.sin(phi), radius * math.cos(phi)))
    for i in range(0, rings):
        phi = 0.5 * math.pi * i / rings
        lat.append((half_height + radius * math.sin(phi), radius * math.cos(phi)))
    for zc, rc in lat:
        for j in range(segments):
            a = 2.0 * math.pi * j / segments
            verts.append([rc * math.cos(a), rc * math.sin(a), zc])
    verts.append([0.0, 0.0, half_height + radius])
    ring = lambda r, j: 1 + r * segments + j % segments  # noqa: E731
    faces = [[0, ring(0, j + 1), ring(0, j)] for j in range(segments)]
    for r in range(len(lat) - 1):
        for j in range(segments):
            a, b, c, d = ring(r, j), ring(r, j + 1), ring(r + 1, j + 1), ring(r + 1, j)
            faces += [[a, b, c], [a, c, d]]
    top, last = len(verts) - 1, len(lat) - 1
    faces += [[top, ring(last, j), ring(last, j + 1)] for j in range(segments)]
    return torch.tensor(verts, dtype=dtype), torch.tensor(faces, dtype=torch.long)


def trimesh_to_mesh(mesh, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``trimesh.Trimesh`` -> vertices (V, 3) and faces (T, 3) long; duplicate vertices are merged
    so that shared edges are found (seams would otherwise render as silhouettes)."""
    mesh = mesh.copy()
    mesh.merge_vertices()
    return torch.as_tensor(mesh.vertices, dtype=dtype), torch.as_tensor(mesh.faces, dtype=torch.long)


def _pixel_centres(height, width, device, dtype):
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                            torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2)


def _screen_area(tri):
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    return e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]


def _edge_neighbours(faces: torch.Tensor) -> torch.Tensor:
    """(T, 3) index of the face across edge k (opposite vertex k), -1 where the edge has no single partner."""
    count = faces.shape[0]
    a = faces[:, [1, 2, 0]]
    b = faces[:, [2, 0, 1]]
    key = torch.minimum(a, b) * (int(faces.max()) + 1 if count else 1) + torch.maximum(a, b)
    key = key.reshape(-1)
    order = torch.argsort(key, stable=True)
    sk = key[order]
    out = torch.full((count * 3,), -1, dtype=torch.long, device=faces.device)
    if count == 0:
        return out.reshape(0, 3)
    same_next = sk[1:] == sk[:-1]
    # an edge shared by exactly two faces: pair i with i+1 when no third face shares the key
    lone = torch.ones_like(same_next)
    lone[1:] &= ~same_next[:-1]
    lone[:-1] &= ~same_next[1:]
    pair = (same_next & lone).nonzero()[:, 0]
    face_of = order // 3
    out[order[pair]] = face_of[pair + 1]
    out[order[pair + 1]] = face_of[pair]
    return out.reshape(count, 3)


def _check_textures(textures, count):
    if textures is None:
        return [None] * count
    textures = list(textures)
    if len(textures) != count:
        raise AssetError(f"textures needs {count} entries (one per object, None for none), got {len(textures)}",
                         field="textures")
    for k, t in enumerate(textures):
        if t is not None and not isinstance(t, Texture):
            raise AssetError(f"textures[{k}] must be a hybridsim.render.textures.Texture or None", field="textures")
    return textures


def _check_poses(poses, count):
    poses = torch.as_tensor(poses)
    if not poses.is_floating_point() or tuple(poses.shape) != (count, 7):
        raise AssetError(f"poses must be a float tensor of shape ({count}, 7), got {tuple(poses.shape)}", field="poses")
    return poses


def _check_mesh(vertices, faces, face_object, object_colors):
    if not torch.is_tensor(vertices) or not vertices.is_floating_point() or vertices.dim() != 2 or vertices.shape[1] != 3:
        raise AssetError("vertices must be a float32 or float64 tensor of shape (V, 3)", field="vertices")
    faces = torch.as_tensor(faces, device=vertices.device)
    if faces.dtype not in (torch.int32, torch.int64) or faces.dim() != 2 or faces.shape[1] != 3:
        raise AssetError(f"faces must be an integer tensor of shape (T, 3), got {tuple(faces.shape)}", field="faces")
    faces = faces.long()
    if len(faces) and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise AssetError(f"faces index vertices outside 0..{vertices.shape[0] - 1}", field="faces")
    face_object = torch.as_tensor(face_object, device=vertices.device).long()
    object_colors = torch.as_tensor(object_colors).to(device=vertices.device, dtype=vertices.dtype)
    if object_colors.dim() != 2 or object_colors.shape[1] != 3:
        raise AssetError(f"object_colors must have shape (K, 3), got {tuple(object_colors.shape)}", field="object_colors")
    if tuple(face_object.shape) != (faces.shape[0],):
        raise AssetError(f"face_object must have shape ({faces.shape[0]},), got {tuple(face_object.shape)}", field="face_object")
    if len(face_object) and (int(face_object.min()) < 0 or int(face_object.max()) >= object_colors.shape[0]):
        raise AssetError(f"face_object ids must lie in 0..{object_colors.shape[0] - 1}", field="face_object")
    return vertices, faces, face_object, object_colors
