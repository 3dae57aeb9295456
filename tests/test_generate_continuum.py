"""`hybridsim generate` beyond spheres and rigid bodies: 2D smoke ([fluid]) and MPM ([mpm])
distributions with their layers, states, labels and gates, byte-identical shards across
executors; mesh folders (``choice_dir``); the preview images; ``--refiner``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hybridsim.cli import main
from hybridsim.errors import SceneError
from hybridsim.scene.distributions import load_distribution, parse_distribution

ROOT = Path(__file__).resolve().parent.parent
SMOKE_RANDOM = ROOT / "scenes" / "smoke_random.toml"
MPM_RANDOM = ROOT / "scenes" / "mpm_random.toml"
ROCKS_RANDOM = ROOT / "scenes" / "rocks_random.toml"
FRAMES = 6
JOB_ARGS = ["--count", "3", "--shard-size", "2", "--frames", str(FRAMES), "--seed", "0", "-q"]


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def _decoded(out: Path, video: bool = True) -> list[dict]:
    from hybridsim.data import iter_samples

    return list(iter_samples(out, video=video))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """3 smoke samples, generated in-process."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    assert main(["generate", str(SMOKE_RANDOM), "-o", str(out), "--workers", "1", *JOB_ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def mpm(tmp_path_factory):
    """3 MPM samples with at most 100 particles in states.npz, generated in-process."""
    out = tmp_path_factory.mktemp("mpm") / "out"
    assert main(["generate", str(MPM_RANDOM), "-o", str(out), "--workers", "1", "--max-particles", "100",
                 *JOB_ARGS]) == 0
    return out


# --------------------------------------------------------------------------------------------
# The shipped distributions
# --------------------------------------------------------------------------------------------


def test_shipped_smoke_and_mpm_distributions_vary_what_they_promise():
    smoke = load_distribution(SMOKE_RANDOM)
    specs = [smoke.sample(0, i) for i in range(20)]
    assert all(s.fluid is not None and not s.camera.keyframes for s in specs)  # a fixed camera
    assert len({s.fluid.buoyancy for s in specs}) == 20 and len({s.fluid.inflows[0].center for s in specs}) == 20
    assert len({s.fluid.vorticity for s in specs}) == 20 and len({s.camera.ortho_height for s in specs}) == 20
    assert {len(s.fluid.obstacles) for s in specs} == {0, 1}
    assert smoke.generate_options == {"field_stride": 2}

    dist = load_distribution(MPM_RANDOM)
    specs = [dist.sample(0, i) for i in range(20)]
    assert all(s.mpm is not None and s.mpm.dim == 3 and len(s.mpm.bodies) == 2 for s in specs)
    assert len({s.mpm.materials[0].youngs_modulus for s in specs}) == 20
    assert len({s.mpm.bodies[0].half_size for s in specs}) == 20 and len({s.mpm.bodies[1].color for s in specs}) == 20
    assert all(len(s.camera.keyframes) >= 2 for s in specs)  # orbiting camera
    assert dist.generate_options == {"max_state_particles": 256}


def test_generate_options_table_is_checked():
    with pytest.raises(SceneError) as info:
        parse_distribution("[generate]\nfield_strides = 2\n", source="d.toml")
    assert info.value.field == "generate.field_strides"
    with pytest.raises(SceneError) as info:
        parse_distribution("[generate]\nmax_state_particles = 0\n", source="d.toml")
    assert info.value.field == "generate.max_state_particles" and "positive integer" in info.value.message


# --------------------------------------------------------------------------------------------
# Smoke
# --------------------------------------------------------------------------------------------


def test_smoke_shards_hold_fluid_layers_states_and_labels(smoke):
    samples = _decoded(smoke)
    assert [s["__key__"] for s in samples] == ["sample-0000000", "sample-0000001", "sample-0000002"]
    T = FRAMES + 1
    for sample in samples:
        meta, layers, states = sample["json"], sample["layers"], sample["states"]
        H, W = meta["height"], meta["width"]
        assert meta["simulator"] == "fluid" and (H, W) == (64, 64)
        assert sample["mp4"].shape == (T, H, W, 3)
        for name in ("alpha", "density", "depth"):
            assert layers[name].shape == (T, H, W) and layers[name].dtype == np.float32
        assert layers["segmentation"].dtype == np.int32 and layers["normal"].shape == (T, H, W, 3)
        for direction in ("forward", "backward"):
            assert layers[f"flow_{direction}"].shape == (T, H, W, 2)
            assert layers[f"occlusion_{direction}"].dtype == bool
        assert layers["intrinsics"].shape == (T, 3, 3) and layers["extrinsics"].shape == (T, 4, 4)
        # the distribution's [generate] field_stride = 2 halves the 64 x 64 grid
        assert states["density"].shape == (T, 32, 32) and states["velocity"].shape == (T, 32, 32, 2)
        assert states["field_stride"].shape == () and int(states["field_stride"]) == 2 and meta["fluid"]["field_stride"] == 2
        # labels are the simulated scene's; the drawn values are listed by field path
        assert meta["fluid"]["buoyancy"] == meta["sampled"]["fluid.buoyancy"]
        assert meta["fluid"]["inflows"][0]["rate"] == meta["sampled"]["fluid.inflows[0].rate"]
        quality = meta["quality"]
        # conservative advection in a closed box: the density is what the inflows put in
        assert abs(quality["mass_gain"]) < 1e-4 and quality["max_cfl"] < 1.0
        assert np.isclose(states["density"][-1].sum() * 4, quality["mass"][-1], rtol=0.3)  # strided: about 1/4
        assert quality["mass"][-1] > quality["mass"][0] == 0.0  # smoke appeared


def test_fluid_gates_catch_mass_gain_and_high_cfl():
    from hybridsim.data.gates import QualityGates, evaluate_fluid_gates, fluid_inflow_rate
    from hybridsim.sim.fluid import fluid_rollout
    from hybridsim.sim.world import World

    spec = load_distribution(SMOKE_RANDOM).sample(0, 2, frames=3)  # no obstacle: the quickest pressure solve
    world = World(spec)
    with torch.no_grad():
        trajectory = fluid_rollout(world)
    # the inflow budget the gate uses matches what the solver added
    added = float(trajectory.density[-1].sum() - trajectory.density[0].sum())
    assert np.isclose(added, fluid_inflow_rate(spec.fluid) * float(trajectory.times[-1]), rtol=1e-4)
    measured, failures = evaluate_fluid_gates(world, trajectory, QualityGates())
    assert not failures
    doubled = SimpleNamespace(**{**vars(trajectory), "density": trajectory.density * 2.0})
    measured, failures = evaluate_fluid_gates(world, doubled, QualityGates())
    assert [f["gate"] for f in failures] == ["mass_gain"] and np.isclose(measured["mass_gain"], 1.0, atol=1e-4)
    _, failures = evaluate_fluid_gates(world, trajectory, QualityGates(cfl_max=1e-6))
    assert [f["gate"] for f in failures] == ["cfl"]
    broken = SimpleNamespace(**{**vars(trajectory), "density": trajectory.density.clone()})
    broken.density[-1, 3, 3] = float("nan")
    _, failures = evaluate_fluid_gates(world, broken, QualityGates())
    assert [f["gate"] for f in failures] == ["non_finite"]


def test_a_too_strict_cfl_gate_rejects_every_draw_and_says_why(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", str(SMOKE_RANDOM), "-o", str(out), "--workers", "1", "--count", "1", "--frames", "2",
                 "--cfl-max", "1e-9", "--max-attempts", "2", "-q"]) != 0
    assert "all 2 draws of sample 0 were rejected (gates: cfl; last: CFL number" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# MPM
# --------------------------------------------------------------------------------------------


def test_mpm_shards_hold_particle_layers_subsampled_states_and_labels(mpm):
    T = FRAMES + 1
    for sample in _decoded(mpm):
        meta, layers, states = sample["json"], sample["layers"], sample["states"]
        H, W = meta["height"], meta["width"]
        assert meta["simulator"] == "mpm" and sample["mp4"].shape == (T, H, W, 3)
        for name in ("alpha", "depth"):
            assert layers[name].shape == (T, H, W)
        assert set(np.unique(layers["segmentation"])) <= {0, 1, 2}  # background, material 0 + 1, material 1 + 1
        assert layers["flow_forward"].shape == (T, H, W, 2) and layers["extrinsics"].shape == (T, 4, 4)
        assert not np.allclose(layers["extrinsics"][0], layers["extrinsics"][-1])  # the camera orbits
        total = int(states["particle_count"])
        n = states["particle_index"].shape[0]
        assert n == min(100, total) and meta["mpm"]["state_particles"] == n and meta["mpm"]["particle_count"] == total
        assert np.all(np.diff(states["particle_index"]) > 0) and states["particle_index"][-1] < total
        assert states["positions"].shape == (T, n, 3) and states["velocities"].shape == (T, n, 3)
        assert set(np.unique(states["particle_body"])) == {0, 1}  # the strided subset covers both bodies
        assert sum(b["particles"] for b in meta["mpm"]["bodies"]) == total
        materials = meta["mpm"]["materials"]
        assert materials[0]["youngs_modulus"] == pytest.approx(meta["sampled"]["mpm.materials[0].youngs_modulus"])
        assert np.allclose(states["positions"][0, :, 1][states["particle_body"] == 0].mean(),
                           meta["mpm"]["bodies"][0]["center"][1], atol=0.02)
        assert meta["quality"]["energy_gain_j_per_kg"] <= 1e-2 and meta["quality"]["max_cfl"] <= 1.0


def test_mpm_energy_gate_and_particle_subset():
    from hybridsim.data.continuum import particle_subset
    from hybridsim.data.gates import QualityGates, evaluate_mpm_gates
    from hybridsim.sim.mpm import mpm_rollout
    from hybridsim.sim.world import World

    assert particle_subset(10, None).tolist() == list(range(10)) and particle_subset(10, 20).tolist() == list(range(10))
    assert particle_subset(10, 4).tolist() == [0, 2, 5, 7]
    spec = load_distribution(MPM_RANDOM).sample(0, 1, frames=2)
    world = World(spec)
    with torch.no_grad():
        trajectory = mpm_rollout(world)
    measured, failures = evaluate_mpm_gates(world, trajectory, QualityGates())
    assert not failures and measured["energy_gain_j_per_kg"] < 0.0  # falls, hits the floor, loses energy
    faster = SimpleNamespace(**{**vars(trajectory), "velocities": trajectory.velocities.clone()})
    faster.velocities[-1] = 0.0
    faster.velocities[-1, :, 0] = 5.0  # everything moves at 5 m/s at the end: 12.5 J/kg of kinetic energy
    measured, failures = evaluate_mpm_gates(world, faster, QualityGates())
    assert "energy_gain" in [f["gate"] for f in failures] and measured["energy_gain_j_per_kg"] > 5.0


# --------------------------------------------------------------------------------------------
# Determinism across executors
# --------------------------------------------------------------------------------------------


def _same_as_reference(reference: Path, distribution: Path, out: Path, *options: str) -> None:
    extra = ["--max-particles", "100"] if distribution == MPM_RANDOM else []
    assert main(["generate", str(distribution), "-o", str(out), "--workers", "2", *options, *extra, *JOB_ARGS]) == 0
    executor = json.loads((out / "summary.json").read_text())["executor"]
    assert executor == "ray" if "--ray" in options else executor.startswith("local process pool")
    assert _shards(out) == _shards(reference)  # byte-identical layers, states, json and video
    for a, b in zip(_decoded(out), _decoded(reference)):
        assert np.array_equal(a["mp4"], b["mp4"])  # so the decoded frames are identical too


def test_a_spawned_pool_gives_the_same_mpm_shards(mpm, tmp_path):
    # MPM scatters particles to the grid: the deterministic mode keeps it bit-reproducible across processes
    _same_as_reference(mpm, MPM_RANDOM, tmp_path / "pool")


@pytest.mark.slow
def test_a_spawned_pool_gives_the_same_smoke_shards(smoke, tmp_path):
    _same_as_reference(smoke, SMOKE_RANDOM, tmp_path / "pool")


@pytest.mark.slow
def test_ray_gives_the_same_smoke_and_mpm_shards(smoke, mpm, tmp_path):
    pytest.importorskip("ray", reason='Ray is not installed (pip install "hybridsim[ray]")')
    _same_as_reference(smoke, SMOKE_RANDOM, tmp_path / "smoke", "--ray", "local")
    _same_as_reference(mpm, MPM_RANDOM, tmp_path / "mpm", "--ray", "local")


def test_summary_has_a_time_breakdown(smoke):
    summary = json.loads((smoke / "summary.json").read_text())
    breakdown = summary["time_breakdown"]
    assert set(breakdown["seconds"]) == {"simulate", "render", "encode", "refine", "write"}
    assert breakdown["seconds"]["simulate"] > 0 and breakdown["seconds"]["write"] > 0
    assert sum(breakdown["share"].values()) == pytest.approx(1.0, abs=1e-3)


# --------------------------------------------------------------------------------------------
# Mesh folders
# --------------------------------------------------------------------------------------------

MESH_DIST = """
name = "meshes"
[time]
frames = 2
[camera]
position = [0.0, -3.0, 1.0]
look_at = [0.0, 0.0, 0.3]
width = 32
height = 24
[[objects]]
type = "mesh"
file = { choice_dir = "parts/" }
position = [0.0, 0.0, 0.5]
scale = 0.2
"""


def test_choice_dir_draws_mesh_files_from_a_sorted_listing(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    for name in ("rock.obj", "pebble.obj", "prism.obj"):
        shutil.copy(ROOT / "scenes" / "meshes" / name, parts / name)
    (parts / "notes.txt").write_text("not a mesh")
    (parts / "sub.obj").mkdir()  # a folder, not a mesh file
    path = tmp_path / "dist.toml"
    path.write_text(MESH_DIST)
    dist = load_distribution(path)  # resolved relative to the distribution file, not the working directory
    files = [dist.sample(0, i).objects[0].file for i in range(30)]
    assert set(files) == {"parts/pebble.obj", "parts/prism.obj", "parts/rock.obj"}
    assert files == [load_distribution(path).sample(0, i).objects[0].file for i in range(30)]
    # the listing is part of the distribution's identity
    before = dist.sha256
    shutil.copy(parts / "rock.obj", parts / "rock2.obj")
    assert load_distribution(path).sha256 != before

    for folder, message in (("missing/", "does not exist"), ("empty/", "holds no mesh files")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        path.write_text(MESH_DIST.replace("parts/", folder))
        with pytest.raises(SceneError) as info:
            load_distribution(path)
        assert info.value.field == "objects[0].file.choice_dir" and message in info.value.message


def test_generated_mesh_samples_name_their_mesh_file(tmp_path):
    out = tmp_path / "out"
    assert main(["generate", str(ROCKS_RANDOM), "-o", str(out), "--workers", "1", "--count", "2", "--frames", "2",
                 "-q"]) == 0
    for sample in _decoded(out, video=False):
        meta = sample["json"]
        meshes = [obj for obj in meta["objects"] if obj["type"] == "mesh"]
        assert meshes and all(obj["file"].startswith("meshes/") for obj in meshes)
        assert meta["sampled"]["objects[0].file"] == meshes[0]["file"]
        assert (ROCKS_RANDOM.parent / meshes[0]["file"]).is_file()


# --------------------------------------------------------------------------------------------
# Preview and refiner
# --------------------------------------------------------------------------------------------


def test_preview_writes_a_contact_sheet_and_histograms(mpm, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "copy"
    shutil.copytree(mpm, out)
    assert main(["preview", str(out), "--samples", "2"]) == 0
    sheet = iio.imread(out / "preview" / "contact_sheet.png")
    histograms = iio.imread(out / "preview" / "histograms.png")
    assert sheet.shape[0] > 100 and sheet.shape[1] > 200 and histograms.shape[0] > 300
    for image in (sheet, histograms):
        assert image[..., :3].std() > 10  # not a blank page
    assert main(["preview", str(tmp_path / "nothing")]) != 0


def test_refiner_adds_a_refined_video_and_refuses_bad_weights(tmp_path, capsys):
    from hybridsim.neural.refiner import VideoRefiner

    torch.manual_seed(0)
    model = VideoRefiner("tiny")  # starts as the identity: perturb it so the refined video differs
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    weights = tmp_path / "refiner.safetensors"
    model.save(weights)
    out = tmp_path / "out"
    assert main(["generate", str(SMOKE_RANDOM), "-o", str(out), "--workers", "1", "--count", "1", "--frames", "3",
                 "--refiner", str(weights), "--preview", "-q"]) == 0
    (sample,) = _decoded(out)
    assert sample["refined.mp4"].shape == sample["mp4"].shape
    assert not np.array_equal(sample["refined.mp4"], sample["mp4"])  # an untrained refiner changes the frames
    assert "refined.mp4" in sample["json"]["entries"]
    assert json.loads((out / "job.json").read_text())["refiner"]["name"] == "refiner.safetensors"
    assert (out / "preview" / "contact_sheet.png").is_file() and (out / "preview" / "histograms.png").is_file()

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not weights")
    for bad, message in ((tmp_path / "missing.safetensors", "refiner weights not found"),
                         (corrupt, "cannot read refiner weights")):
        assert main(["generate", str(SMOKE_RANDOM), "-o", str(tmp_path / bad.stem), "--count", "1",
                     "--refiner", str(bad), "-q"]) != 0
        error = capsys.readouterr().err
        assert bad.name in error and message in error
        assert not (tmp_path / bad.stem).exists()  # refused before any work
