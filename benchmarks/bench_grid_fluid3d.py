"""3D smoke step time on each backend (float32, CPU, torch on one thread): a plume from a sphere
inflow around a sphere obstacle in a box open at the top, developed for a few steps so the solve
has work to do; median of a few steps, with the pressure CG's iteration count.

    .venv/bin/python benchmarks/bench_grid_fluid3d.py            # 32^3 and 64^3, Warp and Taichi
    .venv/bin/python benchmarks/bench_grid_fluid3d.py 48 --backend warp --preconditioner jacobi
"""

import argparse
import statistics
import time

import torch

from hybridsim.solvers.grid_fluid3d import GridFluid3DBuilder, SolverGridFluid3D


def plume(n: int, backend: str, preconditioner: str, warm_steps: int):
    builder = GridFluid3DBuilder(cell_count=(n, n, n), cell_size=1.0 / n, boundary=("wall",) * 5 + ("open",),
                                 buoyancy=3.0, vorticity_strength=0.2)
    builder.add_inflow_sphere((0.5, 0.5, 0.15), 0.1, 4.0)
    builder.add_obstacle_sphere((0.52, 0.5, 0.5), 0.15)
    model = builder.finalize(dtype=torch.float32)
    solver = SolverGridFluid3D(model, backend=backend, advection="maccormack", density_advection="conservative",
                               preconditioner=preconditioner)
    dt = 0.5 / n
    state, out = model.state(), model.state()
    for _ in range(warm_steps):  # compiles, then lets the plume start moving
        solver.step(state, out, None, dt)
        state, out = out, state
    return solver, state, out, dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[32, 64])
    parser.add_argument("--backend", choices=["warp", "taichi"], action="append")
    parser.add_argument("--preconditioner", default="auto", choices=["auto", "jacobi", "incomplete_cholesky", "multigrid"])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for n in args.sizes:
        for backend in args.backend or ["warp", "taichi"]:
            solver, state, out, dt = plume(n, backend, args.preconditioner, warm_steps=4)
            times, iterations = [], []
            for _ in range(args.steps):
                start = time.perf_counter()
                solver.step(state, out, None, dt)
                times.append(time.perf_counter() - start)
                iterations.append(solver.projection.last_result.iterations)
                state, out = out, state
            print(f"{n}^3 {backend:6s} {solver.projection.preconditioner:19s} step {statistics.median(times) * 1e3:7.0f} ms "
                  f"(min {min(times) * 1e3:.0f}), pressure CG iterations {iterations}, torch threads 1", flush=True)


if __name__ == "__main__":
    main()
