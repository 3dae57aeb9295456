"""Target video -> what the fit compares against: frames resampled to the render size and
aligned to the scene's frame times, a foreground mask by background subtraction, and the mask's
per-frame centroid and area.

Nothing here is differentiable; it runs once per fit.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AssetError

__all__ = ["Target", "prepare_target", "load_target_frames", "load_camera_json", "foreground_mask",
           "resample_frames", "mask_moments", "first_frame_background", "observed_coverage", "observed_target",
           "quantize_uint8"]

MIN_THRESHOLD = 0.08
"""Smallest colour distance (RGB in [0, 1], Euclidean) that counts as foreground."""
NOISE_SIGMAS = 5.0
"""The threshold is also at least this many robust noise sigmas of the colour distance."""
SHADOW_CHROMA_COSINE = 0.995
"""A pixel is a shadow of another if their RGB directions agree this well and it is darker."""
MIN_AREA_PX = 4.0
"""A frame whose mask covers fewer pixels than this counts as 'nothing visible'."""


@dataclass
class Target:
    """A target clip prepared for fitting at the render size (H, W) and the scene's frame times."""

    rgb: torch.Tensor
    """(T, H, W, 3) float32 in [0, 1]; frame k is the target at scene time k / scene_fps."""
    mask: torch.Tensor
    """(T, H, W) float32 in [0, 1]: foreground coverage by background subtraction (soft at edges)."""
    background: torch.Tensor
    """(H, W, 3) float32: per-pixel temporal median of all target frames."""
    centroid: torch.Tensor
    """(T, 2) float64 mask centroid in pixels (x, y); pixel (i, j) has its centre at (j + .5, i + .5)."""
    area: torch.Tensor
    """(T,) float64 mask area in pixels."""
    visible: torch.Tensor
    """(T,) bool: area >= MIN_AREA_PX."""
    threshold: float
    """The colour-distance threshold used for the mask."""
    noise: float
    """Robust (MAD) estimate of the per-pixel colour-distance noise."""
    source_size: tuple[int, int]
    """(height, width) of the frames as read."""
    source_frames: int
    source_fps: float | None
    frame_index: list[int]
    """Source frame used for each scene frame."""
    digest: str
    """sha256 of the source frames (uint8 bytes, shape) and the frame-time mapping."""

    @property
    def frame_count(self) -> int:
        return int(self.rgb.shape[0])


def load_target_frames(path) -> tuple[np.ndarray, float | None]:
    """Read an mp4 (or other video), a folder of png/jpg frames or one image -> (uint8 frames, fps).

    A frame folder is read strictly: only png/jpg frames, numbered without gaps or duplicates
    (:func:`hybridsim.assets.frame_files`); a truncated video is an AssetError too."""
    from ..render.video import read_frames

    path = Path(path)
    if not path.exists():
        raise AssetError("target not found", file=path)
    frames, fps = read_frames(path, strict=True)
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise AssetError(f"target needs at least 2 frames, got {frames.shape[0] if frames.ndim == 4 else 0}", file=path)
    return frames, (fps if fps else None)


def load_camera_json(path) -> dict:
    """Read the target's camera: a camera.json (keys position, look_at, up, fovy_deg, width,
    height, fps, principal_point; all optional) or an OpenCV calibration (JSON or FileStorage
    YAML; see :func:`hybridsim.render.camera_io.read_camera_file`) -> camera.json fields."""
    from ..render.camera_io import read_camera_file

    fields = read_camera_file(path)[1]
    if fields.pop("moving", False):
        raise AssetError("the camera moves (per-frame cameras under 'frames'); fit needs a static camera", file=path,
                         field="frames")
    return fields


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _area_weights(size: int, out: int, dtype) -> torch.Tensor:
    """(out, size) matrix: row i is the overlap of [i s, (i + 1) s) with each source pixel, over s."""
    scale = size / out
    lo = torch.arange(out, dtype=torch.float64)[:, None] * scale
    edges = torch.arange(size, dtype=torch.float64)[None]
    overlap = (torch.minimum(lo + scale, edges + 1.0) - torch.maximum(lo, edges)).clamp(min=0.0)
    return (overlap / scale).to(dtype)


def resample_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, h, w, 3) -> (T, height, width, 3): area averaging when shrinking, bilinear when enlarging."""
    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    x = frames.permute(0, 3, 1, 2)
    if height <= h and width <= w:
        # exact area weights: output pixel i averages source [i s, (i + 1) s) with fractional ends
        # (torch's "area" mode pools whole-pixel windows, which for 4:3 overlap and shift pixels by
        # up to a third of a source pixel, varying along the image: a sub-pixel bias in every centroid)
        x = torch.einsum("yh,tchw,xw->tcyx", _area_weights(h, height, x.dtype), x, _area_weights(w, width, x.dtype))
    else:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def foreground_mask(frames: torch.Tensor, background: torch.Tensor | None = None, *,
                    min_threshold: float = MIN_THRESHOLD,
                    drop_shadows: bool = False) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Background subtraction: (T, H, W, 3) in [0, 1] -> (mask (T, H, W), background, threshold, noise).

    The background is the per-pixel temporal median. ``distance`` is the Euclidean RGB distance
    to it; ``noise`` the MAD-based sigma of that distance over the clip (most pixels are background).
    The *core* is where distance > threshold = max(min_threshold, NOISE_SIGMAS * noise), cleaned with
    a 3x3 morphological opening (drops specks) then closing (fills pinholes). The *interior* is the
    part of the core above half the frame's median core distance (about the silhouette line),
    eroded by 2 px, together with the core eroded by 2 px. The returned mask is 1 on the interior and, within 2 px of the core, an
    estimate of coverage a from the compositing model pixel = a fg + (1 - a) background: the
    projection of (pixel - background) onto (fg - background), fg being the mean colour of the
    interior pixels in the 7x7 neighbourhood. A hard threshold would instead grow every silhouette
    by about a pixel and bias the fitted depth. With ``drop_shadows`` a pixel that is a darker copy
    of the background (RGB directions within SHADOW_CHROMA_COSINE) is not foreground: cast shadows,
    which a target lit from elsewhere puts elsewhere than the scene's light would.
    """
    if background is None:
        background = frames.median(dim=0).values
    distance = (frames - background).norm(dim=-1)  # (T, H, W)
    shadow = is_shadow(frames, background) if drop_shadows else None
    if shadow is not None:
        distance = torch.where(shadow, torch.zeros_like(distance), distance)
    noise = float(1.4826 * distance.flatten().median())
    threshold = max(float(min_threshold), NOISE_SIGMAS * noise)
    core = _close(_open((distance > threshold).to(torch.float32)))
    # interior: 2 px inside the half-contrast level (about the silhouette), where coverage is full
    typical = _masked_median(distance, core)  # (T, 1, 1) typical object contrast per frame
    inner = core * (distance > torch.clamp(0.5 * typical, min=threshold)).to(core.dtype)
    for _ in range(2):
        eroded = _erode(inner)
        inner = torch.where(eroded.sum(dim=(1, 2), keepdim=True) > 0, eroded, inner)  # keep tiny objects
    # also 2 px inside the core itself: a face shaded close to the background (a dark side on dark
    # ground) is below half the typical contrast yet surely covered
    inner = torch.maximum(inner, _erode(_erode(core)))
    near = _dilate(_dilate(core))
    # foreground colour near each pixel: mean colour of the interior pixels in its 7x7 neighbourhood
    pool = lambda x: F.avg_pool2d(x, 7, stride=1, padding=3, count_include_pad=False)  # noqa: E731
    weight = pool(inner[:, None])  # (T, 1, H, W)
    colour = pool((frames * inner[..., None]).permute(0, 3, 1, 2))
    count = inner.sum(dim=(1, 2)).clamp(min=1)[:, None, None, None]
    frame_colour = (frames * inner[..., None]).sum(dim=(1, 2))[:, :, None, None] / count
    fg = torch.where(weight > 0, colour / weight.clamp(min=1e-6), frame_colour).permute(0, 2, 3, 1)
    # pixel = a * fg + (1 - a) * background: a by projection onto fg - background
    step = fg - background
    length2 = (step * step).sum(-1)
    coverage = ((frames - background) * step).sum(-1) / length2.clamp(min=threshold ** 2)
    soft = coverage.clamp(0.0, 1.0)  # linear in the pixel, so zero-mean noise adds no bias (unlike a distance)
    if shadow is not None:
        # A shadow next to the object projects onto (fg - background) as coverage too, so it is
        # dropped; but an edge pixel the object covers a little is also a darker copy of the
        # background when the object is darker: keep it where the compositing model explains the
        # pixel better than a shadow (a darker copy k * background) does.
        mixed = ((frames - background) - soft[..., None] * step).norm(dim=-1)
        k = ((frames * background).sum(-1) / (background * background).sum(-1).clamp(min=1e-6)).clamp(0.0, 1.0)
        darker = (frames - k[..., None] * background).norm(dim=-1)
        soft = torch.where(shadow & (darker < mixed), torch.zeros_like(soft), soft)
    mask = torch.where(inner > 0, torch.ones_like(soft), soft * near)
    return mask, background, threshold, noise


def quantize_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb`` rounded to 8 bits as every target is (:func:`prepare_target`), with the identity's
    gradient (straight-through): a render and a target of the same image then compare exactly."""
    rounded = torch.round(rgb.detach().clamp(0.0, 1.0) * 255.0) / 255.0
    return rgb + (rounded - rgb.detach())


def observed_coverage(frames: torch.Tensor, background: torch.Tensor, threshold: float,
                      quantize: bool = True) -> torch.Tensor:
    """A smooth background-subtraction coverage of frames (T, H, W, 3) over a known ``background``
    (H, W, 3): the fit applies it to the target and to its renders alike (``FitSettings.coverage =
    "observed"``), so a render of the true values gives exactly the target's mask.

    Per pixel, a = clamp((pixel - bg) . s / (|s|^2 + threshold^2), 0, 1), the compositing model
    pixel = a fg + (1 - a) bg with s = fg - bg estimated as the mean of (pixel - bg) over the 7x7
    neighbourhood weighted by |pixel - bg|^4 (the most covered pixels near it), times a gate that
    is 0 where no pixel within 2 px differs from the background by more than ``threshold`` and 1
    where one differs by twice that (noise far from objects adds no area). Unlike
    :func:`foreground_mask` it selects no pixel sets, so it is continuous in the pixels (and
    differentiable through a render): membership jumps would leave small local minima in the
    loss along which Levenberg-Marquardt stalls. With ``quantize`` renders are rounded to 8 bits
    first, as targets are (:func:`quantize_uint8`, straight-through; a no-op on targets); the
    Laplace uncertainty's finite differences (steps far below one grey level) pass False."""
    x = quantize_uint8(frames) if quantize else frames
    # float64 inside: the weights |pixel - bg|^4 of pixels at the background are ~0, and in float32
    # the backward pass of their normalisation (den^2 ~ 1e-40, flushed to zero when the CPU runs
    # with flush-to-zero, as after some simulation kernels) gave NaN gradients (an Adam fit of the
    # MPM jelly, measured)
    diff = x.double() - background.to(x.device, torch.float64)
    d2 = (diff * diff).sum(-1)  # (T, H, W)
    weight = (d2 * d2)[:, None]  # |pixel - bg|^4
    pool = lambda v: F.avg_pool2d(v, 7, stride=1, padding=3, count_include_pad=False)  # noqa: E731
    step = pool(weight * diff.permute(0, 3, 1, 2)) / (pool(weight) + 1e-20)  # (T, 3, H, W): fg - bg
    step = step.permute(0, 2, 3, 1)
    a = (diff * step).sum(-1) / ((step * step).sum(-1) + float(threshold) ** 2)
    near = F.max_pool2d(torch.sqrt(d2 + 1e-20)[:, None], 5, stride=1, padding=2)[:, 0]
    gate = ((near - threshold) / threshold).clamp(0.0, 1.0)
    return (a.clamp(0.0, 1.0) * gate).to(x.dtype)


def observed_target(target: "Target", background: torch.Tensor) -> "Target":
    """``target`` with its mask, area, centroid and visibility from :func:`observed_coverage`."""
    import dataclasses

    mask = observed_coverage(target.rgb.float(), background.float(), target.threshold).contiguous()
    area, centroid = mask_moments(mask.double())
    return dataclasses.replace(target, mask=mask, area=area, centroid=centroid, visible=area >= MIN_AREA_PX)


def is_shadow(pixels: torch.Tensor, lit: torch.Tensor) -> torch.Tensor:
    """(...) bool: ``pixels`` (..., 3) is a darker copy of ``lit`` (same chromaticity, less bright)."""
    cosine = (pixels * lit).sum(-1) / (pixels.norm(dim=-1) * lit.norm(dim=-1)).clamp(min=1e-6)
    return (cosine > SHADOW_CHROMA_COSINE) & (pixels.norm(dim=-1) < lit.norm(dim=-1))


def first_frame_background(frames: torch.Tensor, median: torch.Tensor, occupied: torch.Tensor,
                           threshold: float, agreement: float = 0.5) -> torch.Tensor | None:
    """The target's background from its first frame, for a target with another look.

    ``frames`` (T, H, W, 3) is the clip, ``median`` its per-pixel temporal median and ``occupied``
    (H, W) the coverage of the scene's own moving objects in frame 0. A pixel's *away* colour is its
    median over the frames where it differs from the first frame (by more than ``threshold``): what
    shows there once whatever was there at the start has left. Where ``occupied`` is > 0.01 (grown
    by 2 px) the first frame may show the object, so of the first frame and the away colour (the
    temporal median where the pixel never changes) the one nearer the first frame's colours just
    outside that region is taken. Taking the last frame instead fails for an object that comes
    back: a weight bobbing on a spring ends where it started and left its own copy in the
    background. Elsewhere, the away colour where the first frame is a darker copy of it (same
    chromaticity): the objects' shadows, which the target's light casts wherever it does (a low
    light throws them far from the objects; the scene's light elsewhere). Everywhere else the
    first frame *is* the background, also where an object lingers for most of the clip (which the
    temporal median would take for background). Returns None (keep the median) unless the first
    frame differs from the median on at least ``agreement`` of the pixels the scene's objects cover
    (> 0.5) in frame 0, i.e. unless the target's objects start where the scene's do."""
    first = frames[0]
    cover = occupied > 0.5
    if not bool(cover.any()):
        return first if bool((occupied <= 0.01).all()) else None
    differs = (first - median).norm(dim=-1) > threshold
    if float(differs[cover].float().mean()) < agreement:
        return None
    seen = (occupied > 0.01).to(torch.float32)[None, None]
    grown = F.max_pool2d(seen, 5, stride=1, padding=2)[0, 0] > 0
    left = (frames - first).norm(dim=-1) > threshold  # (T, H, W): something else shows there
    moved = left.any(dim=0)
    away = torch.where(left[..., None], frames, torch.full_like(frames, float("nan"))).nanmedian(dim=0).values
    away = torch.where(moved[..., None], away, median)
    # Around the object the first frame may show background and the away colour the object
    # passing by: of the two, take the one nearer the background just outside the grown region
    # (a local mean of the first frame there), the away colour where no such pixel is near.
    outside = (~grown).to(first.dtype)[None, None]
    pool = lambda x: F.avg_pool2d(x, 15, stride=1, padding=7, count_include_pad=False)  # noqa: E731
    weight = pool(outside)[0, 0]
    local = (pool(first.permute(2, 0, 1)[None] * outside)[0] / weight.clamp(min=1e-6)).permute(1, 2, 0)
    keep_first = (weight > 0) & ((first - local).norm(dim=-1) < (away - local).norm(dim=-1))
    inside = torch.where(keep_first[..., None], first, away)
    # a first-frame pixel that is a darker copy of its away colour (same chromaticity) is a shadow
    # of something that has moved since, which the target's light may cast far from the objects
    shadow = moved & is_shadow(first, away)
    around = torch.where(shadow[..., None], away, first)
    return torch.where(grown[..., None], inside, around)


def _masked_median(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-frame median of ``values`` where ``mask`` > 0, shape (T, 1, 1) (0 for empty frames)."""
    out = torch.zeros(values.shape[0], 1, 1, dtype=values.dtype)
    for i in range(values.shape[0]):
        picked = values[i][mask[i] > 0]
        if picked.numel():
            out[i] = picked.median()
    return out


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(mask[:, None], kernel_size=3, stride=1, padding=1)[:, 0]


def _erode(mask: torch.Tensor) -> torch.Tensor:
    # pad with ones so the image border does not eat into objects that touch it
    padded = F.pad(mask[:, None], (1, 1, 1, 1), value=1.0)
    return -F.max_pool2d(-padded, kernel_size=3, stride=1)[:, 0]


def _open(mask):
    return _dilate(_erode(mask))


def _close(mask):
    return _erode(_dilate(mask))


def mask_moments(mask: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Area (T,) and centroid (T, 2) as (x, y) in pixels of (soft) masks (T, H, W); differentiable."""
    t, h, w = mask.shape
    ys = torch.arange(h, dtype=mask.dtype, device=mask.device) + 0.5
    xs = torch.arange(w, dtype=mask.dtype, device=mask.device) + 0.5
    area = mask.sum(dim=(1, 2))
    cx = (mask.sum(dim=1) * xs).sum(dim=1) / (area + eps)
    cy = (mask.sum(dim=2) * ys).sum(dim=1) / (area + eps)
    return area, torch.stack([cx, cy], dim=-1)


def prepare_target(frames, *, height: int, width: int, scene_fps: float, target_fps: float | None = None,
                   max_frames: int | None = None, source: str | None = None,
                   min_threshold: float = MIN_THRESHOLD, background: torch.Tensor | None = None,
                   drop_shadows: bool = False) -> Target:
    """Prepare target frames (F, h, w, 3), uint8 or float in [0, 1], for a render of height x width.

    ``background`` (height, width, 3) in [0, 1] is the clip's empty background when it is known
    (the scene's own render, when the target shares the scene's appearance); by default it is the
    per-pixel temporal median, which misses objects that rest in one place for half the clip.
    ``drop_shadows``: leave cast shadows out of the mask (see ``foreground_mask``).

    Frame k of the result is the target frame nearest in time to scene time k / scene_fps (when
    ``target_fps`` is None the target is taken to run at the scene's rate). At most ``max_frames``
    frames are kept, and never past the end of the target.
    """
    array = frames.detach().cpu().numpy() if torch.is_tensor(frames) else np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 2 or min(array.shape[1:3]) < 1:
        raise AssetError(f"target frames must have shape (F>=2, H, W, 3), got {array.shape}", file=source)
    if array.dtype == np.uint8:
        raw = np.ascontiguousarray(array)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise AssetError("target frames contain non-finite values", file=source)
        raw = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    else:
        raise AssetError(f"target frames must be uint8 or float in [0, 1], got {array.dtype}", file=source)
    count, h0, w0, _ = raw.shape
    aspect_target, aspect_render = w0 / h0, width / height
    if abs(math.log(aspect_target / aspect_render)) > 0.02:
        raise AssetError(f"target is {w0}x{h0} (aspect {aspect_target:.3f}) but the camera renders {width}x{height} "
                         f"(aspect {aspect_render:.3f}); pass --camera with the target camera's width and height",
                         file=source)
    if target_fps is None or not target_fps > 0:
        target_fps_used = float(scene_fps)
    else:
        target_fps_used = float(target_fps)
    # scene frame k sits at time k / scene_fps; take the nearest target frame
    index = []
    k = 0
    while True:
        j = int(math.floor(k * target_fps_used / scene_fps + 0.5 + 1e-9))
        if j >= count or (max_frames is not None and k >= max_frames):
            break
        index.append(j)
        k += 1
    if len(index) < 2:
        raise AssetError(f"target covers {len(index)} scene frame(s); at least 2 are needed", file=source)

    digest = hashlib.sha256()
    digest.update(repr((raw.shape, round(target_fps_used, 9), round(float(scene_fps), 9), index)).encode())
    digest.update(raw.tobytes())

    all_frames = torch.from_numpy(raw).to(torch.float32) / 255.0
    all_frames = resample_frames(all_frames, height, width)
    if background is not None:
        background = torch.as_tensor(background, dtype=torch.float32).cpu()
        if tuple(background.shape) != (height, width, 3):
            raise AssetError(f"background must be ({height}, {width}, 3), got {tuple(background.shape)}", file=source)
        digest.update(b"background" + background.numpy().tobytes())
    if drop_shadows:
        digest.update(b"drop_shadows")
    mask_all, background, threshold, noise = foreground_mask(all_frames, background, min_threshold=min_threshold,
                                                             drop_shadows=drop_shadows)
    pick = torch.tensor(index)
    rgb, mask = all_frames[pick].contiguous(), mask_all[pick].contiguous()
    area, centroid = mask_moments(mask.double())
    return Target(rgb=rgb, mask=mask, background=background, centroid=centroid, area=area,
                  visible=area >= MIN_AREA_PX, threshold=threshold, noise=noise, source_size=(h0, w0),
                  source_frames=count, source_fps=None if target_fps is None else float(target_fps),
                  frame_index=index, digest=digest.hexdigest())
