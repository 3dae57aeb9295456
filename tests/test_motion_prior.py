"""A motion prior trained through the simulator learns the air drag the scene leaves out."""

import torch

from hybridsim.neural import PriorRegularizer, ResidualForcePrior, train_motion_prior
from hybridsim.scene import SceneBuilder
from hybridsim.sim.rollout import rollout
from hybridsim.sim.state import State
from hybridsim.sim.world import World

DRAG = 0.35  # quadratic drag coefficient per unit mass [1/m]


def quadratic_drag(state, time):
    v = state.sphere_velocity
    return -DRAG * v.norm(dim=1, keepdim=True) * v


def _world():
    builder = SceneBuilder(name="drag", fps=30, frames=24, substeps=4, precision="float64")
    builder.camera(position=(0, -6, 2), look_at=(0, 0, 1), width=16, height=12)
    velocities = [(3.0, 0.0, 2.0), (-2.0, 1.0, 4.0), (0.5, -3.0, 1.0), (4.0, 2.0, 0.0), (-1.0, -1.0, 5.0), (2.0, -2.0, 3.0)]
    for index, velocity in enumerate(velocities):
        builder.add_sphere(position=(index * 0.1, 0.0, 1.0 + 0.2 * index), velocity=velocity, radius=0.1,
                           restitution=0.7, name=f"s{index}")
    return World(builder.build())


def test_untrained_prior_changes_nothing():
    world = _world()
    with torch.no_grad():
        plain = rollout(world)
        with_prior = rollout(world, motion_prior=ResidualForcePrior(dtype=torch.float64))
    assert torch.equal(plain.positions, with_prior.positions)


def test_prior_learns_drag_through_the_simulator():
    torch.manual_seed(0)
    world = _world()
    with torch.no_grad():
        target = rollout(world, motion_prior=quadratic_drag).positions  # "real" motion with drag
        baseline = (rollout(world).positions - target).pow(2).sum(-1).mean().item()
    prior = ResidualForcePrior(hidden=24, dtype=torch.float64)
    result = train_motion_prior(world, prior, target, iterations=60, lr=1e-2,
                                regularizer=PriorRegularizer(magnitude=1e-5, energy_injection=1.0))
    assert result.data_losses[-1] < 0.1 * baseline, (baseline, result.data_losses[::10])
    # the learned force looks like drag on velocities it was not trained on: it opposes motion
    generator = torch.Generator().manual_seed(1)
    velocity = 3.0 * torch.randn(200, 3, generator=generator, dtype=torch.float64)
    state = State(torch.cat([torch.zeros(200, 2, dtype=torch.float64), torch.full((200, 1), 1.5, dtype=torch.float64)], 1), velocity)
    with torch.no_grad():
        learned = prior.acceleration(state)
    truth = quadratic_drag(state, 0.0)
    cosine = torch.nn.functional.cosine_similarity(learned, truth, dim=1)
    assert cosine.median() > 0.8
    assert (learned * velocity).sum(1).median() < 0  # passive: removes energy
