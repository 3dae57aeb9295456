"""A quick look at a generated data set: ``OUT/preview/contact_sheet.png`` and ``histograms.png``.

    hybridsim preview data/smoke              # or: hybridsim generate ... --preview

The contact sheet is a grid of frames (first, middle, last) of up to ``samples`` samples chosen at
random (reproducibly, from ``seed``); the histograms show every value the distribution drew
(the ``sampled`` labels of each ``{key}.json``), vectors per component, choices as bar charts.
Drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["write_preview", "sampled_values"]

PREVIEW_DIR = "preview"


def sampled_values(metas: list[dict]) -> dict[str, list]:
    """Drawn values of many samples, grouped by field path (object indices folded into ``[*]``, so
    ``objects[*].radius`` gathers every object's radius; vectors split into ``path[i]``)."""
    values: dict[str, list] = {}
    for meta in metas:
        for path, value in (meta.get("sampled") or {}).items():
            group = re.sub(r"^objects\[\d+\]", "objects[*]", path)
            if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                for i, component in enumerate(value):
                    values.setdefault(f"{group}[{i}]", []).append(component)
            elif isinstance(value, (int, float, str, bool)):
                values.setdefault(group, []).append(value)
    return dict(sorted(values.items()))


def write_preview(out, *, samples: int = 12, seed: int = 0) -> list[Path]:
    """Write ``OUT/preview/contact_sheet.png`` and ``histograms.png`` from the finished shards;
    returns their paths. HybridsimError when ``out`` holds no finished shard."""
    import numpy as np

    from ..errors import HybridsimError
    from .reader import iter_samples, shard_paths

    out = Path(out)
    if not out.is_dir() or not shard_paths(out):
        raise HybridsimError("no finished shards to preview (run hybridsim generate first)", file=out)
    metas = [sample["json"] for sample in iter_samples(out, video=False)]
    rng = np.random.default_rng(seed)
    chosen = set(rng.choice(len(metas), size=min(samples, len(metas)), replace=False).tolist())
    sheets = []
    for k, sample in enumerate(iter_samples(out, video=True)):
        if k in chosen:
            sheets.append((sample["__key__"], sample["mp4"]))
    folder = out / PREVIEW_DIR
    folder.mkdir(exist_ok=True)
    return [_contact_sheet(folder / "contact_sheet.png", sheets),
            _histograms(folder / "histograms.png", sampled_values(metas), len(metas))]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _contact_sheet(path: Path, sheets: list) -> Path:
    """Rows of samples, columns first / middle / last frame."""
    from ..fileio import atomic_path

    plt = _pyplot()
    columns = 3
    rows = len(sheets)
    height, width = sheets[0][1].shape[1:3]
    scale = 1.6 / max(height, width)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * width * scale + 0.4, rows * height * scale + 0.4),
                                squeeze=False)
    for row, (key, frames) in enumerate(sheets):
        last = frames.shape[0] - 1
        for column, index in enumerate((0, last // 2, last)):
            axis = axes[row][column]
            axis.imshow(frames[index])
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{key[-4:]} t={index}", fontsize=6)
    figure.tight_layout(pad=0.3)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


def _histograms(path: Path, values: dict[str, list], count: int) -> Path:
    from ..fileio import atomic_path

    plt = _pyplot()
    names = list(values) or ["(nothing drawn)"]
    columns = 4
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 1.9), squeeze=False)
    for axis in axes.flat[len(names):]:
        axis.axis("off")
    for axis, name in zip(axes.flat, names):
        data = values.get(name, [])
        if data and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
            axis.hist(data, bins=min(20, max(5, len(data) // 2)), color="#4477aa")
        elif data:
            labels = sorted({str(v) for v in data})
            axis.bar(range(len(labels)), [sum(str(v) == label for v in data) for label in labels], color="#cc6677")
            axis.set_xticks(range(len(labels)), [label[:10] for label in labels], fontsize=6)
        axis.set_title(name, fontsize=7)
        axis.tick_params(labelsize=6)
    figure.suptitle(f"sampled parameters of {count} samples", fontsize=9)
    figure.tight_layout(pad=0.4, rect=(0.0, 0.0, 1.0, 1.0 - 0.25 / (rows * 1.9)))
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)
    return path
