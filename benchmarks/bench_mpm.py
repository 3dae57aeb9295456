"""MLS-MPM substep throughput: Warp against a vectorised numpy MLS-MPM of the same numerics
(np.add.at scatter), Taichi against Warp, and the cost of a backward pass."""

import time

import numpy as np
import torch

from hybridsim.bench import Record, case, median_time
from hybridsim.solvers.mpm import MPMBuilder, SolverMPM
from hybridsim.solvers.mpm.reference import mpm_substep_numpy

DT = 2e-4


def _scene(quick: bool, dtype=torch.float32):
    """A 2D elastic block, a snow block and a liquid column: ~2k particles (quick) or ~8k."""
    resolution, side = (64, 0.2) if quick else (128, 0.2)
    builder = MPMBuilder(dim=2, resolution=resolution)
    elastic = builder.add_material("elastic", youngs_modulus=1e5, poisson_ratio=0.3, viscosity=1.0)
    snow = builder.add_material("snow", youngs_modulus=1e5, poisson_ratio=0.2)
    liquid = builder.add_material("liquid", bulk_modulus=1e5, viscosity=1.0)
    builder.add_box((0.1, 0.3), (0.1 + side, 0.3 + side), material=elastic, velocity=(1.0, 0.0))
    builder.add_box((0.4, 0.3), (0.4 + side, 0.3 + side), material=snow, velocity=(-1.0, 0.0))
    builder.add_box((0.7, 0.1), (0.7 + side, 0.1 + 1.5 * side), material=liquid)
    return builder.finalize(dtype=dtype)


def _warmed_state(model, solver, steps=20):
    state = model.state()
    with torch.no_grad():
        for _ in range(steps):
            state = solver.step_differentiable(state, None, DT)
    return state


def _raw_steps(solver, state0, steps):
    states = [state0.clone(), state0.empty_like()]

    def run():
        for k in range(steps):
            solver.step(states[k % 2], states[(k + 1) % 2], None, DT)

    return run


@case("mpm_step_vs_numpy")
def step_vs_numpy(quick: bool) -> Record:
    model = _scene(quick)
    solver = SolverMPM(model, backend="warp")
    state0 = _warmed_state(model, solver)
    steps = 10 if quick else 20
    p = model.particle_parameters()
    params = {name: getattr(p, name).numpy() for name in ("kind", "mass", "volume", "mu", "lam", "viscosity",
                                                           "hardening", "clamp_low", "clamp_high")}
    arrays = [t.numpy().copy() for t in state0.tensors()]

    def reference():
        values = arrays
        for _ in range(steps):
            values = mpm_substep_numpy(model.grid, model.gravity, params, *values, np.float32(DT))

    # the two implementations agree on one substep (float32 round-off)
    ours = state0.empty_like()
    solver.step(state0, ours, None, DT)
    theirs = mpm_substep_numpy(model.grid, model.gravity, params, *arrays, np.float32(DT))
    deviation = float(np.abs(ours.particle_velocity.numpy() - theirs[1]).max())
    t_ours = median_time(_raw_steps(solver, state0, steps), repeats=3 if quick else 5) / steps
    t_ref = median_time(reference, repeats=3 if quick else 5) / steps
    return Record("mpm_step_vs_numpy", t_ours * 1e3, t_ref * 1e3, "ms/substep",
                  f"warp kernels, 2D, {model.particle_count} particles, {model.grid.resolution[0]}^2 grid, float32",
                  "vectorised numpy MLS-MPM, same numerics (np.add.at P2G)", torch.get_num_threads(),
                  notes=f"{steps} substeps; warp CPU runs one thread; max |v_ours - v_numpy| after one substep "
                        f"{deviation:.1e} m/s; ratio < 1 means faster than numpy")


@case("mpm_taichi_vs_warp")
def taichi_vs_warp(quick: bool) -> Record:
    model = _scene(quick)
    warp_solver = SolverMPM(model, backend="warp")
    taichi_solver = SolverMPM(model, backend="taichi")
    state0 = _warmed_state(model, warp_solver)
    steps = 10 if quick else 20
    t_taichi = median_time(_raw_steps(taichi_solver, state0, steps), repeats=3 if quick else 5) / steps
    t_warp = median_time(_raw_steps(warp_solver, state0, steps), repeats=3 if quick else 5) / steps
    return Record("mpm_taichi_vs_warp", t_taichi * 1e3, t_warp * 1e3, "ms/substep",
                  f"taichi kernels, 2D, {model.particle_count} particles, float32", "warp kernels, same scene",
                  torch.get_num_threads(),
                  notes=f"{steps} substeps; taichi CPU kernels are multi-threaded, warp CPU kernels single-threaded")


@case("mpm_backward_vs_forward")
def backward_vs_forward(quick: bool) -> Record:
    model = _scene(True, dtype=torch.float64)
    solver = SolverMPM(model, backend="warp")
    steps = 10 if quick else 40
    youngs = model.youngs_modulus.clone().requires_grad_(True)
    model.youngs_modulus = youngs

    def forward():
        state = model.state(requires_grad=True)
        for _ in range(steps):
            state = solver.step_differentiable(state, None, DT)
        return state.particle_position.pow(2).sum()

    t_forward = median_time(forward, repeats=3)
    samples = []
    for _ in range(3):
        loss = forward()
        start = time.perf_counter()
        loss.backward()
        samples.append(time.perf_counter() - start)
    return Record("mpm_backward_vs_forward", sorted(samples)[1], t_forward, "s",
                  f"backward of {steps} substeps x {model.particle_count} particles (warp, float64)",
                  "forward of the same rollout (autograd recording)", torch.get_num_threads(),
                  notes="ratio = backward / forward time")
