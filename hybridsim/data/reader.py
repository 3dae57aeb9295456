"""Read generated shards back: ``for sample in iter_samples("data/bounce"): ...``.

Plain ``tarfile`` + ``numpy`` + ``json``; any WebDataset loader reads the same shards
(``webdataset.WebDataset("data/bounce/shard-{000000..000009}.tar")``).
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["iter_samples", "read_manifest", "shard_paths"]

_SHARD = re.compile(r"^shard-\d{6}\.tar$")


def shard_paths(out) -> list[Path]:
    """The finished shards of an output folder, in order."""
    out = Path(out)
    return sorted(p for p in out.iterdir() if _SHARD.match(p.name) and p.is_file())


def read_manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def iter_samples(out, *, decode: bool = True, video: bool = True) -> Iterator[dict]:
    """Yield one dict per sample, in shard and key order.

    Keys: ``__key__``, ``__shard__`` and, decoded, ``json`` (dict), ``layers`` and ``states``
    (dicts of numpy arrays) and ``mp4`` (frames (T, H, W, 3) uint8; left out with
    ``video=False``), and ``refined.mp4`` likewise for samples generated with ``--refiner``. With ``decode=False`` each entry is its raw bytes under its suffix
    (``json``, ``mp4``, ``layers.npz``, ``states.npz``).
    """
    for path in shard_paths(out):
        current: dict | None = None
        with tarfile.open(path, mode="r:") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, suffix = name.partition(".")
                if current is not None and current["__key__"] != key:
                    yield _decode(current, video) if decode else current
                    current = None
                if current is None:
                    current = {"__key__": key, "__shard__": path.name}
                current[suffix] = archive.extractfile(member).read()
        if current is not None:
            yield _decode(current, video) if decode else current


def _decode(raw: dict, video: bool) -> dict:
    import numpy as np

    out = {"__key__": raw["__key__"], "__shard__": raw["__shard__"]}
    for suffix, data in raw.items():
        if suffix.startswith("__"):
            continue
        if suffix == "json":
            out["json"] = json.loads(data)
        elif suffix.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                out[suffix[: -len(".npz")]] = {name: archive[name] for name in archive.files}
        elif suffix.endswith("mp4"):
            if video:
                out[suffix] = _decode_video(data)
        else:
            out[suffix] = data
    return out


def _decode_video(data: bytes):
    from ..render.video import read_video

    with tempfile.TemporaryDirectory(prefix="hybridsim-read-") as folder:
        path = Path(folder) / "sample.mp4"
        path.write_bytes(data)
        return read_video(path)[0]
