"""Levenberg-Marquardt in the fit (hybridsim.fit.levenberg): steps across a curved narrow valley,
its state in checkpoints, which optimiser a fit uses, and a sliding box's friction and push."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybridsim.fit import FitSettings, fit
from hybridsim.fit.levenberg import LevenbergMarquardt
from hybridsim.fit.optimize import _RestartState, _use_lm
from hybridsim.fit.params import ParamSpec

D64 = torch.float64


def _rosenbrock(u: torch.Tensor, window: int):
    """Residuals (1 - x, 10 (y - x^2)): a curved valley 10x narrower across than along."""
    residuals = torch.stack([1.0 - u[0], 10.0 * (u[1] - u[0] ** 2)])
    return float(0.5 * residuals.detach() @ residuals.detach()), {}, residuals


def test_levenberg_marquardt_follows_a_curved_narrow_valley_to_its_minimum():
    lm = LevenbergMarquardt()
    u = torch.tensor([-1.2, 1.0], dtype=D64)
    steps = torch.full((2,), 1e-6, dtype=D64)
    costs = []
    for _ in range(30):
        cost, _, u = lm.step(_rosenbrock, u, 1, fd_steps=steps, full_window=True)
        costs.append(cost)
    assert torch.allclose(u, torch.ones(2, dtype=D64), atol=1e-6), u
    assert all(b <= a for a, b in zip(costs, costs[1:]))  # only accepted steps move
    # Adam, whose schedule the fit used before, from the same start and with as many gradients
    x = torch.tensor([-1.2, 1.0], dtype=D64, requires_grad=True)
    adam = torch.optim.Adam([x], lr=0.05, betas=(0.5, 0.9))
    for _ in range(30 * 3):  # LM pays 1 + 2 evaluations per step here
        adam.zero_grad()
        _rosenbrock(x, 1)[2].pow(2).sum().backward()
        adam.step()
    assert float((x.detach() - 1.0).abs().max()) > 100 * float((u - 1.0).abs().max())


def test_levenberg_marquardt_stops_when_no_step_lowers_the_cost():
    lm = LevenbergMarquardt()
    u = torch.ones(2, dtype=D64)  # at the minimum: no trial step lowers the cost
    steps = torch.full((2,), 1e-6, dtype=D64)
    for _ in range(6):
        _, _, u = lm.step(_rosenbrock, u, 1, fd_steps=steps, full_window=True)
    assert lm.converged and torch.equal(u, torch.ones(2, dtype=D64))
    calls = []
    lm.step(lambda *a: calls.append(a) or _rosenbrock(*a), u, 1, fd_steps=steps, full_window=True)
    assert len(calls) == 0  # converged: the cached evaluation stands in, nothing new is rolled out
    not_full = LevenbergMarquardt()
    for _ in range(6):
        not_full.step(_rosenbrock, u, 1, fd_steps=steps, full_window=False)
    assert not not_full.converged  # a growing window may still change the minimum


def test_checkpoint_state_carries_the_levenberg_marquardt_state():
    specs = [ParamSpec(path="a", size=1, lo=0.0, hi=2.0, initial=(0.5,)),
             ParamSpec(path="b", size=3, lo=None, hi=None, initial=(1.0, 2.0, 3.0))]
    initial = {"a": torch.tensor(0.5, dtype=D64), "b": torch.tensor([1.0, 2.0, 3.0], dtype=D64)}
    state = _RestartState(0, specs, initial, 0.05, lm=True)
    state.lm.damping, state.lm.converged, state.lm.step_scale = 0.37, True, 0.25
    state.set_flat(torch.tensor([0.1, 4.0, 5.0, 6.0], dtype=D64))
    restored = _RestartState.restore(state.to_json(), state.tensors(), specs, 0.05, (0.5, 0.9), lm=True)
    assert (restored.lm.damping, restored.lm.converged, restored.lm.step_scale) == (0.37, True, 0.25)
    assert restored.plain_values() == state.plain_values()
    assert restored.values_at(torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=D64))["a"].item() == pytest.approx(1.0)


def test_optimizer_choice():
    few = [ParamSpec(path="v", size=3, lo=-6.0, hi=6.0, initial=(2.0, 0.0, 0.0))]
    many = few * 3
    assert _use_lm(FitSettings(), few, None, "rigid")
    assert not _use_lm(FitSettings(), many, None, "rigid")  # 9 components: Adam
    assert not _use_lm(FitSettings(), few, None, "spheres")  # Adam converges faster there
    assert not _use_lm(FitSettings(gradients="finite_difference"), few, None, "rigid")  # the reference
    assert not _use_lm(FitSettings(optimizer="adam"), few, None, "rigid")
    assert _use_lm(FitSettings(optimizer="levenberg_marquardt"), few, None, "spheres")


def test_unknown_optimizer_is_refused():
    from hybridsim.errors import HybridsimError
    from hybridsim.scene import load_scene

    spec = load_scene(Path(__file__).resolve().parent.parent / "scenes" / "bounce_fit.toml")
    with pytest.raises(HybridsimError, match="optimizer"):  # refused before the target is read
        fit(spec, "nowhere.mp4", settings=FitSettings(optimizer="newton"))


@pytest.mark.slow
def test_box_fit_recovers_friction_and_push_speed_within_2_percent():
    """The benchmark's sliding box (96x72, 20 frames), from its own render: friction and the
    horizontal push within 2 %. The vertical push is nearly unobservable (a hop of a few mm) and
    trades against the two, so it is only asked to stay small. Measured: 0.5423 and 2.601 for 0.55
    and 2.6 in 20 iterations (about 50 s on one free core)."""
    from test_fit_rigid import SLIDE, TRUTH, _target

    from hybridsim.scene import parse_scene

    spec = parse_scene(SLIDE.split("[[objects]]\ntype = \"static_box\"")[0])
    rgb, _ = _target(spec)
    result = fit(spec, rgb, iterations=20, progress=False, max_render_height=None, threads=1, uncertainty=False,
                 outputs=False)
    assert result.details["settings"]["optimizer"] == "auto"
    friction, velocity = result.values["objects[0].friction"], result.values["objects[0].velocity"]
    assert abs(friction / TRUTH["objects[0].friction"] - 1.0) < 0.02, result.values
    assert abs(velocity[0] / 2.6 - 1.0) < 0.02, result.values
    assert abs(velocity[1]) < 0.1 and abs(velocity[2]) < 0.1, result.values


def test_interrupted_levenberg_marquardt_fit_resumes_identically(tmp_path):
    """A rigid-body fit (Levenberg-Marquardt) killed after 2 of 4 iterations continues from its
    checkpoint and ends bit-identical to an uninterrupted run."""
    from test_fit_rigid import SLIDE, _friction_only, _target_cached

    spec = _friction_only(SLIDE, 8)
    rgb, _ = _target_cached(spec.to_toml())
    kw = dict(iterations=4, progress=False, max_render_height=None, threads=1, uncertainty=False, outputs=False)
    full = fit(spec, rgb, run_dir=tmp_path / "full", **kw)

    def stop_after_two(info):
        if info["iteration"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(spec, rgb, run_dir=tmp_path / "cut", callback=stop_after_two, **kw)
    resumed = fit(spec, rgb, run_dir=tmp_path / "cut", **kw)
    assert resumed.resumed_from == 2
    assert resumed.loss_history == full.loss_history and resumed.values == full.values
    saved = json.loads((tmp_path / "cut" / "checkpoint.json").read_text())
    assert saved["config"]["optimizer"] == "levenberg_marquardt"
    assert set(saved["restarts"][0]["levenberg_marquardt"]) == {"damping", "converged", "step_scale", "observed"}
