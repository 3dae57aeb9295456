"""Differentiable rendering of rigid triangle meshes over a checkered ground plane (z-up world).

Triangles are soft-rasterised on 16x16 screen tiles (see ``hybridsim.render.raster``): silhouette
edges are blurred by ``softness`` pixels so that image losses have gradients w.r.t. vertex
positions (hence object poses), face colours and lighting; interior edges between faces drawn
with the same facing stay hard, so flat and smooth surfaces show no seams. Shading is Lambert plus
ambient under one directional light, with hard shadows cast on the ground. Hard layers (depth,
normals, segmentation, object coordinates) come from exact pixel-centre hits and carry no gradient.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from hybridsim.errors import AssetError
from hybridsim.render.camera import Camera
from hybridsim.render.flow import surface_points
from hybridsim.render.raster import (CULL_SIGMAS, chunk_budget, dense_plan, ground_shadow, plan_tiles, screen_tiles,
                                     soft_rasterize)
from hybridsim.render.spheres import _ground

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
) -> dict:
    """Render K rigid meshes already placed in the world.

    Args:
        vertices: (V, 3) world positions [m], float32 or float64 (sets the output dtype).
        faces: (T, 3) long vertex indices; a closed mesh must be wound counter-clockwise seen
            from outside (outward normals) so hidden back faces can be culled.
        face_object: (T,) long object id 0..K-1 of each face.
        object_colors: (K, 3) albedo in [0, 1].
        poses: optional (K, 7) object poses (position [m], quaternion x, y, z, w) used only for the
            ``object_coordinates`` layer.
        light_direction: direction the light travels (normalised here); ``light_intensity``,
            ``ambient``: Lambert and ambient factors. Lighting, ground and sky values may be tensors.
        softness: silhouette blur in pixels (> 0).
        shadows: cast hard shadows of all triangles onto the ground (not differentiable).
        tiled: False renders every face against every pixel in one dense chunk (reference only).
        coverage_weights: optional (K,) per-object weights; adds a ``coverage`` layer (H, W), the
            soft-composited weight (e.g. 1 for moving objects, 0 for static ones: the soft
            coverage of the moving objects, hidden where a static object is in front), plus, with
            ``shadows``, the ground shadow cast by the weighted objects where no object covers
            it (hard, no gradient): what background subtraction finds in a video of the scene.

    Returns a dict of layers (H = camera.height, W = camera.width, dtype of ``vertices``):
        ``rgb`` (H, W, 3) shaded colour in [0, 1] and ``albedo`` (H, W, 3) unlit colour, both
        soft-composited over the ground / sky and differentiable; ``alpha`` (H, W) object coverage
        in [0, 1], differentiable; ``depth`` (H, W) camera z [m] of the first hard hit (inf for
        sky); ``normal`` (H, W, 3) camera-space unit normal facing the camera (OpenCV axes, 0 for
        sky); ``segmentation`` (H, W) int32, 0 ground / sky and k+1 object k;
        ``object_coordinates`` (H, W, 3) [m] of the hit point in its object's frame when ``poses``
        is given, else world coordinates (ground: world, sky: 0). Hard layers carry no gradient.
        Objects do not shadow each other; only the ground receives shadows.
    """
    vertices, faces, face_object, object_colors = _check_mesh(vertices, faces, face_object, object_colors)
    device, dtype = vertices.device, vertices.dtype
    par = lambda x: x.to(device=device, dtype=dtype) if torch.is_tensor(x) else torch.tensor(x, device=device, dtype=dtype)  # noqa: E731
    sigma = par(softness)
    if not float(sigma) > 0.0:
        raise AssetError(f"softness must be positive, got {float(sigma)}", field="softness")
    light = par(light_direction)
    light = light / light.norm()
    intensity, amb = par(light_intensity), par(ambient)
    height, width = camera.height, camera.width
    origins, dirs = (x.reshape(-1, 3) for x in camera.rays(device, dtype))
    rot = camera.rotation(device, dtype)

    # ground: lit, unlit-by-the-sun (shadow) and albedo versions of the same filtered checker
    ground_args = (origins, dirs, float(ground_height), float(checker_size), par(checker_colors), par(sky_color))
    scale = 1.0 / camera.focal()
    bg_lit, t_ground, n_ground = _ground(*ground_args, light, intensity, amb, scale, camera.orthographic)
    bg_dark = _ground(*ground_args, light, intensity * 0.0, amb, scale, camera.orthographic)[0]
    bg_albedo = _ground(*ground_args, light, intensity * 0.0, amb * 0.0 + 1.0, scale, camera.orthographic)[0]
    hit_ground = torch.isfinite(t_ground)

    # faces on screen, their facing, drawn set and per-face shading
    pixels, z = camera.project(vertices)
    tri = pixels[faces]  # (T, 3, 2)
    tri_world = vertices[faces]
    normal = torch.linalg.cross(tri_world[:, 1] - tri_world[:, 0], tri_world[:, 2] - tri_world[:, 0])
    with torch.no_grad():
        neighbour = _edge_neighbours(faces)  # (T, 3), -1 on a boundary edge
        closed = (neighbour >= 0).all(1)
    if shadows:
        points = origins + t_ground.nan_to_num(posinf=0.0)[:, None] * dirs
        # a closed surface's silhouette from the light is that of its faces turned towards the light
        occluder = ~closed | (normal.detach() @ light.detach() <= 0)
        shade = ground_shadow(points.detach(), hit_ground, tri_world.detach()[occluder], light.detach(),
                              float(ground_height), screen_tiles(height, width, device))
        bg_rgb = torch.where(shade[:, None], bg_dark, bg_lit)
        if coverage_weights is not None:  # the shadow of the weighted (moving) objects alone
            heavy = torch.as_tensor(coverage_weights).to(device).reshape(-1)[face_object] > 0
            moving_shade = ground_shadow(points.detach(), hit_ground, tri_world.detach()[occluder & heavy],
                                         light.detach(), float(ground_height), screen_tiles(height, width, device))
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
    lit = albedo * (amb + intensity * torch.relu(-(unit @ light)))[:, None]
    feat = torch.cat([lit, albedo], dim=1)
    bg = torch.cat([bg_rgb, bg_albedo], dim=1)
    if coverage_weights is not None:
        weights = torch.as_tensor(coverage_weights).to(device=device, dtype=dtype).reshape(-1)
        if weights.shape[0] != object_colors.shape[0]:
            raise AssetError(f"coverage_weights needs {object_colors.shape[0]} entries, got {weights.shape[0]}",
                             field="coverage_weights")
        feat = torch.cat([feat, weights[face_object][:, None]], dim=1)
        bg = torch.cat([bg, torch.zeros_like(bg[:, :1])], dim=1)

    ids = drawn.nonzero()[:, 0]
    reach = CULL_SIGMAS * float(sigma) + 1.0
    t_det = tri.detach()
    boxes = torch.stack([t_det[ids, :, 0].amin(1) - reach, t_det[ids, :, 0].amax(1) + reach,
                         t_det[ids, :, 1].amin(1) - reach, t_det[ids, :, 1].amax(1) + reach], dim=1)
    budget = chunk_budget(vertices.element_size())
    plan = plan_tiles(height, width, boxes, ids, budget) if tiled else dense_plan(height, width, ids)
    xy = _pixel_centres(height, width, device, dtype)
    key_data = zf if camera.orthographic else 1.0 / zf.clamp(min=_NEAR)
    z_range = torch.stack([zf.amin(1), zf.amax(1)], dim=1)
    out, alpha, hard_z, hard_face = soft_rasterize(plan, xy, tri, key_data, z_range, interior, feat, bg, sigma,
                                                   camera.orthographic)

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
            poses = _check_poses(poses, object_colors.shape[0]).detach().to(dtype)
            rots = quaternion_to_matrix(poses[:, 3:])
            k = face_object[face]
            local = ((world - poses[k, :3])[:, None, :] @ rots[k])[:, 0]  # R^T (p - t)
            coords = torch.where(won[:, None], local, coords)
        coords = torch.where(torch.isfinite(depth)[:, None], coords, torch.zeros_like(coords))
    layers = {
        "rgb": out[:, :3].clamp(0.0, 1.0).reshape(height, width, 3),
        "albedo": out[:, 3:6].clamp(0.0, 1.0).reshape(height, width, 3),
        "alpha": alpha.clamp(0.0, 1.0).reshape(height, width),
        "depth": depth.reshape(height, width),
        "normal": n_cam.reshape(height, width, 3),
        "segmentation": seg.reshape(height, width),
        "object_coordinates": coords.reshape(height, width, 3),
    }
    if coverage_weights is not None:
        coverage = out[:, 6].clamp(0.0, 1.0)
        if shadows:  # what background subtraction sees: the objects and the shadows they cast
            coverage = coverage + (1.0 - alpha.clamp(0.0, 1.0)) * moving_shade.to(dtype)
        layers["coverage"] = coverage.reshape(height, width)
    return layers


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
