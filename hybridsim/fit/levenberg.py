"""Levenberg-Marquardt steps on the fit's residual vector, for fits of a few values.

Adam follows the gradient of a loss whose valleys can be long and narrow. A box sliding to rest
follows x(t) = x0 + v0 t - mu g t^2 / 2 until t = v0 / (mu g), so its push v0 and friction mu are
both fixed by the centroid trajectory, but the loss falls steeply across the valley
v0^2 / mu = const (the stop distance) and only gently along it; and the push is a 3-vector whose
vertical part (a hop of a few mm, below a pixel) trades against both through the friction impulse
on landing. A damped Gauss-Newton step uses the residuals' Jacobian J and solves
(J^T J + lambda c I) delta = -J^T r in the reparameterised values u (c the mean of diag(J^T J), so
lambda is dimensionless). The damping is Levenberg's identity in u, not Marquardt's diag(J^T J):
u is in comparable units (logits of range fractions), and an identity keeps a nearly unobservable
component (the vertical push) where it starts instead of letting it slide along the valley.

Residuals (pixels; their count depends only on the window and the target, so J keeps its shape):

* ``centroid``: rendered minus target centroid (x, y) on the frames where the target is visible
  (the projected centre stands in where the render covers < 1 px, as in the centroid loss);
* ``size``: sqrt(area) differences on the same frames;
* ``silhouette``: coverage minus target mask, average-pooled over SILHOUETTE_POOL px squares and
  multiplied by SILHOUETTE_POOL (a one-pixel shift of an edge then weighs about 1 px per square);
* ``masks`` / ``tracks``: the same for the user's masks, and the projected centres minus the
  user's tracks, when given.

J comes from forward differences in u (one rollout and render per value component, no backward):
the solvers' autograd bridges (Warp tapes, Taichi) have no forward mode, and reverse mode needs one
backward per residual (hundreds). The step (``FitSettings.lm_fd_step``, 0.1) is deliberately
large: contact events between substeps and pixel edges make the residuals rough on a 0.01 scale,
where a Jacobian is noise and every trial step fails. With at most LM_MAX_COMPONENTS components
an iteration costs about as much as 2-4 Adam iterations and the fit needs 5-20 instead of 30-80.

A trial step (at most MAX_STEP in any component of u) is accepted when it lowers 0.5 |r|^2 (then
lambda shrinks), else lambda grows and the step is solved again. When no trial lowers the cost the
Jacobian's difference steps are halved; once they are at MIN_STEP_SCALE, the window covers every
frame and still no step lowers the cost, the restart has converged: later iterations only repeat
its loss (no rollouts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import SimulationError
from .losses import moment_residuals, rendered_centroids

__all__ = ["LM_MAX_COMPONENTS", "LM_SCENE_KINDS", "LevenbergMarquardt", "fit_residuals"]

LM_MAX_COMPONENTS = 8
"""``optimizer = "auto"`` uses Levenberg-Marquardt up to this many value components, Adam above."""
LM_SCENE_KINDS = ("rigid",)
"""... and only for these scene kinds. Contacts and stick-slip make rigid-body losses long, narrow
valleys that Adam crosses slowly (a sliding box: 40+ iterations); on the sphere, fluid and MPM
examples Adam converges in 10-20 cheap iterations and a Jacobian (one more rollout and render per
component) costs more than it saves (measured, shared cores: sphere restitution + velocity 23 s with
Levenberg-Marquardt against 8 s with Adam)."""
SILHOUETTE_POOL = 4
"""Side [px] of the squares the silhouette residuals are pooled over."""
DAMPING_START = 1e-2
DAMPING_UP = 4.0
DAMPING_DOWN = 3.0
DAMPING_MIN = 1e-7
DAMPING_MAX = 1e7
MAX_STEP = 2.0
"""Trust region: a step moves no component of u by more than this (a logit of 2 is a large part of a range)."""
MAX_TRIES = 6
"""Trial steps per iteration before the iteration gives up (lambda having grown by DAMPING_UP each time)."""
MIN_STEP_SCALE = 1.0 / 16.0
"""The smallest factor on the Jacobian's difference steps (see ``LevenbergMarquardt.step_scale``)."""
STEP_TOLERANCE = 1e-4
"""An accepted step smaller than this in every component of u (on the full window) means converged."""


def fit_residuals(alpha, projected, pixels, target, frames: int, weights: dict, evidence=None,
                  evidence_alpha=None) -> torch.Tensor:
    """Residual vector (pixels) of one render: see the module docstring.

    ``alpha`` (T, H, W) coverage compared with the target's mask, ``projected`` (T, 2) mean
    projected centre, ``pixels`` (T, N, 2) projected centres of the moving objects; ``target`` a
    Target; ``weights`` the loss weights (a block enters scaled by the square root of its term's
    weight, and not at all at weight 0); ``evidence_alpha`` the coverage compared with the user's
    masks (default ``alpha``).
    """
    alpha = alpha.double()
    evidence_alpha = alpha if evidence_alpha is None else evidence_alpha.double()
    visible = target.visible[:frames].to(alpha.device)
    blocks = []
    if weights.get("centroid", 0.0) > 0.0:
        centroid = rendered_centroids(alpha, projected.double())
        diff, size, _ = moment_residuals(alpha, target, frames, ok=visible, centroid=centroid)
        blocks += [math.sqrt(weights["centroid"]) * diff, math.sqrt(weights["centroid"]) * size]
    for name, mask, rendered in (("silhouette", target.mask, alpha),
                                 ("masks", getattr(evidence, "masks", None), evidence_alpha)):
        if mask is not None and weights.get(name, 0.0) > 0.0:
            diff = rendered - mask[:frames].to(alpha.device, alpha.dtype)
            pooled = F.avg_pool2d(diff[:, None], SILHOUETTE_POOL, ceil_mode=True) * SILHOUETTE_POOL
            blocks.append(math.sqrt(weights[name]) * pooled.reshape(-1))
    if evidence is not None and getattr(evidence, "track_points", None) is not None and weights.get("tracks", 0.0) > 0:
        points = evidence.track_points[:frames].to(pixels.device, torch.float64)
        present = evidence.track_present[:frames].to(pixels.device)
        blocks.append(math.sqrt(weights["tracks"]) * (pixels.double() - points)[present].reshape(-1))
    return torch.cat(blocks) if blocks else alpha.sum().reshape(1) * 0.0


@dataclass
class _Point:
    """One evaluation: where (u), on which window, its loss, loss terms and residuals."""

    u: torch.Tensor
    window: int
    loss: float
    terms: dict
    residuals: torch.Tensor


class LevenbergMarquardt:
    """Damped Gauss-Newton on a residual vector in the reparameterised values u (flat float64).

    ``evaluate(u, window) -> (loss, terms, residuals)`` runs one rollout and render without a
    graph. The state that must survive a checkpoint is ``damping`` and ``converged``; the cached
    last evaluation only saves a rollout and is recomputed (identically) after a resume.
    """

    def __init__(self, damping: float = DAMPING_START, converged: bool = False, step_scale: float = 1.0,
                 observed: bool = False):
        self.damping = float(damping)
        self.converged = bool(converged)
        self.observed = bool(observed)
        """The second phase of a fit with observed coverage (``FitSettings.coverage``): after
        converging on the rendered coverage, the restart goes on comparing observed coverages."""
        self.step_scale = float(step_scale)
        """Factor on the forward-difference steps: halved each time no trial step lowers the cost
        (the Jacobian was too coarse there), until MIN_STEP_SCALE."""
        self._last: _Point | None = None

    def start_observed_phase(self) -> None:
        """Converged on the rendered coverage: start again (damping, steps) on the observed one."""
        self.observed, self.converged = True, False
        self.damping, self.step_scale, self._last = DAMPING_START, 1.0, None

    def _at(self, evaluate, u: torch.Tensor, window: int) -> _Point:
        last = self._last
        if last is not None and last.window == window and torch.equal(last.u, u):
            return last
        loss, terms, residuals = evaluate(u, window)
        self._last = _Point(u.clone(), window, float(loss), terms, residuals.detach().double().cpu())
        return self._last

    def step(self, evaluate, u: torch.Tensor, window: int, *, fd_steps: torch.Tensor, full_window: bool):
        """One iteration from ``u``: returns (loss at u, its terms, the next u)."""
        here = self._at(evaluate, u, window)
        if self.converged or not math.isfinite(here.loss):
            return here.loss, here.terms, u
        r = here.residuals
        columns = []
        for i in range(u.numel()):
            moved = u.clone()
            h = float(fd_steps[i]) * self.step_scale
            moved[i] += h
            columns.append((evaluate(moved, window)[2].detach().double().cpu() - r) / h)
        jac = torch.stack(columns, dim=1)  # (residuals, components)
        gradient = jac.T @ r
        curvature = jac.T @ jac
        # Levenberg's damping lambda * I in u (comparable units: logits of range fractions), scaled
        # by the mean curvature so that lambda is dimensionless: a ridge step that leaves a flat
        # direction (a nearly unobservable component) where it is instead of sliding along it
        diag = torch.full_like(gradient, float(torch.diagonal(curvature).mean()) + 1e-30)
        cost = 0.5 * float(r @ r)
        for _ in range(MAX_TRIES):
            delta = torch.linalg.solve(curvature + self.damping * torch.diag(diag), -gradient)
            largest = float(delta.abs().max())
            if largest > MAX_STEP:
                delta = delta * (MAX_STEP / largest)
                largest = MAX_STEP
            if not math.isfinite(largest):
                break
            trial_u = u + delta
            try:
                trial = self._at(evaluate, trial_u, window)
                trial_cost = 0.5 * float(trial.residuals @ trial.residuals)
            except SimulationError:  # a step into a blow-up is a bad step
                trial, trial_cost = None, math.inf
            if math.isfinite(trial_cost) and trial_cost < cost:
                self.damping = max(self.damping / DAMPING_DOWN, DAMPING_MIN)
                if full_window and largest < STEP_TOLERANCE:
                    self.converged = True
                return here.loss, here.terms, trial_u
            self.damping = min(self.damping * DAMPING_UP, DAMPING_MAX)
        self._last = here
        self.damping = DAMPING_START
        if self.step_scale > MIN_STEP_SCALE:
            self.step_scale /= 2.0
        elif full_window:
            self.converged = True  # nothing lowers the cost any more
        return here.loss, here.terms, u
