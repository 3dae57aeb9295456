"""2D smoke step: Warp kernels against the vectorised numpy implementation of the same step
(same CG tolerance; numpy uses the Jacobi preconditioner, ours its CPU default, multigrid where
the grid halves evenly, else MIC(0); the record also carries ours with Jacobi), Taichi against Warp, and the cost of a backward pass
(adjoint kernels + adjoint solves) relative to the forward step."""

import time

import numpy as np
import torch

from hybridsim.bench import Record, case, median_time
from hybridsim.solvers.grid_fluid import GridFluidBuilder, GridFluidState, SolverGridFluid
from hybridsim.solvers.grid_fluid.reference import GridFluidNumpy

TOLERANCE = 1e-5


def _plume(n: int, dtype=torch.float32):
    """A smoke plume in a box open at the top, developed for a while so the solve has work to do."""
    builder = GridFluidBuilder(cell_count=(n, n), cell_size=1.0 / n, boundary=("wall", "wall", "wall", "open"),
                               buoyancy=4.0, vorticity_strength=0.3)
    builder.add_inflow_disc((0.5, 0.15), 0.08, 4.0)
    model = builder.finalize(dtype=dtype)
    dt = 0.5 / n
    solver = SolverGridFluid(model, pressure_tolerance=TOLERANCE)
    state = model.state()
    with torch.no_grad():
        for _ in range(40):
            state = solver.step_differentiable(state, None, dt)
    return model, state, dt


def _step_time(solver: SolverGridFluid, state: GridFluidState, dt: float, repeats: int) -> tuple[float, int]:
    out = state.empty_like()
    seconds = median_time(lambda: solver.step(state, out, None, dt), repeats=repeats)
    return seconds, solver.projection.last_result.iterations


@case("grid_fluid_step_vs_numpy")
def step_vs_numpy(quick: bool) -> Record:
    n = 64 if quick else 128
    repeats = 3 if quick else 5
    model, state, dt = _plume(n)
    solver = SolverGridFluid(model, backend="warp", pressure_tolerance=TOLERANCE)
    preconditioner = solver.projection.preconditioner
    ours, iterations = _step_time(solver, state, dt, repeats)
    jacobi, jacobi_iterations = _step_time(SolverGridFluid(model, backend="warp", pressure_tolerance=TOLERANCE,
                                                           preconditioner="jacobi"), state, dt, repeats)
    reference = GridFluidNumpy(model, tolerance=TOLERANCE, dtype=np.float32)
    arrays = [t.numpy().copy() for t in state.tensors()]
    theirs = median_time(lambda: reference.step(*arrays, dt), repeats=repeats)
    return Record("grid_fluid_step_vs_numpy", ours * 1e3, theirs * 1e3, "ms/step",
                  f"warp kernels, {n}x{n}, float32, {preconditioner} PCG", "vectorised numpy, same step, Jacobi-PCG",
                  torch.get_num_threads(),
                  notes=f"PCG to {TOLERANCE:g}: {iterations} {preconditioner} iterations (warp) / {reference.last_iterations} "
                        f"Jacobi (numpy); warp with Jacobi too: {jacobi * 1e3:.3g} ms/step ({jacobi_iterations} it, "
                        f"ratio {jacobi / theirs:.2f}); ratio < 1 means faster than numpy",
                  extra={"cells": n * n, "iterations": iterations, "reference_iterations": reference.last_iterations,
                         "warp_jacobi_ms": jacobi * 1e3, "warp_jacobi_iterations": jacobi_iterations})


@case("grid_fluid_taichi_vs_warp")
def taichi_vs_warp(quick: bool) -> Record:
    n = 64 if quick else 128
    repeats = 3 if quick else 5
    model, state, dt = _plume(n)
    times = {}
    for backend in ("taichi", "warp"):
        solver = SolverGridFluid(model, backend=backend, pressure_tolerance=TOLERANCE)
        solver.step(state, state.empty_like(), None, dt)  # compile / load outside the timing
        times[backend], _ = _step_time(solver, state, dt, repeats)
    return Record("grid_fluid_taichi_vs_warp", times["taichi"] * 1e3, times["warp"] * 1e3, "ms/step",
                  f"taichi kernels, {n}x{n}, float32", "warp kernels, same step", torch.get_num_threads(),
                  notes="ratio < 1 means Taichi is faster (Taichi CPU kernels use several threads, Warp CPU one)")


@case("grid_fluid_backward_vs_forward")
def backward_vs_forward(quick: bool) -> Record:
    n, steps = (32, 10) if quick else (64, 20)
    model, state, dt = _plume(n)
    solver = SolverGridFluid(model, pressure_tolerance=TOLERANCE)
    model.buoyancy = model.buoyancy.clone().requires_grad_(True)

    def forward():
        current = state
        for _ in range(steps):
            current = solver.step_differentiable(current, None, dt)
        return current.density.sum() + current.velocity_y.sum()

    t_forward = median_time(forward, repeats=3)
    samples = []
    for _ in range(3):
        loss = forward()
        start = time.perf_counter()
        loss.backward()
        samples.append(time.perf_counter() - start)
    return Record("grid_fluid_backward_vs_forward", sorted(samples)[1], t_forward, "s",
                  f"backward of {steps} steps at {n}x{n} (warp)", "forward of the same rollout", torch.get_num_threads(),
                  notes="ratio = backward / forward time; backward = kernel adjoints + one adjoint solve per projection")
