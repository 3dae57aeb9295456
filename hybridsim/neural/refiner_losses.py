"""Losses of the video refiner: reconstruction (L1 + Sobel gradient), flow-warped temporal
consistency, and an optional multi-scale temporal discriminator (3D convs, hinge loss).

Clips are (T, H, W, 3) float tensors in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .refiner import warp_frames

__all__ = ["l1_loss", "sobel_loss", "reconstruction_loss", "temporal_loss", "TemporalDiscriminator",
           "hinge_discriminator_loss", "hinge_generator_loss"]


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output - target).abs().mean()


def _sobel(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> (N, 2C, H, W) horizontal and vertical Sobel responses."""
    x = images.permute(0, 3, 1, 2)
    channels = x.shape[1]
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype) / 8.0
    kernel = torch.stack([kx, kx.T])[:, None].repeat(channels, 1, 1, 1)  # (2C, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


def sobel_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean |Sobel(output) - Sobel(target)|: matches edges and texture, not just colour."""
    return (_sobel(output) - _sobel(target)).abs().mean()


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, gradient_weight: float = 0.5) -> torch.Tensor:
    return l1_loss(output, target) + gradient_weight * sobel_loss(output, target)


def temporal_loss(frames: torch.Tensor, flow_backward: torch.Tensor, occlusion_backward: torch.Tensor) -> torch.Tensor:
    """Mean over t >= 1 and non-occluded pixels of |frame_t - warp(frame_{t-1}, backward flow_t)|.

    ``flow_backward`` (T, H, W, 2) [px] maps frame t to t-1 and ``occlusion_backward`` (T, H, W) is
    True where the point is not visible in t-1 (as written by :func:`hybridsim.render.flow.optical_flow`).
    Zero for a static clip of identical frames; grows with flicker.
    """
    if frames.shape[0] < 2:
        return frames.sum() * 0.0
    predicted = warp_frames(frames[:-1], flow_backward[1:])
    valid = (~occlusion_backward[1:].bool()).to(frames.dtype)[..., None]
    count = valid.sum() * frames.shape[-1]
    return ((frames[1:] - predicted).abs() * valid).sum() / count.clamp(min=1.0)


class _ClipDiscriminator(nn.Module):
    """3D-conv patch discriminator over a clip (1, 3, T, H, W) -> logits (1, 1, T', H', W')."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv3d(3, c, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)), nn.LeakyReLU(0.2),
            nn.Conv3d(c, 2 * c, (3, 4, 4), stride=(1, 2, 2), padding=(1, 1, 1)), nn.LeakyReLU(0.2),
            nn.Conv3d(2 * c, 1, (3, 3, 3), padding=(1, 1, 1)),
        )

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.net(clip)


class TemporalDiscriminator(nn.Module):
    """Multi-scale temporal discriminator: one 3D-conv critic per temporal stride (default 1 and 2),
    each judging the clip subsampled in time by that stride (fine frame-to-frame changes and coarser
    motion). ``forward(clip (T, H, W, 3))`` -> list of logit maps, one per stride."""

    def __init__(self, channels: int = 16, strides: tuple[int, ...] = (1, 2)):
        super().__init__()
        self.strides = tuple(strides)
        self.critics = nn.ModuleList(_ClipDiscriminator(channels) for _ in self.strides)

    def forward(self, clip: torch.Tensor) -> list[torch.Tensor]:
        x = clip.permute(3, 0, 1, 2)[None] * 2.0 - 1.0  # (1, 3, T, H, W) in [-1, 1]
        return [critic(x[:, :, ::stride]) for stride, critic in zip(self.strides, self.critics)]


def hinge_discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    return sum(F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean() for r, f in zip(real_logits, fake_logits)) / len(real_logits)


def hinge_generator_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    return sum(-f.mean() for f in fake_logits) / len(fake_logits)
