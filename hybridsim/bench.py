"""Benchmark harness: each case runs ours and a reference side by side in one process run and
reports the ratio (ours / reference), never an absolute time checked against a threshold.

Cases live in ``benchmarks/bench_*.py`` of the source checkout (or $HYBRIDSIM_BENCHMARKS) and
register themselves with ``@case(name)``; a case function takes ``quick: bool`` and returns a
``Record``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import HybridsimError

__all__ = ["Record", "case", "median_time", "run_benchmarks", "CASES"]

CASES: dict[str, Callable[[bool], "Record"]] = {}


@dataclass
class Record:
    """One benchmark result: our figure, the reference's, and ours / reference."""

    case: str
    ours: float
    reference: float
    unit: str
    ours_label: str
    reference_label: str
    threads: int
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours / self.reference if self.reference else float("inf")

    def as_dict(self) -> dict:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


def case(name: str):
    """Register a benchmark case under ``name``."""

    def register(fn):
        CASES[name] = fn
        return fn

    return register


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def benchmarks_dir() -> Path:
    env = os.environ.get("HYBRIDSIM_BENCHMARKS")
    folder = Path(env) if env else Path(__file__).resolve().parent.parent / "benchmarks"
    if not folder.is_dir():
        raise HybridsimError("benchmark cases ship with the source checkout; run from it or set "
                             "HYBRIDSIM_BENCHMARKS to its benchmarks/ folder", file=str(folder))
    return folder


def load_cases() -> dict:
    folder = benchmarks_dir()
    for path in sorted(folder.glob("bench_*.py")):
        name = f"hybridsim_benchmarks_{path.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return CASES


def run_benchmarks(name: str | None = None, *, as_json: bool = False, quick: bool = False,
                   output: str | None = None) -> int:
    """Run one case or all; print a table (or JSON lines); optionally write a JSON file."""
    import torch

    from .fileio import atomic_write_json

    torch.set_num_threads(1)
    cases = load_cases()
    if name is not None and name not in cases:
        raise HybridsimError(f"unknown benchmark case {name!r}; known: {', '.join(sorted(cases))}")
    records = []
    for case_name in [name] if name else sorted(cases):
        record = cases[case_name](quick)
        records.append(record)
        if as_json:
            print(json.dumps(record.as_dict()), flush=True)
        else:
            print(f"{record.case:<28} ours {record.ours:.4g} {record.unit} ({record.ours_label})  "
                  f"reference {record.reference:.4g} {record.unit} ({record.reference_label})  "
                  f"ratio {record.ratio:.3f}  threads {record.threads}" + (f"  [{record.notes}]" if record.notes else ""),
                  flush=True)
    if output:
        atomic_write_json(output, [r.as_dict() for r in records])
    return 0
