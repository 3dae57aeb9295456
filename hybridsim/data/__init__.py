"""Data generation: scene distributions -> simulated, rendered samples in WebDataset shards.

``generate(distribution, count, out, ...)`` writes the shards (local process pool or Ray);
``iter_samples(out)`` reads them back; ``write_preview(out)`` draws a contact sheet and histograms. See :mod:`hybridsim.data.generation` for determinism,
:mod:`hybridsim.data.shards` for crash safety and :mod:`hybridsim.data.runners` for clusters.
Nothing heavy is imported until a function is called.
"""

from __future__ import annotations

import importlib

__all__ = ["generate", "iter_samples", "read_manifest", "QualityGates", "simulate_and_render", "write_preview"]

_LAZY = {
    "generate": "hybridsim.data.generation",
    "iter_samples": "hybridsim.data.reader",
    "read_manifest": "hybridsim.data.reader",
    "QualityGates": "hybridsim.data.gates",
    "simulate_and_render": "hybridsim.data.sample",
    "write_preview": "hybridsim.data.preview",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hybridsim.data' has no attribute {name!r}")
