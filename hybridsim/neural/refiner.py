"""Neural video refiner: turns hybridsim's render layers into a video with a learned "look".

Per frame the network sees the render layers (rgb, inverse depth with sky 0, camera-space normals,
a one-hot segmentation of ``min(id, K)``, alpha, pixel coordinates) plus the previous *refined*
frame warped to the current frame with the exact backward flow, and the mask of pixels where that
warp is valid (not occluded). Frames are produced in order, each one using the warped previous
output (recurrent warping), so the result is causal: frame t depends only on frames <= t.

Architecture: a convolutional encoder-decoder (U-Net with two downsamplings) with factorised
spatio-temporal attention at the 1/4-resolution bottleneck: spatial self-attention over the
positions of a frame, then temporal self-attention at each position over the bottleneck features
of the last ``temporal_window`` frames (keys/values cached, so frame t only attends to frames
<= t). The output is a residual in logit space, ``sigmoid(logit(rgb) + residual)``; the residual
head starts at zero, so an untrained refiner returns the input render.

Weights are stored as safetensors (config in the metadata and in a JSON file beside them); never
pickle.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RefinerConfig", "CONFIGS", "VideoRefiner", "layer_features", "warp_frames", "FORMAT"]

FORMAT = "hybridsim-refiner/1"


@dataclass(frozen=True)
class RefinerConfig:
    channels: tuple[int, int, int] = (16, 32, 48)
    """Feature channels at full, 1/2 and 1/4 resolution."""
    heads: int = 2
    """Attention heads at the bottleneck (channels[2] must divide by it)."""
    segment_classes: int = 7
    """Segmentation one-hot size is ``segment_classes + 1``: ids >= K share the last slot."""
    temporal_window: int = 8
    """Frames (including the current one) the temporal attention looks back over."""
    attention: bool = True
    """False drops the bottleneck attention (an ablation)."""

    @classmethod
    def from_dict(cls, data: dict) -> "RefinerConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "channels" in values:
            values["channels"] = tuple(int(c) for c in values["channels"])
        return cls(**values)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data


CONFIGS = {
    # CPU: trains at 64x48..128x96 in minutes
    "tiny": RefinerConfig(channels=(16, 32, 48), heads=2, segment_classes=7, temporal_window=8),
    # GPU
    "base": RefinerConfig(channels=(48, 96, 192), heads=4, segment_classes=15, temporal_window=12),
}


def _config(config) -> RefinerConfig:
    if isinstance(config, RefinerConfig):
        return config
    if isinstance(config, dict):
        return RefinerConfig.from_dict(config)
    if config not in CONFIGS:
        from ..errors import HybridsimError

        raise HybridsimError(f"unknown refiner config {config!r}; choose one of {', '.join(CONFIGS)}")
    return CONFIGS[config]


def feature_channels(config: RefinerConfig) -> int:
    """Channels of :func:`layer_features`: rgb 3, inverse depth 1, normal 3, one-hot K+1, alpha 1, sky 1, xy 2."""
    return 3 + 1 + 3 + (config.segment_classes + 1) + 1 + 1 + 2


def layer_features(layers: dict, config: RefinerConfig | str = "tiny", dtype=torch.float32) -> torch.Tensor:
    """Per-frame input features (T, H, W, C) from render layers.

    ``layers`` holds rgb (T, H, W, 3) uint8 or float in [0, 1], depth (T, H, W) [m] (inf for sky),
    normal (T, H, W, 3), segmentation (T, H, W) int and alpha (T, H, W); numpy arrays or tensors.
    """
    config = _config(config)
    rgb = _tensor(layers["rgb"])
    rgb = rgb.to(dtype) / 255.0 if rgb.dtype == torch.uint8 else rgb.to(dtype)
    depth = _tensor(layers["depth"]).to(torch.float64)
    finite = torch.isfinite(depth) & (depth > 0)
    inv_depth = torch.where(finite, 1.0 / (1.0 + torch.where(finite, depth, torch.ones_like(depth))),
                            torch.zeros_like(depth)).to(dtype)
    normal = torch.nan_to_num(_tensor(layers["normal"]).to(dtype))
    seg = _tensor(layers["segmentation"]).long().clamp(0, config.segment_classes)
    onehot = F.one_hot(seg, config.segment_classes + 1).to(dtype)
    alpha = _tensor(layers["alpha"]).to(dtype)
    frames, height, width = depth.shape
    ys = torch.linspace(-1.0, 1.0, height, dtype=dtype)[:, None].expand(height, width)
    xs = torch.linspace(-1.0, 1.0, width, dtype=dtype)[None, :].expand(height, width)
    coords = torch.stack([xs, ys], dim=-1)[None].expand(frames, height, width, 2)
    sky = (~torch.isfinite(depth)).to(dtype)
    return torch.cat([rgb, inv_depth[..., None], normal, onehot, alpha[..., None], sky[..., None], coords], dim=-1)


def _tensor(value) -> torch.Tensor:
    """A tensor as is (keeping its autograd graph and device: the fit's differentiable render
    layers), anything else through numpy."""
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def warp_frames(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample images (N, H, W, C) at ``pixel + flow`` (N, H, W, 2) [px]; bilinear, border clamp.

    Batched twin of :func:`hybridsim.metrics.video.warp` (same convention)."""
    n, height, width = images.shape[:3]
    flow = flow.to(images.dtype)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=images.dtype), torch.arange(width, dtype=images.dtype),
                            indexing="ij")
    x = (xs + flow[..., 0]) * (2.0 / max(width - 1, 1)) - 1.0
    y = (ys + flow[..., 1]) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([x, y], dim=-1)
    sampled = F.grid_sample(images.permute(0, 3, 1, 2), grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
    return sampled.permute(0, 2, 3, 1)


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.GELU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.GELU(),
    )


class FactorisedAttention(nn.Module):
    """Spatial self-attention within a frame, then causal temporal attention per position."""

    def __init__(self, channels: int, heads: int, window: int):
        super().__init__()
        self.window = window
        self.norm_s = nn.LayerNorm(channels)
        self.spatial = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_t = nn.LayerNorm(channels)
        self.temporal = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.offset = nn.Embedding(window, channels)  # learned embedding of how many frames back
        nn.init.normal_(self.offset.weight, std=0.02)
        self.norm_m = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 2 * channels), nn.GELU(), nn.Linear(2 * channels, channels))
        # residual branches start near identity
        for proj in (self.spatial.out_proj, self.temporal.out_proj, self.mlp[2]):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def spatial_step(self, x: torch.Tensor) -> torch.Tensor:
        """x (1, C, h, w) -> tokens (h*w, C) after spatial attention."""
        tokens = x.flatten(2).transpose(1, 2)  # (1, P, C)
        normed = self.norm_s(tokens)
        tokens = tokens + self.spatial(normed, normed, normed, need_weights=False)[0]
        return tokens[0]

    def temporal_step(self, tokens: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
        """tokens (P, C) of the current frame; ``history`` holds earlier frames' tokens (oldest first).

        Each position attends over itself and the same position in the cached frames: a causal mask
        by construction (later frames are not computed yet)."""
        past = history[-(self.window - 1):] if self.window > 1 else []
        seq = torch.stack(past + [tokens], dim=1)  # (P, S, C), current frame last
        offsets = torch.arange(seq.shape[1] - 1, -1, -1)  # frames back: S-1 ... 0
        keys = self.norm_t(seq) + self.offset(offsets)[None]
        query = keys[:, -1:]
        out = tokens + self.temporal(query, keys, self.norm_t(seq), need_weights=False)[0][:, 0]
        return out + self.mlp(self.norm_m(out))


class VideoRefiner(nn.Module):
    """Refine a rendered clip: ``forward(features, flow_backward, occlusion_backward)`` -> (T, H, W, 3)."""

    def __init__(self, config: RefinerConfig | str | dict = "tiny"):
        super().__init__()
        self.config = _config(config)
        c0, c1, c2 = self.config.channels
        cin = feature_channels(self.config) + 3 + 1  # + warped previous output + its validity mask
        self.enc0 = _conv_block(cin, c0)
        self.enc1 = _conv_block(c0, c1, stride=2)
        self.enc2 = _conv_block(c1, c2, stride=2)
        self.attention = FactorisedAttention(c2, self.config.heads, self.config.temporal_window) \
            if self.config.attention else None
        self.dec1 = _conv_block(c2 + c1, c1)
        self.dec0 = _conv_block(c1 + c0, c0)
        self.head = nn.Conv2d(c0, 3, 3, padding=1)
        self.linear_skip = nn.Conv2d(cin, 3, 1)  # direct per-pixel path (colour grades learn fast)
        for layer in (self.head, self.linear_skip):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ------------------------------------------------------------------ forward
    def _frame(self, x: torch.Tensor, rgb: torch.Tensor, history: list[torch.Tensor]) -> torch.Tensor:
        """x (1, Cin, H, W), rgb (1, 3, H, W) -> refined (1, 3, H, W); appends to ``history``."""
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        e2 = self.enc2(e1)
        if self.attention is not None:
            tokens = self.attention.spatial_step(e2)
            tokens = self.attention.temporal_step(tokens, history)
            history.append(tokens)
            if len(history) > self.config.temporal_window:
                del history[0]
            e2 = tokens.transpose(0, 1).reshape(e2.shape)
        d1 = self.dec1(torch.cat([F.interpolate(e2, size=e1.shape[-2:], mode="bilinear", align_corners=False), e1], 1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, size=e0.shape[-2:], mode="bilinear", align_corners=False), e0], 1))
        residual = self.head(d0) + self.linear_skip(x)
        logit = torch.logit(rgb.clamp(1e-3, 1.0 - 1e-3))
        return torch.sigmoid(logit + residual)

    def forward(self, features: torch.Tensor, flow_backward: torch.Tensor,
                occlusion_backward: torch.Tensor) -> torch.Tensor:
        """features (T, H, W, C) from :func:`layer_features`; flow_backward (T, H, W, 2) [px] from
        frame t to t-1; occlusion_backward (T, H, W) bool (True = not visible in t-1).

        Returns the refined clip (T, H, W, 3) in [0, 1], frame by frame in order."""
        frames, height, width, _ = features.shape
        dtype = next(self.parameters()).dtype
        features = features.to(dtype)
        flow_backward = flow_backward.to(dtype)
        valid = (~occlusion_backward.bool()).to(dtype)
        history: list[torch.Tensor] = []
        outputs = []
        previous = None
        for t in range(frames):
            if previous is None:  # frame 0 (or a clip start): nothing to carry over
                warped = torch.zeros((height, width, 3), dtype=dtype)
                mask = torch.zeros((height, width, 1), dtype=dtype)
            else:
                warped = warp_frames(previous[None], flow_backward[t][None])[0]
                mask = valid[t][..., None]
                warped = warped * mask
            x = torch.cat([features[t], warped, mask], dim=-1).permute(2, 0, 1)[None]
            out = self._frame(x, features[t, ..., :3].permute(2, 0, 1)[None], history)
            previous = out[0].permute(1, 2, 0)
            outputs.append(previous)
        return torch.stack(outputs)

    @torch.no_grad()
    def refine(self, layers: dict, flow_backward, occlusion_backward) -> np.ndarray:
        """Refine whole render layers (numpy/tensors as written by ``hybridsim render``) -> uint8 (T, H, W, 3)."""
        was_training = self.training
        self.eval()
        try:
            features = layer_features(layers, self.config)
            out = self(features, torch.as_tensor(np.asarray(flow_backward)),
                       torch.as_tensor(np.asarray(occlusion_backward)))
        finally:
            self.train(was_training)
        return (out.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).numpy()

    # ------------------------------------------------------------------ storage
    def save(self, path) -> None:
        """Write weights (safetensors, atomically) and ``PATH.json`` with the config."""
        from safetensors.torch import save_file

        from ..fileio import atomic_path, atomic_write_json

        path = Path(path)
        meta = {"format": FORMAT, "config": json.dumps(self.config.to_dict())}
        with atomic_path(path) as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp), metadata=meta)
        atomic_write_json(config_path(path), {"format": FORMAT, "config": self.config.to_dict(), "weights": path.name})

    @classmethod
    def load(cls, path) -> "VideoRefiner":
        """Load weights written by :meth:`save` (config from the JSON beside them, else the metadata)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        from ..errors import AssetError

        path = Path(path)
        if not path.is_file():
            raise AssetError("refiner weights not found", file=path)
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
        except Exception as exc:  # safetensors raises several types for damaged files
            raise AssetError(f"cannot read refiner weights ({exc})", file=path) from None
        side = config_path(path)
        if side.is_file():
            config = json.loads(side.read_text())["config"]
        elif "config" in meta:
            config = json.loads(meta["config"])
        else:
            raise AssetError("refiner weights carry no config (missing metadata and JSON)", file=path)
        model = cls(RefinerConfig.from_dict(config))
        try:
            model.load_state_dict(tensors)
        except RuntimeError as exc:
            raise AssetError(f"weights do not match the refiner config ({str(exc).splitlines()[0]})", file=path) from None
        model.eval()
        return model


def config_path(weights) -> Path:
    """The JSON beside ``weights.safetensors``: ``weights.json``."""
    return Path(weights).with_suffix(".json")
