"""User evidence for a fit: per-frame object masks and 2D pixel tracks of the target video.

Both are given per *target* frame (the video's own frames, numbered from 0) and are mapped to the
scene's frames the way the target is (``Target.frame_index``: the target frame nearest in time to
each scene frame).

Masks (``--masks DIR``)
    One PNG per target frame, sorted by file name (``0000.png``, ``0001.png``, ...), binary: a pixel
    is object where its value is above half the image's value range (0/255 or 0/1 images both
    work; colour PNGs use their first channel). The aspect ratio must be the target's; masks are
    area-averaged to the render size, so edges become fractional coverage. Loss term ``masks``
    (weight 1): 1 - soft IoU between the rendered coverage and the mask, as ``silhouette``.

Tracks (``--tracks FILE``)
    Pixel positions (x right, y down, pixel centres at +0.5, in the *target's* resolution) of the
    moving objects' centres. CSV with a header ``frame,object,x,y`` or JSON
    ``{"tracks": [{"frame": 0, "object": 0, "x": 12.5, "y": 30.0}, ...]}``; ``object`` is the index
    of the moving object (in scene order: spheres / moving bodies / MPM bodies) or its ``name``. A
    frame may list any subset of objects. Loss term ``tracks`` (weight 1): mean Charbonnier
    distance (scale 1 px, at the render size) between the projected object centre and the track.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AssetError
from .losses import CENTROID_SCALE_PX, charbonnier

__all__ = ["Evidence", "load_masks", "load_tracks", "track_loss"]

ASPECT_TOLERANCE = 0.02
"""Largest |log(aspect ratio)| difference between a mask and the target."""


@dataclass
class Evidence:
    """User evidence at the render size and the scene's frame times."""

    masks: torch.Tensor | None = None
    """(T, H, W) float32 coverage in [0, 1], or None."""
    track_points: torch.Tensor | None = None
    """(T, N, 2) float64 pixel positions (x, y) at the render size; NaN where not tracked."""
    track_present: torch.Tensor | None = None
    """(T, N) bool: a track point exists."""
    digest: str = ""
    """sha256 of what was read (enters the checkpoint's settings)."""

    def header(self) -> dict:
        return {"masks": self.masks is not None, "tracks": self.track_points is not None, "sha256": self.digest}


def load_masks(folder, frame_index: list[int], source_frames: int, source_size: tuple[int, int], height: int,
               width: int) -> tuple[torch.Tensor, str]:
    """Masks (T, height, width) float32 for the scene frames (target frames ``frame_index``) and their digest."""
    from PIL import Image

    from .target import resample_frames

    folder = Path(folder)
    if not folder.is_dir():
        raise AssetError("mask folder not found (need a folder of one PNG per target frame)", file=folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if len(files) != source_frames:
        raise AssetError(f"{len(files)} mask PNG(s) for a target of {source_frames} frames: one PNG per target frame "
                         "is needed", file=folder)
    digest = hashlib.sha256()
    h0, w0 = source_size
    out = []
    for k, index in enumerate(frame_index):
        path = files[index]
        try:
            with Image.open(path) as image:
                array = np.asarray(image)
        except Exception as exc:  # PIL raises many types for damaged files
            raise AssetError(f"cannot read mask for target frame {index}: {exc}", file=path) from None
        if array.ndim == 3:
            array = array[..., 0]
        if array.ndim != 2 or array.size == 0:
            raise AssetError(f"mask for target frame {index} has shape {array.shape}; need a 2D image", file=path)
        mh, mw = array.shape
        if abs(math.log((mw / mh) / (w0 / h0))) > ASPECT_TOLERANCE:
            raise AssetError(f"mask for target frame {index} is {mw}x{mh} but the target is {w0}x{h0} "
                             "(aspect ratios differ)", file=path)
        top = 1.0 if array.dtype == bool or array.max() <= 1 else float(np.iinfo(array.dtype).max
                                                                           if array.dtype.kind in "ui" else array.max())
        binary = (array.astype(np.float64) > 0.5 * top).astype(np.float32)
        digest.update(path.name.encode() + binary.tobytes())
        mask = torch.from_numpy(binary)[None, :, :, None].expand(1, mh, mw, 3)
        out.append(resample_frames(mask, height, width)[0, :, :, 0])
    return torch.stack(out).contiguous(), digest.hexdigest()


def _rows_from_file(path: Path) -> list[tuple[int, dict]]:
    """(line or entry number, row) of a CSV or JSON track file."""
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AssetError(f"not valid JSON: {exc.msg} at line {exc.lineno}", file=path) from None
        entries = data.get("tracks") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise AssetError('expected {"tracks": [{"frame": ..., "object": ..., "x": ..., "y": ...}, ...]}', file=path)
        return [(i, entry) for i, entry in enumerate(entries)]
    reader = csv.DictReader(text.splitlines())
    missing = {"frame", "object", "x", "y"} - set(reader.fieldnames or [])
    if missing:
        raise AssetError(f"CSV header must name frame, object, x, y (missing {', '.join(sorted(missing))})", file=path)
    return [(reader.line_num, row) for row in reader]


def load_tracks(path, frame_index: list[int], source_frames: int, source_size: tuple[int, int], height: int,
                width: int, object_names: list[str]) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Track points (T, N, 2) at the render size (NaN where missing), presence (T, N) and digest."""
    path = Path(path)
    if not path.is_file():
        raise AssetError("track file not found", file=path)
    count = len(object_names)
    h0, w0 = source_size
    scale = (width / w0, height / h0)
    per_source: dict[tuple[int, int], tuple[float, float]] = {}
    where = "entry" if path.suffix.lower() == ".json" else "line"
    for number, row in _rows_from_file(path):
        if not isinstance(row, dict):
            raise AssetError(f"{where} {number}: expected an object with frame, object, x, y", file=path)
        try:
            frame = int(row["frame"])
            x, y = float(row["x"]), float(row["y"])
        except (KeyError, TypeError, ValueError):
            raise AssetError(f"{where} {number}: frame must be an integer and x, y numbers (got {row})",
                             file=path) from None
        if not (0 <= frame < source_frames):
            raise AssetError(f"{where} {number}: frame {frame} is outside the target's frames 0..{source_frames - 1}",
                             file=path)
        if not (math.isfinite(x) and math.isfinite(y)):
            raise AssetError(f"{where} {number} (frame {frame}): x, y must be finite", file=path)
        name = str(row.get("object", "")).strip()
        if name in object_names:
            obj = object_names.index(name)
        else:
            try:
                obj = int(name)
            except ValueError:
                obj = -1
            if not (0 <= obj < count):
                raise AssetError(f"{where} {number} (frame {frame}): object {name!r} is not a moving object of the "
                                 f"scene (indices 0..{count - 1} or names {', '.join(object_names)})", file=path)
        per_source[(frame, obj)] = (x * scale[0], y * scale[1])
    points = torch.full((len(frame_index), count, 2), float("nan"), dtype=torch.float64)
    for k, index in enumerate(frame_index):
        for obj in range(count):
            if (index, obj) in per_source:
                points[k, obj] = torch.tensor(per_source[(index, obj)], dtype=torch.float64)
    present = torch.isfinite(points).all(dim=-1)
    if not bool(present.any()):
        raise AssetError("no track point falls on a frame the fit compares", file=path)
    digest = hashlib.sha256(repr(sorted(per_source.items())).encode()).hexdigest()
    return points, present, digest


def track_loss(projected: torch.Tensor, points: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean Charbonnier distance [px / CENTROID_SCALE_PX] between projected centres (T, N, 2) and track
    points (T, N, 2) where ``present`` (T, N)."""
    if not bool(present.any()):
        return projected.sum() * 0.0
    diff = projected[present] - points.to(projected.dtype)[present]
    return charbonnier(torch.sqrt((diff * diff).sum(-1) + 1e-12), CENTROID_SCALE_PX).mean()
