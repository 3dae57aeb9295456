"""Mesh renderer: the tiled soft rasteriser (faces binned to 16x16 tiles, per-chunk adjoint)
against the brute-force dense version (every face against every pixel, one chunk), same scene,
same numerics, forward + backward."""

import torch

from hybridsim.bench import Record, case, median_time
from hybridsim.render import Camera, raster
from hybridsim.render.mesh import box_mesh, capsule_mesh, render_meshes, rotation_vector_to_quaternion, transform_meshes


def _scene(copies: int, segments: int, dtype=torch.float32):
    cv, cf = capsule_mesh(0.2, 0.25, segments, dtype=dtype)
    bv, bf = box_mesh((0.25, 0.2, 0.2), dtype=dtype)
    local_v, local_f, poses = [], [], []
    for c in range(copies):
        x, y = 0.6 * (c % 4) - 0.9, 0.7 * (c // 4)
        for k, (v, f) in enumerate(((bv, bf), (cv, cf))):
            q = rotation_vector_to_quaternion(torch.tensor([0.2 * k, 0.3, 0.4 + c], dtype=torch.float64))
            poses.append(torch.cat([torch.tensor([x + 0.3 * k, y - 0.4 * k, 0.3 + 0.2 * k], dtype=torch.float64), q]))
            local_v.append(v)
            local_f.append(f)
    poses = torch.stack(poses).to(dtype).requires_grad_(True)
    colors = torch.rand(len(local_v), 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return local_v, local_f, poses, colors


@case("render_mesh_tiled_vs_dense")
def render_mesh_tiled_vs_dense(quick: bool) -> Record:
    width, height, copies, segments = (64, 48, 2, 12) if quick else (96, 72, 4, 16)
    cam = Camera(position=(0.4, -3.5, 2.0), look_at=(0.0, 0.3, 0.3), up=(0.0, 0.0, 1.0), fovy_deg=50.0,
                 width=width, height=height)
    local_v, local_f, poses, colors = _scene(copies, segments)
    weights = torch.rand(height, width, 3, generator=torch.Generator().manual_seed(1))

    def run(tiled: bool):
        def step():
            verts, faces, owner = transform_meshes(local_v, local_f, poses)
            layers = render_meshes(cam, verts, faces, owner, colors, softness=0.5, tiled=tiled)
            loss = (layers["rgb"] * weights).sum() + layers["alpha"].sum()
            return torch.autograd.grad(loss, poses)[0]
        return step

    g_tiled, g_dense = run(True)(), run(False)()
    agree = float((g_tiled - g_dense).abs().max() / g_dense.abs().max().clamp(min=1e-12))
    repeats = 3 if quick else 5
    t_tiled = median_time(run(True), repeats=repeats)
    t_dense = median_time(run(False), repeats=repeats)
    face_count = sum(len(f) for f in local_f)
    # pixel-face pairs each variant evaluates (before back-face culling of closed meshes)
    verts, faces, _ = transform_meshes(local_v, local_f, poses.detach())
    tri = cam.project(verts)[0][faces]
    reach = raster.CULL_SIGMAS * 0.5 + 1.0
    boxes = torch.stack([tri[..., 0].amin(1) - reach, tri[..., 0].amax(1) + reach,
                         tri[..., 1].amin(1) - reach, tri[..., 1].amax(1) + reach], dim=1)
    plan = raster.plan_tiles(height, width, boxes, torch.arange(face_count), raster.chunk_budget(4))
    tiled_pairs = sum(len(p) * len(f) for p, f in plan)
    dense_pairs = width * height * face_count
    return Record("render_mesh_tiled_vs_dense", t_tiled * 1e3, t_dense * 1e3, "ms/frame",
                  f"tiled soft raster, {face_count} triangles, {width}x{height}, float32, fwd+bwd",
                  "dense torch (all faces x all pixels, one chunk), same numerics", torch.get_num_threads(),
                  notes=f"pairs tiled/dense {tiled_pairs}/{dense_pairs}; pose-gradient max rel diff {agree:.1e}",
                  extra={"tiled_pairs": tiled_pairs, "dense_pairs": dense_pairs, "gradient_rel_diff": agree})


_FIVE_OBJECTS = """
name = "five"
precision = "float32"
[time]
fps = 30
frames = {frames}
substeps = 8
[camera]
position = [0.0, -4.4, 1.8]
look_at = [0.0, 0.0, 0.3]
fovy_deg = 40.0
width = {size}
height = {size}
[[objects]]
type = "box"
position = [-1.2, -0.5, 0.1]
half_extents = [0.15, 0.15, 0.1]
velocity = [2.5, 0.0, 0.0]
color = [0.9, 0.35, 0.2]
[[objects]]
type = "box"
position = [0.5, 0.3, 0.5]
half_extents = [0.1, 0.1, 0.1]
angular_velocity = [0.0, 3.0, 0.0]
color = [0.2, 0.5, 0.9]
[[objects]]
type = "capsule"
position = [-0.4, 0.6, 0.6]
radius = 0.1
half_height = 0.2
orientation = [1.2, 0.0, 0.0]
color = [0.3, 0.8, 0.3]
[[objects]]
type = "sphere"
position = [0.9, -0.4, 0.8]
radius = 0.2
velocity = [-0.5, 0.0, 0.0]
color = [0.8, 0.8, 0.2]
[[objects]]
type = "static_box"
position = [0.5, 0.3, 0.15]
half_extents = [0.4, 0.3, 0.15]
color = [0.55, 0.55, 0.6]
"""


def _five_object_layers(size: int, frames: int, tiled: bool):
    """Time per frame of every layer (rgb, albedo, alpha, depth, normals, segmentation, object
    coordinates) plus exact forward/backward flow with occlusion, for a 5-object rigid scene."""
    import hybridsim.render.rigid as rigid_module
    from hybridsim.render.rigid import render_rigid_layers
    from hybridsim.scene import parse_scene
    from hybridsim.sim.rigid import rigid_rollout
    from hybridsim.sim.world import World

    world = World(parse_scene(_FIVE_OBJECTS.format(size=size, frames=frames)))
    with torch.no_grad():
        trajectory = rigid_rollout(world, frames=frames)
    original = rigid_module.render_meshes

    def variant(*args, **kwargs):  # the same call, tiled or dense
        return original(*args, **dict(kwargs, tiled=tiled))

    def run():
        rigid_module.render_meshes = variant
        try:
            render_rigid_layers(world, trajectory)
        finally:
            rigid_module.render_meshes = original

    return run


@case("render_rigid_all_layers")
def render_rigid_all_layers(quick: bool) -> Record:
    frames = 3 if quick else 6
    rows, notes, extra = [], [], {}
    for size in ((64,) if quick else (128, 256)):
        t_ours = median_time(_five_object_layers(size, frames, True), repeats=3) / (frames + 1)
        t_ref = median_time(_five_object_layers(size, frames, False), repeats=3) / (frames + 1)
        rows.append((size, t_ours, t_ref))
        notes.append(f"{size}^2: {t_ours * 1e3:.1f} vs {t_ref * 1e3:.1f} ms/frame")
        extra[f"ms_per_frame_{size}"] = {"ours": t_ours * 1e3, "dense": t_ref * 1e3}
    size, t_ours, t_ref = rows[-1]
    return Record("render_rigid_all_layers", t_ours * 1e3, t_ref * 1e3, "ms/frame",
                  f"tiled mesh renderer, 5-object rigid scene at {size}^2: rgb, albedo, alpha, depth, normals, "
                  "segmentation, object coordinates, forward/backward flow + occlusion",
                  "the same layers with the dense (all faces x all pixels) torch rasteriser", torch.get_num_threads(),
                  notes="; ".join(notes), extra=extra)


@case("generate_render_share")
def generate_render_share(quick: bool) -> Record:
    """The share of a data-generation sample's time spent rendering (bounce_random samples):
    ours = rendering (every layer + flow), reference = the whole sample (draw, simulate, render)."""
    import time
    from pathlib import Path

    from hybridsim.data.sample import render_layers, simulate
    from hybridsim.scene.distributions import load_distribution
    from hybridsim.sim.world import World

    distribution = load_distribution(Path(__file__).resolve().parent.parent / "scenes" / "bounce_random.toml")
    count = 2 if quick else 6
    sim_s = render_s = total_s = 0.0
    for index in range(count):
        start = time.perf_counter()
        spec = distribution.sample(0, index)
        world = World(spec)
        t0 = time.perf_counter()
        trajectory = simulate(world)
        t1 = time.perf_counter()
        render_layers(world, trajectory)
        t2 = time.perf_counter()
        sim_s += t1 - t0
        render_s += t2 - t1
        total_s += t2 - start
    return Record("generate_render_share", render_s / count, total_s / count, "s/sample",
                  "rendering every layer + exact flow of one bounce_random sample (96x72, 24 frames)",
                  "the whole sample: draw, build, simulate, render", torch.get_num_threads(),
                  notes=f"ratio = rendering's share of a sample; simulation {sim_s / count:.3f} s/sample "
                        f"over {count} samples (video encoding and shard writing not included)")
