"""Physics plausibility metrics for every simulator (``hybridsim.metrics.physics``): a physically
correct rollout passes, and a deliberately corrupted copy of it (energy or momentum injected, a body
pushed into the ground or another body, a divergent velocity field, density or particles lost, an
inverted deformation gradient) is caught with the magnitude that was put in. Ends with
``hybridsim metrics`` on rendered rigid and fluid scenes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from hybridsim.metrics import fluid_physics_metrics, mpm_physics_metrics, rigid_physics_metrics, scene_physics_metrics

G = 9.81

RIGID_SCENE = """
name = "toss"
backend = "warp"
device = "cpu"
precision = "float64"
[time]
fps = 30
frames = {frames}
substeps = 8
[camera]
position = [0.5, -4.0, 0.8]
look_at = [0.5, 0.0, 0.5]
width = 32
height = 24
[ground]
friction = 0.5
restitution = 0.0
[[objects]]                    # tumbles through the air, lands in frame 21
type = "box"
name = "tumbler"
position = [0.0, 0.0, 1.0]
half_extents = [0.2, 0.15, 0.05]
velocity = [0.5, 0.0, 2.0]
angular_velocity = [3.0, 2.0, 5.0]
mass = 1.0
[[objects]]                    # slides to rest on the ground
type = "box"
name = "crate"
position = [1.0, 0.0, 0.1]
half_extents = [0.1, 0.1, 0.1]
velocity = [1.0, 0.0, 0.0]
mass = 2.0
"""

FLUID_SCENE = """
name = "puff"
backend = "warp"
device = "cpu"
precision = "{precision}"
[time]
fps = 30
frames = {frames}
substeps = 2
[camera]
position = [0.25, -3.0, 0.25]
look_at = [0.25, 0.0, 0.25]
up = [0.0, 0.0, 1.0]
projection = "orthographic"
ortho_height = 0.5
width = 20
height = 20
[fluid]
cells = [20, 20]
cell_size = 0.025
boundary = "wall"
buoyancy = 2.0
vorticity = 0.2
density_advection = "conservative"
[[fluid.inflows]]
shape = "disc"
center = [0.25, 0.08]
radius = 0.05
rate = 3.0
[[fluid.obstacles]]
shape = "disc"
center = [0.3, 0.3]
radius = 0.05
"""

MPM_SCENE = """
name = "drop"
backend = "warp"
device = "cpu"
precision = "float64"
gravity = [0.0, 0.0, -9.81]
[time]
fps = 30
frames = 8
[camera]
position = [0.0, -3.0, 0.5]
look_at = [0.0, 0.0, 0.5]
up = [0.0, 0.0, 1.0]
projection = "orthographic"
ortho_height = 1.0
width = 24
height = 24
[mpm]
dim = 2
resolution = [25, 31]          # dx = 1.2 / 24 = 0.05 m, 1.5 m tall
size = 1.2
origin = [-0.6, 0.0]
boundary_cells = 3
[[mpm.materials]]
name = "jelly"
kind = "elastic"
youngs_modulus = 4e3
poisson_ratio = 0.3
density = 1000.0
[[mpm.bodies]]
name = "block"
material = "jelly"
center = [0.0, 0.9]
half_size = [0.1, 0.1]
velocity = [0.3, 0.5]
"""


def _spec(tmp_path, name, text):
    from hybridsim.scene.loader import load_scene

    path = tmp_path / name
    path.write_text(text)
    return load_scene(path), path


# ------------------------------------------------------------------------------------------ rigid
@pytest.fixture(scope="module")
def rigid(tmp_path_factory):
    from hybridsim.sim.rigid import rigid_rollout
    from hybridsim.sim.world import World

    spec, _ = _spec(tmp_path_factory.mktemp("rigid"), "toss.toml", RIGID_SCENE.format(frames=24))
    with torch.no_grad():
        return rigid_rollout(World(spec))


def _rigid_metrics(trajectory, **changes):
    states = {"positions": trajectory.positions, "orientations": trajectory.orientations,
              "velocities": trajectory.velocities, "angular_velocities": trajectory.angular_velocities}
    states = {key: changes.get(key, value) for key, value in states.items()}
    return rigid_physics_metrics(trajectory.model, **states, times=trajectory.times)


def test_rigid_rollout_conserves_what_it_should(rigid):
    metrics = _rigid_metrics(rigid)
    # frame 0 by hand: translational + rotational (box inertia m/3 (b^2 + c^2), ...) + m g z
    a, b, c = 0.2, 0.15, 0.05
    inertia = np.array([b * b + c * c, a * a + c * c, a * a + b * b]) / 3.0
    tumbler = 0.5 * (0.25 + 4.0) + 0.5 * float(inertia @ np.array([9.0, 4.0, 25.0])) + G * 1.0
    crate = 0.5 * 2.0 * 1.0 + 2.0 * G * 0.1
    assert metrics["energy_j"][0] == pytest.approx(tumbler + crate, rel=1e-12)
    # friction and an inelastic landing only take energy out
    assert metrics["energy_gain_j"] == 0.0 and metrics["energy_step_gain_j"] < 1e-6
    assert metrics["energy_drift_j"] < -10.0 and metrics["energy_j"][-1] == pytest.approx(
        0.5 * float(rigid.velocities[-1, 0] @ rigid.velocities[-1, 0]) + 2.0 * G * 0.1
        + G * float(rigid.positions[-1, 0, 2]), abs=0.5)
    assert metrics["max_penetration_m"] < 1e-3
    # the tumbler flies from frame 0 to about 20; the crate touches the ground throughout
    assert 15 <= metrics["flight_intervals"] <= 21
    assert metrics["flight_momentum_error"] < 1e-9 and metrics["flight_angular_momentum_error"] < 1e-9


def test_rigid_corruptions_are_measured(rigid):
    k = 10  # the tumbler is in flight, the crate on the ground
    clean = _rigid_metrics(rigid)
    velocities = rigid.velocities.clone()
    kick = torch.tensor([0.0, 0.0, -2.0], dtype=velocities.dtype)  # along its fall: +4.5 J
    velocities[k, 0] += kick
    kicked = _rigid_metrics(rigid, velocities=velocities)
    injected = float(rigid.velocities[k, 0] @ kick) + 0.5 * 4.0  # m v.dv + m |dv|^2 / 2, m = 1 kg
    assert injected > 4.0
    assert kicked["energy_gain_j"] == pytest.approx(clean["energy_j"][k] - clean["energy_j"][0] + injected, abs=1e-9)
    assert kicked["energy_step_gain_j"] == pytest.approx(clean["energy_j"][k] - clean["energy_j"][k - 1] + injected,
                                                         abs=1e-9)
    assert kicked["flight_momentum_error"] == pytest.approx(2.0, rel=1e-9)  # m |dv|

    positions = rigid.positions.clone()
    positions[k + 5, 1, 2] -= 0.03  # the crate sinks 3 cm into the ground
    sunk = _rigid_metrics(rigid, positions=positions)
    assert sunk["ground_penetration_m"][k + 5] == pytest.approx(0.03, abs=1e-4)
    assert sunk["max_penetration_m"] == pytest.approx(0.03, abs=1e-4)

    orientations = rigid.orientations.clone()
    positions = rigid.positions.clone()  # the tumbler, level, 2 cm into the crate's top face
    positions[k, 0] = positions[k, 1] + torch.tensor([0.0, 0.0, 0.1 + 0.05 - 0.02], dtype=positions.dtype)
    orientations[k, 0] = orientations[k, 1]
    stacked = _rigid_metrics(rigid, positions=positions, orientations=orientations)
    assert stacked["object_penetration_m"][k] == pytest.approx(0.02, abs=1e-6)
    assert max(clean["object_penetration_m"]) == 0.0


# ------------------------------------------------------------------------------------------ fluid
@pytest.fixture(scope="module")
def fluid(tmp_path_factory):
    from hybridsim.sim.fluid import fluid_rollout
    from hybridsim.sim.world import World

    spec, _ = _spec(tmp_path_factory.mktemp("fluid"), "puff.toml", FLUID_SCENE.format(precision="float64", frames=8))
    with torch.no_grad():
        return spec, fluid_rollout(World(spec))


def _fluid_states(trajectory, **changes):
    states = {key: getattr(trajectory, key).numpy() for key in ("velocity_x", "velocity_y", "density", "times")}
    states.update(changes)
    return states


def test_fluid_rollout_is_divergence_free_and_conserves_density(fluid):
    from hybridsim.sim.fluid import fluid_model
    from hybridsim.sim.world import World
    from hybridsim.solvers.grid_fluid import SolverGridFluid

    spec, trajectory = fluid
    metrics = scene_physics_metrics(spec, _fluid_states(trajectory))
    assert metrics["simulator"] == "fluid" and metrics["frames"] == 9
    assert 0.0 < metrics["max_divergence_l2_relative"] <= metrics["max_divergence_max_relative"] < 1e-8
    # the same divergence as the solver's own kernel
    model = fluid_model(World(spec))
    solver = SolverGridFluid(model, backend="warp", device="cpu", dtype=torch.float64)
    u, v = trajectory.velocity_x[-1], trajectory.velocity_y[-1]
    kernel = float(solver.divergence(u, v).abs().max()) * 0.025 / float(torch.maximum(u.abs().max(), v.abs().max()))
    assert metrics["divergence_max_relative"][-1] == pytest.approx(kernel, rel=1e-6)
    # conservative transport in a closed box: the density is exactly what the disc put in
    assert abs(metrics["mass_gain_relative"]) < 1e-12 and abs(metrics["mass_loss_relative"]) < 1e-12
    disc = 3.0 * math.pi * 0.05 ** 2 * (8 / 30)  # rate x area x time [density m^2]
    assert metrics["inflow_budget"][-1] == pytest.approx(disc, rel=0.05)
    assert metrics["mass"][-1] == pytest.approx(metrics["inflow_budget"][-1], rel=1e-12)
    assert metrics["kinetic_energy_j_per_kg"][0] == 0.0 < metrics["kinetic_energy_j_per_kg"][-1]
    assert 0.0 < metrics["max_cfl"] < 0.2


def test_fluid_corruptions_are_measured(fluid):
    spec, trajectory = fluid
    k = 5
    u = trajectory.velocity_x.clone()
    delta = 0.5 * float(u[k].abs().max())
    u[k, 5, 4] += delta  # an interior face far from the obstacle: +delta / dx out of one cell, in to the next
    divergent = scene_physics_metrics(spec, _fluid_states(trajectory, velocity_x=u.numpy()))
    speed = max(float(u[k].abs().max()), float(trajectory.velocity_y[k].abs().max()))
    assert divergent["divergence_max_relative"][k] == pytest.approx(delta / speed, rel=1e-6)
    assert divergent["divergence_max_relative"][k - 1] < 1e-8

    density = trajectory.density.clone()
    density[k:] *= 0.9  # 10 % of the smoke vanishes
    lost = scene_physics_metrics(spec, _fluid_states(trajectory, density=density.numpy()))
    assert lost["mass_loss_relative"] == pytest.approx(0.1, abs=1e-9)
    assert lost["mass_error_relative"][k - 1] == pytest.approx(0.0, abs=1e-12)
    density = trajectory.density.clone()
    density[-1, 10, 10] += 1.0  # one cell of smoke from nowhere
    gained = scene_physics_metrics(spec, _fluid_states(trajectory, density=density.numpy()))
    assert gained["mass_gain_relative"] == pytest.approx(0.025 ** 2 / gained["inflow_budget"][-1], rel=1e-9)


def test_fluid_metrics_of_analytic_periodic_fields():
    n, dx, dt = 8, 0.1, 0.01
    rng = np.random.default_rng(0)
    psi = torch.from_numpy(rng.normal(size=(n, n)))  # stream function at the nodes, periodic
    u = (torch.roll(psi, -1, 1) - psi) / dx  # u = d psi / dy, v = -d psi / dx: exactly divergence free
    v = -(torch.roll(psi, -1, 0) - psi) / dx
    density = torch.ones(n, n)
    swirl = fluid_physics_metrics(u[None], v[None], density[None], torch.zeros(1), cell_size=dx, dt=dt,
                                  periodic=(True, True))
    assert swirl["max_divergence_max_relative"] < 1e-13
    uniform = fluid_physics_metrics(torch.full((1, n, n), 2.0), torch.zeros(1, n, n), density[None], torch.zeros(1),
                                    cell_size=dx, dt=dt, periodic=(True, True))
    assert uniform["kinetic_energy_j_per_kg"] == [2.0] and uniform["cfl"] == [pytest.approx(0.2)]
    assert uniform["max_divergence_max_relative"] == 0.0
    # a uniform expansion u = x on walls: div = 1/s everywhere, relative max = dx / max|u|
    x_faces = torch.arange(n + 1, dtype=torch.float64)[:, None].expand(n + 1, n) * dx
    expanding = fluid_physics_metrics(x_faces[None], torch.zeros(1, n, n + 1), density[None], torch.zeros(1),
                                      cell_size=dx, dt=dt)
    assert expanding["divergence_max_relative"] == [pytest.approx(dx / (n * dx))]
    assert expanding["divergence_l2_relative"] == [pytest.approx(dx / (n * dx))]


# ------------------------------------------------------------------------------------------ MPM
@pytest.fixture(scope="module")
def mpm(tmp_path_factory):
    from hybridsim.sim.mpm import mpm_rollout
    from hybridsim.sim.world import World

    spec, _ = _spec(tmp_path_factory.mktemp("mpm"), "drop.toml", MPM_SCENE)
    with torch.no_grad():
        return spec, mpm_rollout(World(spec))


def _mpm_states(trajectory, **changes):
    model = trajectory.model
    states = {"positions": trajectory.positions.numpy(), "velocities": trajectory.velocities.numpy(),
              "times": trajectory.times.numpy(), "particle_material": model.particle_material.numpy(),
              "particle_volume": model.particle_volume.numpy()}
    states.update(changes)
    return states


def test_mpm_free_fall_matches_the_gravity_impulse(mpm):
    spec, trajectory = mpm
    model = trajectory.model
    metrics = scene_physics_metrics(spec, _mpm_states(trajectory))
    mass = float((model.density[model.particle_material] * model.particle_volume).sum())
    assert metrics["simulator"] == "mpm" and metrics["total_mass_kg"] == pytest.approx(mass, rel=1e-12)
    assert metrics["momentum"][0] == pytest.approx([0.3 * mass, 0.5 * mass], rel=1e-12)
    assert metrics["free_fall_frames"] == 9  # the whole rollout: the block stays clear of the walls
    assert metrics["momentum"][-1] == pytest.approx([0.3 * mass, (0.5 - G * 8 / 30) * mass], rel=1e-9)
    assert metrics["free_fall_momentum_error_relative"] < 1e-10
    assert metrics["energy_gain_j"] < 1e-9
    # symplectic Euler (v += g dt, then x += v dt) loses exactly M |g|^2 dt / 2 per second of free fall
    assert metrics["energy_drift_j"] == pytest.approx(-0.5 * mass * G ** 2 * trajectory.dt * 8 / 30, rel=1e-9)
    assert metrics["max_out_of_domain"] == 0 and metrics["non_finite_particles"] == 0
    assert 0.0 < metrics["max_cfl"] < 1.0

    final = trajectory.final_state.particle_deformation
    params = model.particle_parameters()
    direct = mpm_physics_metrics(trajectory.positions, trajectory.velocities, params.mass, trajectory.times,
                                 gravity=model.gravity, grid_lower=model.grid.lower, grid_upper=model.grid.upper,
                                 deformation=final, mu=params.mu, lam=params.lam, volume=params.volume)
    assert direct["inverted_particles"] == 0 and 0.99 < direct["det_f_min"] <= direct["det_f_max"] < 1.01  # rigid fall
    assert 0.0 <= direct["elastic_energy_j"] < 1e-3


def test_mpm_corruptions_are_measured(mpm):
    spec, trajectory = mpm
    model = trajectory.model
    mass = float((model.density[model.particle_material] * model.particle_volume).sum())
    k = 4
    velocities = trajectory.velocities.clone()
    velocities[k:, :, 0] += 0.2  # a sideways push from nowhere
    pushed = scene_physics_metrics(spec, _mpm_states(trajectory, velocities=velocities.numpy()))
    assert pushed["free_fall_momentum_error"] == pytest.approx(0.2 * mass, rel=1e-9)
    assert pushed["momentum_residual"][k - 1] < 1e-9
    assert pushed["energy_gain_j"] > 0.0

    positions = trajectory.positions.clone()
    positions[k, :3, 1] = 1.6  # three particles above the top of the 1.5 m grid
    escaped = scene_physics_metrics(spec, _mpm_states(trajectory, positions=positions.numpy()))
    assert escaped["out_of_domain_particles"][k] == 3 and escaped["max_out_of_domain"] == 3
    assert escaped["free_fall_frames"] == k  # they also left the free-fall region

    params = model.particle_parameters()
    stretched = torch.eye(2, dtype=torch.float64).expand(model.particle_count, 2, 2).clone()
    stretched[0, 0, 0] = 1.1
    stretched[1, 0, 0] = -0.5  # inverted
    deformed = mpm_physics_metrics(trajectory.positions, trajectory.velocities, params.mass, trajectory.times,
                                   gravity=model.gravity, grid_lower=model.grid.lower, grid_upper=model.grid.upper,
                                   deformation=stretched[:1], mu=params.mu[:1], lam=params.lam[:1],
                                   volume=params.volume[:1])
    mu, lam, volume = float(params.mu[0]), float(params.lam[0]), float(params.volume[0])
    log_j = math.log(1.1)
    psi = 0.5 * mu * (1.21 - 1.0) - mu * log_j + 0.5 * lam * log_j ** 2  # neo-Hookean
    assert deformed["elastic_energy_j"] == pytest.approx(volume * psi, rel=1e-12)
    inverted = mpm_physics_metrics(trajectory.positions, trajectory.velocities, params.mass, trajectory.times,
                                   gravity=model.gravity, grid_lower=model.grid.lower, grid_upper=model.grid.upper,
                                   deformation=stretched)
    assert inverted["inverted_particles"] == 1 and inverted["det_f_min"] == pytest.approx(-0.5)
    assert inverted["det_f_max"] == pytest.approx(1.1)


# ------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("kind", ["rigid", "fluid"])
def test_cli_metrics_of_rendered_scenes(tmp_path, capsys, kind):
    from hybridsim.cli import main

    text = RIGID_SCENE.format(frames=6) if kind == "rigid" else FLUID_SCENE.format(precision="float32", frames=4)
    _, scene = _spec(tmp_path, f"{kind}.toml", text)
    out = tmp_path / f"{kind}.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["metrics", str(out), "--scene", str(scene)]) == 0
    result = json.loads(capsys.readouterr().out)
    physics = result["physics"]
    assert physics["simulator"] == kind and "warping_error" in result
    if kind == "rigid":  # float32 states: rounding only
        assert len(physics["energy_j"]) == 7 and physics["energy_gain_j"] < 1e-4
        assert physics["max_penetration_m"] < 1e-3 and physics["flight_momentum_error"] < 1e-4
    else:
        assert len(physics["mass"]) == 5 and physics["max_divergence_max_relative"] < 1e-3
        assert abs(physics["mass_gain_relative"]) < 1e-5 and physics["max_cfl"] < 1.0

    np.savez(out.with_suffix(".states.npz"), times=np.zeros(7))  # the wrong arrays: a one-line error
    assert main(["metrics", str(out), "--scene", str(scene)]) == 2
    assert "cannot read the states" in capsys.readouterr().err


def test_coupled_scene_reports_both_parts_without_the_momentum_checks():
    from pathlib import Path

    from hybridsim.scene.loader import load_scene
    from hybridsim.sim.coupled import coupled_rollout
    from hybridsim.sim.world import World

    spec = load_scene(Path(__file__).resolve().parent.parent / "scenes" / "box_splash.toml")
    with torch.no_grad():
        trajectory = coupled_rollout(World(spec, device="cpu", frames=2), frames=2)
    material, bodies = trajectory.mpm, trajectory.rigid
    states = _mpm_states(material, times=trajectory.times.numpy())
    states.update({f"body_{key}": getattr(bodies, key).numpy()
                   for key in ("positions", "orientations", "velocities", "angular_velocities")})
    metrics = scene_physics_metrics(spec, states)
    assert metrics["simulator"] == "coupled"
    assert metrics["mpm"]["free_fall_frames"] is None and metrics["rigid"]["flight_intervals"] is None
    assert metrics["mpm"]["max_out_of_domain"] == 0 and metrics["mpm"]["energy_gain_j"] < 1e-6
    assert len(metrics["rigid"]["energy_j"]) == 3 and metrics["rigid"]["max_penetration_m"] < 1e-3
