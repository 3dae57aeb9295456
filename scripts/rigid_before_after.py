"""Time the rigid solver of an earlier commit and of the working tree side by side, in one process,
on the MuJoCo benchmark scenes (benchmarks/bench_mujoco.py), with MuJoCo's mj_step alongside.

    .venv/bin/python scripts/rigid_before_after.py --ref c888c2a [--steps 240] [--repeats 5]

The earlier solver is ``git show REF:hybridsim/solvers/rigid/solver.py`` and its Warp kernels
(read-only git); both sides step the same models from the same states, runs alternate, and each
figure is the median of ``--repeats`` runs. The final states are compared bit for bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_before(ref: str):
    """The solver module of ``ref``, importing the Warp kernels of ``ref`` too."""
    folder = Path(tempfile.mkdtemp(prefix="rigid_before_"))
    kernels = subprocess.run(["git", "show", f"{ref}:kernels/warp/rigid.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    solver = subprocess.run(["git", "show", f"{ref}:hybridsim/solvers/rigid/solver.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    (folder / "rigid_kernels_before.py").write_text(kernels)
    spec = importlib.util.spec_from_file_location("hybridsim.kernels.warp.rigid_before", folder / "rigid_kernels_before.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    solver = solver.replace("from hybridsim.kernels.warp.rigid import", "from hybridsim.kernels.warp.rigid_before import")
    (folder / "solver_before.py").write_text(solver)
    spec = importlib.util.spec_from_file_location("hybridsim.solvers.rigid.solver_before", folder / "solver_before.py")
    before = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = before
    spec.loader.exec_module(before)
    return before


def _runner(solver_class, model, steps, dt):
    solver = solver_class(model, backend="warp")

    def go():
        state = model.state()
        for _ in range(steps):
            out = state.empty_like()
            solver.step(state, out, None, dt)
            state = out
        return state

    return go


def _batch(args, before, bm, torch) -> None:
    """World-steps/s: before, a loop over worlds (its solver has no world axis; measured on up to
    16 worlds, a loop's rate does not depend on how many follow); after, all worlds in one model."""
    from hybridsim.solvers.rigid import SolverRigid

    worlds, steps = args.worlds, args.steps
    loop = [_runner(before.SolverRigid, bm._ours_spheres(64, seed), steps, bm.DT) for seed in range(min(16, worlds))]
    start = time.perf_counter()
    model = bm._ours_sphere_worlds(64, worlds)
    build_s = time.perf_counter() - start
    batched = _runner(SolverRigid, model, steps, bm.DT)
    loop[0]()
    batched_final = batched()
    samples = {"before": [], "after": []}
    for _ in range(max(1, args.repeats // 2)):
        start = time.perf_counter()
        finals = [run() for run in loop]
        samples["before"].append((time.perf_counter() - start) / (len(loop) * steps))
        start = time.perf_counter()
        batched()
        samples["after"].append((time.perf_counter() - start) / (worlds * steps))
    rate = {name: 1.0 / statistics.median(s) for name, s in samples.items()}
    same = all(torch.equal(a[64 * w:64 * w + 64], b)
               for w, final in enumerate(finals) for a, b in zip(batched_final.tensors()[:4], final.tensors()[:4]))
    print(f"batch: {worlds} worlds x {steps} steps (built in {build_s:.1f} s); before {rate['before']:,.1f} world-steps/s "
          f"(loop over {len(loop)} worlds), after {rate['after']:,.1f} world-steps/s (one model); speed-up "
          f"{rate['after'] / rate['before']:.2f}x; worlds bit-identical to the loop: {same}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", default="HEAD", help="the earlier commit (default HEAD)")
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default="spheres64,spheres512,box_slide,batch")
    parser.add_argument("--worlds", type=int, default=256, help="worlds of the batch case (64 spheres each)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_mujoco as bm
    import mujoco

    from hybridsim.solvers.rigid import SolverRigid

    before = _load_before(args.ref)
    print(f"ref {args.ref}; torch threads 1; {args.repeats} alternating runs, medians", flush=True)
    for case in args.cases.split(","):
        if case == "batch":
            _batch(args, before, bm, torch)
            continue
        if case == "box_slide":
            model, xml, steps = bm._ours_box(), bm._mjcf_box(), args.steps
            setup = lambda data: data.qvel.__setitem__(0, bm.SLIDE_SPEED)  # noqa: E731
        else:
            count = int(case.removeprefix("spheres"))
            model, xml, setup = bm._ours_spheres(count), bm._mjcf_spheres(count), None
            steps = args.steps
        runs = {"before": _runner(before.SolverRigid, model, steps, bm.DT), "after": _runner(SolverRigid, model, steps, bm.DT)}
        mj_model = mujoco.MjModel.from_xml_string(xml)
        runs["mujoco"] = bm._mujoco_run(mujoco, mj_model, steps, setup)
        finals = {name: run() for name, run in runs.items()}  # warm-up (kernel loads)
        repeats = args.repeats if case != "spheres512" else max(1, args.repeats // 3)
        samples = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                samples[name].append(time.perf_counter() - start)
        rate = {name: steps / statistics.median(s) for name, s in samples.items()}
        same = all(torch.equal(a, b) for a, b in zip(finals["before"].tensors(), finals["after"].tensors()))
        print(f"{case}: {steps} steps; before {rate['before']:,.1f} steps/s (ratio {rate['before'] / rate['mujoco']:.3g}), "
              f"after {rate['after']:,.1f} steps/s (ratio {rate['after'] / rate['mujoco']:.3g}), "
              f"mujoco {rate['mujoco']:,.1f} steps/s; speed-up {rate['after'] / rate['before']:.2f}x; "
              f"final states bit-identical: {same}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
