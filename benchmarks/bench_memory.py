"""Peak memory of a long differentiable rollout with and without segment checkpointing,
each measured as the peak RSS of a fresh subprocess (tracemalloc cannot see these buffers)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from hybridsim.bench import Record, case

PROBE = Path(__file__).with_name("memory_probe.py")


# glibc raises its mmap threshold as large blocks are freed, after which freed step buffers stay
# in a fragmented heap and RSS measures the allocator rather than what is alive. A fixed
# threshold (glibc's static default, 128 KiB) makes RSS track live memory; both runs use it.
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


def measure(checkpoint: bool, spheres: int, frames: int, substeps: int, backend: str = "warp",
            env: dict | None = None) -> dict:
    """Run the probe in a fresh interpreter; return its JSON report (peak and baseline RSS)."""
    command = [sys.executable, str(PROBE), "--spheres", str(spheres), "--frames", str(frames),
               "--substeps", str(substeps), "--backend", backend] + (["--checkpoint"] if checkpoint else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})})
    return json.loads(result.stdout.strip().splitlines()[-1])


@case("checkpoint_memory")
def checkpoint_memory(quick: bool) -> Record:
    spheres, frames, substeps = (4096, 20, 25) if quick else (16384, 40, 50)
    plain = measure(False, spheres, frames, substeps, env=FIXED_MMAP)
    checkpointed = measure(True, spheres, frames, substeps, env=FIXED_MMAP)
    default_allocator = {"plain": measure(False, spheres, frames, substeps),
                         "checkpointed": measure(True, spheres, frames, substeps)}
    growth = lambda r: r["peak_rss_mb"] - r["baseline_rss_mb"]  # noqa: E731
    return Record("checkpoint_memory", growth(checkpointed), growth(plain), "MB",
                  f"checkpointed, {frames * substeps} substeps x {spheres} spheres",
                  "plain (every step kept for backward)", torch.get_num_threads(),
                  notes="peak RSS above the post-setup baseline, fresh subprocess each, fixed mmap threshold",
                  extra={"plain": plain, "checkpointed": checkpointed, "default_allocator": default_allocator})
