"""Learned motion priors: small torch modules called inside the rollout that add the forces the
physics model leaves out (air drag, wind), trained with gradients that flow through the solver.

A prior maps ``(state, time)`` to per-body forces [N], shape (B, 3), the ``motion_prior`` hook of
``hybridsim.sim.rollout.rollout``. Regularisers keep it physically plausible: small forces, and
optionally no energy injection (a passive force does no positive work, F . v <= 0).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..sim.rollout import rollout
from ..sim.state import State

__all__ = ["ResidualForcePrior", "PriorRegularizer", "train_motion_prior", "PriorTrainingResult", "PRIOR_FORMAT",
           "module_digest"]

PRIOR_FORMAT = "hybridsim-motion-prior/1"


class ResidualForcePrior(nn.Module):
    """MLP residual force per body from its velocity [m/s] and height above the ground [m].

    The last layer starts at zero, so an untrained prior leaves the physics unchanged. Forces
    are scaled by each body's mass, so the network predicts accelerations [m/s^2].
    """

    def __init__(self, hidden: int = 32, layers: int = 2, *, ground_height: float = 0.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = {"hidden": int(hidden), "layers": int(layers), "ground_height": float(ground_height)}
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
        """Residual acceleration [m/s^2], shape (B, 3), in the state's dtype (the network may use another)."""
        features = self.features(state)
        weights = self.head.weight
        out = self.head(self.body(features.to(device=weights.device, dtype=weights.dtype)))
        return out.to(device=features.device, dtype=features.dtype)

    def forward(self, state: State, time: float) -> torch.Tensor:
        acceleration = self.acceleration(state)
        mass = self.mass if self.mass is not None else torch.ones_like(acceleration[:, 0])
        return acceleration * mass.to(acceleration)[:, None]

    # ------------------------------------------------------------------ storage
    def save(self, path) -> None:
        """Write weights (safetensors, atomically) and ``PATH.json`` with the config; never pickle."""
        from safetensors.torch import save_file

        from ..fileio import atomic_path, atomic_write_json

        path = Path(path)
        dtype = str(self.head.weight.dtype).replace("torch.", "")
        config = dict(self.config, dtype=dtype)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp),
                      metadata={"format": PRIOR_FORMAT, "config": json.dumps(config)})
        atomic_write_json(path.with_suffix(".json"), {"format": PRIOR_FORMAT, "config": config, "weights": path.name})

    @classmethod
    def load(cls, path) -> "ResidualForcePrior":
        """Load weights written by :meth:`save` (config from the JSON beside them, else the metadata)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from ..errors import AssetError

        path = Path(path)
        if not path.is_file():
            raise AssetError("motion prior weights not found", file=path)
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
        except Exception as exc:  # safetensors raises several types for damaged files
            raise AssetError(f"cannot read motion prior weights ({exc})", file=path) from None
        side = path.with_suffix(".json")
        try:
            if side.is_file():
                config = json.loads(side.read_text())["config"]
            elif "config" in meta:
                config = json.loads(meta["config"])
            else:
                raise AssetError("motion prior weights carry no config (missing metadata and JSON)", file=path)
            dtype = getattr(torch, str(config.get("dtype", "float32")))
            prior = cls(hidden=int(config["hidden"]), layers=int(config["layers"]),
                        ground_height=float(config.get("ground_height", 0.0)), dtype=dtype)
        except (KeyError, TypeError, ValueError, AttributeError, json.JSONDecodeError) as exc:
            raise AssetError(f"bad motion prior config ({exc!r})", file=path) from None
        try:
            prior.load_state_dict(tensors)
        except RuntimeError as exc:
            raise AssetError(f"weights do not match the motion prior config ({str(exc).splitlines()[0]})",
                             file=path) from None
        return prior


def module_digest(module: nn.Module) -> str:
    """sha256 (16 hex digits) of a module's state (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        value = value.detach().contiguous().cpu()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()[:16]


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
                       iterations: int = 100, lr: float = 3e-3, params=None, param_lr: float | None = None,
                       regularizer: PriorRegularizer | None = None,
                       progress: Callable[[int, float], None] | None = None) -> PriorTrainingResult:
    """Fit ``prior`` so the rollout's sphere positions match ``target_positions`` (F+1, W, N, 3).

    Gradients reach the prior's weights through every solver step (and ``params``, if given as
    leaf tensors with requires_grad, are optimised jointly, with learning rate ``param_lr``, default ``lr``).
    """
    regularizer = regularizer or PriorRegularizer()
    prior.mass = world.model(params).mass.detach()
    physical = [p for p in (params or {}).values() if p.requires_grad]
    groups = [{"params": list(prior.parameters())}]
    if physical:
        groups.append({"params": physical, "lr": lr if param_lr is None else param_lr})
    optimizer = torch.optim.Adam(groups, lr=lr)
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
