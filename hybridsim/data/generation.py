"""``generate``: draw scenes from a distribution file, simulate, render and write WebDataset shards.

    summary = generate("scenes/bounce_random.toml", count=1000, out="data/bounce", workers=8)

Determinism: sample ``i`` is a pure function of (distribution file content and the listings of
its ``choice_dir`` folders, ``seed``, ``i``, ``frames``, gates, ``[generate]`` options, refiner weights): its scene is drawn with ``numpy.random.default_rng([seed, i])``; a draw the
quality gates reject is redrawn with ``default_rng([seed, i, attempt])`` (attempt 1, 2, ...), so
``count`` is the number of accepted samples, keys are ``sample-0000000`` ... without gaps, and the
same command gives the same accepted set whatever the workers, executor or interruptions.
Rejected draws are listed (with reasons) in each sample's json and in ``manifest.json``.

Scenes: spheres, rigid bodies, 2D smoke (``[fluid]``, with or without rigid bodies in it) and MPM
particles (``[mpm]``); see
:mod:`hybridsim.data.job` and :mod:`hybridsim.data.continuum` for what each sample holds. With
``refiner=`` trained video-refiner weights, every sample also gets ``{key}.refined.mp4``; with
``preview=True`` the run ends by writing ``OUT/preview/`` (:mod:`hybridsim.data.preview`).

Timing: ``summary.json`` holds ``time_breakdown``: seconds spent simulating (with the gates),
rendering, encoding (mp4, npz, json), refining and writing (staging and shard finalisation, in
this process), summed over samples and workers, with each phase's share of their sum.

Crash safety: see :mod:`hybridsim.data.shards`; rerunning an interrupted command resumes it.

Scale-out: ``workers`` spawned local processes by default, or Ray tasks with ``ray=`` an address
(see :mod:`hybridsim.data.runners`): ``ray="auto"`` inside a cluster (after ``ray start``),
``ray="ray://head-node:10001"`` from outside it, ``ray="local"`` for a private single-node head.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from ..errors import SceneError
from .gates import QualityGates
from .job import GenerateJob
from .shards import ShardStore

__all__ = ["generate"]


def generate(distribution, count: int, out, *, workers: int | None = None, ray: str | None = None,
             shard_size: int = 100, seed: int = 0, frames: int | None = None, gates: QualityGates | None = None,
             max_attempts: int = 16, progress: bool = True, log: Callable[[str], None] | None = print,
             max_state_particles: int | None = None, field_stride: int | None = None, refiner=None,
             preview: bool = False) -> dict:
    """Generate ``count`` accepted samples of the distribution file ``distribution`` into ``out``.

    ``max_state_particles`` / ``field_stride`` override the distribution's ``[generate]`` table
    (MPM particles and fluid cells kept in states.npz); ``refiner`` is a path to trained refiner
    weights (.safetensors): each sample also gets ``{key}.refined.mp4``; ``preview`` writes
    ``OUT/preview/contact_sheet.png`` and ``histograms.png`` at the end.

    Returns the run summary (also written to ``out/summary.json``). Rerunning the same call after
    an interruption resumes it; a different call on the same folder raises HybridsimError.
    """
    from tqdm import tqdm

    from ..errors import HybridsimError
    from ..scene.distributions import parse_distribution

    started = time.perf_counter()
    log = log or (lambda message: None)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise HybridsimError(f"--count must be a positive integer (got {count!r})")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        raise HybridsimError(f"--frames must be a positive integer (got {frames!r})")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HybridsimError(f"--seed must be a non-negative integer (got {seed!r})")
    if max_attempts < 1:
        raise HybridsimError(f"--max-attempts must be >= 1 (got {max_attempts})")
    for flag, value in (("--max-particles", max_state_particles), ("--field-stride", field_stride)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise HybridsimError(f"{flag} must be a positive integer (got {value!r})")
    workers = int(workers) if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise HybridsimError(f"--workers must be >= 1 (got {workers})")
    label = str(distribution)
    try:
        text = Path(distribution).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise SceneError("distribution file not found", file=label) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SceneError(f"cannot read distribution file: {error}", file=label) from None
    first = parse_distribution(text, source=label).sample(seed, 0, frames=frames)  # errors before any work
    from ..sim.world import World
    from .job import RefinerWeights

    continuum = first.fluid is not None or getattr(first, "mpm", None) is not None
    rigid = not continuum and World(first).rigid  # which kernels the workers warm up (sample 0's kind; any mix works)
    warm_backend = None if continuum else first.backend  # the warm-up renders spheres / boxes: no use to fluid or MPM
    weights = RefinerWeights.read(refiner) if refiner is not None else None  # refuses missing/corrupt weights now
    job = GenerateJob(text, label, seed=seed, frames=frames, gates=gates or QualityGates(), max_attempts=max_attempts,
                      max_state_particles=max_state_particles, field_stride=field_stride, refiner=weights)

    store = ShardStore(out, count, shard_size)
    results = iter(())
    try:
        store.open(job.record())
        pending = store.pending()
        resumed = count - len(pending)
        if resumed:
            log(f"resuming {store.out}: {resumed} of {count} samples already done")
        executor, ray_description = "none", None
        if pending:
            if ray:
                executor = "ray"
                from .runners import run_ray

                def connected(description: str) -> None:
                    nonlocal ray_description
                    ray_description = description
                    log(f"generate on {description}")

                results = run_ray(job, pending, ray, workers, warm_backend, on_connect=connected, rigid=rigid)
            elif workers == 1 or len(pending) == 1:
                from .runners import run_in_process

                executor = "in-process"
                results = run_in_process(job, pending)
            else:
                from .runners import run_local_pool

                executor = f"local process pool ({min(workers, len(pending))} workers)"
                results = run_local_pool(job, pending, min(workers, len(pending)), warm_backend, rigid)
        timing = {"simulate_s": 0.0, "render_s": 0.0, "encode_s": 0.0, "refine_s": 0.0, "write_s": 0.0}
        rejected_now = 0
        with tqdm(total=count, initial=resumed, unit="sample", desc="generate", disable=not progress,
                  dynamic_ncols=True) as bar:
            for result in results:
                start = time.perf_counter()
                store.stage(result)
                timing["write_s"] += time.perf_counter() - start
                rejected_now += len(result["rejected"])
                for key, value in result["timing"].items():
                    timing[key] = timing.get(key, 0.0) + value
                bar.set_postfix(rejected=rejected_now, refresh=False)
                bar.update(1)
        manifest = store.manifest(job.record())
        store.write_json("manifest.json", manifest)
        wall = time.perf_counter() - started
        generated = len(pending)
        summary = {
            "count": count,
            "generated": generated,
            "resumed": resumed,
            "wall_s": round(wall, 3),
            "samples_per_s": round(generated / wall, 4) if wall > 0 else None,
            "executor": executor,
            "workers": workers if executor != "in-process" else 1,
            "ray": ray_description,
            "torch_threads_per_worker": 1,
            "rejected_count": manifest["rejected_count"],
            "rejected_by_gate": manifest["rejected_by_gate"],
            "rejected_this_run": rejected_now,
            "acceptance_rate": round(count / manifest["attempts"], 4),
            "mean_worker_s_per_sample": {key: round(value / generated, 4) for key, value in timing.items()
                                         if key != "write_s"} if generated else None,
            "time_breakdown": _breakdown(timing) if generated else None,
            "shards": len(manifest["shards"]),
            "bytes": sum(shard["bytes"] for shard in manifest["shards"]),
        }
        store.write_json("summary.json", summary)
        if preview:
            from .preview import write_preview

            for path in write_preview(store.out, seed=seed):
                log(f"wrote {path}")
        return summary
    finally:
        if hasattr(results, "close"):
            results.close()  # stops a pool or Ray session on errors and interrupts
        store.close()


def _breakdown(timing: dict) -> dict:
    """Seconds per phase (summed over samples and workers) and each phase's share of their sum."""
    total = sum(timing.values())
    return {"seconds": {key.removesuffix("_s"): round(value, 4) for key, value in timing.items()},
            "share": {key.removesuffix("_s"): round(value / total, 4) if total > 0 else None
                      for key, value in timing.items()}}
