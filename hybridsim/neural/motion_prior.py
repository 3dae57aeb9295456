"""Learned motion priors: small torch modules called inside the rollout that add the forces the
physics model leaves out (air drag, wind), trained with gradients that flow through the solver.

A prior maps ``(state, time)`` to per-body forces [N], shape (B, 3), the ``motion_prior`` hook of
``hybridsim.sim.rollout.rollout``. Regularisers keep it physically plausible: small forces, and
optionally no energy injection (a passive force does no positive work, F . v <= 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..sim.rollout import rollout
from ..sim.state import State

__all__ = ["ResidualForcePrior", "PriorRegularizer", "train_motion_prior", "PriorTrainingResult"]


class ResidualForcePrior(nn.Module):
    """MLP residual force per body from its velocity [m/s] and height above the ground [m].

    The last layer starts at zero, so an untrained prior leaves the physics unchanged. Forces
    are scaled by each body's mass, so the network predicts accelerations [m/s^2].
    """

    def __init__(self, hidden: int = 32, layers: int = 2, *, ground_height: float = 0.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        blocks, width = [], 4
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(width, 3)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.ground_height = ground_height
        self.mass: torch.Tensor | None = None
        self.to(dtype)

    def features(self, state: State) -> torch.Tensor:
        velocity = state.sphere_velocity
        height = state.sphere_position[:, 2:3] - self.ground_height
        return torch.cat([velocity, height], dim=1)

    def acceleration(self, state: State) -> torch.Tensor:
        """Residual acceleration [m/s^2], shape (B, 3)."""
        return self.head(self.body(self.features(state)))

    def forward(self, state: State, time: float) -> torch.Tensor:
        acceleration = self.acceleration(state)
        mass = self.mass if self.mass is not None else torch.ones_like(acceleration[:, 0])
        return acceleration * mass[:, None]


@dataclass
class PriorRegularizer:
    """Penalties on the prior's forces, accumulated over the rollout's substeps."""

    magnitude: float = 1e-4
    """Weight of the mean squared residual acceleration [(m/s^2)^2]."""
    energy_injection: float = 0.0
    """Weight of the mean positive power relu(F . v) / m [W/kg]; > 0 keeps the prior passive."""
    terms: dict = field(default_factory=dict)

    def wrap(self, prior: ResidualForcePrior) -> Callable[[State, float], torch.Tensor]:
        """A motion-prior callable that also accumulates this regulariser's terms."""
        self.terms = {"magnitude": [], "energy_injection": []}

        def hooked(state: State, time: float) -> torch.Tensor:
            acceleration = prior.acceleration(state)
            self.terms["magnitude"].append(acceleration.pow(2).sum(dim=1).mean())
            power = (acceleration * state.sphere_velocity).sum(dim=1)
            self.terms["energy_injection"].append(torch.relu(power).mean())
            mass = prior.mass if prior.mass is not None else torch.ones_like(acceleration[:, 0])
            return acceleration * mass[:, None]

        return hooked

    def loss(self) -> torch.Tensor:
        total = 0.0
        for name, weight in (("magnitude", self.magnitude), ("energy_injection", self.energy_injection)):
            if weight and self.terms.get(name):
                total = total + weight * torch.stack(self.terms[name]).mean()
        return torch.as_tensor(total)


@dataclass
class PriorTrainingResult:
    losses: list[float]
    """Total loss per iteration."""
    data_losses: list[float]
    """Trajectory mismatch [m^2] per iteration (without regularisers)."""


def train_motion_prior(world, prior: ResidualForcePrior, target_positions: torch.Tensor, *,
                       iterations: int = 100, lr: float = 3e-3, params=None,
                       regularizer: PriorRegularizer | None = None,
                       progress: Callable[[int, float], None] | None = None) -> PriorTrainingResult:
    """Fit ``prior`` so the rollout's sphere positions match ``target_positions`` (F+1, W, N, 3).

    Gradients reach the prior's weights through every solver step (and ``params``, if given as
    leaf tensors with requires_grad, are optimised jointly).
    """
    regularizer = regularizer or PriorRegularizer()
    prior.mass = world.model(params).mass.detach()
    trainable = list(prior.parameters()) + [p for p in (params or {}).values() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    frames = target_positions.shape[0] - 1
    losses, data_losses = [], []
    for iteration in range(iterations):
        optimizer.zero_grad()
        trajectory = rollout(world, params, frames=frames, motion_prior=regularizer.wrap(prior))
        data = (trajectory.positions - target_positions).pow(2).sum(dim=-1).mean()
        loss = data + regularizer.loss()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        data_losses.append(float(data.detach()))
        if progress is not None:
            progress(iteration, losses[-1])
    return PriorTrainingResult(losses, data_losses)
