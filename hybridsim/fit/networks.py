"""Networks trained jointly with a fit: the video refiner and the motion prior.

``fit(..., refiner=..., motion_prior=...)`` optimises three things together, with gradients from one
loss: the scene's learnable physical values, the refiner's weights (unless frozen) and the motion
prior's weights.

* The **motion prior** (:class:`hybridsim.neural.ResidualForcePrior`) adds residual forces inside
  every rollout substep (``rollout(..., motion_prior=)``); its regulariser (mean squared residual
  acceleration, optionally positive power) joins the loss as the ``prior`` term. Sphere scenes only.
* The **refiner** (:class:`hybridsim.neural.VideoRefiner`) turns the differentiable render layers
  (rgb, alpha; depth, normals and segmentation carry no gradient) plus the exact backward flow of
  the rollout into the frames the ``rgb`` loss compares with the target. With a refiner the ``rgb``
  term is used even when the target's look differs from the scene's (that difference is what the
  refiner learns), unless ``FitSettings(rgb="off")``.

Each restart trains its own copies of the networks, starting from the given weights, with its own
Adam optimiser (``NetworkSettings.lr``, following the same relative schedule as the physical
values' learning rate). Checkpoints hold every restart's network weights and optimiser state as
safetensors (names ``r<k>.refiner.*``, ``r<k>.prior.*``, ``r<k>.netopt.*``) and the settings plus
the initial weights' digests in the JSON; no pickle. The run directory gains the best restart's
``refiner.safetensors`` / ``motion_prior.safetensors`` (each with its JSON config beside it).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import HybridsimError

__all__ = ["NetworkSettings", "FitNetworks", "RestartNetworks", "resolve_networks", "refine_layers",
           "REFINER_FILE", "PRIOR_FILE"]

REFINER_FILE = "refiner.safetensors"
PRIOR_FILE = "motion_prior.safetensors"


@dataclass(frozen=True)
class NetworkSettings:
    """How the networks of a fit are trained (part of the checkpoint's settings)."""

    lr: float = 1e-3
    """Adam learning rate of the network weights; decays like the physical values' (same factor)."""
    freeze_refiner: bool = False
    """Keep the refiner's weights fixed (it still shapes the rgb loss and passes gradients through)."""
    prior_magnitude: float = 1e-4
    """Weight of the prior's mean squared residual acceleration [(m/s^2)^2] in the loss."""
    prior_energy_injection: float = 0.0
    """Weight of the prior's mean positive power per mass [W/kg] (> 0 keeps it passive)."""
    prior_hidden: int = 32
    """Width of a new prior's hidden layers."""
    prior_layers: int = 2
    """Hidden layers of a new prior."""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _load_refiner(refiner):
    from ..neural.refiner import VideoRefiner

    if refiner is None or isinstance(refiner, VideoRefiner):
        return refiner
    return VideoRefiner.load(Path(refiner))


def _load_prior(prior, world, settings: NetworkSettings, seed: int):
    from ..neural.motion_prior import ResidualForcePrior

    if prior is None or isinstance(prior, ResidualForcePrior):
        return prior
    if isinstance(prior, str) and prior == "new":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return ResidualForcePrior(hidden=settings.prior_hidden, layers=settings.prior_layers,
                                      ground_height=float(world.spec.ground.height), dtype=world.dtype)
    return ResidualForcePrior.load(Path(prior))


class FitNetworks:
    """The networks a fit starts from (never trained themselves: each restart gets copies)."""

    def __init__(self, refiner, prior, settings: NetworkSettings):
        self.refiner, self.prior, self.settings = refiner, prior, settings
        from ..neural.motion_prior import module_digest

        self.digests = {name: module_digest(module) for name, module in (("refiner", refiner), ("prior", prior))
                        if module is not None}

    def header(self) -> dict:
        """What a checkpoint must agree on to be resumed."""
        out = {"settings": self.settings.to_json(), "initial_sha256": dict(self.digests)}
        if self.refiner is not None:
            out["refiner_config"] = self.refiner.config.to_dict()
        if self.prior is not None:
            out["prior_config"] = dict(self.prior.config, dtype=str(self.prior.head.weight.dtype))
        return out

    def copy(self) -> "RestartNetworks":
        return RestartNetworks(copy.deepcopy(self.refiner), copy.deepcopy(self.prior), self.settings)


def resolve_networks(refiner, motion_prior, world, scene_kind: str, settings: NetworkSettings | None,
                     seed: int) -> FitNetworks | None:
    """Load / create the networks of a fit (None without any). ``refiner``: a VideoRefiner or a
    weights path; ``motion_prior``: a ResidualForcePrior, a weights path or ``"new"``."""
    if refiner is None and motion_prior is None:
        return None
    if scene_kind != "spheres":
        from .scenes import NETWORKS_UNSUPPORTED

        raise HybridsimError(NETWORKS_UNSUPPORTED, file=world.spec.source)
    settings = settings or NetworkSettings()
    if not settings.lr > 0:
        raise HybridsimError(f"the network learning rate must be positive (got {settings.lr})")
    return FitNetworks(_load_refiner(refiner), _load_prior(motion_prior, world, settings, seed), settings)


class RestartNetworks:
    """One restart's networks and their optimiser."""

    def __init__(self, refiner, prior, settings: NetworkSettings):
        self.refiner, self.prior, self.settings = refiner, prior, settings
        if refiner is not None:
            refiner.train()
            refiner.requires_grad_(not settings.freeze_refiner)
        self.modules = {name: m for name, m in (("refiner", None if settings.freeze_refiner else refiner),
                                                 ("prior", prior)) if m is not None}
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=settings.lr) if params else None
        self.regularizer = None

    # ---------------------------------------------------------------- loss pieces
    def prior_hook(self, world, values: dict):
        """The rollout's motion-prior callable (accumulating the regulariser's terms), or None."""
        if self.prior is None:
            return None
        from ..neural.motion_prior import PriorRegularizer

        self.prior.mass = world.model(values).mass.detach()
        self.regularizer = PriorRegularizer(magnitude=self.settings.prior_magnitude,
                                            energy_injection=self.settings.prior_energy_injection)
        return self.regularizer.wrap(self.prior)

    def prior_loss(self):
        return None if self.regularizer is None else self.regularizer.loss()

    def step(self, lr: float) -> None:
        if self.optimizer is None:
            return
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- checkpoint tensors
    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {}
        for name, module in self.modules.items():
            for key, value in module.state_dict().items():
                out[f"{prefix}{name}.{key}"] = value.detach().clone()
        if self.optimizer is not None:
            for index, state in self.optimizer.state_dict()["state"].items():
                for key, value in state.items():
                    out[f"{prefix}netopt.{index}.{key}"] = torch.as_tensor(value).detach().clone()
        return out

    def restore(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        for name, module in self.modules.items():
            head = f"{prefix}{name}."
            weights = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
            if not weights:
                raise KeyError(f"{head}* (network weights)")
            module.load_state_dict(weights)
        if self.optimizer is not None:
            head = f"{prefix}netopt."
            state: dict[int, dict] = {}
            for name, value in tensors.items():
                if name.startswith(head):
                    index, key = name[len(head):].split(".", 1)
                    state.setdefault(int(index), {})[key] = value.clone()
            self.optimizer.load_state_dict({"state": state,
                                            "param_groups": self.optimizer.state_dict()["param_groups"]})

    def save(self, run_dir: Path) -> dict[str, str]:
        """Write the trained networks into ``run_dir``; returns {"refiner"|"motion_prior": file name}."""
        out = {}
        if self.refiner is not None:
            self.refiner.save(Path(run_dir) / REFINER_FILE)
            out["refiner"] = REFINER_FILE
        if self.prior is not None:
            self.prior.save(Path(run_dir) / PRIOR_FILE)
            out["motion_prior"] = PRIOR_FILE
        return out


def refine_layers(refiner, out: dict, centres: torch.Tensor, camera) -> torch.Tensor:
    """Refined rgb (T, H, W, 3) of differentiable render layers ``out`` (rgb, alpha, depth,
    segmentation, normal) whose sphere centres are ``centres`` (T, N, 3); the exact backward flow
    comes from the depth, segmentation and centres (no gradient through the flow itself)."""
    from ..neural.refiner import layer_features
    from ..render.flow import optical_flow

    with torch.no_grad():
        flow = optical_flow(camera, out["depth"].detach().cpu(), out["segmentation"].detach().cpu(),
                            centres.detach().cpu())
    dtype = next(refiner.parameters()).dtype
    features = layer_features({k: out[k].cpu() for k in ("rgb", "depth", "normal", "segmentation", "alpha")},
                              refiner.config, dtype=dtype)
    refined = refiner(features, flow["flow_backward"], flow["occlusion_backward"])
    return refined.to(device=out["rgb"].device, dtype=out["rgb"].dtype)
