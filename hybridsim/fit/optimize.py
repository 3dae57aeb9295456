"""The fit loop: restarts, coarse-to-fine time windows, Levenberg-Marquardt (a few values) or Adam
(many values, networks) on reparameterised values, checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import HybridsimError, SimulationError
from .checkpoint import clear_checkpoint, load_checkpoint, save_checkpoint
from .networks import NetworkSettings, resolve_networks
from .evidence import Evidence, load_masks, load_tracks, track_loss
from .nuisance import DRAG, OFFSET, drag_hook, extra_frames, nuisance_specs, shift_trajectory, split_nuisance
from .losses import (APPEARANCE_TOLERANCE, DEFAULT_WEIGHTS, centroid_loss, charbonnier, multiscale_rgb_loss,
                     rendered_centroids, silhouette_loss)
from .levenberg import LM_MAX_COMPONENTS, LM_SCENE_KINDS, LevenbergMarquardt, fit_residuals
from .params import ParamSpec, param_specs
from .target import (Target, first_frame_background, load_camera_json, load_target_frames, observed_coverage,
                     observed_target, prepare_target)

__all__ = ["fit", "FitResult", "FitSettings", "NetworkSettings"]

BACKGROUND_AGREEMENT = 0.9
"""Fraction of pixels where the target's median background must match the scene's rendered
background (mean |difference| < APPEARANCE_TOLERANCE) for the scene's background to be used in
background subtraction."""
OBSERVED_COVERAGE_KINDS = ("spheres", "rigid", "fluid", "mpm")
"""Scene kinds whose fits go on to compare observed coverages by default (``FitSettings.coverage =
"auto"``). Loss at the true values of a self-rendered target, rendered vs observed comparison
(rgb weight 0.1 included): spheres (bounce_fit) 0.0926 vs 5.3e-6, 2D smoke plume 0.214 vs 7.9e-6,
MPM jelly block 0.0388 vs 7.9e-6, MPM liquid column 0.0167 vs 7.5e-6, rigid spring 0.0898 vs ~0."""
CAMERA_FIELDS = ("position", "look_at", "up", "fovy_deg", "width", "height", "principal_point", "projection",
                 "ortho_height")


@dataclass(frozen=True)
class FitSettings:
    """Everything that shapes the optimisation path; a checkpoint resumes only under equal settings
    (``iterations`` and ``restarts`` may change between runs: restarts are independent and each
    schedule below depends only on the iteration index, never on the total)."""

    lr: float = 0.05
    """Adam learning rate in reparameterised units (logit of the range fraction, or value units)."""
    lr_hold: int = 15
    """The learning rate stays at ``lr`` for this many iterations, then decays ..."""
    lr_decay: float = 0.85
    """... by this factor per iteration ..."""
    lr_floor: float = 0.05
    """... down to this fraction of ``lr``."""
    betas: tuple = (0.5, 0.9)
    """Adam's moment decay rates (less momentum than the default: fewer overshoots)."""
    window_start: float = 1.0 / 3.0
    """Coarse to fine in time: the first iteration fits this fraction of the frames (at least 8) ..."""
    window_iterations: int = 20
    """... and the window grows linearly to all frames by this iteration."""
    candidates: int = 64
    """Restart k >= 1 starts from the best (by centroid loss) of this many random draws in the ranges."""
    rigid_candidates: int = 12
    """The same for rigid-body scenes (their rollouts are not batched, so fewer draws)."""
    weights: tuple = tuple(sorted(DEFAULT_WEIGHTS.items()))
    """Loss weights (name, weight)."""
    rgb: str = "auto"
    """"auto": use the rgb term when the backgrounds agree; "on"/"off" force it."""
    max_offset: float = 0.0
    """> 0: learn the target's start offset after the simulation, in [0, max_offset] frames (nuisance)."""
    drag: str | None = None
    """"linear" or "quadratic": learn an air-drag coefficient on the moving objects of a sphere or
    rigid-body scene (nuisance)."""
    drag_max: float = 2.0
    """Upper end of the drag coefficient's range ([1/s] linear, [1/m] quadratic)."""
    gradients: str = "autodiff"
    """"autodiff" (through simulation and rendering), or "finite_difference": central differences
    of the loss in the reparameterised values (2 rollouts per value component; a reference for
    benchmarks and a cross-check, not a faster path)."""
    fd_step: float = 1e-2
    """Step of the finite differences, in reparameterised units."""
    optimizer: str = "auto"
    """"levenberg_marquardt" (:mod:`hybridsim.fit.levenberg`), "adam", or "auto": Levenberg-Marquardt
    for rigid-body scenes (LM_SCENE_KINDS) with at most LM_MAX_COMPONENTS value components, without
    networks and with autodiff gradients, else Adam (finite-difference gradients keep Adam: they
    are the benchmarks' reference)."""
    lm_fd_step: float = 0.1
    """Step of the forward differences of the Levenberg-Marquardt Jacobian, in reparameterised units
    (times max(|u|, 1) for unbounded values): large enough to step over the residuals' small-scale
    roughness (contact events between substeps, pixel edges), which a 0.01 step resolves as noise."""
    lm_window_iterations: int = 6
    """Levenberg-Marquardt's ``window_iterations``: its steps are larger, so the window grows faster."""
    coverage: str = "auto"
    """What the silhouette, centroid and size terms compare: "rendered": the target's mask
    (:func:`hybridsim.fit.target.foreground_mask`) against the renderer's soft coverage;
    "observed": in addition, once the fit has settled on that, the same smooth background
    subtraction (:func:`hybridsim.fit.target.observed_coverage`) of the target (over its
    background) and of each render (over the scene's empty render), to the end of the fit and for
    the final losses and the Laplace uncertainty. Levenberg-Marquardt switches when it has
    converged; Adam when the window covers the whole clip and the loss has plateaued
    (``observed_patience``, ``observed_plateau``), with fresh moments and its learning-rate
    schedule restarted at ``observed_lr`` times ``lr``; fits with finite-difference gradients or
    networks (refiner, motion prior) keep the rendered coverage. "auto": observed for sphere,
    rigid-body, grid-fluid and MPM scenes (OBSERVED_COVERAGE_KINDS) whose target shares the
    scene's look (the scene's background is used for subtraction), rendered otherwise. The mesh renderer's soft
    edges make its coverage < 1 inside small objects and blur edges over ~2 px, which the target's
    mask (1 inside, edges rescaled by the interior colour) does not reproduce, so a self-rendered
    target scored a loss above zero at its true values (0.0898 for the spring at 64x48); observed
    coverages are equal there. With another look the two sides' contrast differs and the rendered
    coverage is the less biased comparison. The rendered phase comes first because the observed
    coverage (1 inside objects) is flatter across a long valley, where Levenberg-Marquardt stalled
    (the sliding box's push and friction, measured: friction 0.511 for 0.55)."""
    observed_patience: int = 5
    """Adam switches to observed coverages (``coverage``) after this many consecutive full-window
    iterations ..."""
    observed_plateau: float = 0.02
    """... whose losses lie within this fraction of their smallest (the rendered comparison's plateau)."""
    observed_lr: float = 0.05
    """Adam's learning rate after the switch, as a fraction of ``lr`` (the hold/decay/floor schedule
    starts again at the switch; the moments start from zero)."""

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["weights"] = dict(self.weights)
        return data


@dataclass
class FitResult:
    """What :func:`fit` returns. Values are plain floats (or lists of 3 for vectors)."""

    values: dict[str, Any]
    initial: dict[str, Any]
    uncertainties: dict[str, Any]
    identifiable: dict[str, Any]
    final_loss: float
    losses: list[float]
    """Per-iteration (window) loss of the best restart."""
    loss_history: list[list[float]]
    """Per restart."""
    final_losses: list[float]
    """Full-window loss per restart at its final values."""
    best_restart: int
    iterations: int
    restarts: int
    losses_used: dict[str, float]
    frames: int
    """Frames (images) compared, frame 0 the initial state."""
    wall_time_s: float
    resumed_from: int
    """Iterations (over all restarts) restored from a checkpoint; 0 for a fresh fit."""
    spec: Any
    """The fitted SceneSpec."""
    run_dir: Path | None = None
    target: Target | None = None
    details: dict = field(default_factory=dict)
    refiner: Any = None
    """The best restart's trained VideoRefiner (fits with ``refiner=``), else None."""
    motion_prior: Any = None
    """The best restart's trained ResidualForcePrior (fits with ``motion_prior=``), else None."""
    nuisance: dict = field(default_factory=dict)
    """Fitted nuisance values (start offset [frames], drag coefficient), not part of the scene."""


# -------------------------------------------------------------------------------------------- helpers

def _scene_digest(spec) -> str:
    text = spec.to_toml() + json.dumps({p: [list(i.value) if isinstance(i.value, tuple) else i.value, i.range]
                                        for p, i in sorted(spec.learnable.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def apply_camera(spec, camera: dict | None):
    """Scene with the camera.json keys applied (fps excluded: that is the target's frame rate)."""
    if not camera:
        return spec
    overrides = {f"camera.{k}": camera[k] for k in CAMERA_FIELDS if k in camera}
    return spec.with_values(overrides) if overrides else spec


def render_camera(spec, max_render_height: int | None):
    """The camera to render with: the scene's, shrunk (same view) to at most ``max_render_height`` rows."""
    from ..render.camera import Camera

    camera = Camera.from_spec(spec.camera)
    if max_render_height and camera.height > max_render_height:
        factor = max_render_height / camera.height
        width = max(1, round(camera.width * factor))
        point = None if camera.principal_point is None else (camera.cx * width / camera.width,
                                                             camera.cy * max_render_height / camera.height)
        camera = camera.replace(width=width, height=int(max_render_height), principal_point=point)
    return camera


def _plain(value: torch.Tensor):
    value = value.detach().double()
    return float(value) if value.dim() == 0 else [float(v) for v in value]


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _fmt(value) -> str:
    if isinstance(value, list):
        return "(" + ",".join(f"{v:.3g}" for v in value) + ")"
    return f"{value:.4g}"


class _Problem:
    """Scene + target + loss: evaluates the loss of a window of frames for given values."""

    def __init__(self, world, camera, target: Target, weights: dict[str, float], settings: FitSettings | None = None):
        from .scenes import fit_scene

        self.world, self.camera, self.weights = world, camera, weights
        self.evidence = Evidence()
        self.max_offset = settings.max_offset if settings is not None else 0.0
        self.drag = settings.drag if settings is not None else None
        self.networks = None  # the current restart's RestartNetworks (refiner, motion prior), if any
        self.scene = fit_scene(world)
        self.observe: dict | None = None
        """When set (``background``: the scene's empty render, ``threshold``), renders are compared
        through :func:`observed_coverage` (as the target's mask is) instead of their coverage."""
        self._phases: dict | None = None  # {False: (target, None), True: (observed target, observe)}
        self.target = dataclasses.replace(  # on the simulation's device
            target, rgb=target.rgb.to(world.device), mask=target.mask.to(world.device),
            centroid=target.centroid.to(world.device), visible=target.visible.to(world.device))

    def enable_observed(self, target: Target, observe: dict) -> None:
        """Make the observed comparison available (``use(True)``): ``target`` with the observed
        mask, ``observe`` the keyword arguments of :func:`observed_coverage` for the renders."""
        observed = dataclasses.replace(self.target, mask=target.mask.to(self.world.device),
                                       centroid=target.centroid.to(self.world.device), area=target.area,
                                       visible=target.visible.to(self.world.device))
        self._phases = {False: (self.target, None), True: (observed, observe)}

    def use(self, observed: bool) -> None:
        """Compare observed coverages (True) or the target's mask with the rendered coverage."""
        if self._phases is not None:
            self.target, self.observe = self._phases[bool(observed)]

    def render(self, values: dict, frames: int):
        values, nuisance = split_nuisance(values)
        nets = self.networks
        if nuisance or self.max_offset > 0 or self.drag is not None:
            hook = None
            if self.drag is not None:
                hook = drag_hook(self.world, values, self.drag, nuisance[DRAG])
            trajectory = self.scene.rollout(values, frames - 1 + extra_frames(self.max_offset), motion_prior=hook)
            if OFFSET in nuisance:
                trajectory = shift_trajectory(trajectory, nuisance[OFFSET], frames, self.scene.time_fields)
            return trajectory, self.scene.render(trajectory, values, self.camera)
        if nets is None:
            trajectory = self.scene.rollout(values, frames - 1)
            return trajectory, self.scene.render(trajectory, values, self.camera)
        trajectory = self.scene.rollout(values, frames - 1, motion_prior=nets.prior_hook(self.world, values))
        out = self.scene.render(trajectory, values, self.camera)
        if nets.refiner is not None:
            from .networks import refine_layers

            out["rgb_render"] = out["rgb"]
            out["rgb"] = refine_layers(nets.refiner, out, self.scene.centres(trajectory), self.camera)
        return trajectory, out

    def coverage(self, out: dict) -> torch.Tensor:
        """What the target's mask is compared with: the render's coverage, or the observed coverage
        of the render (``observe``)."""
        if self.observe is None:
            return out["coverage"]
        return observed_coverage(out["rgb"], **self.observe).to(out["coverage"].dtype)

    def loss(self, values: dict, frames: int) -> tuple[torch.Tensor, dict[str, float]]:
        total, terms, _ = self.evaluate(values, frames)
        return total, terms

    def evaluate(self, values: dict, frames: int, residuals: bool = False):
        """(total loss, {term: float}, residual vector or None) of one rollout and render."""
        trajectory, out = self.render(values, frames)
        t = self.target
        alpha = self.coverage(out)
        pixels = self.camera.project(self.scene.centres(trajectory))[0]
        projected = pixels.mean(dim=1)
        terms = {
            "silhouette": silhouette_loss(alpha, t.mask[:frames]),
            "centroid": centroid_loss(rendered_centroids(alpha, projected), t.centroid[:frames], t.visible[:frames]),
        }
        if self.weights.get("rgb", 0.0) > 0.0:
            terms["rgb"] = multiscale_rgb_loss(out["rgb"], t.rgb[:frames])
        evidence = self.evidence
        if evidence.masks is not None:
            # the user's masks are drawn objects, not background subtraction: the rendered coverage
            terms["masks"] = silhouette_loss(out["coverage"], evidence.masks[:frames].to(alpha.device))
        if evidence.track_points is not None:
            terms["tracks"] = track_loss(pixels, evidence.track_points[:frames].to(pixels.device),
                                         evidence.track_present[:frames].to(pixels.device))
        total = sum(self.weights[name] * term for name, term in terms.items())
        prior = self.networks.prior_loss() if self.networks is not None else None
        if prior is not None:
            terms["prior"] = prior
            total = total + prior  # the regulariser carries its own weights
        vector = fit_residuals(alpha, projected, pixels, t, frames, self.weights, evidence,
                               evidence_alpha=out["coverage"]) if residuals else None
        return total, {name: float(term.detach()) for name, term in terms.items()}, vector


def _evidence(scene, target: Target, camera, masks, tracks) -> Evidence:
    """The user's masks and tracks at the render size and the scene's frames (AssetError naming the file)."""
    evidence, digests = Evidence(), []
    args = (target.frame_index, target.source_frames, target.source_size, camera.height, camera.width)
    if masks is not None:
        evidence.masks, digest = load_masks(masks, *args)
        digests.append(digest)
    if tracks is not None:
        evidence.track_points, evidence.track_present, digest = load_tracks(tracks, *args, scene.object_names())
        digests.append(digest)
    evidence.digest = hashlib.sha256("".join(digests).encode()).hexdigest()
    return evidence


def _appearance_gap(scene, camera, target: Target) -> float:
    """Mean |target median background - scene background rendered without its moving objects|."""
    return float((scene.background(camera) - target.background).abs().mean())


def _screen(scene, camera, target: Target, specs: list[ParamSpec], seed: int, count: int):
    """Best of ``count`` random value sets by the centroid loss of projected object centres
    (rollouts without rendering: one batched rollout of ``count`` worlds for spheres)."""
    generator = torch.Generator().manual_seed(seed)
    draws = {s.path: s.sample(generator, count) for s in specs}
    frames = target.frame_count
    with torch.no_grad():
        positions = scene.screen_centres(draws, count, frames - 1)  # (T, M, N, 3)
        pixels, depth = camera.project(positions.double())
        centre = pixels.mean(dim=2)  # (T, M, 2)
        behind = (depth <= 1e-3).any(dim=2)
        diff = centre - target.centroid[:frames, None, :]
        dist = torch.sqrt((diff * diff).sum(-1))
        far = float(math.hypot(camera.width, camera.height))
        dist = torch.where(behind | ~torch.isfinite(dist), torch.full_like(dist, far), dist.clamp(max=far))
        visible = target.visible[:frames]
        score = charbonnier(dist[visible], 1.0).mean(dim=0) if bool(visible.any()) else torch.zeros(count)
    best = int(torch.argmin(score))
    return {s.path: draws[s.path][best] for s in specs}, float(score[best])


def _finite_difference_gradients(problem: _Problem, state: "_RestartState", window: int, step: float):
    """Loss at the current values (no graph) and central-difference gradients written into ``u.grad``."""
    if state.networks is not None:
        raise HybridsimError("finite-difference gradients cannot train a refiner or motion prior")
    with torch.no_grad():
        loss, terms = problem.loss(state.values(), window)
        for u in state.u:
            grad = torch.zeros_like(u)
            flat = u.data.view(-1)
            for i in range(flat.numel()):
                saved = float(flat[i])
                flat[i] = saved + step
                plus = float(problem.loss(state.values(), window)[0])
                flat[i] = saved - step
                minus = float(problem.loss(state.values(), window)[0])
                flat[i] = saved
                grad.view(-1)[i] = (plus - minus) / (2.0 * step)
            u.grad = grad
    return loss, terms


def _lr_at(settings: FitSettings, iteration: int) -> float:
    decayed = max(0, iteration - settings.lr_hold)
    return settings.lr * max(settings.lr_decay ** decayed, settings.lr_floor)


def _window_at(settings: FitSettings, iteration: int, frames: int, lm: bool = False) -> int:
    start = min(frames, max(8, math.ceil(settings.window_start * frames)))
    grow = settings.lm_window_iterations if lm else settings.window_iterations
    if iteration >= grow or start >= frames:
        return frames
    return min(frames, start + math.ceil((frames - start) * iteration / grow))


def _plateaued(settings: FitSettings, state: "_RestartState", frames: int) -> bool:
    """Adam's switch to observed coverages: the last ``observed_patience`` iterations were on the
    full window and their losses lie within ``observed_plateau`` of their smallest."""
    n = int(settings.observed_patience)
    if n < 1 or len(state.losses) < n or any(w != frames for w in state.windows[-n:]):
        return False
    recent = state.losses[-n:]
    return max(recent) - min(recent) <= settings.observed_plateau * min(recent)


def _observed(settings: FitSettings, kind: str, networks, background_source: str, lm: bool = False) -> bool:
    """Whether the fit compares observed coverages of target and renders (see
    ``FitSettings.coverage``) in its later phase. Never with networks (a refiner's images are not
    the scene's render; a motion prior trains along with Adam's values) nor for Adam on
    finite-difference gradients (the benchmarks' reference: their steps move renders by less than
    the 8-bit rounding of the observed coverage; ``lm``: Levenberg-Marquardt, whose own Jacobian
    steps are large); never by "auto" for a target with another look."""
    if settings.coverage not in ("auto", "observed", "rendered"):
        raise HybridsimError(f"coverage must be 'auto', 'observed' or 'rendered' (got {settings.coverage!r})")
    if networks is not None or (not lm and settings.gradients != "autodiff"):
        return False
    return settings.coverage == "observed" or (settings.coverage == "auto" and kind in OBSERVED_COVERAGE_KINDS
                                               and background_source == "scene")


def _use_lm(settings: FitSettings, specs: list[ParamSpec], networks, kind: str) -> bool:
    """Levenberg-Marquardt or Adam for this fit (see ``FitSettings.optimizer``)."""
    if settings.optimizer == "adam":
        return False
    if settings.optimizer == "levenberg_marquardt":
        if networks is not None:
            raise HybridsimError("Levenberg-Marquardt cannot train a refiner or motion prior; use optimizer 'adam'")
        return True
    components = sum(s.size for s in specs)
    return (networks is None and settings.gradients == "autodiff" and kind in LM_SCENE_KINDS
            and components <= LM_MAX_COMPONENTS)


def _lm_iteration(problem: _Problem, state: "_RestartState", window: int, full_window: bool, fd_step: float):
    """One Levenberg-Marquardt iteration of ``state`` (its values move in place): (loss, terms)."""
    u0 = torch.cat([u.detach().reshape(-1) for u in state.u])
    steps = []
    for s, u in zip(state.specs, state.u):
        steps += [fd_step if s.bounded else fd_step * max(abs(float(x)), 1.0) for x in u.detach().reshape(-1)]

    def evaluate(flat: torch.Tensor, frames: int):
        with torch.no_grad():
            total, terms, vector = problem.evaluate(state.values_at(flat), frames, residuals=True)
        if not torch.isfinite(total):
            raise SimulationError("fit loss became non-finite")
        return total, terms, vector

    loss, terms, u1 = state.lm.step(evaluate, u0, window, fd_steps=torch.tensor(steps, dtype=torch.float64),
                                    full_window=full_window)
    state.set_flat(u1)
    return torch.tensor(loss, dtype=torch.float64), terms


# -------------------------------------------------------------------------------------------- restarts

class _RestartState:
    """Reparameterised values, Adam state and history of one restart."""

    def __init__(self, index: int, specs: list[ParamSpec], initial: dict[str, torch.Tensor], lr: float,
                 betas=(0.9, 0.999), networks=None, lm: bool = False):
        self.index = index
        self.networks = networks.copy() if networks is not None else None  # RestartNetworks
        self.specs = specs
        self.initial = {k: v.detach().double().clone() for k, v in initial.items()}
        self.u = [s.to_u(self.initial[s.path]).requires_grad_(True) for s in specs]
        self.optimizer = torch.optim.Adam(self.u, lr=lr, betas=tuple(betas))
        self.lm = LevenbergMarquardt() if lm else None
        """Levenberg-Marquardt state (damping, converged) when it drives this restart instead of Adam."""
        self.iteration = 0
        self.losses: list[float] = []
        self.windows: list[int] = []
        self.terms: list[dict] = []
        self.final_loss: float | None = None
        self.observed_from: int | None = None
        """Iteration at which this restart started comparing observed coverages (None: not yet)."""

    def start_observed(self) -> None:
        """Switch to observed coverages from the next iteration; Adam's moments start from zero."""
        self.observed_from = self.iteration
        if self.lm is not None:
            self.lm.start_observed_phase()
        else:
            self.optimizer.state.clear()

    def values(self) -> dict[str, torch.Tensor]:
        return {s.path: s.to_value(u) for s, u in zip(self.specs, self.u)}

    def values_at(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Values for a flat vector of reparameterised values (the order of ``self.u``)."""
        out, i = {}, 0
        for s, u in zip(self.specs, self.u):
            out[s.path] = s.to_value(flat[i:i + u.numel()].reshape(u.shape))
            i += u.numel()
        return out

    def set_flat(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            i = 0
            for u in self.u:
                u.copy_(flat[i:i + u.numel()].reshape(u.shape))
                i += u.numel()

    def plain_values(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.values().items()}

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, u in enumerate(self.u):
            out[f"r{self.index}.u.{i}"] = u.detach().clone()
            state = self.optimizer.state.get(u)
            if state:
                for key in ("step", "exp_avg", "exp_avg_sq"):
                    out[f"r{self.index}.{key}.{i}"] = torch.as_tensor(state[key]).detach().clone()
        if self.networks is not None:
            out.update(self.networks.tensors(f"r{self.index}."))
        return out

    def to_json(self) -> dict:
        lm = None if self.lm is None else {"damping": self.lm.damping, "converged": self.lm.converged,
                                           "step_scale": self.lm.step_scale, "observed": self.lm.observed}
        return {"index": self.index, "iteration": self.iteration, "levenberg_marquardt": lm,
                "initial": {k: _plain(v) for k, v in self.initial.items()},
                "losses": self.losses, "windows": self.windows, "terms": self.terms, "final_loss": self.final_loss,
                "observed_from": self.observed_from}

    @classmethod
    def restore(cls, data: dict, tensors: dict, specs: list[ParamSpec], lr: float, betas,
                networks=None, lm: bool = False) -> "_RestartState":
        index = int(data["index"])
        initial = {s.path: torch.tensor(data["initial"][s.path], dtype=torch.float64) for s in specs}
        state = cls(index, specs, initial, lr, betas, networks, lm=lm)
        if lm:
            saved = data["levenberg_marquardt"]
            state.lm = LevenbergMarquardt(float(saved["damping"]), bool(saved["converged"]), float(saved["step_scale"]),
                                          bool(saved.get("observed", False)))
        if state.networks is not None:
            state.networks.restore(tensors, f"r{index}.")
        with torch.no_grad():
            for i, u in enumerate(state.u):
                u.copy_(tensors[f"r{index}.u.{i}"])
                if f"r{index}.step.{i}" in tensors:
                    state.optimizer.state[u] = {key: tensors[f"r{index}.{key}.{i}"].clone()
                                                for key in ("step", "exp_avg", "exp_avg_sq")}
        state.iteration = int(data["iteration"])
        state.losses = [float(x) for x in data["losses"]]
        state.windows = [int(x) for x in data["windows"]]
        state.terms = list(data.get("terms", []))
        observed_from = data.get("observed_from")
        if observed_from is None and state.lm is not None and state.lm.observed:
            observed_from = state.iteration  # written before the key existed: the switch iteration is unknown
        state.observed_from = None if observed_from is None else int(observed_from)
        return state


# -------------------------------------------------------------------------------------------- fit

def fit(spec, target, *, iterations: int = 60, restarts: int = 1, lr: float = 0.05, frames: int | None = None,
        camera: dict | str | Path | None = None, target_fps: float | None = None, run_dir=None,
        progress: bool = True, resume: bool = True, settings: FitSettings | None = None,
        max_render_height: int | None = 160, backend: str | None = None, device: str | None = None,
        threads: int | None = None, uncertainty: bool = True, outputs: bool = True,
        callback: Callable[[dict], None] | None = None, refiner=None, motion_prior=None,
        network_settings: NetworkSettings | None = None, masks=None, tracks=None) -> FitResult:
    """Fit every ``learn = true`` value of ``spec`` to ``target`` by gradient descent through
    simulation and rendering. See :mod:`hybridsim.fit` for the losses.

    ``spec``: a SceneSpec or scene path. ``target``: frames (F, H, W, 3) uint8 or float in [0, 1], or
    a path to a video / frame folder / image. ``frames``: simulated frames to fit (images compared
    = frames + 1, frame 0 being the initial state); default all the target and scene cover.
    ``camera``: camera.json data or path (overrides the scene camera; its ``fps`` is the target's
    frame rate). ``run_dir``: checkpoint there after every iteration, resume from it (``resume``),
    and write the outputs (``outputs``). ``callback(info)`` runs after each iteration's checkpoint.
    ``threads``: torch CPU threads during the fit (restored afterwards); 1 is much faster than
    several on a machine whose cores are busy with other work.

    ``refiner`` (a VideoRefiner or weights path) and ``motion_prior`` (a ResidualForcePrior, a weights
    path or ``"new"``) are trained jointly with the values (see :mod:`hybridsim.fit.networks`;
    ``network_settings`` sets their learning rate, freezing and regularisers); sphere scenes only.

    ``masks`` (a folder of one binary PNG per target frame) and ``tracks`` (a CSV / JSON file of
    per-frame pixel positions of the moving objects) add the loss terms ``masks`` and ``tracks``
    (see :mod:`hybridsim.fit.evidence`). ``settings.max_offset`` / ``settings.drag`` learn the target's
    start offset and air drag as nuisance values (:mod:`hybridsim.fit.nuisance`).
    """
    if threads is not None and threads < 1:
        raise HybridsimError(f"threads must be >= 1 (got {threads})")
    previous = torch.get_num_threads()
    with contextlib.ExitStack() as stack:  # the run directory's lock joins it once the target is read
        if threads is not None:
            torch.set_num_threads(int(threads))
            stack.callback(torch.set_num_threads, previous)
        return _fit(spec, target, iterations=iterations, restarts=restarts, lr=lr, frames=frames, camera=camera,
                    target_fps=target_fps, run_dir=run_dir, progress=progress, resume=resume, settings=settings,
                    max_render_height=max_render_height, backend=backend, device=device,
                    uncertainty=uncertainty, outputs=outputs, callback=callback, stack=stack, refiner=refiner,
                    motion_prior=motion_prior, network_settings=network_settings, masks=masks, tracks=tracks)


def retimed_for_target(spec, target_fps: float | None):
    """``spec`` sampled at the target's frame times, and the ratio of its frame rate to the scene's.

    A target filmed at 24 fps compared with a 30 fps scene by nearest frames is off by up to 1/48 s
    per frame (a ball falling at 5 m/s: 10 cm), which biases what is fitted. Instead the fit
    simulates and renders at ``target_fps / n`` (``n`` = the nearest whole ratio of the rates, at
    least 1, so a 60 fps target is fitted at 30 fps on every other frame): same duration, and
    substeps chosen to keep the simulation step within a few per cent of the scene's. Unchanged when
    the rates agree or the target's rate is unknown."""
    if target_fps is None:
        return spec, 1.0
    scene_fps = spec.time.fps
    fps = float(target_fps) / max(1, round(float(target_fps) / scene_fps))
    if abs(fps / scene_fps - 1.0) < 1e-6:
        return spec, 1.0
    substeps = max(1, round(spec.time.substeps * scene_fps / fps))
    changes = {"time.fps": fps, "time.substeps": substeps}
    if spec.time.frames is not None:
        changes["time.frames"] = max(1, int(math.floor(spec.time.frames * fps / scene_fps + 1e-6)))
    return spec.with_values(changes), fps / scene_fps


def _fit(spec, target, *, iterations, restarts, lr, frames, camera, target_fps, run_dir, progress, resume,
         settings, max_render_height, backend, device, uncertainty, outputs, callback, stack, refiner=None,
         motion_prior=None, network_settings=None, masks=None, tracks=None) -> FitResult:
    from ..scene import load_scene
    from ..sim.world import World
    from .scenes import fit_scene

    started = time.perf_counter()
    if not hasattr(spec, "learnable"):
        spec = load_scene(spec)
    if iterations < 0 or restarts < 1:
        raise HybridsimError(f"need iterations >= 0 and restarts >= 1 (got {iterations}, {restarts})")
    if not lr > 0:
        raise HybridsimError(f"learning rate must be positive (got {lr})")
    if not spec.learnable:
        raise HybridsimError("no learnable fields (mark some with learn = true)", file=spec.source)
    if settings is not None and settings.gradients not in ("autodiff", "finite_difference"):
        raise HybridsimError(f"gradients must be 'autodiff' or 'finite_difference' (got {settings.gradients!r})")
    if settings is not None and settings.optimizer not in ("auto", "adam", "levenberg_marquardt"):
        raise HybridsimError("optimizer must be 'auto', 'adam' or 'levenberg_marquardt' "
                             f"(got {settings.optimizer!r})")
    from .scenes import check_fittable

    check_fittable(spec)
    if isinstance(camera, (str, Path)):
        camera = load_camera_json(camera)
    spec = apply_camera(spec, camera)
    if camera and "fps" in camera:
        target_fps = float(camera["fps"])

    source = None
    if isinstance(target, (str, Path)):
        source = str(target)
        target, video_fps = load_target_frames(target)
        if target_fps is None:
            target_fps = video_fps
    if frames is not None and frames < 1:
        raise HybridsimError(f"--frames must be >= 1 (got {frames})")
    scene_spec = spec
    spec, rate = retimed_for_target(spec, target_fps)
    if frames is not None:
        frames = max(1, int(round(frames * rate)))
    max_images = (spec.frame_count if frames is None else int(frames)) + 1

    cam = render_camera(spec, max_render_height)
    prepared = prepare_target(target, height=cam.height, width=cam.width, scene_fps=spec.time.fps,
                              target_fps=target_fps, max_frames=max_images, source=source)
    images = prepared.frame_count

    settings = settings or FitSettings(lr=float(lr))
    if settings.lr != float(lr):
        settings = dataclasses.replace(settings, lr=float(lr))
    world_kwargs = {"backend": backend, "device": device}
    world = World(spec, **world_kwargs)
    weights = dict(settings.weights)
    problem_scene = fit_scene(world)
    networks = resolve_networks(refiner, motion_prior, world, problem_scene.kind, network_settings, spec.seed)
    # When the target shows the scene's own background on most pixels, subtract that (exact)
    # background instead of the temporal median, which misses objects resting for half the clip.
    scene_background = problem_scene.background(cam)
    agree = float(((scene_background - prepared.background).abs().mean(dim=-1) < APPEARANCE_TOLERANCE).float().mean())
    background_source = "median"
    if agree >= BACKGROUND_AGREEMENT:
        prepared = prepare_target(target, height=cam.height, width=cam.width, scene_fps=spec.time.fps,
                                  target_fps=target_fps, max_frames=max_images, source=source,
                                  background=scene_background)
        background_source = "scene"
    else:  # another look (colours, light, camera, renderer)
        # cast shadows fall where the target's light puts them, not ours: leave them out of both sides
        drop_shadows = problem_scene.kind in ("spheres", "rigid")
        first = None
        if settings.max_offset == 0 and not any(p.endswith((".position", ".center")) for p in spec.learnable):
            # the objects start where the scene puts them, so the target's first frame is its background
            # except where the scene's own frame 0 shows them
            first = first_frame_background(prepared.rgb, prepared.background, problem_scene.initial_coverage(cam),
                                           prepared.threshold)
        if first is not None or drop_shadows:
            prepared = prepare_target(target, height=cam.height, width=cam.width, scene_fps=spec.time.fps,
                                      target_fps=target_fps, max_frames=max_images, source=source, background=first,
                                      drop_shadows=drop_shadows)
            background_source = "median" if first is None else "first_frame"
    gap = _appearance_gap(problem_scene, cam, prepared)
    use_rgb = settings.rgb == "on" or (settings.rgb == "auto" and (gap <= APPEARANCE_TOLERANCE or (
        networks is not None and networks.refiner is not None)))
    if not use_rgb:
        weights.pop("rgb", None)
    weights = {k: v for k, v in weights.items() if v > 0}
    problem = _Problem(world, cam, prepared, weights, settings)
    shadows_dropped = background_source != "scene" and problem.scene.kind in ("spheres", "rigid")
    if background_source != "scene" and problem.scene.kind == "rigid":
        problem.scene.shadows_in_coverage = False  # the target's mask has its shadows dropped
    if masks is not None or tracks is not None:
        problem.evidence = _evidence(problem_scene, prepared, cam, masks, tracks)
        for name, given in (("masks", masks), ("tracks", tracks)):
            if given is not None:
                weights[name] = 1.0
    specs = param_specs(spec)
    extra_specs = nuisance_specs(settings.max_offset, settings.drag, settings.drag_max)
    if extra_specs:
        if settings.max_offset > 0 and problem_scene.time_fields is None:
            raise HybridsimError(f"a start offset (--offset) cannot be learned for {problem_scene.kind} scenes: "
                                 "interpolating grid fields between frames cross-fades them", file=spec.source)
        if settings.drag is not None and problem_scene.kind not in ("spheres", "rigid"):
            raise HybridsimError("air drag (--drag) can be learned for rigid-body and sphere scenes only so far "
                                 f"(this is a {problem_scene.kind} scene)", file=spec.source)
        if networks is not None:
            raise HybridsimError("a start offset or air drag cannot be learned together with a refiner or motion prior",
                                 file=spec.source)
    scene_specs, specs = specs, specs + extra_specs
    use_lm = _use_lm(settings, specs, networks, problem_scene.kind)
    observed = _observed(settings, problem.scene.kind, networks, background_source, lm=use_lm)
    observe, observed_prepared = None, None
    if observed:  # measure target and renders alike: the same smooth background subtraction
        observed_prepared = observed_target(prepared, prepared.background)
        observe = {"background": scene_background, "threshold": prepared.threshold}
        problem.enable_observed(observed_prepared, observe)
    # Levenberg-Marquardt / Adam first converge on the rendered coverage (smooth: soft edges and
    # interior), then go on with observed coverages, whose minimum is the truth for a same-look target

    config = {"settings": settings.to_json(), "frames": images, "render_size": [cam.width, cam.height],
              "background": background_source, "coverage": "observed" if observed else "rendered",
              "backend": world.backend, "precision": world.precision, "weights_used": weights, "seed": spec.seed}
    if networks is not None:
        config["networks"] = networks.header()
    if masks is not None or tracks is not None:
        config["evidence"] = problem.evidence.header()
    config["optimizer"] = "levenberg_marquardt" if use_lm else "adam"
    header = {"scene_sha256": _scene_digest(scene_spec), "target_sha256": prepared.digest, "config": config}

    # ---- resume ---------------------------------------------------------------------------------
    states: dict[int, _RestartState] = {}
    resumed_from, previous_wall = 0, 0.0
    if run_dir is not None:
        run_dir = Path(run_dir)
        stack.enter_context(_run_dir_lock(run_dir))
        if not resume:
            clear_checkpoint(run_dir)
        loaded = load_checkpoint(run_dir)
        if loaded is not None:
            data, tensors = loaded
            for key, what in (("scene_sha256", "scene"), ("target_sha256", "target")):
                if data.get(key) != header[key]:
                    raise HybridsimError(f"the checkpoint there was made for a different {what}; use another run "
                                         "directory or pass --fresh to discard it", file=run_dir)
            saved_config = _complete_legacy_config(data.get("config"), config)
            if saved_config != json.loads(json.dumps(config)):
                raise HybridsimError("the checkpoint there was made with different fit settings "
                                     f"({_config_diff(saved_config, config)}); use another run directory "
                                     "or pass --fresh to discard it", file=run_dir)
            try:
                for entry in data["restarts"]:
                    state = _RestartState.restore(entry, tensors, specs, settings.lr, settings.betas, networks,
                                                 lm=use_lm)
                    states[state.index] = state
            except (KeyError, TypeError, ValueError) as exc:
                raise HybridsimError(f"damaged fit checkpoint ({exc!r}); pass --fresh to discard it",
                                     file=run_dir) from None
            resumed_from = sum(s.iteration for s in states.values())
            previous_wall = float(data.get("wall_time_s", 0.0))

    def save(step: int):
        if run_dir is None:
            return
        tensors = {}
        for state in states.values():
            tensors.update(state.tensors())
        body = {**header, "iterations_requested": iterations, "restarts_requested": restarts,
                "wall_time_s": previous_wall + time.perf_counter() - started,
                "restarts": [states[k].to_json() for k in sorted(states)]}
        save_checkpoint(run_dir, body, tensors, step)

    # ---- optimise -------------------------------------------------------------------------------
    from tqdm import tqdm

    done = sum(min(s.iteration, iterations) for k, s in states.items() if k < restarts)
    bar = tqdm(total=restarts * iterations, initial=done, desc="fit", unit="it", disable=not progress,
               leave=False, dynamic_ncols=True)
    step = resumed_from
    try:
        for r in range(restarts):
            if r not in states:
                if r == 0:
                    initial = {s.path: torch.tensor(s.initial if s.size > 1 else s.initial[0], dtype=torch.float64)
                               for s in specs}
                else:
                    count = settings.candidates if problem.scene.kind == "spheres" else settings.rigid_candidates
                    initial, _ = _screen(problem.scene, cam, prepared, scene_specs,
                                         seed=spec.seed * 1_000_003 + r, count=count)
                    initial.update({s.path: torch.tensor(s.initial[0], dtype=torch.float64) for s in extra_specs})
                states[r] = _RestartState(r, specs, initial, settings.lr, settings.betas, networks, lm=use_lm)
            state = states[r]
            problem.networks = state.networks
            while state.iteration < iterations:
                it = state.iteration
                window = _window_at(settings, it, images, lm=use_lm)
                if use_lm:
                    problem.use(state.lm.observed)
                    loss, terms = _lm_iteration(problem, state, window, window == images, settings.lm_fd_step)
                    _record(state, loss, terms, window)
                    if observed and state.lm.converged and not state.lm.observed:
                        state.start_observed()
                    step += 1
                    save(step)
                    _report(bar, callback, state, r, window, terms)
                    continue
                if observed and state.observed_from is None and _plateaued(settings, state, images):
                    state.start_observed()
                problem.use(state.observed_from is not None)
                lr_now = _lr_at(settings, it) if state.observed_from is None else (
                    settings.observed_lr * _lr_at(settings, it - state.observed_from))
                for group in state.optimizer.param_groups:
                    group["lr"] = lr_now
                state.optimizer.zero_grad(set_to_none=True)
                if state.networks is not None:
                    state.networks.zero_grad()
                if settings.gradients == "finite_difference":
                    loss, terms = _finite_difference_gradients(problem, state, window, settings.fd_step)
                else:
                    loss, terms = problem.loss(state.values(), window)
                if not torch.isfinite(loss):
                    raise SimulationError(f"fit loss became non-finite at restart {r}, iteration {it}",
                                          file=spec.source)
                if settings.gradients != "finite_difference":
                    loss.backward()
                state.optimizer.step()
                if state.networks is not None:
                    state.networks.step(networks.settings.lr * _lr_at(settings, it) / settings.lr)
                _record(state, loss, terms, window)
                step += 1
                save(step)
                _report(bar, callback, state, r, window, terms)
    finally:
        bar.close()

    # ---- pick the best restart on the full window ---------------------------------------------
    final_losses = []
    problem.use(observed)
    with torch.no_grad():
        for r in range(restarts):
            problem.networks = states[r].networks
            loss, _ = problem.loss(states[r].values(), images)
            states[r].final_loss = float(loss)
            final_losses.append(float(loss))
    best = min(range(restarts), key=lambda k: (final_losses[k], k))
    best_state = states[best]
    problem.networks = best_state.networks
    values, nuisance = split_nuisance(best_state.plain_values())
    initial, _ = split_nuisance({k: _plain(v) for k, v in states[0].initial.items()})
    fitted = scene_spec.with_values(values)  # the scene's own frame rate, not the fit's

    laplace = {}
    if uncertainty and extra_specs:  # the Laplace residuals know nothing of offset or drag
        laplace = {"_skipped": "not computed when nuisance terms (offset, drag) are learned"}
    elif uncertainty:
        world64 = World(spec.with_values(values), precision="float64", **world_kwargs)
        prior = best_state.networks.prior if best_state.networks is not None else None
        laplace = _laplace(world64, cam, observed_prepared if observed else prepared, specs, values, images,
                           motion_prior=prior, observe=observe if observed else None)
    uncertainties = {s.path: laplace.get(s.path, {}).get("uncertainty") for s in scene_specs}
    identifiable = {s.path: laplace.get(s.path, {}).get("identifiable") for s in scene_specs}
    wall = previous_wall + time.perf_counter() - started
    save(step)

    result = FitResult(
        values=values, initial=initial, uncertainties=uncertainties, identifiable=identifiable,
        final_loss=final_losses[best], losses=list(best_state.losses),
        loss_history=[list(states[r].losses) for r in range(restarts)], final_losses=final_losses,
        best_restart=best, iterations=max(states[r].iteration for r in range(restarts)), restarts=restarts,
        losses_used=weights, frames=images, wall_time_s=wall, resumed_from=resumed_from, spec=fitted,
        run_dir=run_dir, target=prepared,
        details={"appearance_gap": gap, "rgb_used": use_rgb, "windows": list(best_state.windows),
                 "terms": list(best_state.terms), "laplace": {k: v for k, v in laplace.items() if k.startswith("_")},
                 "curvature": {s.path: laplace.get(s.path, {}).get("curvature") for s in scene_specs},
                 "render_size": [cam.width, cam.height], "settings": settings.to_json(),
                 "background": background_source, "background_agreement": agree,
                 "shadows_dropped": shadows_dropped, "coverage": "observed" if observed else "rendered",
                 "observed_from": best_state.observed_from,
                 "wall_time_this_run_s": time.perf_counter() - started, "source": source,
                 "ranges": {s.path: None if not s.bounded else [s.lo, s.hi] for s in specs}},
        nuisance=nuisance,
    )
    if networks is not None:
        result.refiner = best_state.networks.refiner
        result.motion_prior = best_state.networks.prior
        result.details["networks"] = {**networks.header(), "files": {}}
    if run_dir is not None and outputs:
        from .report import write_outputs

        write_outputs(result, problem)
    return result


def _record(state: _RestartState, loss: torch.Tensor, terms: dict, window: int) -> None:
    state.iteration += 1
    state.losses.append(float(loss.detach()))
    state.windows.append(window)
    state.terms.append(terms)


def _report(bar, callback, state: _RestartState, restart: int, window: int, terms: dict) -> None:
    values = state.plain_values()
    bar.set_postfix_str(f"restart {restart} loss {state.losses[-1]:.4g} frames {window} "
                        + " ".join(f"{_short(k)}={_fmt(v)}" for k, v in values.items()), refresh=False)
    bar.update(1)
    if callback is not None:
        callback({"restart": restart, "iteration": state.iteration, "loss": state.losses[-1],
                  "window": window, "values": values, "terms": terms})


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path):
    """Hold an exclusive lock on RUN_DIR/fit.lock: two fits must not share a run directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(run_dir / "fit.lock", "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise HybridsimError("another fit is running in this run directory", file=run_dir) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _laplace(world64, camera, target, specs, values, frames, motion_prior=None, observe=None):
    from .uncertainty import laplace_uncertainty

    kwargs = {}
    if motion_prior is not None:
        kwargs["motion_prior"] = motion_prior
    if observe is not None:
        kwargs["observe"] = observe
    return laplace_uncertainty(world64, camera, target, specs, values, frames, **kwargs)


LEGACY_SETTINGS = ("coverage", "observed_patience", "observed_plateau", "observed_lr")
"""FitSettings fields that shape only the observed-coverage phase, which checkpoints written before
they existed never entered (those versions compared rendered coverages throughout, which is the
first phase of every fit now): such a checkpoint's history is a prefix of the current fit's."""
LEGACY_CONFIG_KEYS = ("coverage",)
"""Config keys that follow from LEGACY_SETTINGS."""


def _complete_legacy_config(saved, config: dict):
    """A checkpoint's config with what older versions did not write filled in as it was implied:
    a missing LEGACY_SETTINGS field (and LEGACY_CONFIG_KEYS key) takes the current fit's value, any
    other missing FitSettings field its default. Keys the checkpoint has are never changed, so a
    real difference in the other settings still refuses the resume."""
    if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
        return saved
    saved = json.loads(json.dumps(saved))
    current = json.loads(json.dumps(config))
    defaults = json.loads(json.dumps(FitSettings().to_json()))
    legacy = False
    for key, default in defaults.items():
        if key not in saved["settings"]:
            if key in LEGACY_SETTINGS:
                legacy = True
            saved["settings"][key] = current["settings"].get(key, default) if key in LEGACY_SETTINGS else default
    if legacy:
        for key in LEGACY_CONFIG_KEYS:
            if key not in saved and key in current:
                saved[key] = current[key]
    return saved


def _config_diff(old, new) -> str:
    """The differing leaves of two nested config dicts, as 'a.b: old -> new'."""
    new = json.loads(json.dumps(new))
    if not isinstance(old, dict):
        return "no settings recorded"
    out = []

    def walk(a, b, prefix):
        for key in sorted(set(a) | set(b)):
            x, y = a.get(key), b.get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                walk(x, y, f"{prefix}{key}.")
            elif x != y:
                out.append(f"{prefix}{key}: {x!r} -> {y!r}")

    walk(old, new, "")
    return ", ".join(out)
