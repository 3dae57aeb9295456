"""Gradients through the bounce against central finite differences (float64), through the
renderer, into torch modules inside the loop, and unchanged by checkpointing."""

import pytest
import torch

from hybridsim.render.scene import render_trajectory
from hybridsim.sim.rollout import rollout
from hybridsim.sim.world import World
from hybridsim.testing import contact_count, finite_difference_gradcheck, state_loss

BACKENDS = ["warp", "taichi"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_state_loss_gradients_match_finite_differences_through_bounces(sphere_scene, backend):
    spec = sphere_scene(height=0.9, velocity=(0.4, 0.2, 1.5), restitution=0.7, frames=40, backend=backend)
    world = World(spec)
    with torch.no_grad():
        assert contact_count(rollout(world)) >= 2  # the check really passes through impacts
    rows = finite_difference_gradcheck(world, state_loss(seed=1))
    assert {row.path for row in rows} == {"objects[0].restitution", "objects[0].velocity"}
    for row in rows:
        assert not row.contacts_changed, row
        assert row.error < 1e-3, (row.name, row.autodiff, row.finite_difference)
    assert abs(next(r for r in rows if r.path == "objects[0].restitution").autodiff) > 1e-3


def test_gradient_is_continuous_when_the_impact_moves_to_another_step(sphere_scene):
    """With the impact time solved inside the step, d(final height)/d(v0) varies smoothly as the
    impact crosses a step boundary (a step-boundary contact would make it jump)."""
    grads, heights = [], []
    for vz in torch.linspace(-1.0, 0.0, 41, dtype=torch.float64):  # impact crosses ~5 step boundaries
        spec = sphere_scene(height=0.5, velocity=(0.0, 0.0, float(vz)), restitution=0.6, frames=10, fps=30, substeps=2)
        world = World(spec)
        params = world.parameters()
        trajectory = rollout(world, params)
        trajectory.positions[-1, 0, 0, 2].backward()
        grads.append(float(params["objects[0].velocity"].grad[2]))
    grads = torch.tensor(grads)
    # smooth: the second difference is tiny compared with the values (a jump makes it O(1))
    assert grads.diff(n=2).abs().max() < 0.02 * grads.abs().max(), grads


def test_pixel_loss_gradients_match_finite_differences(sphere_scene):
    spec = sphere_scene(height=0.8, velocity=(0.6, 0.0, 1.0), restitution=0.8, frames=12, width=24, height_px=18)
    world = World(spec)
    weights = torch.rand((13, 18, 24, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def evaluate(values):
        trajectory = rollout(world, values)
        return (render_trajectory(world, trajectory, values)["rgb"] * weights).sum(), trajectory

    rows = finite_difference_gradcheck(world, evaluate=evaluate, relative_step=1e-5)
    for row in rows:
        assert not row.contacts_changed
        if abs(row.finite_difference) > 1e-6:
            assert row.error < 1e-3, (row.name, row.autodiff, row.finite_difference)
    assert any(abs(row.autodiff) > 1e-3 for row in rows)


class Drag(torch.nn.Module):
    """A tiny motion prior: a learned force from the velocity."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        self.double()

    def forward(self, state, time):
        return self.net(state.sphere_velocity)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_module_inside_the_loop_gets_finite_difference_gradients(sphere_scene, checkpoint):
    torch.manual_seed(0)
    spec = sphere_scene(height=1.0, velocity=(0.5, 0.0, 0.5), frames=20, learn_params=False)
    world = World(spec)
    prior = Drag()
    loss_of = lambda: rollout(world, motion_prior=prior, checkpoint=checkpoint, segment_frames=3).positions.pow(2).sum()  # noqa: E731
    loss_of().backward()
    weight = prior.net[0].weight
    for index in [(0, 0), (3, 1), (7, 2)]:
        h = 1e-6
        with torch.no_grad():
            weight[index] += h
            plus = float(loss_of())
            weight[index] -= 2 * h
            minus = float(loss_of())
            weight[index] += h
        fd = (plus - minus) / (2 * h)
        assert weight.grad[index].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_checkpointing_gives_the_same_gradients(sphere_scene):
    spec = sphere_scene(height=1.0, velocity=(0.5, 0.0, 0.5), frames=30)
    grads = []
    for checkpoint in (False, True):
        world = World(spec)
        params = world.parameters()
        rollout(world, params, checkpoint=checkpoint, segment_frames=4).positions.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in params.values()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=0)


def test_non_finite_state_names_step_object_and_quantity(sphere_scene):
    from hybridsim.errors import SimulationError

    spec = sphere_scene(height=1.0, frames=10, learn_params=False)
    world = World(spec)

    def broken(state, time):
        force = torch.zeros_like(state.sphere_position)
        return force + (float("nan") if time > 0.1 else 0.0)

    with torch.no_grad(), pytest.raises(SimulationError) as info:
        rollout(world, motion_prior=broken)
    message = str(info.value)
    assert "ball" in message and "step" in message and "position" in message
    assert info.value.step is not None and info.value.step <= 5 * 8
