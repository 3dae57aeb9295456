"""Hardening: simulation blow-ups are caught within a frame (named frame, substep, object,
quantity, fix), render keeps the good frames as OUT.partial.* and exits 1, and scenes too large
for memory are refused before allocation (hybridsim.sim.guards, hybridsim.sim.resources)."""

import pickle
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsim.cli import main
from hybridsim.errors import ResourceError, SimulationError
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim import resources
from hybridsim.sim.fluid import fluid_rollout
from hybridsim.sim.rigid import rigid_rollout
from hybridsim.sim.rollout import rollout
from hybridsim.sim.world import World

CAMERA = """
[camera]
position = [0.0, -5.0, 1.0]
look_at = [0.0, 0.0, 0.5]
width = 32
height = 24
"""

# a sphere so fast that its position overflows float32 after ~1.1 s
FAST_SPHERE = """
name = "fast"
[time]
fps = 30
frames = 40
substeps = 8
""" + CAMERA + """
[[objects]]
type = "sphere"
name = "ball"
position = [0.0, 0.0, 1.0]
velocity = [3e38, 0.0, 0.0]
radius = 0.2
"""

# five boxes stacked, the top one heavy, stepped with dt = 0.5 s: the stack is driven into the ground
STACK = """
name = "stack"
[time]
fps = 2
frames = 6
substeps = 1
""" + CAMERA + "".join(f"""
[[objects]]
type = "box"
name = "b{i}"
position = [0.0, 0.0, {0.1 + 0.2 * i:.2f}]
half_extents = [0.1, 0.1, 0.1]
mass = {100 if i == 4 else 1}
""" for i in range(5))

# strong buoyancy and one substep per frame: the CFL number doubles every frame (1, 3, 6, 13, ...)
HOT_PLUME = """
name = "hot_plume"
[time]
fps = 30
frames = {frames}
substeps = 1
[camera]
position = [0.12, -2.0, 0.16]
look_at = [0.12, 0.0, 0.16]
projection = "orthographic"
ortho_height = 0.32
width = 12
height = 16
[fluid]
cells = [{nx}, 16]
cell_size = 0.02
buoyancy = 40.0
[[fluid.inflows]]
center = [0.12, 0.06]
radius = 0.04
rate = 30.0
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    monkeypatch.delenv(resources.ENV_LIMIT, raising=False)


# ------------------------------------------------------------------------------------------ blow-ups
def test_sphere_overflow_names_frame_substep_object_and_keeps_good_frames(tmp_path):
    world = World(load_scene(_write(tmp_path, "fast.toml", FAST_SPHERE)))
    with torch.no_grad(), pytest.raises(SimulationError) as info:
        rollout(world)
    error = info.value
    message = str(error)
    assert "fast.toml" in message and "frame 35, substep 1 of 8" in message and "step 273" in message
    assert "objects[0] (sphere 'ball'): position is inf" in message and "substeps" in message
    assert error.frame == 35 and error.substep == 1 and error.step == 273 and error.quantity == "position"
    # detected in the first bad frame: frames 0..34 are finite, frame 35 is not
    assert error.partial.positions.shape == (35, 1, 1, 3) and bool(torch.isfinite(error.partial.positions).all())
    with torch.no_grad():
        unchecked = rollout(world, check_finite=False)
    assert not bool(torch.isfinite(unchecked.positions[35]).all())
    # the partial trajectory does not travel through pickling (process pools)
    clone = pickle.loads(pickle.dumps(error))
    assert clone.partial is None and clone.frame == 35 and str(clone) == message


def test_sphere_guard_energy_and_ground_penetration(sphere_scene):
    from hybridsim.sim.guards import SphereGuard

    world = World(sphere_scene(height=1.0, learn_params=False))
    model = world.model()
    state = world.initial_state()
    guard = SphereGuard(world, model, state.sphere_position, state.sphere_velocity)
    x, v = state.sphere_position.clone(), state.sphere_velocity.clone()
    assert guard.first_violation(x, v) is None
    fast = v.clone()
    fast[0, 0] = 200.0  # 2e4 J/kg from nothing
    found = guard.first_violation(torch.stack([x, x]), torch.stack([v, fast]))
    assert found.quantity == "energy" and found.offset == 1 and "objects[0] (sphere 'ball')" in found.object
    sunk = x.clone()
    sunk[0, 2] = 0.05  # radius 0.2: 0.15 m into the ground
    found = guard.first_violation(sunk, v)
    assert found.quantity == "penetration" and "0.15 m into the ground > 0.5 x radius" in found.detail
    # with external input (a motion prior) energy may grow
    pushed = SphereGuard(world, model, state.sphere_position, state.sphere_velocity, external_input=True)
    assert pushed.first_violation(x, fast) is None


def test_rigid_stack_driven_into_the_ground_is_caught_in_frame_one(tmp_path):
    world = World(load_scene(_write(tmp_path, "stack.toml", STACK)))
    with torch.no_grad(), pytest.raises(SimulationError) as info:
        rigid_rollout(world)
    error = info.value
    message = str(error)
    assert "frame 1, substep 1 of 1" in message and "(box 'b" in message and "into the ground" in message
    assert error.quantity == "penetration" and "raise [time] substeps from 1 to 4" in message
    assert error.partial.positions.shape == (1, 5, 3) and error.partial.body_objects == (0, 1, 2, 3, 4)


def test_rigid_stiff_spring_energy_blow_up_and_shipped_scene_passes():
    from hybridsim.sim.guards import RigidGuard
    from hybridsim.solvers.rigid import RigidBuilder, SolverRigid

    builder = RigidBuilder(gravity=(0.0, 0.0, 0.0), ground=False)
    a = builder.add_body(position=(0.0, 0.0, 0.0), mass=1.0)
    builder.add_shape_sphere(a, 0.1)
    b = builder.add_body(position=(1.0, 0.0, 0.0), mass=1.0)
    builder.add_shape_sphere(b, 0.1)
    builder.add_spring(a, b, stiffness=1e4, rest_length=0.8)
    model = builder.finalize(dtype=torch.float64)
    solver, state = SolverRigid(model, backend="warp"), model.state()
    guard = RigidGuard(model, state, substeps=1, body_names=["objects[0] (sphere 'a')", "objects[1] (sphere 'b')"])
    found = None
    with torch.no_grad():
        for step in range(1, 6):
            state = solver.step_differentiable(state, None, 0.05)  # k dt^2 / m = 25: explicit spring explodes
            found = guard.check(state)
            if found:
                break
    assert found is not None and found.quantity == "energy" and step <= 3
    assert "energy grew by" in found.detail and "(sphere '" in found.object
    # a shipped scene with resting contacts, a step and tumbling boxes raises nothing
    with torch.no_grad():
        trajectory = rigid_rollout(World(load_scene("scenes/boxes.toml")), frames=30)
    assert trajectory.positions.shape[0] == 31


def test_fluid_cfl_caught_at_the_first_frame_over_the_limit(tmp_path):
    world = World(load_scene(_write(tmp_path, "hot.toml", HOT_PLUME.format(frames=30, nx=12))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the solver's own CFL > 1 warning
        with torch.no_grad(), pytest.raises(SimulationError) as info:
            fluid_rollout(world)
        with torch.no_grad():
            unchecked = fluid_rollout(world, frames=3, check=False)
    error = info.value
    assert error.frame == 3 and "fluid (grid 12x16): CFL number" in str(error) and "> 5" in str(error)
    assert "raise [time] substeps from 1 to at least 2" in str(error)
    assert error.partial.density.shape == (3, 12, 16)
    dt_dx = world.spec.dt / world.spec.fluid.cell_size
    cfl = [float(torch.maximum(unchecked.velocity_x[f].abs().max(), unchecked.velocity_y[f].abs().max())) * dt_dx
           for f in range(4)]
    assert cfl[2] <= 5.0 < cfl[3]  # latency 0: the first frame over the limit is the one named


def test_mpm_guard_flags_particle_cfl():
    from hybridsim.sim.guards import MPMGuard
    from hybridsim.solvers.mpm import MPMBuilder, SolverMPM, rollout_mpm

    builder = MPMBuilder(dim=2, resolution=32, wall_mode="separate")
    jelly = builder.add_material("elastic", youngs_modulus=1e4, poisson_ratio=0.3)
    builder.add_box((0.4, 0.4), (0.6, 0.6), material=jelly)
    model = builder.finalize(dtype=torch.float32)
    model.particle_velocity[:, 1] = -5.0  # 5 m/s x dt / dx = 1.3 cells per substep
    guard = MPMGuard(model, dt=1 / 120, substeps=4)
    with torch.no_grad(), pytest.raises(SimulationError) as info:
        rollout_mpm(SolverMPM(model, backend="warp"), frames=5, substeps=4, dt=1 / 120, control=guard.control(),
                    warn_dt=False)
    assert info.value.frame == 1 and "particle CFL number" in str(info.value) and "mpm.substeps" in str(info.value)
    assert info.value.partial[0].shape == (1, model.particle_count, 2)


# ------------------------------------------------------------------------------------------ CLI partial outputs
def test_render_blow_up_keeps_partial_outputs_and_exits_1(tmp_path, capsys):
    scene = _write(tmp_path, "fast.toml", FAST_SPHERE)
    out = tmp_path / "out" / "fast.mp4"
    assert main(["render", str(scene), "-q", "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    partial = tmp_path / "out" / "fast.partial.mp4"
    assert "frame 35" in err and str(partial) in err and "kept frames 0-34" in err
    assert not out.exists() and partial.is_file()
    from hybridsim.render import read_frames

    rgb, _ = read_frames(partial)
    assert rgb.shape[0] == 35
    with np.load(partial.with_suffix(".layers.npz")) as layers:
        assert layers["depth"].shape == (35, 24, 32)
    with np.load(partial.with_suffix(".states.npz")) as states:
        assert states["positions"].shape == (35, 1, 1, 3)
    # a good run to the same output removes the stale partial files
    scene.write_text(FAST_SPHERE.replace("3e38", "1.0").replace("frames = 40", "frames = 3"))
    assert main(["render", str(scene), "-q", "-o", str(out)]) == 0
    assert out.is_file() and not partial.exists() and not partial.with_suffix(".states.npz").exists()


def test_render_fluid_blow_up_keeps_grid_states(tmp_path, capsys):
    scene = _write(tmp_path, "hot.toml", HOT_PLUME.format(frames=30, nx=12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(["render", str(scene), "-q", "-o", str(tmp_path / "hot.mp4")]) == 1
    err = capsys.readouterr().err
    assert "CFL number" in err and "hot.partial.mp4" in err and "kept frames 0-2" in err
    with np.load(tmp_path / "hot.partial.states.npz") as states:
        assert states["density"].shape == (3, 12, 16) and states["velocity_x"].shape == (3, 13, 16)


# ------------------------------------------------------------------------------------------ memory
def _rss() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_huge_fluid_grid_is_refused_quickly_without_allocating():
    spec = parse_scene(HOT_PLUME.format(frames=600, nx=4096).replace("cells = [4096, 16]", "cells = [4096, 4096]"),
                       source="huge.toml")
    rss = _rss()
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(ResourceError) as info:
        World(spec)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 1 << 20 and _rss() - rss < 16 << 20
    message = str(info.value)
    assert message.startswith("huge.toml: fluid.cells: fluid grid 4096x4096 with 600 frames needs ~")
    assert "GiB" in message and "of available memory" in message and "reduce cells or frames" in message
    assert resources.ENV_LIMIT in message


def test_shipped_scenes_pass_and_estimates_are_modest():
    for name in ("bounce.toml", "boxes.toml", "plume2d.toml"):
        spec = load_scene(f"scenes/{name}")
        World(spec)
        estimate = resources.check_scene_memory(spec, render=True, grad=True)
        assert 0 < estimate.total < 2 << 30, (name, estimate.breakdown())


def test_memory_limit_env_override(monkeypatch):
    spec = load_scene("scenes/plume2d.toml")
    monkeypatch.setenv(resources.ENV_LIMIT, "1MiB")
    with pytest.raises(ResourceError, match=r"the limit is 1 MiB \(HYBRIDSIM_MEMORY_LIMIT=1MiB\)"):
        World(spec)
    monkeypatch.setenv(resources.ENV_LIMIT, "off")
    World(spec)
    monkeypatch.setenv(resources.ENV_LIMIT, "lots")
    with pytest.raises(ResourceError, match="cannot read the size 'lots'"):
        World(spec)
    assert resources.parse_size("4GiB") == 4 << 30 and resources.parse_size("512MB") == 512_000_000
    assert resources.parse_size("2e9") == 2_000_000_000
    available, _ = resources.available_memory()
    assert 0 < available < 1 << 50
    monkeypatch.setenv(resources.ENV_LIMIT, "50%")
    limit, how = resources.memory_limit()
    assert 0 < limit <= available and "50%" in how


def test_render_buffers_are_refused_by_the_cli(tmp_path, capsys):
    scene = _write(tmp_path, "wide.toml", FAST_SPHERE.replace("velocity = [3e38, 0.0, 0.0]", "")
                   .replace("width = 32", "width = 8192").replace("height = 24", "height = 8192"))
    start = time.perf_counter()
    assert main(["render", str(scene), "-q", "--frames", "2000", "-o", str(tmp_path / "wide.mp4")]) == 2
    assert time.perf_counter() - start < 2.0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "rendered at 8192x8192" in err and "reduce the image size" in err
    assert not (tmp_path / "wide.mp4").exists()
    estimate = resources.estimate_scene(load_scene(scene), frames=2000, render=True)
    assert estimate.field == "camera" and estimate.total > 1 << 40


def test_grad_rollout_tape_is_part_of_the_estimate():
    spec = load_scene("scenes/plume2d.toml")
    plain = resources.estimate_scene(spec)
    taped = resources.estimate_scene(spec, grad=True)
    assert taped.total > plain.total and "autograd tape" in taped.breakdown()


def test_mpm_table_particle_count_is_estimated():
    from hybridsim.scene.schema import SceneSpec

    if "mpm" not in SceneSpec.model_fields:
        pytest.skip("no [mpm] table in this schema")
    text = """
name = "sand"
[time]
fps = 30
frames = 5000
""" + CAMERA + """
[mpm]
dim = 2
resolution = 2048
size = 1.0
[[mpm.materials]]
name = "jelly"
kind = "elastic"
youngs_modulus = 1e4
[[mpm.bodies]]
shape = "box"
material = "jelly"
center = [0.5, 0.5]
half_size = [0.45, 0.45]
particles_per_cell = 1
"""
    spec = parse_scene(text, source="sand.toml")
    estimate = resources.estimate_scene(spec)
    assert "MPM with 33" in estimate.subject and "2048x2048 grid" in estimate.subject
    with pytest.raises(ResourceError, match="sand.toml: mpm.bodies: MPM with 33"):
        World(spec)


def test_mpm_scene_blow_up_names_the_frame_and_keeps_the_good_frames(tmp_path):
    """An [mpm] scene whose explicit substeps break the particle CFL bound: caught at a frame
    boundary by MPMGuard, with the frames before it kept."""
    import torch

    from hybridsim.errors import SimulationError
    from hybridsim.scene import parse_scene
    from hybridsim.sim.mpm import mpm_rollout
    from hybridsim.sim.world import World

    text = (Path(__file__).resolve().parent.parent / "scenes" / "dam_break.toml").read_text()
    spec = parse_scene(text.replace("\n[mpm]\n", "\n[mpm]\nsubsteps = 1\n", 1))
    with torch.no_grad(), pytest.warns(UserWarning), pytest.raises(SimulationError) as info:
        mpm_rollout(World(spec), frames=20)
    error = info.value
    assert error.frame is not None and error.frame >= 1
    assert "CFL" in str(error) or "nan" in str(error) or "left the grid" in str(error)
    assert error.partial is not None and error.partial.positions.shape[0] == error.frame
