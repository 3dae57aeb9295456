"""Loss terms of the fit. See :mod:`hybridsim.fit` for the design; all work on a window of frames.

Shapes: alpha (T, H, W) rendered sphere coverage, rgb (T, H, W, 3), target tensors as in
:class:`hybridsim.fit.target.Target` restricted to the same T frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .target import MIN_AREA_PX, mask_moments

__all__ = ["DEFAULT_WEIGHTS", "silhouette_loss", "centroid_loss", "multiscale_rgb_loss", "charbonnier",
           "APPEARANCE_TOLERANCE", "RGB_SCALES"]

DEFAULT_WEIGHTS = {"silhouette": 1.0, "centroid": 1.0, "rgb": 0.1}
"""Weights of the terms; ``rgb`` only applies when the target's appearance matches the scene's."""
CENTROID_SCALE_PX = 1.0
"""Charbonnier scale of the centroid term: quadratic below ~1 px, linear (constant pull) above."""
RGB_SCALES = (1, 2, 4)
"""Average-pooling factors of the multi-scale image term."""
APPEARANCE_TOLERANCE = 0.05
"""Mean absolute RGB difference between the target's median background and the scene's rendered
background below which the two are taken to share an appearance model (and ``rgb`` is used)."""


def charbonnier(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Smooth robust penalty: x^2 / (2 scale^2) near 0, |x| / scale far away (minus a constant)."""
    return torch.sqrt((x / scale) ** 2 + 1.0) - 1.0


def silhouette_loss(alpha: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean over frames of 1 - soft IoU(alpha, mask), the soft IoU being the weighted Jaccard index
    sum(min(a, m)) / sum(max(a, m)): 1 exactly when a == m, also for soft masks (the product form
    sum(a m) / sum(a + m - a m) is below 1 for identical soft masks and favours hard edges).
    ``eps`` (pixels) makes two empty frames agree."""
    mask = mask.to(alpha.dtype)
    inter = torch.minimum(alpha, mask).sum(dim=(1, 2))
    union = torch.maximum(alpha, mask).sum(dim=(1, 2))
    return (1.0 - (inter + eps) / (union + eps)).mean()


def rendered_centroids(alpha: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """Alpha-weighted centroids (T, 2); where the render covers < 1 px (object off-screen or too small)
    the mean projected sphere centre ``projected`` (T, 2) stands in, so the pull never vanishes."""
    area, centroid = mask_moments(alpha)
    present = (area.detach() >= 1.0)[:, None]
    return torch.where(present, centroid, projected.to(centroid.dtype))


def centroid_loss(centroid: torch.Tensor, target_centroid: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Mean Charbonnier distance (pixels / CENTROID_SCALE_PX) over frames where the target is visible."""
    if not bool(visible.any()):
        return centroid.sum() * 0.0
    diff = (centroid - target_centroid.to(centroid.dtype))[visible]
    distance = torch.sqrt((diff * diff).sum(dim=-1) + 1e-12)
    return charbonnier(distance, CENTROID_SCALE_PX).mean()


def multiscale_rgb_loss(rgb: torch.Tensor, target_rgb: torch.Tensor, scales=RGB_SCALES) -> torch.Tensor:
    """Mean over scales of the Charbonnier (eps 0.01) difference of average-pooled images."""
    x = rgb.permute(0, 3, 1, 2)
    y = target_rgb.to(rgb.dtype).permute(0, 3, 1, 2)
    total = 0.0
    for s in scales:
        if s > 1:
            if min(x.shape[-2:]) < s:
                continue
            xs, ys = F.avg_pool2d(x, s, ceil_mode=True), F.avg_pool2d(y, s, ceil_mode=True)
        else:
            xs, ys = x, y
        total = total + (torch.sqrt((xs - ys) ** 2 + 1e-4) - 1e-2).mean()
    return total / len(scales)


def moment_residuals(alpha: torch.Tensor, target, frames: int, ok: torch.Tensor | None = None,
                     centroid: torch.Tensor | None = None):
    """Image-moment residuals (pixels) of a render against the target's mask, on the frames ``ok``:
    (centroid x, y differences flattened (2 n,), sqrt(area) differences (n,) (an apparent-size
    residual), ok). The Laplace uncertainty and the Levenberg-Marquardt residuals share it.

    ``ok`` (T,) bool, a fixed frame selection (so residual counts never change between renders);
    default: frames where the target is visible and the render covers >= MIN_AREA_PX.
    ``centroid`` (T, 2): the render's centroids when they are not alpha's own (the LM passes
    :func:`rendered_centroids`, with the projected centre where the render covers < 1 px)."""
    alpha = alpha.double()
    area, own = mask_moments(alpha)
    centroid = own if centroid is None else centroid.double()
    t_area = target.area[:frames].to(alpha.device, torch.float64)
    t_centroid = target.centroid[:frames].to(alpha.device, torch.float64)
    if ok is None:
        ok = target.visible[:frames].to(alpha.device) & (area >= MIN_AREA_PX)
    ok = ok.to(alpha.device)
    res_c = (centroid - t_centroid)[ok].reshape(-1)
    res_a = (torch.sqrt(area) - torch.sqrt(t_area))[ok]
    return res_c, res_a, ok
