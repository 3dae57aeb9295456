"""Sphere physics against closed forms, an independent numpy reference, and across backends."""

import numpy as np
import pytest
import torch

from hybridsim.sim.rollout import rollout
from hybridsim.sim.state import SphereModel, State
from hybridsim.sim.world import World
from hybridsim.solvers.spheres import SolverSpheres
from hybridsim.testing import compare_backends
from hybridsim.testing.reference import bounce_step_numpy

BACKENDS = ["warp", "taichi"]
G = 9.81


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("precision,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_free_fall_matches_closed_form(sphere_scene, backend, precision, tol):
    spec = sphere_scene(height=50.0, velocity=(1.0, -0.5, 3.0), frames=40, backend=backend, precision=precision)
    world = World(spec)
    with torch.no_grad():
        trajectory = rollout(world)
    t = trajectory.times.double()[:, None]
    expected = torch.tensor([0.0, 0.0, 50.0], dtype=torch.float64) + torch.tensor([1.0, -0.5, 3.0], dtype=torch.float64) * t
    expected[:, 2] -= 0.5 * G * t[:, 0] ** 2
    got = trajectory.positions[:, 0, 0].double()
    assert torch.allclose(got, expected, rtol=tol, atol=tol * 50), (got - expected).abs().max()
    assert torch.allclose(trajectory.velocities[:, 0, 0, 2].double(), 3.0 - G * t[:, 0], rtol=tol, atol=tol * 50)


def _apex_heights(trajectory, radius):
    """Apex of each flight after a bounce, exact from any in-flight frame: z + vz^2 / (2 g)."""
    z = trajectory.positions[:, 0, 0, 2].double() - radius
    vz = trajectory.velocities[:, 0, 0, 2].double()
    apexes = []
    for frame in range(1, len(vz)):
        if vz[frame - 1] < 0 < vz[frame] and z[frame] > 1e-3:  # just after a bounce, in flight
            apexes.append(float(z[frame] + vz[frame] ** 2 / (2 * G)))
    return apexes


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounce_apexes_follow_restitution_squared(sphere_scene, backend):
    e, radius = 0.8, 0.2
    spec = sphere_scene(height=1.0 + radius, restitution=e, radius=radius, frames=120, fps=60, substeps=4, backend=backend)
    with torch.no_grad():
        trajectory = rollout(World(spec))
    apexes = _apex_heights(trajectory, radius)
    assert len(apexes) >= 3
    heights = [1.0] + apexes
    for previous, current in zip(heights, heights[1:]):
        assert current / previous == pytest.approx(e**2, rel=1e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounce_heights_do_not_drift_with_dt(sphere_scene, backend):
    """Impacts are solved inside the step, so coarse and fine steps give the same apexes."""
    runs = []
    for substeps in (1, 3, 17):
        spec = sphere_scene(height=1.3, restitution=0.7, frames=90, fps=60, substeps=substeps, backend=backend)
        with torch.no_grad():
            runs.append(_apex_heights(rollout(World(spec)), 0.2))
    for other in runs[1:]:
        assert len(other) == len(runs[0])
        np.testing.assert_allclose(other, runs[0], rtol=1e-9)


def test_resting_sphere_stays_at_rest(sphere_scene):
    spec = sphere_scene(height=0.2, restitution=0.5, frames=20)
    with torch.no_grad():
        trajectory = rollout(World(spec))
    assert torch.allclose(trajectory.positions[..., 2], torch.tensor(0.2, dtype=torch.float64))
    assert trajectory.velocities.abs().max() == 0


def _random_step_inputs(body_count, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=generator, dtype=dtype)  # noqa: E731
    position = rand(body_count, 3) * 2.0
    position[:, 2] = 0.2 + rand(body_count) * 0.05  # near the ground: many impacts in one step
    velocity = (rand(body_count, 3) - 0.5) * 8.0
    model = SphereModel(1, body_count, mass=0.5 + rand(body_count), radius=0.15 + 0.1 * rand(body_count),
                        restitution=rand(body_count), gravity=torch.tensor([0.1, 0.0, -G], dtype=dtype).repeat(body_count, 1))
    force = (rand(body_count, 3) - 0.5) * 3.0
    return model, State(position, velocity), force


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_step_matches_numpy_reference(backend):
    from hybridsim.sim.state import Control

    model, state, force = _random_step_inputs(512, torch.float64)
    out = state.empty_like()
    SolverSpheres(model, backend=backend, dtype=torch.float64).step(state, out, Control(force), 1 / 30)
    x, v = bounce_step_numpy(state.sphere_position.numpy(), state.sphere_velocity.numpy(), force.numpy(),
                             model.mass.numpy(), model.radius.numpy(), model.restitution.numpy(),
                             model.gravity.numpy(), 0.0, 1 / 30)
    np.testing.assert_allclose(out.sphere_position.numpy(), x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.sphere_velocity.numpy(), v, rtol=1e-12, atol=1e-12)
    assert int((out.sphere_velocity[:, 2] > state.sphere_velocity[:, 2]).sum()) > 100  # impacts happened


def test_step_does_not_mutate_its_input():
    model, state, force = _random_step_inputs(64, torch.float32)
    before = state.clone()
    out = state.empty_like()
    SolverSpheres(model, backend="warp").step(state, out, None, 1 / 30)
    assert torch.equal(before.sphere_position, state.sphere_position)
    assert torch.equal(before.sphere_velocity, state.sphere_velocity)


def test_warp_and_taichi_agree_on_one_float32_step():
    from hybridsim.sim.state import Control

    model, state, force = _random_step_inputs(1024, torch.float32, seed=3)
    outs = {}
    for backend in BACKENDS:
        out = state.empty_like()
        SolverSpheres(model, backend=backend).step(state, out, Control(force), 1 / 30)
        outs[backend] = out
    for name in ("sphere_position", "sphere_velocity"):
        a, b = getattr(outs["warp"], name), getattr(outs["taichi"], name)
        assert ((a - b).abs() / a.abs().clamp_min(1.0)).max() <= 1e-6


def test_warp_and_taichi_agree_on_rollouts_and_gradients_float64(sphere_scene):
    spec = sphere_scene(height=1.0, velocity=(0.5, 0.0, 1.0), restitution=0.75, frames=45)
    report = compare_backends(spec, precision="float64")
    assert set(report) >= {"positions", "velocities", "grad:objects[0].restitution", "grad:objects[0].velocity"}
    for key, value in report.items():
        assert value <= 1e-6, (key, value)


def test_batch_of_worlds_matches_separate_runs(sphere_scene):
    spec = sphere_scene(height=1.0, frames=30)
    batch = World(spec, world_count=3)
    restitutions = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        together = rollout(batch, {"objects[0].restitution": restitutions})
        for index, e in enumerate(restitutions):
            alone = rollout(World(spec), {"objects[0].restitution": e})
            assert torch.equal(together.positions[:, index], alone.positions[:, 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_mode_is_bit_identical(sphere_scene, backend):
    spec = sphere_scene(height=1.0, velocity=(0.3, 0.1, 0.0), frames=40, backend=backend, precision="float32")
    runs = []
    for _ in range(2):
        world = World(spec, world_count=64, deterministic=True)
        params = world.parameters()
        trajectory = rollout(world, params)
        trajectory.positions.sum().backward()
        runs.append((trajectory.positions.detach(), params["objects[0].restitution"].grad))
    assert torch.equal(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])
