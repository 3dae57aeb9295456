"""Exact optical flow from simulated motion, with occlusion masks, plus .flo and colour-wheel export.

The flow of a pixel is where the surface point it sees moves to: the point is lifted from the
pixel's depth, carried by its object's simulated motion (a sphere's translation; the ground is
static), and projected with the next frame's camera. It is marked occluded when that projection
leaves the image or lands on a different surface in the next frame (depth / id test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..fileio import atomic_write_bytes
from .camera import Camera

__all__ = ["surface_points", "optical_flow", "write_flo", "read_flo", "write_flo_frames", "flow_to_color"]


def surface_points(camera: Camera, depth: torch.Tensor) -> torch.Tensor:
    """World points (H, W, 3) seen at each pixel, from camera-space ``depth`` (H, W) [m]; sky (inf)
    maps to a point 1e7 m away along the ray."""
    origins, dirs = camera.rays(depth.device, depth.dtype)
    forward = camera.rotation(depth.device, depth.dtype)[2]
    # distance along each ray for that camera depth (orthographic rays start on the camera plane)
    along = depth if camera.orthographic else depth / (dirs @ forward)
    # sky: a point very far along the ray, so only camera rotation moves it
    along = torch.where(torch.isfinite(along), along, torch.full_like(along, 1e7))
    return origins + along[..., None] * dirs


def _flow_between(cam_a: Camera, cam_b: Camera, depth_a, seg_a, depth_b, seg_b, move, rel_tol):
    """Flow a -> b (H, W, 2) in pixels and the occlusion mask (H, W) (True = not visible in b)."""
    height, width = depth_a.shape
    points = surface_points(cam_a, depth_a)
    displacement = move[seg_a.long()]  # (H, W, 3): 0 for ground/sky, the sphere's move otherwise
    pixels_b, z_b = cam_b.project(points + displacement)
    pixels_a = cam_a.project(points)[0]
    sky = ~torch.isfinite(depth_a)
    flow = pixels_b - pixels_a
    # visibility in b: inside the image, same surface id, depth agrees
    col = torch.floor(pixels_b[..., 0]).long()
    row = torch.floor(pixels_b[..., 1]).long()
    inside = (col >= 0) & (col < width) & (row >= 0) & (row < height) & (z_b > 0)
    col_c, row_c = col.clamp(0, width - 1), row.clamp(0, height - 1)
    same_id = seg_b[row_c, col_c] == seg_a
    depth_seen = depth_b[row_c, col_c]
    depth_ok = ((depth_seen - z_b).abs() <= rel_tol * z_b.abs().clamp(min=1e-6)) | sky
    occluded = ~(inside & same_id & depth_ok)
    occluded = torch.where(sky & inside, torch.zeros_like(occluded), occluded)
    return flow, occluded


def optical_flow(cameras: Camera | Sequence[Camera], depth: torch.Tensor, segmentation: torch.Tensor,
                 centers: torch.Tensor, *, rel_tol: float = 0.05) -> dict[str, torch.Tensor]:
    """Forward and backward flow for F frames of one world.

    Args:
        cameras: one camera, or one per frame (a moving camera).
        depth: (F, H, W) camera z [m] of the visible surface (inf for sky).
        segmentation: (F, H, W) ids, 0 ground/sky, k+1 sphere k.
        centers: (F, N, 3) sphere centres [m].

    Returns ``flow_forward`` (F, H, W, 2) pixels from frame t to t+1 (zero in the last frame),
    ``flow_backward`` (F, H, W, 2) from t to t-1 (zero in the first), and masks
    ``occlusion_forward`` / ``occlusion_backward`` (F, H, W) bool, True where the point is not
    visible in the other frame (always True in the frame with no neighbour).
    """
    frames = depth.shape[0]
    cams = [cameras] * frames if isinstance(cameras, Camera) else list(cameras)
    depth, segmentation, centers = depth.detach(), segmentation.detach(), centers.detach().to(depth.dtype)
    zeros = torch.zeros((frames,) + tuple(depth.shape[1:]) + (2,), dtype=depth.dtype)
    out = {"flow_forward": zeros.clone(), "flow_backward": zeros.clone(),
           "occlusion_forward": torch.ones(depth.shape, dtype=torch.bool),
           "occlusion_backward": torch.ones(depth.shape, dtype=torch.bool)}
    pad = torch.zeros((frames, 1, 3), dtype=depth.dtype)
    centers = torch.cat([pad, centers], dim=1)  # index 0 = ground/sky, which does not move
    for t in range(frames - 1):
        move = centers[t + 1] - centers[t]
        flow, occ = _flow_between(cams[t], cams[t + 1], depth[t], segmentation[t], depth[t + 1], segmentation[t + 1], move, rel_tol)
        out["flow_forward"][t], out["occlusion_forward"][t] = flow, occ
        flow, occ = _flow_between(cams[t + 1], cams[t], depth[t + 1], segmentation[t + 1], depth[t], segmentation[t], -move, rel_tol)
        out["flow_backward"][t + 1], out["occlusion_backward"][t + 1] = flow, occ
    return out


_FLO_TAG = 202021.25


def write_flo(path: str | Path, flow) -> None:
    """Write one flow field (H, W, 2) [pixels] in the Middlebury .flo format, atomically."""
    flow = np.asarray(flow, dtype=np.float32)
    height, width = flow.shape[:2]
    header = np.array([_FLO_TAG], np.float32).tobytes() + np.array([width, height], np.int32).tobytes()
    atomic_write_bytes(path, header + flow.tobytes())


def write_flo_frames(layers_path: str | Path, folder: str | Path) -> list[Path]:
    """Write every frame's forward and backward flow of a layers file (``flow_forward`` /
    ``flow_backward``, (F, H, W, 2) [px]) as ``folder/forward_0000.flo``, ``backward_0000.flo``, ...;
    returns the paths written."""
    from ..errors import AssetError

    folder = Path(folder)
    with np.load(layers_path, allow_pickle=False) as data:
        if "flow_forward" not in data.files or "flow_backward" not in data.files:
            raise AssetError("the layers have no flow_forward / flow_backward", file=str(layers_path))
        flows = {"forward": data["flow_forward"], "backward": data["flow_backward"]}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, flow in flows.items():
        for t, frame in enumerate(flow):
            path = folder / f"{name}_{t:04d}.flo"
            write_flo(path, frame)
            written.append(path)
    return written


def read_flo(path: str | Path) -> np.ndarray:
    """Read a Middlebury .flo file -> (H, W, 2) float32."""
    from ..errors import AssetError

    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], np.float32)[0] != np.float32(_FLO_TAG):
        raise AssetError("not a .flo file (bad magic number)", file=str(path))
    width, height = np.frombuffer(data[4:12], np.int32)
    if len(data) != 12 + int(width) * int(height) * 8:
        raise AssetError(f"truncated .flo file: expected {width}x{height} flow", file=str(path))
    return np.frombuffer(data[12:], np.float32).reshape(int(height), int(width), 2).copy()


def flow_to_color(flow, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-wheel image (..., H, W, 3) uint8: hue = direction, saturation = magnitude."""
    flow = np.asarray(flow, dtype=np.float64)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    scale = max_magnitude or max(float(magnitude.max()), 1e-9)
    hue = (np.arctan2(-flow[..., 1], -flow[..., 0]) / np.pi + 1.0) / 2.0  # [0, 1]
    saturation = np.clip(magnitude / scale, 0.0, 1.0)
    # HSV (value 1) -> RGB
    h6 = hue * 6.0
    sector = np.floor(h6).astype(int) % 6
    frac = h6 - np.floor(h6)
    p, q, t = 1.0 - saturation, 1.0 - saturation * frac, 1.0 - saturation * (1.0 - frac)
    one = np.ones_like(hue)
    table = [(one, t, p), (q, one, p), (p, one, t), (p, q, one), (t, p, one), (one, p, q)]
    rgb = np.zeros(hue.shape + (3,))
    for index, (r, g, b) in enumerate(table):
        mask = sector == index
        rgb[mask] = np.stack([r[mask], g[mask], b[mask]], axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)
