"""3D smoke as a first-class output: render layers (flow both ways with occlusion masks), the
per-frame blow-up guard with partial outputs, and ``hybridsim generate`` shards."""

import numpy as np
import pytest
import torch

D64 = torch.float64

BLOB_SCENE = """
name = "blob3d"
backend = "warp"
precision = "float64"
[time]
fps = 10
frames = 2
substeps = 1
[camera]
position = [0.95, -1.3, 0.9]
look_at = [0.4, 0.4, 0.35]
up = [0.0, 0.0, 1.0]
fovy_deg = 40.0
width = 48
height = 40
[fluid]
cells = [20, 20, 16]
cell_size = 0.04
origin = [0.0, 0.0, 0.0]
boundary = "wall"
opacity = 40.0
"""


def _blob_trajectory(cells, dx, shift_cells, frames):
    """A Gaussian blob translated by ``shift_cells`` whole cells per frame, with the uniform face
    velocity that moves it so: the exact motion of every smoke point."""
    from hybridsim.solvers.grid_fluid3d import GridFluid3DTrajectory

    frame_dt = 0.1
    speed = torch.tensor(shift_cells, dtype=D64) * dx / frame_dt
    axes = [(torch.arange(n, dtype=D64) + 0.5) for n in cells]
    i, j, k = torch.meshgrid(*axes, indexing="ij")
    density, faces = [], ([], [], [])
    for f in range(frames):
        c = [6.0 + f * shift_cells[0], 9.0 + f * shift_cells[1], 6.0 + f * shift_cells[2]]
        density.append(torch.exp(-((i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2) / (2 * 1.8 ** 2)))
        for axis in range(3):
            shape = list(cells)
            shape[axis] += 1
            faces[axis].append(torch.full(shape, float(speed[axis]), dtype=D64))
    return GridFluid3DTrajectory(*(torch.stack(group) for group in faces), torch.stack(density),
                                 times=torch.arange(frames, dtype=D64) * frame_dt), frame_dt


def _sample(image, pixels):
    """Bilinear samples of (H, W, C) at pixel coordinates (H, W, 2), centres at +0.5."""
    height, width = image.shape[:2]
    norm = torch.stack([pixels[..., 0] / width, pixels[..., 1] / height], dim=-1) * 2.0 - 1.0
    return torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], norm[None], mode="bilinear",
                                           padding_mode="border", align_corners=False)[0].permute(1, 2, 0)


def test_translating_blob_flow_warps_alpha_and_backward_flow_inverts_it():
    from hybridsim.render import Camera
    from hybridsim.render.fluid3d import render_fluid3d_frames
    from hybridsim.scene import parse_scene
    from hybridsim.sim.world import World

    world = World(parse_scene(BLOB_SCENE, source="blob3d.toml"))
    fluid = world.spec.fluid
    trajectory, frame_dt = _blob_trajectory(tuple(fluid.cells), fluid.cell_size, (2, -1, 1), 3)
    camera = Camera.from_spec(world.spec.camera)
    layers = render_fluid3d_frames(world, trajectory, camera, frame_dt)
    frames, height, width = 3, camera.height, camera.width
    for key, shape, dtype in (("rgb", (3,), D64), ("alpha", (), D64), ("depth", (), D64), ("normal", (3,), D64),
                              ("segmentation", (), torch.int32), ("flow_forward", (2,), D64),
                              ("flow_backward", (2,), D64), ("occlusion_forward", (), torch.bool),
                              ("occlusion_backward", (), torch.bool)):
        assert layers[key].shape == (frames, height, width, *shape) and layers[key].dtype == dtype, key
    alpha = layers["alpha"]
    rows, cols = torch.meshgrid(torch.arange(height, dtype=D64) + 0.5, torch.arange(width, dtype=D64) + 0.5,
                                indexing="ij")
    centres = torch.stack([cols, rows], dim=-1)
    forward, backward = layers["flow_forward"][0], layers["flow_backward"][1]
    smoke = alpha[0] > 0.05
    assert float(forward[smoke].norm(dim=-1).mean()) > 1.5  # the blob moves pixels a frame
    # warping frame 1's alpha back along frame 0's forward flow gives frame 0's alpha
    valid = smoke & ~layers["occlusion_forward"][0]
    assert float(valid.sum()) > 0.8 * float(smoke.sum())
    warped = _sample(alpha[1][..., None], centres + forward)[..., 0]
    error = (warped - alpha[0]).abs()[valid]
    assert float(error.mean()) < 0.02 and float(error.max()) < 0.12, (float(error.mean()), float(error.max()))
    # frame 1's backward flow at the moved pixel undoes the forward flow
    inverse = _sample(backward, centres + forward) + forward
    core = valid & (alpha[0] > 0.3)
    assert float(inverse[core].norm(dim=-1).mean()) < 0.1 * float(forward[core].norm(dim=-1).mean())
    # boundary frames: no flow, all occluded; empty pixels: zero flow
    assert bool(layers["occlusion_forward"][-1].all()) and bool(layers["occlusion_backward"][0].all())
    assert float(layers["flow_forward"][-1].abs().max()) == 0.0 and float(layers["flow_backward"][0].abs().max()) == 0.0
    assert float(forward[alpha[0] < 1e-4].abs().max()) == 0.0
    # smoke segment id (no obstacles: 1) where alpha >= 0.5, 0 (ground / sky) elsewhere
    assert torch.equal(layers["segmentation"][0] == 1, alpha[0] >= 0.5)


def test_moving_camera_flow_carries_its_motion_over_smoke_and_ground():
    from hybridsim.render.camera_io import scene_cameras
    from hybridsim.render.fluid3d import render_fluid3d_frames
    from hybridsim.scene import parse_scene
    from hybridsim.sim.world import World

    text = BLOB_SCENE + """
[[camera.keyframes]]
time = 0.0
position = [0.95, -1.3, 0.9]
[[camera.keyframes]]
time = 0.2
position = [1.2, -1.1, 0.95]
"""
    world = World(parse_scene(text, source="blob3d_moving.toml"))
    fluid = world.spec.fluid
    trajectory, frame_dt = _blob_trajectory(tuple(fluid.cells), fluid.cell_size, (1, 0, 1), 3)
    cameras = scene_cameras(world.spec.camera, 3, world.spec.time.fps)
    assert cameras[0] != cameras[1] != cameras[2]
    layers = render_fluid3d_frames(world, trajectory, cameras, frame_dt)
    height, width = cameras[0].height, cameras[0].width
    rows, cols = torch.meshgrid(torch.arange(height, dtype=D64) + 0.5, torch.arange(width, dtype=D64) + 0.5,
                                indexing="ij")
    centres = torch.stack([cols, rows], dim=-1)
    rgb, alpha = layers["rgb"], layers["alpha"]
    for f in (0, 1):
        forward = layers["flow_forward"][f]
        valid = ~layers["occlusion_forward"][f]
        ground = valid & (alpha[f] < 1e-4) & (layers["segmentation"][f] == 0) & torch.isfinite(layers["depth"][f])
        assert float(forward[ground].norm(dim=-1).mean()) > 1.0  # the ground moves in the image
        assert float(valid.float().mean()) > 0.7
        # frame f + 1 pulled back along the flow reproduces frame f (colour everywhere, alpha on the smoke)
        warped = _sample(rgb[f + 1], centres + forward)
        assert float((warped - rgb[f]).abs()[valid].mean()) < 0.03
        smoke = valid & (alpha[f] > 0.05)
        warped_alpha = _sample(alpha[f + 1][..., None], centres + forward)[..., 0]
        assert float((warped_alpha - alpha[f]).abs()[smoke].mean()) < 0.03
        # the backward flow of frame f + 1 undoes it
        inverse = _sample(layers["flow_backward"][f + 1], centres + forward) + forward
        assert float(inverse[valid].norm(dim=-1).median()) < 0.1 * float(forward[valid].norm(dim=-1).median())


def test_flow_occlusion_marks_leaving_hidden_and_changing_pixels():
    from hybridsim.render.fluid3d import flow_occlusion

    height, width = 6, 10
    flow = torch.zeros(height, width, 2, dtype=D64)
    flow[..., 0] = 2.0  # everything moves 2 px right
    alpha = torch.full((height, width), 0.8, dtype=D64)
    depth = torch.full((height, width), 5.0, dtype=D64)
    surface = torch.full((height, width), float("inf"), dtype=D64)
    surface[:, 7:] = 2.0  # an obstacle in front of the smoke on the right of the other frame
    occluded = flow_occlusion(flow, alpha, depth, alpha.clone(), surface, depth_tolerance=0.05)
    # columns 8, 9 leave the image; 6, 7 land on the obstacle (3x3 farthest: column 5 lands beside it)
    assert occluded.all(0).tolist() == [False] * 6 + [True] * 4 and not bool(occluded[:, :6].any())
    in_front = flow_occlusion(flow, alpha, torch.full_like(depth, 1.9), alpha, surface, depth_tolerance=0.05)
    assert not bool(in_front[:, :8].any())  # smoke in front of the obstacle stays visible
    thinner = alpha.clone()
    thinner[:, 4:] = 0.4  # the smoke the flow lands on in columns 2..3 differs by 0.4 > 0.25
    changed = flow_occlusion(flow, alpha, depth, thinner, torch.full_like(surface, float("inf")), depth_tolerance=0.05)
    assert changed[0].tolist() == [False, False, True, True, True, True, True, True, True, True]


UNSTABLE_SCENE = """
name = "unstable3d"
backend = "warp"
precision = "float32"
[time]
fps = 24
frames = 8
substeps = 1
[camera]
position = [0.9, -1.1, 0.45]
look_at = [0.0, 0.0, 0.3]
width = 16
height = 12
[fluid]
cells = [8, 8, 10]
cell_size = 0.06
origin = [-0.24, -0.24, 0.0]
boundary = ["wall", "wall", "wall", "wall", "wall", "open"]
buoyancy = 30.0
opacity = 30.0
[[fluid.inflows]]
shape = "sphere"
center = [0.0, 0.0, 0.1]
radius = 0.1
rate = 40.0
"""


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the solver's own CFL > 1 warning
def test_guard_stops_an_unstable_3d_plume_and_render_keeps_the_good_frames(tmp_path, capsys):
    from hybridsim.cli import main
    from hybridsim.errors import SimulationError
    from hybridsim.scene import parse_scene
    from hybridsim.sim.fluid import fluid_rollout
    from hybridsim.sim.world import World

    world = World(parse_scene(UNSTABLE_SCENE, source="unstable3d.toml"))
    with torch.no_grad(), pytest.raises(SimulationError, match=r"CFL number .* > 5") as caught:
        fluid_rollout(world)
    error = caught.value
    assert error.quantity == "cfl" and error.object == "fluid (grid 8x8x10)" and "substeps" in str(error)
    assert 1 < error.frame < 8 and error.partial.density.shape[0] == error.frame
    assert bool(torch.isfinite(error.partial.velocity_z).all())
    # the same scene with enough substeps passes the guard
    calm = World(parse_scene(UNSTABLE_SCENE.replace("buoyancy = 30.0", "buoyancy = 2.0"), source="calm3d.toml"))
    with torch.no_grad():
        assert fluid_rollout(calm).density.shape[0] == 9
    # render: exit 1, the good frames in OUT.partial.* with every layer
    scene = tmp_path / "unstable3d.toml"
    scene.write_text(UNSTABLE_SCENE)
    out = tmp_path / "plume.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 1
    assert "CFL number" in capsys.readouterr().err and not out.exists()
    layers = np.load(tmp_path / "plume.partial.layers.npz")
    assert layers["alpha"].shape == (error.frame, 12, 16) and layers["occlusion_forward"].dtype == bool
    assert (tmp_path / "plume.partial.mp4").is_file() and (tmp_path / "plume.partial.states.npz").is_file()


def test_guard_catches_density_made_from_nothing():
    from hybridsim.sim.guards import FluidGuard

    guard = FluidGuard(dt=0.01, cell_size=0.1, substeps=2, cells=(4, 4, 4), inflow_rate=10.0, initial_mass=5.0)
    shape = (3, 4, 4, 4)
    zeros = [torch.zeros(shape) for _ in range(3)]
    density = torch.full(shape, 5.2 / 64)  # budget after 1, 2, 3 frames: 5.2, 5.4, 5.6
    assert guard.first_violation(*zeros[:2], density, zeros[2]) is None
    density[2] = 14.0 / 64  # > 2 x 5.6 + 1
    violation = guard.first_violation(*zeros[:2], density, zeros[2])
    assert violation.quantity == "mass" and violation.offset == 2
    density[1, 0, 0, 0] = float("nan")
    assert guard.first_violation(*zeros[:2], density, zeros[2]).quantity == "density"


# --------------------------------------------------------------------------------------------
# hybridsim generate for 3D smoke
# --------------------------------------------------------------------------------------------
def _smoke3d_job(out, *extra):
    from pathlib import Path

    from hybridsim.cli import main

    scenes = Path(__file__).resolve().parent.parent / "scenes"
    return main(["generate", str(scenes / "smoke3d_random.toml"), "-o", str(out), "--count", "2", "--shard-size", "2",
                 "--frames", "3", "--seed", "0", "-q", "--workers", "1", *extra])


def test_smoke3d_shards_hold_layers_states_and_labels_and_repeat_byte_for_byte(tmp_path):
    from hybridsim.data import iter_samples

    assert _smoke3d_job(tmp_path / "a") == 0
    samples = list(iter_samples(tmp_path / "a", video=True))
    assert len(samples) == 2
    for sample in samples:
        meta, layers, states = sample["json"], sample["layers"], sample["states"]
        assert meta["simulator"] == "fluid" and meta["fluid"]["cells"] == [24, 24, 24]
        assert sample["mp4"].shape == (4, 64, 64, 3)
        for key, shape, dtype in (("alpha", (), np.float32), ("depth", (), np.float32), ("normal", (3,), np.float32),
                                  ("segmentation", (), np.int32), ("flow_forward", (2,), np.float32),
                                  ("flow_backward", (2,), np.float32), ("occlusion_forward", (), np.bool_),
                                  ("occlusion_backward", (), np.bool_)):
            assert layers[key].shape == (4, 64, 64, *shape) and layers[key].dtype == dtype, key
        assert layers["intrinsics"].shape == (4, 3, 3) and layers["extrinsics"].shape == (4, 4, 4)
        smoke_id = len(meta["fluid"]["obstacles"]) + 1
        assert set(np.unique(layers["segmentation"])) <= set(range(smoke_id + 1))
        assert states["density"].shape == (4, 12, 12, 12) and states["velocity"].shape == (4, 12, 12, 12, 3)
        assert int(states["field_stride"]) == 2 and meta["fluid"]["field_stride"] == 2
        assert meta["quality"]["mass_gain"] <= 0.01 and meta["quality"]["max_cfl"] < 1.0
        assert meta["fluid"]["buoyancy"] == meta["sampled"]["fluid.buoyancy"]
    # the same seed in a fresh job: byte-identical shards
    assert _smoke3d_job(tmp_path / "b") == 0
    first = {p.name: p.read_bytes() for p in sorted((tmp_path / "a").glob("shard-*.tar"))}
    second = {p.name: p.read_bytes() for p in sorted((tmp_path / "b").glob("shard-*.tar"))}
    assert first and first == second


@pytest.mark.slow
def test_smoke3d_shards_are_identical_with_a_process_pool(tmp_path):
    assert _smoke3d_job(tmp_path / "serial") == 0
    assert _smoke3d_job(tmp_path / "pool", "--workers", "2") == 0
    serial = {p.name: p.read_bytes() for p in sorted((tmp_path / "serial").glob("shard-*.tar"))}
    pool = {p.name: p.read_bytes() for p in sorted((tmp_path / "pool").glob("shard-*.tar"))}
    assert serial and serial == pool


def test_3d_inflow_budget_matches_what_the_solver_adds():
    from hybridsim.data.gates import fluid_inflow_rate
    from hybridsim.scene import parse_scene
    from hybridsim.sim.fluid import fluid_rollout
    from hybridsim.sim.world import World

    text = UNSTABLE_SCENE.replace("buoyancy = 30.0", "buoyancy = 0.0").replace("frames = 8", "frames = 2")
    text = text.replace('"wall", "open"]', '"wall", "wall"]') + """
[[fluid.inflows]]
shape = "box"
center = [0.1, -0.05, 0.3]
half_size = [0.07, 0.05, 0.09]
rate = 3.0
"""
    world = World(parse_scene(text, source="budget3d.toml"))
    with torch.no_grad():
        trajectory = fluid_rollout(world)
    added = float(trajectory.density[-1].double().sum() - trajectory.density[0].double().sum())
    assert np.isclose(added, fluid_inflow_rate(world.spec.fluid) * float(trajectory.times[-1]), rtol=1e-4)


# --------------------------------------------------------------------------------------------
# hybridsim metrics for 3D fluid states
# --------------------------------------------------------------------------------------------
def test_3d_metrics_of_a_rollout_and_of_analytic_fields():
    from hybridsim.metrics import fluid_physics_metrics, scene_physics_metrics
    from hybridsim.scene import parse_scene
    from hybridsim.sim.fluid import fluid_rollout
    from hybridsim.sim.world import World

    text = (UNSTABLE_SCENE.replace("buoyancy = 30.0", "buoyancy = 3.0").replace('"wall", "open"]', '"wall", "wall"]')
            .replace('precision = "float32"', 'precision = "float64"').replace("substeps = 1", "substeps = 2")
            + '\n[[fluid.obstacles]]\nshape = "sphere"\ncenter = [0.02, 0.0, 0.33]\nradius = 0.09\n')
    spec = parse_scene(text, source="closed3d.toml")
    with torch.no_grad():
        trajectory = fluid_rollout(World(spec), frames=4)
    states = {name: getattr(trajectory, name).numpy() for name in
              ("velocity_x", "velocity_y", "velocity_z", "density", "times")}
    metrics = scene_physics_metrics(spec, states)
    assert metrics["simulator"] == "fluid3d" and metrics["frames"] == 5
    assert metrics["max_divergence_max_relative"] < 1e-3  # projected (with the obstacle's face fractions)
    assert abs(metrics["mass_gain_relative"]) < 1e-6 and metrics["mass_loss_relative"] < 1e-6  # closed box
    assert 0.0 < metrics["max_cfl"] < 1.0
    # density made from nothing and a divergent field are measured
    gained = dict(states, density=states["density"] * np.array([1.0, 1.0, 1.0, 1.0, 1.5])[:, None, None, None])
    assert scene_physics_metrics(spec, gained)["mass_gain_relative"] == pytest.approx(0.5, rel=1e-6)
    n, dx = 6, 0.1
    x_faces = (torch.arange(n + 1, dtype=D64) * dx).reshape(n + 1, 1, 1).expand(n + 1, n, n)  # u = x: div = 1/s
    expanding = fluid_physics_metrics(x_faces[None], torch.zeros(1, n, n + 1, n), torch.ones(1, n, n, n),
                                      torch.zeros(1), velocity_z=torch.zeros(1, n, n, n + 1), cell_size=dx, dt=0.01,
                                      periodic=(False, False, False))
    assert expanding["divergence_max_relative"][0] == pytest.approx(1.0 * dx / (n * dx))
    assert expanding["mass"][0] == pytest.approx(n ** 3 * dx ** 3) and expanding["cfl"][0] == pytest.approx(0.06)


def test_cli_renders_a_moving_camera_3d_scene_and_measures_it(tmp_path, capsys):
    import json

    from hybridsim.cli import main

    scene = tmp_path / "calm3d.toml"
    scene.write_text(UNSTABLE_SCENE.replace("buoyancy = 30.0", "buoyancy = 2.0").replace("frames = 8", "frames = 4")
                     + "[[camera.keyframes]]\ntime = 0.0\n"
                     + "[[camera.keyframes]]\ntime = 0.2\nposition = [1.1, -0.9, 0.5]\n")
    out = tmp_path / "calm3d.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 0
    layers = np.load(tmp_path / "calm3d.layers.npz")
    extrinsics = layers["extrinsics"]
    assert extrinsics.shape == (5, 4, 4) and not np.allclose(extrinsics[0], extrinsics[-1])
    empty = layers["alpha"][1] < 1e-4
    assert np.abs(layers["flow_forward"][1][empty]).max() > 0.1  # the ground moves with the camera
    capsys.readouterr()
    assert main(["metrics", str(out), "--scene", str(scene)]) == 0
    physics = json.loads(capsys.readouterr().out)["physics"]
    assert physics["simulator"] == "fluid3d" and len(physics["mass"]) == 5
    assert physics["max_divergence_max_relative"] < 1e-3 and abs(physics["mass_gain_relative"]) < 1e-5
