"""`hybridsim generate`: scene distributions, WebDataset shards, quality gates, determinism across
executors (in-process, spawn pool, Ray), and resuming after a real ``kill -9``."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from hybridsim.cli import main
from hybridsim.errors import HybridsimError, SceneError
from hybridsim.scene.distributions import load_distribution, parse_distribution, sample_scene

ROOT = Path(__file__).resolve().parent.parent
BOUNCE_RANDOM = ROOT / "scenes" / "bounce_random.toml"
ENTRIES = ("json", "mp4", "layers", "states")

# The shared small job: 4 samples of the shipped distribution, 8 frames, shards of 3.
JOB_ARGS = ["--count", "4", "--shard-size", "3", "--frames", "8", "--seed", "0", "-q"]


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*.tar"))}


def _decoded(out: Path, video: bool = True) -> list[dict]:
    from hybridsim.data import iter_samples

    return list(iter_samples(out, video=video))


def _assert_same_samples(a: list[dict], b: list[dict]) -> None:
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b]
    for x, y in zip(a, b):
        assert x["json"] == y["json"], x["__key__"]
        for group in ("layers", "states"):
            assert x[group].keys() == y[group].keys()
            for name in x[group]:
                assert x[group][name].dtype == y[group][name].dtype
                assert np.array_equal(x[group][name], y[group][name]), (x["__key__"], group, name)
        if "mp4" in x or "mp4" in y:
            assert np.array_equal(x["mp4"], y["mp4"]), x["__key__"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The shared job, generated once on a local pool of 2 spawned workers."""
    out = tmp_path_factory.mktemp("reference") / "out"
    start = time.perf_counter()
    assert main(["generate", str(BOUNCE_RANDOM), "-o", str(out), "--workers", "2", *JOB_ARGS]) == 0
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------

KINDS = """
name = "kinds"
[time]
frames = { randint = [3, 5] }
[camera]
look_at = [0.0, 0.0, 0.5]
[camera.orbit]
azimuth_deg = { uniform = [0.0, 360.0] }
elevation_deg = { uniform = [10.0, 40.0] }
distance = { loguniform = [3.0, 6.0] }
[light]
intensity = { normal = [0.7, 0.05], clip = [0.6, 0.8] }
sky_color = { choice = [[0.5, 0.6, 0.9], [0.9, 0.6, 0.5]] }
[[objects]]
type = "sphere"
position = [0.0, 0.0, 2.0]
radius = { uniform = [0.1, 0.3] }
[[spawn]]
count = { randint = [0, 2] }
name = "extra"
[spawn.template]
type = "sphere"
position = { uniform = [[-1.0, -1.0, 1.0], [1.0, 1.0, 2.0]] }
radius = 0.1
density = { loguniform = [100.0, 1000.0] }
color = [{ uniform = [0.0, 1.0] }, 0.5, { choice = [0.0, 1.0] }]
"""


def test_same_file_seed_and_index_give_the_same_scene():
    dist = parse_distribution(KINDS)
    first = sample_scene(KINDS, 7, 3)
    assert first == dist.sample(7, 3) == sample_scene(tomllib.loads(KINDS), 7, 3)  # text or parsed data
    assert first.to_toml() == sample_scene(KINDS, 7, 3).to_toml()
    assert first != dist.sample(7, 4)
    assert first != dist.sample(8, 3)
    assert first != dist.sample(7, 3, attempt=1)
    assert first.deterministic is True  # generated samples default to deterministic mode
    assert len({dist.sample(0, i).to_toml() for i in range(10)}) == 10


def test_draws_do_not_depend_on_python_hash_seed():
    code = ("import sys; from hybridsim.scene.distributions import sample_scene; "
            "sys.stdout.write(sample_scene(open(sys.argv[1]).read(), 3, 11).to_toml())")
    texts = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", code, str(BOUNCE_RANDOM)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        texts.add(run.stdout)
    assert len(texts) == 1
    assert texts.pop() == sample_scene(BOUNCE_RANDOM.read_text(), 3, 11).to_toml()


def test_every_distribution_kind_respects_its_bounds():
    dist = parse_distribution(KINDS)
    specs = [dist.sample(1, i) for i in range(300)]
    frames = [s.time.frames for s in specs]
    assert set(frames) == {3, 4, 5}  # randint: integers, both ends included
    intensity = np.array([s.light.intensity for s in specs])
    assert intensity.min() >= 0.6 and intensity.max() <= 0.8  # clip
    assert (intensity == 0.6).any() and (intensity == 0.8).any()  # std 0.05 reaches the clip bounds
    assert abs(np.median(intensity) - 0.7) < 0.01  # mean, not std, comes first
    assert {s.light.sky_color for s in specs} == {(0.5, 0.6, 0.9), (0.9, 0.6, 0.5)}  # whole-vector choice
    radius = np.array([s.objects[0].radius for s in specs])
    assert radius.min() >= 0.1 and radius.max() <= 0.3 and radius.max() - radius.min() > 0.15
    counts = [len(s.objects) - 1 for s in specs]
    assert set(counts) == {0, 1, 2}
    extras = [o for s in specs for o in s.objects[1:]]
    assert [o.name for o in specs[counts.index(2)].objects[1:]] == ["extra_0", "extra_1"]
    positions = np.array([o.position for o in extras])
    assert (positions.min(0) >= [-1, -1, 1]).all() and (positions.max(0) <= [1, 1, 2]).all()  # vector bounds
    density = np.array([o.density for o in extras])
    assert density.min() >= 100 and density.max() <= 1000
    assert np.median(np.log(density)) == pytest.approx(np.log(np.sqrt(100 * 1000)), abs=0.35)  # log-uniform
    assert {o.color[1] for o in extras} == {0.5} and {o.color[2] for o in extras} == {0.0, 1.0}
    for s in specs:  # orbit: the camera sits at the drawn distance and elevation around look_at
        offset = np.subtract(s.camera.position, s.camera.look_at)
        distance = np.linalg.norm(offset)
        assert 3.0 <= distance <= 6.0
        assert 10.0 - 1e-9 <= math.degrees(math.asin(offset[2] / distance)) <= 40.0 + 1e-9


def test_shipped_distribution_draws_one_to_four_balls():
    dist = load_distribution(BOUNCE_RANDOM)
    specs = [dist.sample(0, i) for i in range(40)]
    assert {len(s.objects) for s in specs} == {1, 2, 3, 4}
    assert all((s.camera.width, s.camera.height, s.frame_count) == (96, 72, 24) for s in specs)
    assert len({s.objects[0].restitution for s in specs}) == 40


BAD_TABLES = [
    ("radius = { uniform = [0.1] }", "objects[0].radius.uniform", "uniform must be [lo, hi]"),
    ("radius = { uniform = [0.3, 0.1] }", "objects[0].radius.uniform", "needs lo <= hi"),
    ("radius = { normal = [0.2, -1.0] }", "objects[0].radius.normal", "std >= 0"),
    ("radius = { loguniform = [0.0, 1.0] }", "objects[0].radius.loguniform", "lo > 0"),
    ("radius = { randint = [0.5, 2] }", "objects[0].radius.randint", "integer bounds"),
    ("radius = { choice = [] }", "objects[0].radius.choice", "non-empty array"),
    ("radius = { uniform = [0.1, 0.3], normal = [0.2, 0.1] }", "objects[0].radius", "one of uniform"),
    ("radius = { uniform = [0.1, 0.3], clip = [0.0, 1.0] }", "objects[0].radius.clip", "only normal takes clip"),
    ("radius = { normal = [0.2, 0.1], clip = [1.0] }", "objects[0].radius.clip", "clip must be [lo, hi]"),
    ("radius = { uniform = ['a', 1.0] }", "objects[0].radius.uniform", "finite numbers"),
    ("radius = { uniform = [-0.3, -0.1] }", "objects[0].radius", "must be > 0 (got -0."),  # the drawn value
]


@pytest.mark.parametrize("line,field,fragment", BAD_TABLES, ids=[case[1] + "-" + str(i) for i, case in enumerate(BAD_TABLES)])
def test_bad_distribution_tables_name_file_field_and_line(tmp_path, line, field, fragment):
    text = KINDS.replace("radius = { uniform = [0.1, 0.3] }", line)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SceneError) as info:
        load_distribution(path).sample(0, 0)
    error = info.value
    assert error.file == str(path) and error.field == field, str(error)
    assert fragment in str(error)
    assert error.line == text[: text.index(line)].count("\n") + 1, str(error)
    assert "\n" not in str(error)


def test_bad_spawn_and_orbit_tables_name_their_fields():
    cases = [
        (KINDS.replace("[spawn.template]", "[spawn.templat]"), "spawn[0].templat", "unknown field"),
        (KINDS.replace("count = { randint = [0, 2] }", "count = { uniform = [0.0, 2.0] }"), "spawn[0].count",
         "count must be an integer"),
        (KINDS.replace("distance = { loguniform = [3.0, 6.0] }", ""), "camera.orbit.distance", "required field"),
        (KINDS.replace("look_at = [0.0, 0.0, 0.5]", "look_at = [0.0, 0.0, 0.5]\nposition = [0.0, -4.0, 1.0]"),
         "camera.orbit", "not both"),
        (KINDS.replace("density = { loguniform = [100.0, 1000.0] }", "density = { uniform = [-2.0, -1.0] }"),
         "spawn[0].template.density", "must be > 0"),
    ]
    for text, field, fragment in cases:
        with pytest.raises(SceneError) as info:
            dist = parse_distribution(text, source="kinds.toml")
            for index in range(20):  # some draws spawn no object
                dist.sample(0, index)
        assert info.value.field == field and fragment in str(info.value), str(info.value)
        assert str(info.value).startswith("kinds.toml:")


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def test_generate_writes_readable_shards_with_every_entry(reference):
    out, _ = reference
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    assert not (out / ".staging").exists() and not list(out.glob("*.partial"))
    samples = _decoded(out)
    assert [s["__key__"] for s in samples] == [f"sample-{i:07d}" for i in range(4)]
    for sample in samples:
        assert set(ENTRIES) <= set(sample)
        meta, layers, states = sample["json"], sample["layers"], sample["states"]
        T, H, W = 9, 72, 96  # 8 frames after the initial one
        count = len(meta["objects"])
        assert 1 <= count <= 4
        assert sample["mp4"].shape == (T, H, W, 3) and sample["mp4"].dtype == np.uint8
        assert layers["depth"].shape == (T, H, W) and layers["depth"].dtype == np.float32
        assert layers["normal"].shape == (T, H, W, 3) and layers["alpha"].shape == (T, H, W)
        assert layers["segmentation"].shape == (T, H, W) and layers["segmentation"].max() <= count
        for direction in ("forward", "backward"):
            assert layers[f"flow_{direction}"].shape == (T, H, W, 2)
            assert layers[f"occlusion_{direction}"].shape == (T, H, W) and layers[f"occlusion_{direction}"].dtype == bool
        assert layers["intrinsics"].shape == (T, 3, 3) and layers["extrinsics"].shape == (T, 4, 4)
        assert layers["object_poses"].shape == (T, count, 7)
        assert states["positions"].shape == (T, count, 3) and states["velocities"].shape == (T, count, 3)
        assert states["times"].shape == (T,)
        # the labels in the json are the ones the states were simulated with
        for k, obj in enumerate(meta["objects"]):
            assert obj["segmentation_id"] == k + 1
            assert obj["mass"] == states["mass"][k] and obj["radius"] == states["radius"][k]
            assert obj["restitution"] == states["restitution"][k]
            assert np.allclose(obj["initial_position"], states["positions"][0, k], atol=1e-6)
            assert np.allclose(obj["initial_velocity"], states["velocities"][0, k], atol=1e-6)
        assert np.array_equal(layers["object_poses"][..., :3], states["positions"].astype(np.float64))
        # one quaternion order in every sample: x, y, z, w (identity (0, 0, 0, 1)), as rigid samples
        assert (layers["object_poses"][..., 3:6] == 0).all() and (layers["object_poses"][..., 6] == 1).all()
        assert meta["quaternion_order"] == "x, y, z, w" and meta["simulator"] == "spheres"
        # the resolved scene in the json is the one simulated, and it is the seeded draw
        expected = sample_scene(BOUNCE_RANDOM.read_text(), 0, meta["index"], attempt=meta["attempt"], frames=8)
        assert meta["scene_toml"] == expected.to_toml()
        assert meta["quality"]["passed"] and set(meta["versions"]) >= {"hybridsim", "torch", "warp", "taichi"}
        assert np.allclose(layers["intrinsics"][0], meta["camera"]["intrinsics"])
        assert meta["fps"] == 24.0 and np.allclose(np.diff(states["times"]), 1 / 24)
        # the rgb video shows the spheres where the segmentation says (a few grey levels of codec loss)
        sky = layers["segmentation"] == 0
        assert sky.any() and (~sky).any()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["keys"] for s in manifest["shards"]] == [[f"sample-{i:07d}" for i in range(3)], ["sample-0000003"]]
    assert manifest["count"] == 4 and manifest["rejected_count"] == len(manifest["rejected"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated"] == 4 and summary["workers"] == 2 and summary["samples_per_s"] > 0
    assert summary["executor"].startswith("local process pool")


def test_one_worker_in_process_gives_the_same_bytes_as_two(reference, tmp_path):
    out, _ = reference
    single = tmp_path / "single"
    assert main(["generate", str(BOUNCE_RANDOM), "-o", str(single), "--workers", "1", *JOB_ARGS]) == 0
    assert json.loads((single / "summary.json").read_text())["executor"] == "in-process"
    _assert_same_samples(_decoded(single), _decoded(out))
    assert _shards(single) == _shards(out)  # byte-identical shards
    assert (single / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    # the same command again is a no-op resume
    assert main(["generate", str(BOUNCE_RANDOM), "-o", str(single), "--workers", "1", *JOB_ARGS]) == 0
    assert json.loads((single / "summary.json").read_text())["resumed"] == 4
    assert _shards(single) == _shards(out)


def test_a_different_job_on_the_same_folder_is_refused(reference, tmp_path, capsys):
    out, _ = reference
    args = ["generate", str(BOUNCE_RANDOM), "-o", str(out), "--workers", "1", *JOB_ARGS]
    assert main([*args, "--seed", "1"]) == 2
    assert "seed was 0, now 1" in capsys.readouterr().err
    (tmp_path / "junk.txt").write_text("x")
    assert main(["generate", str(BOUNCE_RANDOM), "-o", str(tmp_path), *JOB_ARGS]) == 2
    assert "not empty" in capsys.readouterr().err


GATED = """
name = "gated"
[time]
fps = 24
frames = 3
substeps = 4
[camera]
position = [0.0, -4.0, 1.0]
look_at = [0.0, 0.0, 0.5]
width = 32
height = 24
[[objects]]
type = "sphere"
radius = 0.3
position = { choice = [[0.0, 0.0, 0.1], [0.0, 0.0, 1.5], [0.0, 0.0, 1.2]] }
velocity = { choice = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1e39]] }
"""


def _expected_gate(spec) -> str | None:
    sphere = spec.objects[0]
    if sphere.velocity[2] > 1e38:
        return "non_finite"  # inf in float32: the rollout stops with a non-finite state
    if sphere.position[2] < sphere.radius:
        return "penetration"  # starts inside the ground
    return None


def test_quality_gates_reject_and_count_reproducibly(tmp_path):
    from hybridsim.data import generate

    dist = tmp_path / "gated.toml"
    dist.write_text(GATED)
    summary = generate(dist, 6, tmp_path / "out", workers=1, shard_size=4, seed=5, progress=False, log=None)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    expected = []
    for index in range(6):  # replay the draws: every rejected attempt, then the accepted one
        attempt = 0
        while (gate := _expected_gate(sample_scene(GATED, 5, index, attempt=attempt))) is not None:
            expected.append((f"sample-{index:07d}", attempt, gate))
            attempt += 1
    assert [(r["key"], r["attempt"], r["gates"][0]) for r in manifest["rejected"]] == expected
    assert {gate for *_, gate in expected} == {"non_finite", "penetration"}
    assert manifest["rejected_count"] == summary["rejected_count"] == len(expected)
    by_gate = manifest["rejected_by_gate"]  # a draw counts under every gate it fails
    assert {g: by_gate[g] for g in ("non_finite", "penetration")} == {
        g: sum(e[2] == g for e in expected) for g in ("non_finite", "penetration")}
    assert set(by_gate) <= {"non_finite", "penetration", "energy_gain"}  # a ground clamp also adds energy
    for sample in _decoded(tmp_path / "out", video=False):
        assert sample["states"]["positions"][0, 0, 2] > 1.0  # only clean draws were kept
        assert len(sample["json"]["rejected_attempts"]) == sum(e[0] == sample["__key__"] for e in expected)


def test_in_frame_gate_and_hopeless_distributions(tmp_path):
    from hybridsim.data import QualityGates, generate

    away = GATED.replace("position = { choice = [[0.0, 0.0, 0.1], [0.0, 0.0, 1.5], [0.0, 0.0, 1.2]] }",
                         "position = { choice = [[0.0, 0.0, 1.0], [0.0, 0.0, 1.1]] }")
    away = away.replace("velocity = { choice = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1e39]] }",
                        "velocity = { choice = [[0.0, 0.0, 0.0], [40.0, 0.0, 0.0]] }")  # leaves the image fast
    dist = tmp_path / "away.toml"
    dist.write_text(away)
    generate(dist, 2, tmp_path / "a", workers=1, progress=False, log=None,
             gates=QualityGates(require_in_frame=True))
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["rejected_count"] > 0 and set(manifest["rejected_by_gate"]) == {"out_of_frame"}
    for sample in _decoded(tmp_path / "a", video=False):
        assert sample["states"]["velocities"][0, 0, 0] == 0.0
    # without the flag the same draws are kept
    generate(dist, 2, tmp_path / "b", workers=1, progress=False, log=None)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["rejected_count"] == 0

    hopeless = tmp_path / "hopeless.toml"
    hopeless.write_text(GATED.replace("[0.0, 0.0, 1.5], [0.0, 0.0, 1.2]", "[0.0, 0.0, 0.2], [0.0, 0.0, 0.25]"))
    with pytest.raises(HybridsimError, match="all 3 draws of sample 0 were rejected"):
        generate(hopeless, 1, tmp_path / "c", workers=1, max_attempts=3, progress=False, log=None)


# --------------------------------------------------------------------------------------------
# Crash safety
# --------------------------------------------------------------------------------------------


def _generate_process(out: Path, workers: int, extra=JOB_ARGS) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hybridsim.cli", "generate", str(BOUNCE_RANDOM), "-o", str(out),
           "--workers", str(workers), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _done_samples(out: Path, count: int = 4, shard_size: int = 3) -> int:
    """Samples staged or in finished shards."""
    staged = list((out / ".staging").glob("*/sample-*.tar")) if (out / ".staging").is_dir() else []
    shards = [int(p.name[6:12]) for p in out.glob("shard-*.tar")]
    return len(staged) + sum(min(shard_size, count - shard * shard_size) for shard in shards)


def test_kill_9_mid_run_then_rerun_gives_the_uninterrupted_shards(reference, tmp_path):
    out, _ = reference
    resumed = tmp_path / "resumed"
    process = _generate_process(resumed, workers=1)
    deadline = time.monotonic() + 90
    while _done_samples(resumed) < 1 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.2))  # a random moment after the first sample is safe
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()  # killed, not finished
    done_before = _done_samples(resumed)
    assert done_before >= 1
    assert main(["generate", str(BOUNCE_RANDOM), "-o", str(resumed), "--workers", "1", *JOB_ARGS]) == 0
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed"] == done_before and summary["generated"] == 4 - done_before
    assert _shards(resumed) == _shards(out)
    assert (resumed / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert not (resumed / ".staging").exists() and not list(resumed.glob("*.partial"))


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_many_kills_of_a_worker_pool_lose_and_duplicate_nothing(tmp_path):
    # enough samples that the job cannot finish between kills, however warm the caches are
    args = ["--count", "120", "--shard-size", "4", "--frames", "6", "--seed", "3", "-q"]
    clean = tmp_path / "clean"
    assert main(["generate", str(BOUNCE_RANDOM), "-o", str(clean), "--workers", "2", *args]) == 0
    out = tmp_path / "killed"
    rng = random.Random()
    kills, pools_seen = 0, 0
    done_before = 0
    for _ in range(20):
        process = _generate_process(out, workers=2, extra=args)
        # kill at a random moment after this run has made progress (a sample more than before)
        deadline = time.monotonic() + 120
        while (_done_samples(out, 120, 4) <= done_before and process.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is not None:
            break
        done_before = _done_samples(out, 120, 4)
        workers = {pid for pid in _children(process.pid) if "spawn_main" in _cmdline(pid)}
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        kills += 1
        pools_seen += bool(workers)
        deadline = time.monotonic() + 5  # pool workers notice their parent is gone and leave
        while any("spawn_main" in _cmdline(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any("spawn_main" in _cmdline(pid) for pid in workers), "orphaned pool workers"
    assert kills >= 15 and pools_seen >= 1
    resumable = _done_samples(out, 120, 4)
    assert resumable >= kills  # every killed run left at least one finished sample behind
    assert main(["generate", str(BOUNCE_RANDOM), "-o", str(out), "--workers", "2", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == resumable and summary["resumed"] + summary["generated"] == 120
    assert _shards(out) == _shards(clean)
    _assert_same_samples(_decoded(out), _decoded(clean))
    print(f"generate: {kills} kills, {resumable} samples kept across them, 120 samples in the end, "
          "none lost or duplicated")


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------


def test_ray_local_head_gives_the_same_samples(reference, tmp_path):
    pytest.importorskip("ray", reason='Ray is not installed (pip install "hybridsim[ray]")')
    from hybridsim.data import generate

    out, _ = reference
    ray_out = tmp_path / "ray"
    summary = generate(BOUNCE_RANDOM, 2, ray_out, workers=2, ray="local", shard_size=3, frames=8, seed=0,
                       progress=False, log=None)
    assert summary["executor"] == "ray" and "127.0.0.1" in summary["ray"]
    ray_samples = _decoded(ray_out)
    local_samples = _decoded(out)[:2]
    _assert_same_samples(ray_samples, local_samples)
    from hybridsim.data.reader import iter_samples

    raw_ray = list(iter_samples(ray_out, decode=False))
    raw_local = list(iter_samples(out, decode=False))[:2]
    for a, b in zip(raw_ray, raw_local):  # byte-identical entries
        assert {k: v for k, v in a.items() if k != "__shard__"} == {k: v for k, v in b.items() if k != "__shard__"}
