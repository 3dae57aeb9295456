"""Finite-difference gradient checks and cross-backend comparisons for any scene.

Finite differences are taken on exactly the model that autodiff differentiates (same kernels,
same dt); in float64 they are a quantitative check, in float32 only a sign check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..sim.rollout import Trajectory, rollout

__all__ = ["GradcheckRow", "finite_difference_gradcheck", "compare_backends", "contact_count", "state_loss",
           "scene_evaluator"]

LossFn = Callable[[Trajectory, Mapping[str, torch.Tensor]], torch.Tensor]


def state_loss(seed: int = 0) -> LossFn:
    """A loss mixing every frame's positions and velocities with fixed random weights."""

    def loss(trajectory: Trajectory, params) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        w_pos = torch.randn(trajectory.positions.shape, generator=generator, dtype=torch.float64)
        w_vel = torch.randn(trajectory.velocities.shape, generator=generator, dtype=torch.float64)
        return ((trajectory.positions * w_pos.to(trajectory.positions)).sum()
                + 0.1 * (trajectory.velocities * w_vel.to(trajectory.velocities)).sum())

    return loss


def contact_count(trajectory, resting_speed: float = 1e-6) -> int:
    """Number of bounces seen in a body trajectory (flips of v_z from below -resting_speed to
    above it between frames [m/s]); 0 for trajectories without bodies (a grid fluid)."""
    velocities = getattr(trajectory, "velocities", None)
    if velocities is None:
        return 0
    vz = velocities[..., 2].detach()
    # a resting body's v_z jitters around 0 at round-off level: that is no bounce
    return int(((vz[:-1] < -resting_speed) & (vz[1:] > resting_speed)).sum())


def scene_evaluator(world, *, frames: int | None = None, pixel: bool = False, seed: int = 0) -> Callable:
    """``evaluate(params) -> (loss, trajectory)`` for any scene: spheres, rigid bodies, a grid
    fluid or MPM particles. The loss mixes every frame's state (positions and velocities, or
    density) with fixed random weights, or with ``pixel=True`` every rendered pixel."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict = {}

    def weighted(key: str, tensor: torch.Tensor) -> torch.Tensor:
        if key not in weights:
            weights[key] = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
        return (tensor * weights[key].to(tensor)).sum()

    spec = world.spec
    if spec.fluid is not None:
        from ..render.camera import Camera
        from ..render.fluid import render_fluid_frames
        from ..sim.fluid import fluid_rollout

        def evaluate(values):
            trajectory = fluid_rollout(world, values, frames=frames)
            if pixel:
                layers = render_fluid_frames(Camera.from_spec(spec.camera), spec.fluid, trajectory, 1.0 / spec.time.fps)
                return weighted("rgb", layers["rgb"]), trajectory
            return weighted("density", trajectory.density) + weighted("u", trajectory.velocity_x), trajectory

        return evaluate
    if getattr(spec, "mpm", None) is not None and spec.objects:  # MPM coupled with rigid bodies
        from ..sim.coupled import coupled_rollout

        def evaluate(values):
            trajectory = coupled_rollout(world, values, frames=frames)
            if pixel:
                from ..render.composite import render_coupled

                return weighted("rgb", render_coupled(world, trajectory, values)["rgb"]), trajectory.rigid
            return (weighted("x", trajectory.mpm.positions) + 0.1 * weighted("v", trajectory.mpm.velocities)
                    + weighted("bx", trajectory.rigid.positions) + 0.1 * weighted("bv", trajectory.rigid.velocities),
                    trajectory.rigid)

        return evaluate
    if getattr(spec, "mpm", None) is not None:
        from ..render.particles import render_mpm
        from ..sim.mpm import mpm_rollout

        def evaluate(values):
            trajectory = mpm_rollout(world, values, frames=frames)
            if pixel:
                return weighted("rgb", render_mpm(world, trajectory, values)["rgb"]), None
            # no contact events to count among particles (contact_count of None is 0)
            return weighted("x", trajectory.positions) + 0.1 * weighted("v", trajectory.velocities), None

        return evaluate
    if getattr(world, "rigid", False):
        from ..sim.rigid import rigid_rollout

        def evaluate(values):
            trajectory = rigid_rollout(world, values, frames=frames)
            if pixel:
                from ..render.rigid import render_rigid

                return weighted("rgb", render_rigid(world, trajectory, values)["rgb"]), trajectory
            return weighted("x", trajectory.positions) + 0.1 * weighted("v", trajectory.velocities), trajectory

        return evaluate

    def evaluate(values):
        trajectory = rollout(world, values, frames=frames)
        if pixel:
            from ..render.scene import render_trajectory

            return weighted("rgb", render_trajectory(world, trajectory, values)["rgb"]), trajectory
        return weighted("x", trajectory.positions) + 0.1 * weighted("v", trajectory.velocities), trajectory

    return evaluate


@dataclass
class GradcheckRow:
    """One parameter component: autodiff vs central finite differences."""

    path: str
    component: int | None
    autodiff: float
    finite_difference: float
    step: float
    contacts_changed: bool
    kind: str = "smooth"
    """"smooth"; "kink" (the one-sided derivatives converge but differ: a contact switching on at
    exactly this point); "jump" (the loss itself jumps across the point: no derivative exists)."""
    one_sided: tuple[float, float] | None = None
    """(forward, backward) one-sided differences at the smaller step, for kinks and jumps."""

    @staticmethod
    def _relative(a: float, b: float) -> float:
        return abs(a - b) / max(abs(a), abs(b), 1e-8)

    @property
    def error(self) -> float:
        """Relative error |ad - fd| / max(|ad|, |fd|, 1e-8); at a kink, against the nearer one-sided
        derivative (autodiff follows one branch); 0 at a jump (nothing to compare with)."""
        if self.kind == "jump":
            return 0.0
        if self.kind == "kink" and self.one_sided is not None:
            return min(self._relative(self.autodiff, d) for d in self.one_sided)
        return self._relative(self.autodiff, self.finite_difference)

    @property
    def note(self) -> str:
        if self.kind == "kink":
            return (f"  (kink: one-sided derivatives {self.one_sided[0]:.4g} / {self.one_sided[1]:.4g}; autodiff "
                    "follows one branch)")
        if self.kind == "jump":
            return "  (the loss jumps at this point, e.g. the contact set changes: no derivative to check)"
        return "  (contacts changed)" if self.contacts_changed else ""

    @property
    def name(self) -> str:
        return self.path if self.component is None else f"{self.path}[{self.component}]"


def finite_difference_gradcheck(world, loss_fn: LossFn | None = None, *, params: Mapping[str, torch.Tensor] | None = None,
                                relative_step: float = 1e-6, frames: int | None = None,
                                evaluate: Callable | None = None, classify_above: float = 1e-4) -> list[GradcheckRow]:
    """Compare autodiff gradients of ``loss_fn(rollout)`` with central differences, per component.

    The step is shrunk (up to 4 times by 10x) until the number of ground contacts is the same at
    ``x - h`` and ``x + h`` as at ``x``; a row whose contacts still change is flagged. A row whose
    error exceeds ``classify_above`` is examined with one-sided differences at h/10 and h/100:
    where both sides agree at a smaller step (a jump of the loss lay within the first step) that
    step's central difference is used; where the loss has a kink (a contact switching on exactly
    here: autodiff follows one branch) the error is taken against the nearer one-sided
    derivative; and where the loss jumps at the point itself (the contact set changes
    discontinuously) the row is marked ``kind="jump"``: there is no derivative.
    ``evaluate(params) -> (loss, trajectory)`` replaces the default rollout + ``loss_fn``
    (e.g. to add rendering for a pixel loss).
    """
    loss_fn = loss_fn or state_loss()
    base = {k: v.detach().clone() for k, v in (params or world.parameters()).items()}

    def run(values):
        if evaluate is not None:
            return evaluate(values)
        trajectory = rollout(world, values, frames=frames)
        return loss_fn(trajectory, values), trajectory

    leaves = {k: v.clone().requires_grad_(True) for k, v in base.items()}
    loss, trajectory = run(leaves)
    loss.backward()
    contacts = contact_count(trajectory)

    rows = []
    with torch.no_grad():
        for path, value in base.items():
            grad = leaves[path].grad
            components = [None] if value.dim() == 0 else list(range(value.numel()))
            for component in components:
                flat_index = 0 if component is None else component
                x0 = float(value.reshape(-1)[flat_index])
                h = relative_step * max(1.0, abs(x0))
                for attempt in range(5):
                    if attempt:
                        h *= 0.1
                    losses, changed = [], False
                    for sign in (+1, -1):
                        shifted = {k: v.clone() for k, v in base.items()}
                        shifted[path].reshape(-1)[flat_index] += sign * h
                        loss_value, shifted_trajectory = run(shifted)
                        losses.append(float(loss_value))
                        changed |= contact_count(shifted_trajectory) != contacts
                    if not changed:
                        break
                fd = (losses[0] - losses[1]) / (2 * h)  # the step the losses were taken with
                ad = 0.0 if grad is None else float(grad.reshape(-1)[flat_index])
                row = GradcheckRow(path, component, ad, fd, h, changed)
                if row.error > classify_above:  # is the loss smooth here at all?
                    row = _classify(row, float(loss), losses, h, lambda sign, step: float(run(
                        _shifted(base, path, flat_index, sign * step))[0]))
                rows.append(row)
    return rows


def _shifted(base, path, flat_index, delta):
    shifted = {k: v.clone() for k, v in base.items()}
    shifted[path].reshape(-1)[flat_index] += delta
    return shifted


def _classify(row: GradcheckRow, f0: float, losses: list[float], h: float, evaluate) -> GradcheckRow:
    """Look closer where central differences disagree with autodiff, with one-sided differences
    at h/10 and h/100: if both sides agree at a smaller step the loss is smooth there (a jump lay
    within the first step) and the smaller step's central difference is used; otherwise the point
    is a jump of the loss (its change does not shrink with the step) or a kink (each side
    converges to its own slope)."""
    from dataclasses import replace

    scale = max(abs(f0), 1e-12) * 1e-12  # round-off floor of a loss difference
    rise_h, fall_h, step = losses[0] - f0, f0 - losses[1], h
    for _ in range(2):
        small = step / 10.0
        plus, minus = evaluate(+1, small), evaluate(-1, small)
        rise_s, fall_s = plus - f0, f0 - minus
        one_sided = (rise_s / small, fall_s / small)
        if GradcheckRow._relative(*one_sided) < 1e-4:  # smooth at this scale
            return replace(row, finite_difference=(plus - minus) / (2 * small), step=small)
        jump = any(abs(d_s) > 0.5 * abs(d_h) + scale and abs(d_h) > 1e3 * scale
                   for d_h, d_s in ((rise_h, rise_s), (fall_h, fall_s)))
        converged = all(GradcheckRow._relative(d_h / step, d_s / small) < 1e-2
                        for d_h, d_s in ((rise_h, rise_s), (fall_h, fall_s)))
        if jump and not converged:
            return replace(row, kind="jump", one_sided=one_sided, step=small)
        if converged:
            return replace(row, kind="kink", one_sided=one_sided, step=small)
        rise_h, fall_h, step = rise_s, fall_s, small
    return row


def compare_backends(spec, *, precision: str = "float64", frames: int | None = None,
                     loss_fn: LossFn | None = None) -> dict[str, float]:
    """Run a scene on Warp and on Taichi; return the max relative differences of the
    trajectories and of the gradients of ``loss_fn`` with respect to every learnable value."""
    from ..sim.world import World

    loss_fn = loss_fn or state_loss()
    results = {}
    for backend in ("warp", "taichi"):
        world = World(spec, backend=backend, device="cpu", precision=precision)
        params = world.parameters()
        trajectory = rollout(world, params, frames=frames)
        loss = loss_fn(trajectory, params)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True) if params else []
        results[backend] = (trajectory, [torch.zeros(()) if g is None else g for g in grads])

    (traj_w, grads_w), (traj_t, grads_t) = results["warp"], results["taichi"]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.detach().double(), b.detach().double()
        return float((a - b).abs().max() / max(float(a.abs().max()), 1e-12)) if a.numel() else 0.0

    report = {"positions": rel(traj_w.positions, traj_t.positions),
              "velocities": rel(traj_w.velocities, traj_t.velocities)}
    for path, gw, gt in zip(world.parameters().keys(), grads_w, grads_t):
        report[f"grad:{path}"] = rel(gw, gt)
    return report
