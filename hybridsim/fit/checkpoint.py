"""Resumable fit state: tensors in safetensors, everything else in JSON; no pickle anywhere.

``RUN_DIR/checkpoint.json`` names the tensor file it belongs to
(``checkpoint-<step>.safetensors``, written first, atomically). The JSON is replaced atomically
after the tensors are on disk and only then is the previous tensor file removed, so a crash at
any moment leaves a consistent pair. The JSON also carries the scene and target hashes and the
fit configuration; resuming refuses a checkpoint made for a different scene, target or setup.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import HybridsimError
from ..fileio import atomic_path, atomic_write_json

__all__ = ["CHECKPOINT_JSON", "FORMAT", "save_checkpoint", "load_checkpoint", "clear_checkpoint"]

CHECKPOINT_JSON = "checkpoint.json"
FORMAT = "hybridsim-fit-checkpoint/1"


def save_checkpoint(run_dir, state: dict, tensors: dict[str, torch.Tensor], step: int) -> None:
    """Write tensors then the JSON ``state`` (which gains ``format`` and ``tensors``), atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{step:07d}.safetensors"
    with atomic_path(run_dir / name) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": FORMAT, "step": str(step)})
    atomic_write_json(run_dir / CHECKPOINT_JSON, {"format": FORMAT, "tensors": name, "step": step, **state})
    for stale in run_dir.glob("checkpoint-*.safetensors"):  # the previous step's (and any crash leftovers)
        if stale.name != name:
            stale.unlink(missing_ok=True)
    # temporaries of writes a killed run never finished (".checkpoint-....tmp.safetensors" etc.);
    # never read, removed here so kills do not pile them up
    for stale in (*run_dir.glob(".checkpoint-*.tmp*"), *run_dir.glob(f".{CHECKPOINT_JSON}.*")):
        stale.unlink(missing_ok=True)


def load_checkpoint(run_dir) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """(state, tensors) of the checkpoint in ``run_dir``, or None if there is none."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_JSON
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HybridsimError(f"unreadable fit checkpoint ({exc}); delete it or pass --fresh", file=path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("tensors"), str):
        raise HybridsimError(f"not a {FORMAT} checkpoint; delete it or pass --fresh", file=path)
    tensor_path = run_dir / Path(state["tensors"]).name
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # safetensors raises several types for missing or damaged files
        raise HybridsimError(f"cannot read checkpoint tensors ({exc}); delete the checkpoint or pass --fresh",
                             file=tensor_path) from None
    return state, tensors


def clear_checkpoint(run_dir) -> None:
    run_dir = Path(run_dir)
    (run_dir / CHECKPOINT_JSON).unlink(missing_ok=True)
    for stale in run_dir.glob("checkpoint-*.safetensors"):
        stale.unlink(missing_ok=True)
