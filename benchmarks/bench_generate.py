"""Data generation throughput: ``generate`` (gates, shards, crash-safe staging, worker pool) against
a bare loop that draws, simulates, renders and writes the same files with no pipeline around it.

As a case of ``hybridsim bench`` (``generate_pool_vs_loop``) or standalone, with sizes of your choice:

    python benchmarks/bench_generate.py --count 32 --workers 1 2 [--ray local] [--frames 24]
    python benchmarks/bench_generate.py --distribution scenes/boxes_random.toml --count 20 --workers 2   # rigid

Both sides use one torch thread per process; wall times include worker start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hybridsim.bench import Record, case

DISTRIBUTION = Path(__file__).resolve().parent.parent / "scenes" / "bounce_random.toml"


def bare_loop(count: int, frames: int | None, out: Path, distribution: Path = DISTRIBUTION) -> float:
    """Seconds for ``count`` samples drawn, simulated, rendered and written as plain files."""
    import torch

    from hybridsim.data.sample import simulate_and_render
    from hybridsim.render import write_video
    from hybridsim.scene.distributions import load_distribution
    from hybridsim.sim.world import World

    torch.set_num_threads(1)
    dist = load_distribution(distribution)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for index in range(count):
        spec = dist.sample(0, index, frames=frames)
        rendering = simulate_and_render(World(spec))
        write_video(out / f"{index}.mp4", rendering.rgb, fps=spec.time.fps)
        np.savez_compressed(out / f"{index}.layers.npz", **rendering.layers)
    return time.perf_counter() - start


def run_generate(count: int, workers: int, frames: int | None, out: Path, ray: str | None = None,
                 distribution: Path = DISTRIBUTION) -> dict:
    from hybridsim.data import generate

    return generate(distribution, count, out, workers=workers, ray=ray, frames=frames, shard_size=max(1, count // 4),
                    progress=False, log=None)


@case("generate_pool_vs_loop")
def generate_pool_vs_loop(quick: bool) -> Record:
    count, frames = (8, 12) if quick else (32, None)
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="hybridsim-bench-") as folder:
        loop_s = bare_loop(count, frames, Path(folder) / "loop")
        summary = run_generate(count, workers, frames, Path(folder) / "generate")
    return Record("generate_pool_vs_loop", summary["samples_per_s"], count / loop_s, "samples/s",
                  f"generate, {workers} spawned workers, gates + shards + staging",
                  "bare in-process loop: draw, simulate, render, write mp4 + npz", 1,
                  notes=f"{count} samples of bounce_random ({frames or 24} frames, 96x72); ratio > 1 means faster; "
                        "wall time includes worker start-up",
                  extra={"summary": summary})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--distribution", type=Path, default=DISTRIBUTION,
                        help="distribution file (default scenes/bounce_random.toml; scenes/boxes_random.toml: rigid)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--frames", type=int)
    parser.add_argument("--ray", help="also run through Ray at this address ('local' for a private head)")
    parser.add_argument("--no-loop", action="store_true", help="skip the bare-loop reference")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="hybridsim-bench-"))
    try:
        if not args.no_loop:
            seconds = bare_loop(args.count, args.frames, folder / "loop", args.distribution)
            print(json.dumps({"runner": "bare loop", "count": args.count, "wall_s": round(seconds, 3),
                              "samples_per_s": round(args.count / seconds, 3)}), flush=True)
        runs = [(w, None) for w in args.workers] + ([(max(args.workers), args.ray)] if args.ray else [])
        for workers, ray in runs:
            summary = run_generate(args.count, workers, args.frames, folder / f"gen-{workers}-{ray}", ray=ray,
                                   distribution=args.distribution)
            print(json.dumps({"runner": summary["executor"], **{k: summary[k] for k in (
                "count", "workers", "wall_s", "samples_per_s", "rejected_count", "mean_worker_s_per_sample")}}),
                flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
