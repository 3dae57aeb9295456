"""Convergence of `hybridsim fit` on its examples: wall time and iterations until every fitted value
stays within tolerance of the truth, for the fit as it runs by default (ours: Adam on gradients
through simulation and rendering, or Levenberg-Marquardt for rigid-body scenes with few values, see
hybridsim.fit.levenberg) and for Adam driven by central finite differences of the same loss
(reference: same schedules and starting point; 2 extra rollouts + renders per value component per
iteration).

Each target is the project's own render at known values (so ours goes on with observed coverages
once the rendered comparison has settled, FitSettings.coverage; the reference, on finite
differences, keeps the rendered coverage); "converged" is the first of STREAK
consecutive iterations with every value within its tolerance, and the run stops there. A run that
does not converge within its iteration budget, or (the reference) within REFERENCE_TIME_FACTOR
times our whole run, reports its whole wall time and says so in the notes (the ratio is then a
bound). Times include target preparation; compilation is warmed up beforehand; one torch thread.
    hybridsim bench fit_mpm_youngs
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hybridsim.bench import Record, case
from hybridsim.fit import FitSettings, fit
from hybridsim.render.spheres import to_uint8
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.world import World
from hybridsim.testing.fit_scenes import PLUME_SMALL, SLIDE

STREAK = 3
"""Consecutive in-tolerance iterations that count as converged."""
REFERENCE_TIME_FACTOR = 5.0
"""The reference stops after this many times our whole run's wall time."""
LM = "Levenberg-Marquardt (forward-difference Jacobian)"
"""What ``optimizer="auto"`` runs on the rigid-body cases."""
ROOT = Path(__file__).resolve().parent.parent
SCENES = ROOT / "scenes"


def _within(values: dict, truth: dict, tolerance: dict) -> bool:
    for path, want in truth.items():
        got = values[path]
        wants = want if isinstance(want, list) else [want]
        gots = got if isinstance(got, list) else [got]
        if any(abs(g - w) > tolerance[path] for g, w in zip(gots, wants)):
            return False
    return True


class _Stop(Exception):
    """Raised from the fit's callback to end a run early (converged or out of time)."""


def _run(spec, target, truth, tolerance, *, gradients: str, iterations: int, time_limit: float | None = None,
         **kwargs):
    history, streak = [], []
    start = time.perf_counter()

    def watch(info):
        history.append({**info, "t": time.perf_counter() - start})
        streak[:] = streak + [history[-1]] if _within(info["values"], truth, tolerance) else []
        if len(streak) >= STREAK or (time_limit is not None and history[-1]["t"] > time_limit):
            raise _Stop

    settings = FitSettings(lr=kwargs.get("lr", 0.05), gradients=gradients)
    try:
        fit(spec, target, iterations=iterations, progress=False, threads=1, uncertainty=False, settings=settings,
            callback=watch, **kwargs)
    except _Stop:
        pass
    total = time.perf_counter() - start
    converged = len(streak) >= STREAK
    return {"converged_iteration": streak[0]["iteration"] if converged else None,
            "seconds": streak[0]["t"] if converged else total, "total_seconds": total,
            "iterations_run": len(history), "values": history[-1]["values"] if history else None}


def _compare(name: str, spec, target, truth: dict, tolerance: dict, iterations: int, quick: bool,
             method: str = "autodiff + Adam", **kwargs) -> Record:
    _run(spec, target, truth, tolerance, gradients="autodiff", iterations=1, **kwargs)  # compile / cache warm-up
    ours = _run(spec, target, truth, tolerance, gradients="autodiff", iterations=iterations, **kwargs)
    budget = max(1, iterations // 2) if quick else iterations
    reference = _run(spec, target, truth, tolerance, gradients="finite_difference", iterations=budget,
                     time_limit=REFERENCE_TIME_FACTOR * ours["total_seconds"], **kwargs)
    notes = []
    for label, run in ((method, ours), ("finite differences", reference)):
        if run["converged_iteration"] is None:
            notes.append(f"{label} did not converge in its budget ({run['iterations_run']} iterations; the time is "
                         "its whole run)")
    components = sum(len(v) if isinstance(v, list) else 1 for v in truth.values())
    return Record(name, ours["seconds"], reference["seconds"], "s to converge",
                  f"{method}, converged at iteration {ours['converged_iteration']}",
                  f"central finite differences ({2 * components} extra rollouts/iteration), converged at iteration "
                  f"{reference['converged_iteration']}", torch.get_num_threads(), notes="; ".join(notes),
                  extra={"truth": truth, "tolerance": tolerance, "ours": ours, "reference": reference,
                         "iterations": iterations, "reference_iterations": budget})


def _sphere_target(spec, values):
    from hybridsim.render.scene import render_trajectory
    from hybridsim.sim.rollout import rollout

    world = World(spec.with_values(values))
    with torch.no_grad():
        return to_uint8(render_trajectory(world, rollout(world))["rgb"])


def _rigid_target(spec, values):
    from hybridsim.render.rigid import render_rigid
    from hybridsim.sim.rigid import rigid_rollout

    world = World(spec.with_values(values))
    with torch.no_grad():
        return to_uint8(render_rigid(world, rigid_rollout(world))["rgb"].numpy())


@case("fit_sphere_restitution_velocity")
def sphere(quick: bool) -> Record:
    spec = load_scene(SCENES / "bounce_fit.toml")
    truth = {"objects[0].restitution": 0.6, "objects[0].velocity": [1.0, 0.0, 0.5]}
    # 2 % of the restitution and of the speed (1.12 m/s): reached on the rendered comparison or, after
    # its plateau (~27 iterations), on observed coverages (FitSettings.coverage)
    tolerance = {"objects[0].restitution": 0.012, "objects[0].velocity": 0.022}
    return _compare("fit_sphere_restitution_velocity", spec, _sphere_target(spec, truth), truth, tolerance, 40, quick)


BOX = SLIDE


@case("fit_box_friction_speed")
def box(quick: bool) -> Record:
    spec = parse_scene(BOX)
    truth = {"objects[0].velocity": [2.6, 0.0, 0.0], "objects[0].friction": 0.55}
    tolerance = {"objects[0].velocity": 0.13, "objects[0].friction": 0.0275}  # 5 % of the true speed / friction
    return _compare("fit_box_friction_speed", spec, _rigid_target(spec, truth), truth, tolerance, 40, quick,
                    method=LM, max_render_height=None)


@case("fit_spring_stiffness_damping")
def spring(quick: bool) -> Record:
    text = (SCENES / "spring_mass.toml").read_text()
    text = text.replace("mass = { value = 1.0, learn = true, range = [0.1, 10.0] }", "mass = 1.0")
    text = text.replace("stiffness = 40.0 ", "stiffness = { value = 30.0, learn = true, range = [5.0, 100.0] } ")
    text = text.replace("damping = 0.05 ", "damping = { value = 0.2, learn = true, range = [0.0, 2.0] } ")
    text = text.replace("width = 160", "width = 64").replace("height = 120", "height = 48")
    text = text.replace("frames = 90 ", "frames = 45 ")
    spec = parse_scene(text)
    truth = {"springs[0].stiffness": 40.0, "springs[0].damping": 0.5}
    tolerance = {"springs[0].stiffness": 0.8, "springs[0].damping": 0.01}  # 2 % each (1.5 periods of decay)
    return _compare("fit_spring_stiffness_damping", spec, _rigid_target(spec, truth), truth, tolerance, 30, quick,
                    method=LM, max_render_height=None)


PLUME = PLUME_SMALL


@case("fit_plume_buoyancy")
def plume(quick: bool) -> Record:
    from hybridsim.render.camera import Camera
    from hybridsim.render.fluid import render_fluid_frames
    from hybridsim.sim.fluid import fluid_rollout

    spec = parse_scene(PLUME)
    truth = {"fluid.buoyancy": 2.0}
    world = World(spec.with_values(truth))
    with torch.no_grad():
        layers = render_fluid_frames(Camera.from_spec(spec.camera), spec.fluid, fluid_rollout(world), 1.0 / 30.0)
    target = to_uint8(layers["rgb"].numpy())
    return _compare("fit_plume_buoyancy", spec, target, truth, {"fluid.buoyancy": 0.04}, 40, quick,
                    max_render_height=None)


@case("fit_mpm_youngs")
def mpm(quick: bool) -> Record:
    from hybridsim.render.particles import render_mpm
    from hybridsim.sim.mpm import mpm_rollout

    spec = load_scene(SCENES / "jelly_bounce2d.toml")
    path = "mpm.materials[0].youngs_modulus"
    truth = {path: 6000.0}
    world = World(spec.with_values(truth))
    with torch.no_grad():
        target = to_uint8(render_mpm(world, mpm_rollout(world), None)["rgb"].numpy())
    return _compare("fit_mpm_youngs", spec, target, truth, {path: 120.0}, 40, quick, max_render_height=None, lr=0.08)
