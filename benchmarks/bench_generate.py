"""Data generation throughput: ``generate`` (gates, shards, crash-safe staging, worker pool) against
a bare loop that draws, simulates, renders and writes the same files with no pipeline around it.

As a case of ``hybridsim bench`` (``generate_pool_vs_loop``) or standalone, with sizes of your choice:

    python benchmarks/bench_generate.py --count 32 --workers 1 2 [--ray local] [--frames 24]
    python benchmarks/bench_generate.py --distribution scenes/boxes_random.toml --count 20 --workers 2   # rigid
    python benchmarks/bench_generate.py --per-hour [--quick]   # generate_samples_per_hour, printed as JSON

``generate_samples_per_hour``: samples per hour per core at 128 x 128 pixels, 48 frames, every
layer, for a rigid (boxes_random), a smoke (smoke_random) and an MPM (mpm_random) scene, on 1 and
2 workers; ``ratio`` = 2-worker throughput / 1-worker throughput (2 would be perfect scaling),
and the time breakdown (simulate with gates, render, encode, write) from ``summary.json``. Two
figures per run: ``wall`` (count / wall time, worker start-up included) and ``steady`` (3600 /
worker seconds per sample, no start-up; per core).

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

import re

import numpy as np

from hybridsim.bench import Record, case

SCENES = Path(__file__).resolve().parent.parent / "scenes"
DISTRIBUTION = SCENES / "bounce_random.toml"
PER_HOUR_SCENES = {"rigid": "boxes_random.toml", "smoke": "smoke_random.toml", "mpm": "mpm_random.toml"}
PER_HOUR_SIZE = 128
PER_HOUR_FRAMES = 48


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


def resized_distribution(name: str, folder: Path, size: int = PER_HOUR_SIZE) -> Path:
    """A copy of ``scenes/NAME`` in ``folder`` rendering ``size`` x ``size`` pixels (the three
    distributions benchmarked name no files relative to themselves)."""
    text = (SCENES / name).read_text()
    text, count = re.subn(r"(?m)^(width|height) = \d+", lambda m: f"{m.group(1)} = {size}", text)
    assert count == 2, name
    path = folder / f"{size}px-{name}"
    path.write_text(text)
    return path


def samples_per_hour(quick: bool = False, count: int | None = None, workers=(1, 2), log=print,
                     scenes=tuple(PER_HOUR_SCENES)) -> dict:
    """``generate`` throughput per scene kind and worker count, with time breakdowns."""
    count = count or (2 if quick else 6)
    frames = 12 if quick else PER_HOUR_FRAMES
    results: dict = {"size": PER_HOUR_SIZE, "frames": frames, "count": count, "cpu_count": os.cpu_count(),
                     "torch_threads_per_worker": 1, "scenes": {}}
    folder = Path(tempfile.mkdtemp(prefix="hybridsim-bench-"))
    try:
        for kind in scenes:
            name = PER_HOUR_SCENES[kind]
            distribution = resized_distribution(name, folder)
            runs = {}
            for n in workers:
                summary = run_generate(count, n, frames, folder / f"{kind}-{n}", distribution=distribution)
                seconds = summary["mean_worker_s_per_sample"]
                write = summary["time_breakdown"]["seconds"]["write"] / count
                runs[n] = {
                    "wall_s": summary["wall_s"],
                    "samples_per_hour_per_core_wall": round(3600 * summary["samples_per_s"] / n, 1),
                    "samples_per_hour_per_core_steady": round(3600 / (sum(seconds.values()) + write), 1),
                    "samples_per_hour_wall": round(3600 * summary["samples_per_s"], 1),
                    "rejected": summary["rejected_count"],
                    "time_breakdown": summary["time_breakdown"],
                }
                log(json.dumps({"scene": kind, "workers": n, **{k: v for k, v in runs[n].items()
                                                                 if k != "time_breakdown"},
                                "share": runs[n]["time_breakdown"]["share"]}))
            entry = {"distribution": name, "runs": runs}
            if len(workers) > 1:
                one, many = runs[workers[0]], runs[workers[-1]]
                entry["ratio"] = round(many["samples_per_hour_wall"] / one["samples_per_hour_wall"], 3)
            results["scenes"][kind] = entry
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


@case("generate_samples_per_hour")
def generate_samples_per_hour(quick: bool) -> Record:
    results = samples_per_hour(quick, log=lambda line: None)
    scenes = results["scenes"]
    one = {kind: entry["runs"][1]["samples_per_hour_per_core_wall"] for kind, entry in scenes.items()}
    two = {kind: entry["runs"][2]["samples_per_hour_wall"] for kind, entry in scenes.items()}
    # headline: the mean over the three scene kinds, 2 workers against 1 worker (whole-run throughput)
    return Record("generate_samples_per_hour", float(np.mean(list(two.values()))), float(np.mean(list(one.values()))),
                  "samples/h", "generate on 2 workers (samples/h, mean of rigid, smoke, MPM)",
                  "generate on 1 worker (samples/h per core)", 1,
                  notes=f"{results['size']}x{results['size']} px, {results['frames']} frames, all layers, "
                        f"{results['count']} samples per run; ratio = 2-worker / 1-worker throughput (2 = perfect); "
                        "per-scene ratios and time breakdowns in extra",
                  extra=results)


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
    parser.add_argument("--per-hour", action="store_true", help="run generate_samples_per_hour instead (rigid, smoke, "
                                                                "MPM at 128x128, 48 frames; --count per run)")
    parser.add_argument("--quick", action="store_true", help="with --per-hour: 2 samples of 12 frames per run")
    parser.add_argument("--scenes", nargs="+", choices=list(PER_HOUR_SCENES), default=list(PER_HOUR_SCENES),
                        help="with --per-hour: which scene kinds (default all three)")
    args = parser.parse_args(argv)
    if args.per_hour:
        count = args.count if "--count" in (argv if argv is not None else sys.argv) else None
        print(json.dumps(samples_per_hour(args.quick, count, tuple(args.workers), scenes=args.scenes), indent=1),
              flush=True)
        return 0
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
