"""MLS-MPM substep throughput: Warp against a vectorised numpy MLS-MPM of the same numerics
(np.add.at scatter), Taichi against Warp, the cost of a backward pass, and both backends against
the MLS-MPM examples that ship in the taichi wheel (mpm88.py, mpm128.py), with the time and
memory of a 1,000-substep differentiable rollout of the mpm88 scene.

Run as a script, this file is the worker process of those cases (``--example``, ``--rollout``).
"""

import argparse
import ast
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hybridsim.bench import Record, case, median_time
from hybridsim.errors import HybridsimError
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


# -- against the MLS-MPM examples shipped in the taichi wheel ----------------------------------------------------------
#
# The example runs in its own process (its ti.init must not meet ours): its source is loaded from
# the installed wheel, its window, prints and frame loop are dropped (AST), it is initialised on the
# CPU with our Taichi thread count, and it times ``substep()`` calls on request. Ours runs the same
# particle count, grid, dt and material in this process; rounds alternate between the two so that
# load from other processes hits both alike.

EXAMPLE_DIFFERENCES = {
    "mpm88": "liquid K J (J - 1) (ours, K = 400) vs E (J - 1) (example, E = 400); J from det((I + dt C) F) vs "
             "J (1 + dt tr C); upper wall band 3 nodes vs 2; ours also reads per-particle material parameters, "
             "viscosity and force arrays and writes F (2x2) and the trial F kept for the adjoint",
    "mpm128": "jelly and snow: our neo-Hookean (snow: times the same hardening h, same clamps) vs the example's "
              "fixed-corotated; the example runs a 2x2 SVD for every particle every substep, ours only for snow; "
              "fluid K J (J - 1), K = lambda_0, as the example; upper wall band 3 nodes vs 2",
}


def example_path(name: str) -> Path:
    """``taichi/examples/simulation/<name>.py`` of the installed wheel (found without importing taichi)."""
    spec = importlib.util.find_spec("taichi")
    if spec is None or not spec.submodule_search_locations:
        raise HybridsimError("taichi is not installed")
    path = Path(spec.submodule_search_locations[0]) / "examples" / "simulation" / f"{name}.py"
    if not path.is_file():
        raise HybridsimError("the taichi wheel has no such example", file=str(path))
    return path


def headless_example(path: Path):
    """The example's code without ti.init, the GUI, prints and top-level loops (line numbers kept,
    so Taichi still finds each kernel's source in the file)."""
    tree = ast.parse(path.read_text(), str(path))

    def keep(node) -> bool:
        if isinstance(node, (ast.For, ast.While)):
            return False
        if any(isinstance(n, ast.Name) and n.id == "gui" for n in ast.walk(node)):
            return False
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            return ast.unparse(node.value.func) not in ("ti.init", "print")
        return True

    tree.body = [node for node in tree.body if keep(node)]
    return compile(tree, str(path), "exec")


def _example_worker(name: str, threads: int) -> None:
    """Subprocess: run the example headless; answer ``run N`` with the time of N substeps (JSON)."""
    import taichi as ti

    path = example_path(name)
    ti.init(arch=ti.cpu, cpu_max_num_threads=threads, log_level=ti.WARN)
    namespace = {"__name__": f"taichi_example_{name}", "__file__": str(path)}
    exec(headless_example(path), namespace)  # noqa: S102 - the wheel's own example, GUI removed
    substep = namespace["substep"]
    print(json.dumps({"threads": ti.lang.impl.current_cfg().cpu_max_num_threads,
                      "particles": namespace["n_particles"], "grid": namespace["n_grid"], "dt": namespace["dt"]}),
          flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] != "run":
            break
        count = int(words[1])
        ti.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            substep()
        ti.sync()
        print(json.dumps({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}), flush=True)


class _ExampleProcess:
    def __init__(self, name: str, threads: int):
        env = {**os.environ, "TI_SKIP_VERSION_CHECK": "ON", "ENABLE_TAICHI_HEADER_PRINT": "0"}
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--example", name,
                                         "--threads", str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        self.info = self._answer()

    def _answer(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise HybridsimError(f"the taichi example worker exited with {self.process.wait()}")

    def run(self, count: int) -> dict:
        self.process.stdin.write(f"run {count}\n")
        self.process.stdin.flush()
        return self._answer()

    def close(self):
        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
        except OSError:
            pass
        self.process.wait(timeout=60)


def example_scene(name: str, dtype=torch.float32):
    """Our model of the example's scene: (model, dt). Same particle count, positions drawn the same
    way (uniform in the example's boxes, seeded), particle volume (dx/2)^2, density 1, grid, walls,
    gravity and dt; the materials as close as our models allow (EXAMPLE_DIFFERENCES)."""
    rng = np.random.default_rng(0)
    builder_args = dict(dim=2, resolution=128, size=127 / 128, boundary_cells=3, wall_mode="separate")
    if name == "mpm88":
        builder = MPMBuilder(**builder_args, gravity=(0.0, -9.8))
        water = builder.add_material("liquid", bulk_modulus=400.0, density=1.0)
        builder.add_particles(rng.random((8192, 2)) * 0.4 + 0.2, material=water, velocity=(0.0, -1.0))
        return builder.finalize(dtype=dtype), 2e-4
    if name == "mpm128":
        youngs, nu = 5e3, 0.2
        lambda_0 = youngs * nu / ((1 + nu) * (1 - 2 * nu))
        builder = MPMBuilder(**builder_args, gravity=(0.0, -30.0))  # gravity[None] * 30, gravity = (0, -1)
        materials = [builder.add_material("liquid", bulk_modulus=lambda_0, density=1.0),
                     builder.add_material("elastic", youngs_modulus=0.3 * youngs, poisson_ratio=nu, density=1.0),
                     builder.add_material("snow", youngs_modulus=youngs, poisson_ratio=nu, density=1.0, hardening=10.0,
                                          critical_compression=2.5e-2, critical_stretch=4.5e-3)]
        for group, material in enumerate(materials):
            points = rng.random((3000, 2)) * 0.2 + np.array([0.3 + 0.1 * group, 0.05 + 0.32 * group])
            builder.add_particles(points, material=material)
        return builder.finalize(dtype=dtype), 1e-4
    raise HybridsimError(f"no scene for example {name!r}")


def taichi_threads() -> int:
    """Threads of our Taichi CPU backend (initialised here if it is not yet)."""
    from hybridsim import backends

    return int(backends.taichi("cpu").lang.impl.current_cfg().cpu_max_num_threads)


class _OurStepper:
    """Times ``SolverMPM.step`` (the raw substep, parameters gathered once) on one scene."""

    def __init__(self, model, dt: float, backend: str, deterministic: bool = False):
        self.solver = SolverMPM(model, backend=backend, deterministic=deterministic)
        self.dt, self.parameters = dt, model.particle_parameters()
        self.states = [model.state(), model.state().empty_like()]

    def run(self, count: int) -> dict:  # count is even: the state ends in states[0]
        states, wall, cpu = self.states, time.perf_counter(), time.process_time()
        for k in range(count):
            self.solver.step(states[k % 2], states[(k + 1) % 2], None, self.dt, parameters=self.parameters)
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}

    def finite(self) -> bool:
        return bool(torch.isfinite(self.states[0].particle_position).all())


def _against_example(name: str, backend: str, quick: bool) -> Record:
    threads = taichi_threads()
    model, dt = example_scene(name)
    steppers = {"ours": _OurStepper(model, dt, backend)}
    if backend == "taichi":  # also time deterministic mode (serialized P2G/G2P loops)
        steppers["ours_deterministic"] = _OurStepper(model, dt, backend, deterministic=True)
    warmup, count, rounds = (100, 100, 5) if quick else (400, 400, 11)
    example = _ExampleProcess(name, threads)
    try:
        info = example.info
        if (info["particles"], info["grid"], info["dt"]) != (model.particle_count, model.grid.resolution[0], dt):
            raise HybridsimError(f"the {name} example changed: {info}; update example_scene")
        example.run(warmup)
        for stepper in steppers.values():
            stepper.run(warmup)
        samples = {"example": [], **{key: [] for key in steppers}}
        for _ in range(rounds):  # alternate, so that load from other processes hits every side alike
            samples["example"].append(example.run(count))
            for key, stepper in steppers.items():
                samples[key].append(stepper.run(count))
    finally:
        example.close()
    if not all(stepper.finite() for stepper in steppers.values()):
        raise HybridsimError(f"our {name} scene went non-finite during the benchmark")

    def per_substep(side: str, key: str = "wall") -> float:
        return statistics.median(s[key] for s in samples[side]) / count

    n = model.particle_count
    ours_s, example_s = per_substep("ours"), per_substep("example")
    launch = steppers["ours"].solver._launch
    if backend == "taichi":
        chunks = launch.scatter_chunks(n, model.grid.node_count)
        how = (f"P2G without atomics, {chunks} particle chunks into private grid copies" if chunks > 1 else
               "serial P2G without atomics" if chunks == 1 else "P2G with atomic adds")
        deterministic_s = per_substep("ours_deterministic")
        scheme = (f"ours: one fused Taichi kernel per substep, {how} (the example's P2G uses atomic adds); "
                  f"deterministic mode {deterministic_s * 1e3:.3f} ms/substep "
                  f"({example_s / deterministic_s:.2f}x the example's speed)")
        ours_threads = threads
    else:
        scheme = "Warp runs CPU kernels on one thread (its atomics are plain adds there)"
        ours_threads = 1
    extra = {"ours_ms_per_substep": ours_s * 1e3, "example_ms_per_substep": example_s * 1e3,
             "ours_cpu_ms_per_substep": per_substep("ours", "cpu") * 1e3,
             "example_cpu_ms_per_substep": per_substep("example", "cpu") * 1e3,
             "ours_threads": ours_threads, "example_threads": info["threads"], "samples": samples}
    if "ours_deterministic" in samples:
        extra["deterministic_ms_per_substep"] = per_substep("ours_deterministic") * 1e3
    return Record(
        f"{name}_{backend}_example", n / ours_s / 1e6, n / example_s / 1e6, "M particle-substeps/s",
        f"SolverMPM.step, {backend} CPU ({ours_threads} thread{'s' if ours_threads > 1 else ''}), float32, "
        f"{n} particles, 128^2 grid, dt {dt:g}",
        f"taichi wheel examples/simulation/{name}.py substep(), headless, CPU, {info['threads']} threads",
        threads,
        notes=(f"ratio = our speed / example speed (issue goal for taichi: >= 0.8); ours "
               f"{ours_s * 1e3:.3f} ms/substep = {1 / ours_s:.0f} substeps/s, example {example_s * 1e3:.3f} ms/substep "
               f"= {1 / example_s:.0f} substeps/s; median wall time of {rounds} alternating rounds of {count} "
               f"substeps after {warmup}; {scheme}; differences: {EXAMPLE_DIFFERENCES[name]}"),
        extra=extra)


@case("mpm88_taichi_example")
def mpm88_taichi_example(quick: bool) -> Record:
    return _against_example("mpm88", "taichi", quick)


@case("mpm88_warp_example")
def mpm88_warp_example(quick: bool) -> Record:
    return _against_example("mpm88", "warp", quick)


@case("mpm128_taichi_example")
def mpm128_taichi_example(quick: bool) -> Record:
    return _against_example("mpm128", "taichi", quick)


@case("mpm128_warp_example")
def mpm128_warp_example(quick: bool) -> Record:
    return _against_example("mpm128", "warp", quick)


# -- a 1,000-substep differentiable rollout of the mpm88 scene: time and memory ----------------------------------------

# glibc raises its mmap threshold as large blocks are freed, after which freed buffers stay in a
# fragmented heap and RSS measures the allocator rather than what is alive (see bench_memory.py)
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
_ROLLOUTS: dict = {}


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _rollout_worker(backend: str, frames: int, substeps: int, checkpoint: bool) -> None:
    """Subprocess: forward + backward of one rollout of the mpm88 scene; print times and RSS (JSON)."""
    from hybridsim.solvers.mpm import rollout_mpm

    torch.set_num_threads(1)
    model, dt = example_scene("mpm88")
    model.youngs_modulus.requires_grad_(True)
    solver = SolverMPM(model, backend=backend)

    def run(frames_, substeps_, checkpoint_):
        state = model.state(requires_grad=True)
        start = time.perf_counter()
        trajectory = rollout_mpm(solver, state, frames=frames_, substeps=substeps_, dt=dt, checkpoint=checkpoint_,
                                 warn_dt=False)
        loss = trajectory.positions[..., 1].mean() + trajectory.velocities[-1].pow(2).mean()
        middle = time.perf_counter()
        loss.backward()
        return middle - start, time.perf_counter() - middle, state

    for warm in (False, True):  # compile the kernels; import torch's checkpoint machinery
        run(4, 2, warm)
    model.youngs_modulus.grad = None
    baseline = _current_rss_mb()
    forward, backward, state = run(frames, substeps, checkpoint)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    grad_bulk = float(model.youngs_modulus.grad[0])
    model.youngs_modulus.grad = None
    again = run(frames, substeps, checkpoint)  # times: the faster of two runs (the first one warms caches)
    forward, backward = min(forward, again[0]), min(backward, again[1])
    print(json.dumps({"backend": backend, "steps": frames * substeps, "checkpoint": checkpoint,
                      "forward_s": forward, "backward_s": backward, "baseline_rss_mb": baseline,
                      "peak_rss_mb": peak, "growth_mb": peak - baseline,
                      "grad_bulk": grad_bulk,
                      "grad_velocity_norm": float(state.particle_velocity.grad.norm())}), flush=True)


def rollout_probe(backend: str, frames: int, substeps: int, checkpoint: bool, fixed_mmap: bool) -> dict:
    """Run (once per process and arguments) the rollout worker in a fresh interpreter; with
    ``fixed_mmap`` (for memory figures), glibc's mmap threshold is fixed, which makes every large
    allocation an mmap and so slows the rollout: time figures come from runs without it."""
    key = (backend, frames, substeps, checkpoint, fixed_mmap)
    if key not in _ROLLOUTS:
        command = [sys.executable, str(Path(__file__).resolve()), "--rollout", backend, "--frames", str(frames),
                   "--substeps", str(substeps)] + (["--checkpoint"] if checkpoint else [])
        result = subprocess.run(command, capture_output=True, text=True, check=True,
                                env={**os.environ, **(FIXED_MMAP if fixed_mmap else {})})
        _ROLLOUTS[key] = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    return _ROLLOUTS[key]


def _rollout_size(quick: bool) -> tuple[int, int]:
    return (20, 10) if quick else (100, 10)  # frames x substeps: 200 or 1,000 substeps


@case("mpm88_rollout_memory")
def mpm88_rollout_memory(quick: bool) -> Record:
    frames, substeps = _rollout_size(quick)
    checkpointed = rollout_probe("taichi", frames, substeps, True, fixed_mmap=True)
    plain = rollout_probe("taichi", frames, substeps, False, fixed_mmap=True)
    return Record("mpm88_rollout_memory", checkpointed["growth_mb"], plain["growth_mb"], "MB",
                  f"rollout_mpm checkpointed (segments of {round(math.sqrt(frames))} frames), "
                  f"{frames * substeps} substeps x 8192 particles, taichi float32, forward + backward",
                  "the same rollout without checkpointing (every substep kept for backward)", taichi_threads(),
                  notes="peak RSS above the post-warm-up baseline, fresh subprocess each, fixed mmap threshold; "
                        "the example itself is not differentiable, so its forward memory is no reference; "
                        f"gradients agree to round-off: d/dK {checkpointed['grad_bulk']:.6g} vs "
                        f"{plain['grad_bulk']:.6g}, "
                        f"|d/dv0| {checkpointed['grad_velocity_norm']:.6g} vs {plain['grad_velocity_norm']:.6g}",
                  extra={"checkpointed": checkpointed, "plain": plain})


@case("mpm88_backward_vs_forward")
def mpm88_backward_vs_forward(quick: bool) -> Record:
    frames, substeps = _rollout_size(quick)
    checkpointed = rollout_probe("taichi", frames, substeps, True, fixed_mmap=False)
    plain = rollout_probe("taichi", frames, substeps, False, fixed_mmap=False)
    steps = frames * substeps
    return Record("mpm88_backward_vs_forward", checkpointed["backward_s"], checkpointed["forward_s"], "s",
                  f"backward of a checkpointed {steps}-substep rollout, 8192 particles (taichi, float32; "
                  "recomputes each segment's forward)",
                  "its forward (autograd recording)", taichi_threads(),
                  notes=f"ratio = backward / forward; per substep: forward "
                        f"{checkpointed['forward_s'] / steps * 1e3:.2f} ms, backward "
                        f"{checkpointed['backward_s'] / steps * 1e3:.2f} ms; without checkpointing: forward "
                        f"{plain['forward_s']:.2f} s, backward {plain['backward_s']:.2f} s, ratio "
                        f"{plain['backward_s'] / plain['forward_s']:.2f}; default allocator, fresh subprocess each",
                  extra={"checkpointed": checkpointed, "plain": plain})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="worker processes of the MPM benchmarks")
    parser.add_argument("--example", help="run this taichi wheel example headless (mpm88, mpm128)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--rollout", metavar="BACKEND", help="time and measure one differentiable rollout")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--substeps", type=int, default=10)
    parser.add_argument("--checkpoint", action="store_true")
    args = parser.parse_args(argv)
    if args.example:
        _example_worker(args.example, args.threads)
    elif args.rollout:
        _rollout_worker(args.rollout, args.frames, args.substeps, args.checkpoint)
    else:
        parser.error("nothing to do")


if __name__ == "__main__":
    main()
