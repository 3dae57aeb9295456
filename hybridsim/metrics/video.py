"""Temporal metrics of a video given its flow: how well frame t, carried by the flow, predicts
frame t+1 (warping error), how well forward and backward flow agree, and flicker."""

from __future__ import annotations

import torch

__all__ = ["warp", "warping_error", "flow_consistency", "flicker"]


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``image`` (H, W, C) at ``pixel + flow`` (flow (H, W, 2) in pixels), bilinear, border clamp."""
    height, width = image.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=flow.dtype), torch.arange(width, dtype=flow.dtype), indexing="ij")
    x = (xs + flow[..., 0]) * (2.0 / max(width - 1, 1)) - 1.0
    y = (ys + flow[..., 1]) * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([x, y], dim=-1)[None]
    sampled = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None].to(flow.dtype), grid, mode="bilinear",
                                              padding_mode="border", align_corners=True)
    return sampled[0].permute(1, 2, 0)


def warping_error(frames: torch.Tensor, flow_forward: torch.Tensor, occlusion_forward: torch.Tensor) -> float:
    """Mean |frame[t+1](p + flow_t(p)) - frame[t](p)| over non-occluded pixels and t < F-1.

    frames (F, H, W, C) in [0, 1] (uint8 is scaled), flow (F, H, W, 2) pixels, occlusion (F, H, W) bool.
    """
    frames = _as_float(frames)
    total, count = 0.0, 0
    for t in range(frames.shape[0] - 1):
        predicted = warp(frames[t + 1], flow_forward[t].to(frames.dtype))
        valid = ~occlusion_forward[t]
        if valid.any():
            total += float((predicted - frames[t]).abs().mean(dim=-1)[valid].sum())
            count += int(valid.sum())
    return total / max(count, 1)


def flow_consistency(flow_forward: torch.Tensor, flow_backward: torch.Tensor, occlusion_forward: torch.Tensor) -> float:
    """Mean |f_fw(p) + f_bw(p + f_fw(p))| [pixels] over non-occluded pixels (0 for exact flow)."""
    total, count = 0.0, 0
    for t in range(flow_forward.shape[0] - 1):
        back = warp(flow_backward[t + 1], flow_forward[t])
        residual = (flow_forward[t] + back).norm(dim=-1)
        valid = ~occlusion_forward[t]
        total += float(residual[valid].sum())
        count += int(valid.sum())
    return total / max(count, 1)


def flicker(frames: torch.Tensor) -> float:
    """Mean absolute change of the frame-mean brightness between consecutive frames (in [0, 1])."""
    frames = _as_float(frames)
    means = frames.mean(dim=(1, 2, 3))
    return float(means.diff().abs().mean()) if len(means) > 1 else 0.0


def _as_float(frames) -> torch.Tensor:
    frames = torch.as_tensor(frames)
    if frames.dtype == torch.uint8:
        return frames.to(torch.float64) / 255.0
    return frames.to(torch.float64)
