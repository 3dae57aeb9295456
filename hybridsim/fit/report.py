"""Fit outputs in the run directory, each written atomically: fitted.toml, fit.json, loss.png,
side_by_side.mp4 (target | fit | |difference|) and a self-contained report.html."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["write_outputs", "fit_json", "OUTPUT_FILES"]

OUTPUT_FILES = ("fitted.toml", "fit.json", "loss.png", "side_by_side.mp4", "report.html")


def fit_json(result) -> dict:
    params = []
    ranges = result.details.get("ranges", {})
    for path, value in result.values.items():
        ident = result.identifiable.get(path)
        entry = {
            "path": path,
            "value": value,
            "initial": result.initial.get(path),
            "uncertainty": result.uncertainties.get(path),
            "identifiable": (all(ident) if isinstance(ident, list) else ident),
            "range": ranges.get(path),
        }
        if isinstance(ident, list):
            entry["identifiable_components"] = ident
        if entry["identifiable"] is False:
            entry["warning"] = ("not identifiable from this target: the loss is (nearly) flat along this "
                                "parameter, so its value is arbitrary within the reported range")
        params.append(entry)
    laplace = result.details.get("laplace", {})
    return {
        "parameters": params,
        "nuisance": dict(result.nuisance),
        "final_loss": result.final_loss,
        "final_losses_per_restart": result.final_losses,
        "best_restart": result.best_restart,
        "iterations": result.iterations,
        "restarts": result.restarts,
        "losses_used": result.losses_used,
        "frames": result.frames,
        "wall_time_s": result.wall_time_s,
        "resumed_from_iteration": result.resumed_from,
        "target": {
            "source": result.details.get("source"),
            "size": list(result.target.source_size[::-1]) if result.target else None,
            "frames": result.target.source_frames if result.target else None,
            "fps": result.target.source_fps if result.target else None,
            "mask_threshold": result.target.threshold if result.target else None,
            "noise": result.target.noise if result.target else None,
            "sha256": result.target.digest if result.target else None,
        },
        "appearance_gap": result.details.get("appearance_gap"),
        "render_size": result.details.get("render_size"),
        "settings": result.details.get("settings"),
        "coverage": result.details.get("coverage"),
        "observed_from_iteration": result.details.get("observed_from"),
        "uncertainty_method": "Laplace / Gauss-Newton on per-frame centroid and sqrt(area) residuals (pixels), "
                              "J by central finite differences (float64), sigma^2 per block from the residuals",
        "residuals": laplace.get("_blocks"),
        "loss_history": result.losses,
        **({"networks": result.details["networks"]} if result.details.get("networks") else {}),
    }


def _loss_png(result) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for r, losses in enumerate(result.loss_history):
        if not losses:
            continue
        best = r == result.best_restart
        ax.plot(np.arange(1, len(losses) + 1), losses, lw=2.0 if best else 1.0, alpha=1.0 if best else 0.5,
                label=f"restart {r}" + (" (best)" if best else ""))
    windows = result.details.get("windows") or []
    full = next((i + 1 for i, w in enumerate(windows) if w == result.frames), None)
    if full:
        ax.axvline(full, color="grey", ls="--", lw=0.8, label="all frames in window")
    if any(x > 0 for losses in result.loss_history for x in losses):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (current time window)")
    ax.set_title(f"final loss {result.final_loss:.4g} (all {result.frames} frames)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _side_by_side(result, problem) -> np.ndarray:
    from ..render.spheres import to_uint8

    values = {}
    for path, value in {**result.values, **result.nuisance}.items():
        values[path] = torch.tensor(value, dtype=problem.world.dtype, device=problem.world.device)
    with torch.no_grad():
        _, out = problem.render(values, result.frames)
    fit_rgb = out["rgb"].float().cpu()
    target = result.target.rgb[: result.frames].float().cpu()
    diff = (fit_rgb - target).abs()
    return to_uint8(torch.cat([target, fit_rgb, diff], dim=2))


def _table(result) -> str:
    rows = []
    for entry in fit_json(result)["parameters"]:
        def show(v):
            if v is None:
                return "&mdash;"
            if isinstance(v, list):
                return "(" + ", ".join(show(x) for x in v) + ")"
            return f"{v:.5g}" if isinstance(v, float) else html.escape(str(v))
        ident = "yes" if entry["identifiable"] else "<b>no</b>"
        rows.append(f"<tr><td><code>{html.escape(entry['path'])}</code></td><td>{show(entry['value'])}</td>"
                    f"<td>{show(entry['uncertainty'])}</td><td>{show(entry['initial'])}</td>"
                    f"<td>{show(entry['range'])}</td><td>{ident}</td></tr>")
    head = ("<tr><th>parameter</th><th>fitted value</th><th>&plusmn; 1&sigma;</th><th>initial</th>"
            "<th>range</th><th>identifiable</th></tr>")
    return f"<table id=\"parameters\">{head}{''.join(rows)}</table>"


def _report_html(result, png: bytes, mp4: bytes) -> str:
    summary = fit_json(result)
    losses = ", ".join(f"{html.escape(k)} &times; {v:g}" for k, v in result.losses_used.items())
    title = html.escape(f"hybridsim fit: {result.spec.name}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:.3em .6em;text-align:left}}th{{background:#eee}}code{{font-size:90%}}</style>
</head><body>
<h1>{title}</h1>
<p>Final loss {result.final_loss:.5g} over {result.frames} frames; best of {result.restarts} restart(s)
(restart {result.best_restart}); {result.iterations} iterations per restart; wall time {result.wall_time_s:.1f} s.</p>
<p>Losses used: {losses}. Target: {html.escape(str(summary['target']['source'] or 'frames in memory'))}
({summary['target']['size'][0]}x{summary['target']['size'][1]}, {summary['target']['frames']} frames),
mask threshold {summary['target']['mask_threshold']:.3g}.</p>
<h2>Parameters</h2>
{_table(result)}
<p>Uncertainties: {html.escape(summary['uncertainty_method'])}.</p>
<h2>Loss</h2>
<img alt="loss curve" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Target | fit | difference</h2>
<video controls loop muted autoplay src="data:video/mp4;base64,{base64.b64encode(mp4).decode()}"></video>
</body></html>
"""


def write_outputs(result, problem) -> None:
    from ..render.video import write_video

    run_dir = Path(result.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if problem.networks is not None:  # the best restart's trained refiner / motion prior
        result.details.setdefault("networks", {})["files"] = problem.networks.save(run_dir)
    result.spec.write_toml(run_dir / "fitted.toml")
    summary = fit_json(result)
    atomic_write_json(run_dir / "fit.json", _json_safe(summary))
    png = _loss_png(result)
    atomic_write_bytes(run_dir / "loss.png", png)
    frames = _side_by_side(result, problem)
    write_video(run_dir / "side_by_side.mp4", frames, fps=problem.world.spec.time.fps)
    mp4 = (run_dir / "side_by_side.mp4").read_bytes()
    atomic_write_text(run_dir / "report.html", _report_html(result, png, mp4))


def _json_safe(value):
    """Replace non-finite floats by None (JSON has no inf or nan)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
