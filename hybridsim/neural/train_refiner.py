"""Train the video refiner on (scene, target video) pairs.

Each scene is simulated and rendered once (layers + exact flow, cached in memory); its target
video is resized to the render size. Training draws random short clips (random pair, random start;
the draw of step ``s`` is ``default_rng([seed, s])`` so a resumed run repeats it exactly) and
minimises L1 + Sobel reconstruction + the flow-warped temporal loss (+ an optional hinge loss of a
multi-scale temporal discriminator). Checkpoints (model, optimiser tensors in safetensors; step,
loss history and configuration in JSON; see :mod:`hybridsim.fit.checkpoint`) are written
atomically every ``checkpoint_every`` iterations into ``OUT.checkpoint/`` and resumed from.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import HybridsimError
from .refiner import VideoRefiner, _config, layer_features
from .refiner_losses import (TemporalDiscriminator, hinge_discriminator_loss, hinge_generator_loss,
                             reconstruction_loss, temporal_loss)

__all__ = ["RefinerPair", "RefinerTrainingResult", "render_scene_layers", "prepare_pair", "train_refiner",
           "checkpoint_dir"]

LAYER_KEYS = ("rgb", "depth", "normal", "segmentation", "alpha", "flow_backward", "occlusion_backward")


def render_scene_layers(scene, frames: int | None = None) -> tuple[dict, float]:
    """Simulate and render a scene (spec or path) -> (layers dict of numpy arrays, fps).

    Layers: rgb uint8 (T, H, W, 3), depth, normal, segmentation, alpha, flow_forward/backward,
    occlusion_forward/backward, as ``hybridsim render`` writes them. Spheres, rigid bodies and grid
    fluids are all supported."""
    from ..scene import load_scene
    from ..sim.world import World

    spec = scene if not isinstance(scene, (str, Path)) else load_scene(Path(scene))
    world = World(spec)
    count = frames if frames is not None else spec.frame_count
    if spec.fluid is not None:
        from ..render import Camera, to_uint8
        from ..render.fluid import render_fluid_frames
        from ..sim.fluid import fluid_rollout

        with torch.no_grad():
            trajectory = fluid_rollout(world, frames=count)
            layers = render_fluid_frames(Camera.from_spec(spec.camera), spec.fluid, trajectory, 1.0 / spec.time.fps)
        out = {k: v.numpy() for k, v in layers.items()}
        out["rgb"] = to_uint8(out["rgb"])
    elif world.rigid:
        from ..render.rigid import render_rigid_layers
        from ..sim.rigid import rigid_rollout

        with torch.no_grad():
            trajectory = rigid_rollout(world, frames=count)
            rgb, out = render_rigid_layers(world, trajectory)
        out = dict(out, rgb=rgb)
    else:
        from ..data.sample import render_layers, simulate

        rendering = render_layers(world, simulate(world, count))
        out = dict(rendering.layers, rgb=rendering.rgb)
    return out, float(spec.time.fps)


@dataclass
class RefinerPair:
    """One training pair, cached: input features, flow and the resized target."""

    features: torch.Tensor  # (T, H, W, C)
    flow_backward: torch.Tensor  # (T, H, W, 2)
    occlusion_backward: torch.Tensor  # (T, H, W) bool
    target: torch.Tensor  # (T, H, W, 3) float in [0, 1]
    rgb: torch.Tensor  # (T, H, W, 3) the plain render, float in [0, 1]
    digest: str = ""

    @property
    def frames(self) -> int:
        return int(self.target.shape[0])


def _load_target(target) -> np.ndarray:
    if isinstance(target, (str, Path)):
        from ..render import read_frames

        frames, _ = read_frames(Path(target))
        return frames
    if isinstance(target, torch.Tensor):
        return target.detach().cpu().numpy()
    return np.asarray(target)


def resize_frames(frames, height: int, width: int) -> torch.Tensor:
    """(T, h, w, 3) uint8 or float in [0, 1] -> float32 (T, height, width, 3) (area filter when shrinking)."""
    x = torch.as_tensor(np.asarray(frames))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if tuple(x.shape[1:3]) == (height, width):
        return x.contiguous()
    shrink = x.shape[1] >= height and x.shape[2] >= width
    mode = {"mode": "area"} if shrink else {"mode": "bilinear", "align_corners": False}
    return F.interpolate(x.permute(0, 3, 1, 2), size=(height, width), **mode).permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def prepare_pair(scene, target, config="tiny", *, layers: dict | None = None) -> RefinerPair:
    """Render ``scene`` (unless its ``layers`` are given) and pair it with ``target`` frames or a video path.

    The pair covers the first min(render, target) frames; the target is resized to the render size."""
    if layers is None:
        layers, _ = render_scene_layers(scene)
    target_frames = _load_target(target)
    if target_frames.ndim != 4 or target_frames.shape[-1] != 3:
        raise HybridsimError(f"target must be frames (T, H, W, 3), got shape {tuple(target_frames.shape)}")
    rgb = np.asarray(layers["rgb"])
    count = min(rgb.shape[0], target_frames.shape[0])
    height, width = rgb.shape[1:3]
    features = layer_features({k: np.asarray(layers[k])[:count] for k in ("rgb", "depth", "normal", "segmentation", "alpha")},
                              _config(config))
    resized = resize_frames(target_frames[:count], height, width)
    digest = hashlib.sha256()
    for array in (rgb[:count], (resized.numpy() * 255).round().astype(np.uint8)):
        digest.update(np.ascontiguousarray(array).tobytes())
    return RefinerPair(features=features,
                       flow_backward=torch.as_tensor(np.asarray(layers["flow_backward"])[:count]).float(),
                       occlusion_backward=torch.as_tensor(np.asarray(layers["occlusion_backward"])[:count]).bool(),
                       target=resized, rgb=features[..., :3].clone(), digest=digest.hexdigest()[:16])


@dataclass
class RefinerTrainingResult:
    model: VideoRefiner
    history: dict[str, list[float]]
    steps: int
    resumed_from: int
    wall_time_s: float
    weights: Path | None = None
    plot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_dir(out) -> Path:
    """Where ``train_refiner(out=...)`` keeps its resumable checkpoint: ``OUT.checkpoint/``."""
    out = Path(out)
    return out.with_name(out.name + ".checkpoint")


def _optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(value)
    return tensors


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def _plot_losses(path: Path, history: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, values in history.items():
        if values and any(v > 0 for v in values):
            ax.plot(np.arange(1, len(values) + 1), values, label=key, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("video refiner training")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def train_refiner(pairs: Sequence, *, config="tiny", iterations: int = 200, lr: float = 3e-3,
                  out=None, checkpoint_every: int = 50, resume: bool = True, progress: bool = True,
                  clip_length: int = 4, seed: int = 0, gradient_weight: float = 0.5,
                  temporal_weight: float = 1.0, adversarial_weight: float = 0.0,
                  stop_after: int | None = None) -> RefinerTrainingResult:
    """Train a :class:`VideoRefiner` on ``pairs`` of (scene spec or path, target frames or path),
    or ready :class:`RefinerPair` objects.

    ``out`` (weights .safetensors path) enables checkpoints in ``OUT.checkpoint/`` (resumed from when
    ``resume``), the final weights (+ ``OUT.json`` config) and a loss plot ``OUT.loss.png``.
    ``adversarial_weight > 0`` adds the multi-scale temporal discriminator (hinge loss).
    ``stop_after`` ends the run after that many total iterations (as an interruption would),
    leaving the checkpoint to resume from.
    """
    from tqdm import tqdm

    from ..fit.checkpoint import clear_checkpoint, load_checkpoint, save_checkpoint

    started = time.perf_counter()
    cfg = _config(config)
    prepared = [p if isinstance(p, RefinerPair) else prepare_pair(p[0], p[1], cfg) for p in pairs]
    if not prepared:
        raise HybridsimError("train_refiner needs at least one (scene, target) pair")
    if min(p.frames for p in prepared) < 2:
        raise HybridsimError("every training pair needs at least 2 frames")

    torch.manual_seed(seed)
    model = VideoRefiner(cfg)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    disc = d_opt = None
    if adversarial_weight > 0:
        disc = TemporalDiscriminator()
        d_opt = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.99))

    keys = ["total", "l1_sobel", "temporal"] + (["adversarial", "discriminator"] if disc is not None else [])
    history: dict[str, list[float]] = {k: [] for k in keys}
    setup = {"config": cfg.to_dict(), "lr": lr, "clip_length": clip_length, "seed": seed,
             "gradient_weight": gradient_weight, "temporal_weight": temporal_weight,
             "adversarial_weight": adversarial_weight, "pairs": [p.digest for p in prepared]}
    out = Path(out) if out is not None else None
    run_dir = checkpoint_dir(out) if out is not None else None
    start = 0
    if run_dir is not None:
        if not resume:
            clear_checkpoint(run_dir)
        loaded = load_checkpoint(run_dir)
        if loaded is not None:
            state, tensors = loaded
            if state.get("setup") != setup:
                raise HybridsimError("the refiner checkpoint was made for other pairs or settings; "
                                     "delete it or train with resume=False (--fresh)", file=run_dir)
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            _load_optimizer(optimizer, tensors, "opt")
            if disc is not None:
                disc.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("disc.")})
                _load_optimizer(d_opt, tensors, "dopt")
            history = {k: list(state["history"].get(k, [])) for k in keys}
            start = int(state["step"])

    def checkpoint(step: int) -> None:
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update(_optimizer_tensors(optimizer, "opt"))
        if disc is not None:
            tensors.update({f"disc.{k}": v for k, v in disc.state_dict().items()})
            tensors.update(_optimizer_tensors(d_opt, "dopt"))
        save_checkpoint(run_dir, {"kind": "refiner", "setup": setup, "history": history}, tensors, step)

    end = iterations if stop_after is None else min(iterations, stop_after)
    bar = tqdm(total=iterations, initial=start, desc="train refiner", unit="it", disable=not progress, leave=False)
    try:
        for step in range(start, end):
            rng = np.random.default_rng([seed, step])
            pair = prepared[int(rng.integers(len(prepared)))]
            length = min(clip_length, pair.frames)
            first = int(rng.integers(0, pair.frames - length + 1))
            window = slice(first, first + length)
            flow, occ = pair.flow_backward[window], pair.occlusion_backward[window]
            target = pair.target[window]
            output = model(pair.features[window], flow, occ)
            recon = reconstruction_loss(output, target, gradient_weight)
            temporal = temporal_loss(output, flow, occ)
            loss = recon + temporal_weight * temporal
            values = {"l1_sobel": recon.item(), "temporal": temporal.item()}
            if disc is not None:
                adversarial = hinge_generator_loss(disc(output))
                loss = loss + adversarial_weight * adversarial
                values["adversarial"] = adversarial.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if disc is not None:
                d_loss = hinge_discriminator_loss(disc(target), disc(output.detach()))
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
                values["discriminator"] = d_loss.item()
            values["total"] = loss.item()
            for key in keys:
                history[key].append(values[key])
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.4f}")
            done = step + 1
            if run_dir is not None and (done % max(checkpoint_every, 1) == 0 or done == end):
                checkpoint(done)
    finally:
        bar.close()

    weights = plot = None
    if out is not None:
        if end == iterations:
            model.save(out)
            weights = out
        plot = out.with_name(out.name.rsplit(".", 1)[0] + ".loss.png") if out.suffix else out.with_name(out.name + ".loss.png")
        if history["total"]:
            _plot_losses(plot, history)
        else:
            plot = None
    model.eval()
    return RefinerTrainingResult(model=model, history=history, steps=end, resumed_from=start,
                                 wall_time_s=time.perf_counter() - started, weights=weights, plot=plot)


def evaluate_refiner(model: VideoRefiner, pair: RefinerPair, frames: slice | None = None) -> dict[str, float]:
    """L1 to the target of the refined and the plain render, and warping errors (exact flow)."""
    frames = frames or slice(None)
    with torch.no_grad():
        output = model(pair.features, pair.flow_backward, pair.occlusion_backward)
    out, target, rgb = output[frames], pair.target[frames], pair.rgb[frames]
    flow, occ = pair.flow_backward[frames], pair.occlusion_backward[frames]
    return {"l1_refined": float((out - target).abs().mean()), "l1_plain": float((rgb - target).abs().mean()),
            "temporal_refined": float(temporal_loss(out, flow, occ)),
            "temporal_target": float(temporal_loss(target, flow, occ)),
            "temporal_plain": float(temporal_loss(rgb, flow, occ))}


__all__ += ["evaluate_refiner", "resize_frames"]
