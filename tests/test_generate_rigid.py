"""`hybridsim generate` on rigid-body scenes (boxes, capsules, rigid balls, static boxes, joints,
springs): rigid layers and states in the shards, byte-identical reruns, resume after an
interruption, and quality gates (initial overlap, blow-ups, penetration) with recorded reasons."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from hybridsim.cli import main
from hybridsim.scene.distributions import load_distribution, sample_scene

ROOT = Path(__file__).resolve().parent.parent
BOXES_RANDOM = ROOT / "scenes" / "boxes_random.toml"

# 3 samples of the shipped distribution, 8 frames, shards of 2 (one full shard, one partial)
JOB_ARGS = ["--count", "3", "--shard-size", "2", "--frames", "8", "--seed", "0", "-q"]
FRAMES = 8


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def _decoded(out: Path, video: bool = True) -> list[dict]:
    from hybridsim.data import iter_samples

    return list(iter_samples(out, video=video))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The shared job, generated once in-process."""
    out = tmp_path_factory.mktemp("rigid-reference") / "out"
    start = time.perf_counter()
    assert main(["generate", str(BOXES_RANDOM), "-o", str(out), "--workers", "1", *JOB_ARGS]) == 0
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# The shipped distribution
# --------------------------------------------------------------------------------------------


def test_boxes_random_draws_rigid_scenes_of_one_to_four_objects():
    from hybridsim.sim.world import World

    dist = load_distribution(BOXES_RANDOM)
    specs = [dist.sample(0, i) for i in range(40)]
    assert {len(s.objects) for s in specs} == {1, 2, 3, 4}
    assert {o.type for s in specs for o in s.objects} == {"box", "capsule", "sphere"}
    assert all(World(s).rigid for s in specs)
    assert all((s.camera.width, s.camera.height, s.frame_count) == (96, 72, 24) for s in specs)
    assert all(len(s.camera.keyframes) >= 2 for s in specs)  # the orbit sweeps: a moving camera
    assert len({s.objects[0].mass for s in specs}) == 40 and len({s.objects[0].friction for s in specs}) == 40


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def test_rigid_shards_hold_rigid_layers_states_and_labels(reference):
    out, _ = reference
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert not (out / ".staging").exists() and not list(out.glob("*.partial"))
    samples = _decoded(out)
    assert [s["__key__"] for s in samples] == [f"sample-{i:07d}" for i in range(3)]
    text = BOXES_RANDOM.read_text()
    for sample in samples:
        meta, layers, states = sample["json"], sample["layers"], sample["states"]
        T, H, W = FRAMES + 1, 72, 96
        K = len(meta["objects"])
        bodies = states["body_objects"]
        B = len(bodies)
        assert meta["simulator"] == "rigid" and 1 <= K <= 4 and B == K  # no static boxes in boxes_random
        assert sample["mp4"].shape == (T, H, W, 3) and sample["mp4"].dtype == np.uint8
        for name, shape in (("depth", (T, H, W)), ("alpha", (T, H, W)), ("normal", (T, H, W, 3)),
                            ("object_coordinates", (T, H, W, 3)), ("flow_forward", (T, H, W, 2)),
                            ("flow_backward", (T, H, W, 2))):
            assert layers[name].shape == shape and layers[name].dtype == np.float32, name
        for name in ("occlusion_forward", "occlusion_backward"):
            assert layers[name].shape == (T, H, W) and layers[name].dtype == bool
        assert layers["segmentation"].shape == (T, H, W) and layers["segmentation"].dtype == np.int32
        assert 0 < layers["segmentation"].max() <= K
        assert layers["object_poses"].shape == (T, K, 7)
        assert layers["intrinsics"].shape == (T, 3, 3) and layers["extrinsics"].shape == (T, 4, 4)
        assert not np.allclose(layers["extrinsics"][0], layers["extrinsics"][-1])  # the orbit sweeps
        for name, width in (("positions", 3), ("orientations", 4), ("velocities", 3), ("angular_velocities", 3)):
            assert states[name].shape == (T, B, width), name
            assert np.isfinite(states[name]).all()
        assert states["times"].shape == (T,) and np.allclose(np.diff(states["times"]), 1 / 24)
        assert states["mass"].shape == (B,) and states["inertia"].shape == (B, 3)
        assert np.allclose(np.linalg.norm(states["orientations"], axis=-1), 1.0, atol=1e-5)
        # poses of the bodies are their states (position + quaternion x, y, z, w)
        assert np.allclose(layers["object_poses"][:, bodies, :3], states["positions"], atol=1e-6)
        assert np.allclose(layers["object_poses"][:, bodies, 3:], states["orientations"], atol=1e-6)
        assert "x, y, z, w" in meta["object_poses"]
        # per-object labels are the ones simulated, and the resolved scene is the seeded draw
        expected = sample_scene(text, 0, meta["index"], attempt=meta["attempt"], frames=FRAMES)
        assert meta["scene_toml"] == expected.to_toml()
        for k, (obj, spec) in enumerate(zip(meta["objects"], expected.objects)):
            assert obj["type"] == spec.type and obj["name"] == spec.name and obj["segmentation_id"] == k + 1
            assert obj["body"] == list(bodies).index(k)
            assert obj["mass"] == pytest.approx(states["mass"][obj["body"]])
            assert obj["restitution"] == spec.restitution and obj["color"] == list(spec.color)
            assert np.allclose(obj["initial_position"], states["positions"][0, obj["body"]], atol=1e-6)
            if spec.type == "box":
                assert obj["half_extents"] == list(spec.half_extents) and obj["friction"] == spec.friction
                assert obj["mass"] == pytest.approx(spec.mass, rel=1e-6)
            elif spec.type == "capsule":
                assert (obj["radius"], obj["half_height"]) == (spec.radius, spec.half_height)
            else:
                assert obj["radius"] == spec.radius and obj["friction"] == 0.5  # rigid balls
        quality = meta["quality"]
        assert quality["passed"] and quality["initial_overlap_m"] <= 1e-3
        assert quality["ground_penetration_m"] <= 1e-3 and quality["object_overlap_m"] <= 1e-3
        assert quality["energy_gain_j_per_kg"] <= 1e-2
        assert np.allclose(layers["intrinsics"][0], meta["camera"]["intrinsics"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated"] == 3 and summary["executor"] == "in-process"


def test_the_same_command_twice_gives_byte_identical_shards(reference, tmp_path):
    out, _ = reference
    again = tmp_path / "again"
    assert main(["generate", str(BOXES_RANDOM), "-o", str(again), "--workers", "1", *JOB_ARGS]) == 0
    assert _shards(again) == _shards(out)
    assert (again / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()


def test_resume_after_an_interrupted_run_gives_the_same_shards(reference, tmp_path):
    """Leave the folder as a run killed after staging sample 1 would (plus a half-written shard and
    a temporary), then rerun the same command."""
    from hybridsim.data.gates import QualityGates
    from hybridsim.data.job import ENTRY_SUFFIXES, GenerateJob
    from hybridsim.data.shards import ShardStore, tar_bytes_members

    out, _ = reference
    resumed = tmp_path / "resumed"
    job = GenerateJob(BOXES_RANDOM.read_text(), str(BOXES_RANDOM), seed=0, frames=FRAMES, gates=QualityGates())
    store = ShardStore(resumed, 3, 2)
    store.open(job.record())
    members = dict(tar_bytes_members(out / "shard-000000.tar"))
    store.stage({"index": 1, "entries": {s: members[f"sample-0000001.{s}"] for s in ENTRY_SUFFIXES}})
    store.close()
    (resumed / "shard-000001.tar.partial").write_bytes(b"half a shard")
    (resumed / ".staging" / "shard-000000" / "sample-0000000.tar.tmp123").write_bytes(b"half a sample")
    assert not list(resumed.glob("shard-*.tar"))

    assert main(["generate", str(BOXES_RANDOM), "-o", str(resumed), "--workers", "1", *JOB_ARGS]) == 0
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed"] == 1 and summary["generated"] == 2
    assert _shards(resumed) == _shards(out)
    assert (resumed / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert not (resumed / ".staging").exists() and not list(resumed.glob("*.partial"))


# --------------------------------------------------------------------------------------------
# Quality gates
# --------------------------------------------------------------------------------------------

GATED = """
name = "gated_rigid"
device = "cpu"
[time]
fps = { choice = [24.0, 24.0, 2.0] }   # 2 fps with 4 substeps: dt = 0.125 s, far too coarse
frames = 3
substeps = 4
[camera]
position = [0.0, -4.0, 1.0]
look_at = [0.0, 0.0, 0.5]
width = 32
height = 24
[[objects]]
type = "box"
name = "base"
half_extents = [0.1, 0.1, 0.1]
position = { choice = [[0.0, 0.0, 0.1], [0.0, 0.0, 0.1], [0.0, 0.0, 0.04]] }   # the last starts in the ground
[[objects]]
type = "capsule"
name = "faller"
radius = 0.08
half_height = 0.1
position = [0.0, 0.0, 1.5]
velocity = [0.0, 0.0, -5.0]
"""


def _expected_gate(spec) -> str | None:
    if spec.objects[0].position[2] < 0.1:
        return "initial_overlap"
    if spec.time.fps == 2.0:
        return "penetration"  # the rollout blows up: the faller drives the base into the ground
    return None


def test_rigid_gates_reject_bad_draws_and_record_why(tmp_path):
    from hybridsim.data import generate

    dist = tmp_path / "gated.toml"
    dist.write_text(GATED)
    summary = generate(dist, 3, tmp_path / "out", workers=1, shard_size=3, seed=5, progress=False, log=None)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    expected = []
    for index in range(3):  # replay the draws: every rejected attempt, then the accepted one
        attempt = 0
        while (gate := _expected_gate(sample_scene(GATED, 5, index, attempt=attempt))) is not None:
            expected.append((f"sample-{index:07d}", attempt, gate))
            attempt += 1
    assert [(r["key"], r["attempt"], r["gates"]) for r in manifest["rejected"]] == [(k, a, [g]) for k, a, g in expected]
    assert {gate for *_, gate in expected} == {"initial_overlap", "penetration"}
    assert summary["rejected_count"] == len(expected)
    for reasons, (_, _, gate) in zip((r["reasons"] for r in manifest["rejected"]), expected):
        if gate == "initial_overlap":
            assert reasons == ["objects[0] (box 'base') is 0.06 m inside the ground at t = 0"]
        else:  # a blow-up guard fired during the rollout: its message is the reason
            assert "blew up" in reasons[0] and "penetration" in reasons[0]
    samples = _decoded(tmp_path / "out", video=False)
    for sample in samples:
        meta = sample["json"]
        assert meta["objects"][0]["initial_position"][2] == 0.1 and meta["fps"] == 24.0
        for item in meta["rejected_attempts"]:
            for reason in item["reasons"]:
                assert reason["gate"] in ("initial_overlap", "penetration")
                assert reason.get("blow_up", False) == (reason["gate"] == "penetration")


def test_initial_overlap_gate_catches_a_capsule_crossing_a_box_mid_segment():
    """A capsule crossing a box at mid-segment: the solver's contact points (the capsule's end
    centres) miss it, the exact overlap test does not."""
    from hybridsim.data.gates import QualityGates, rigid_initial_gates
    from hybridsim.scene import scene_from_dict
    from hybridsim.sim.world import World

    spec = scene_from_dict({
        "device": "cpu", "time": {"frames": 1}, "camera": {"position": [0.0, -4.0, 1.0], "look_at": [0.0, 0.0, 1.0]},
        "objects": [{"type": "static_box", "name": "wall", "position": [0.0, 0.0, 1.0],
                     "half_extents": [0.05, 1.0, 1.0]},
                    {"type": "capsule", "name": "rod", "position": [0.0, 0.0, 1.0], "radius": 0.05, "half_height": 0.5,
                     "orientation": [0.0, 1.5707963, 0.0]}],  # along x, through the wall
    })
    measured, failures = rigid_initial_gates(World(spec), QualityGates())
    assert measured["initial_overlap_m"] == pytest.approx(0.1, abs=1e-6)
    assert [f["gate"] for f in failures] == ["initial_overlap"]
    assert failures[0]["detail"] == ("objects[0] (static_box 'wall') overlaps objects[1] (capsule 'rod') "
                                     "by 0.1 m at t = 0")


JOINTED = """
name = "jointed"
device = "cpu"
[time]
fps = 24
frames = 3
[camera]
position = [0.0, -4.2, 1.4]
look_at = [0.0, 0.0, 1.2]
width = 32
height = 24
[[objects]]
type = "static_box"
name = "beam"
position = [0.0, 0.0, 2.3]
half_extents = [0.6, 0.08, 0.05]
[[objects]]
type = "box"
name = "bar"
position = [0.35, 0.0, 2.2]
half_extents = [0.35, 0.03, 0.03]
mass = { uniform = [0.5, 2.0] }
[[objects]]
type = "sphere"
name = "bob"
position = [0.7, 0.0, 1.8]
radius = 0.12
[[joints]]
type = "hinge"
a = "bar"
b = "beam"
anchor = [0.0, 0.0, 2.2]
axis = [0.0, 1.0, 0.0]
[[joints]]
type = "ball"
a = "bob"
b = "bar"
anchor = [0.7, 0.0, 2.2]
[[springs]]
a = "bob"
anchor_a = [0.7, 0.0, 1.68]
anchor_b = [0.7, 0.0, 0.0]
stiffness = { uniform = [1.0, 3.0] }
"""


def test_static_boxes_joints_and_springs_are_generated_and_labelled(tmp_path):
    from hybridsim.data import generate

    dist = tmp_path / "jointed.toml"
    dist.write_text(JOINTED)
    generate(dist, 1, tmp_path / "out", workers=1, progress=False, log=None)
    (sample,) = _decoded(tmp_path / "out", video=False)
    meta, states, layers = sample["json"], sample["states"], sample["layers"]
    assert list(states["body_objects"]) == [1, 2] and states["positions"].shape == (4, 2, 3)
    assert layers["object_poses"].shape == (4, 3, 7)
    beam = meta["objects"][0]
    assert beam["type"] == "static_box" and beam["body"] is None and beam["mass"] is None
    assert np.allclose(layers["object_poses"][:, 0], [0.0, 0.0, 2.3, 0.0, 0.0, 0.0, 1.0])  # it does not move
    assert [j["type"] for j in meta["joints"]] == ["hinge", "ball"]
    assert 1.0 <= meta["springs"][0]["stiffness"] <= 3.0 and meta["springs"][0]["a"] == "bob"


# --------------------------------------------------------------------------------------------
# Exact overlap geometry
# --------------------------------------------------------------------------------------------


def test_overlap_depths_match_brute_force():
    from hybridsim.data import overlap

    rng = np.random.default_rng(3)
    T = 100
    quats = rng.normal(size=(2, T, 4))
    rotations = overlap.quat_matrices(quats)
    p1, q1, p2, q2 = (rng.normal(size=(T, 3)) for _ in range(4))
    q2[:40] = p2[:40]  # a point (a sphere) against a segment
    s = np.linspace(0.0, 1.0, 201)
    a = p1[:, None] + (q1 - p1)[:, None] * s[None, :, None]
    b = p2[:, None] + (q2 - p2)[:, None] * s[None, :, None]
    brute = np.linalg.norm(a[:, :, None] - b[:, None, :], axis=-1).min((1, 2))
    exact = overlap._segment_distance(p1, q1, p2, q2)
    assert (exact <= brute + 1e-12).all() and (brute - exact).max() < 5e-3
    centre, half = rng.normal(size=(T, 3)) * 0.5, np.array([0.3, 0.2, 0.1])
    depth = overlap._box_segment_depth(centre, rotations[0], half, p1, q1, 0.1)
    sampled = np.stack([overlap._box_signed_distance(a[:, k], centre, rotations[0], half) for k in range(len(s))], 1)
    assert (depth >= 0.1 - sampled.min(1) - 1e-9).all() and (depth - (0.1 - sampled.min(1))).max() < 5e-3
    other = centre + rng.normal(size=(T, 3)) * 0.4
    sat = overlap._box_box_depth(centre, rotations[0], half, other, rotations[1], np.array([0.25, 0.15, 0.2]))
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 11)] * 3, indexing="ij"), -1).reshape(-1, 3) * half
    points = centre[:, None] + np.einsum("tij,pj->tpi", rotations[0], grid)
    inside = np.stack([overlap._box_signed_distance(points[:, k], other, rotations[1], np.array([0.25, 0.15, 0.2]))
                       for k in range(points.shape[1])], 1).min(1) < 0
    assert not (inside & (sat < 0)).any()  # a point of one box inside the other: SAT finds no separating axis
    assert 10 < (sat > 0).sum() < T


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------


def test_a_spawned_pool_gives_the_same_rigid_shards(reference, tmp_path):
    out, _ = reference
    pool = tmp_path / "pool"
    assert main(["generate", str(BOXES_RANDOM), "-o", str(pool), "--workers", "2", *JOB_ARGS]) == 0
    assert json.loads((pool / "summary.json").read_text())["executor"].startswith("local process pool")
    assert _shards(pool) == _shards(out)


@pytest.mark.slow
def test_ray_gives_the_same_rigid_shards(reference, tmp_path):
    pytest.importorskip("ray", reason='Ray is not installed (pip install "hybridsim[ray]")')
    out, _ = reference
    ray_out = tmp_path / "ray"
    assert main(["generate", str(BOXES_RANDOM), "-o", str(ray_out), "--workers", "2", "--ray", "local", *JOB_ARGS]) == 0
    assert json.loads((ray_out / "summary.json").read_text())["executor"] == "ray"
    assert _shards(ray_out) == _shards(out)
