"""scenes/smoke3d_random.toml draws static and translating obstacles, and `hybridsim generate` records
the obstacle velocity in the sample json."""

from __future__ import annotations

from pathlib import Path

from hybridsim.scene.distributions import load_distribution

SMOKE3D_RANDOM = Path(__file__).resolve().parent.parent / "scenes" / "smoke3d_random.toml"


def test_smoke3d_random_draws_static_and_moving_obstacles():
    dist = load_distribution(SMOKE3D_RANDOM)
    velocities = [s.fluid.obstacles[0].velocity for s in (dist.sample(0, i) for i in range(40)) if s.fluid.obstacles]
    assert all(len(v) == 3 for v in velocities)
    moving = [v for v in velocities if any(c != 0.0 for c in v)]
    assert moving and len(moving) < len(velocities)  # some static, some moving
    assert len({v for v in moving}) == len(moving)  # drawn afresh
    assert all(abs(v[0]) <= 0.1 and abs(v[1]) <= 0.1 and abs(v[2]) <= 0.05 for v in moving)


def test_generated_smoke3d_samples_record_the_obstacle_velocity(tmp_path):
    from hybridsim.cli import main
    from hybridsim.data import iter_samples

    # with seed 0, sample 2 draws a translating box
    assert main(["generate", str(SMOKE3D_RANDOM), "-o", str(tmp_path), "--count", "3", "--shard-size", "3",
                 "--frames", "2", "--seed", "0", "-q", "--workers", "1"]) == 0
    records = [s["json"] for s in iter_samples(tmp_path, video=False)]
    obstacles = [(meta, obstacle) for meta in records for obstacle in meta["fluid"]["obstacles"]]
    assert any(any(c != 0.0 for c in obstacle["velocity"]) for _, obstacle in obstacles)
    for meta, obstacle in obstacles:
        assert len(obstacle["velocity"]) == 3
        if meta["sampled"].get("fluid.obstacles[0].velocity#choice") == 1:
            assert obstacle["velocity"] == [meta["sampled"][f"fluid.obstacles[0].velocity[{k}]"] for k in range(3)]
