"""Pinhole and orthographic cameras in a z-up world, OpenCV camera axes (x right, y down, z forward).

Pixel (row i, col j) has its centre at image coordinates (x, y) = (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hybridsim.errors import AssetError

__all__ = ["Camera"]

_FIELDS = ("position", "look_at", "up", "fovy_deg", "width", "height")


@dataclass
class Camera:
    """A camera looking from ``position`` at ``look_at``; lengths in metres, sizes in pixels.

    ``fovy_deg`` is the vertical field of view in degrees (perspective only); ``ortho_height``
    is how many metres are visible vertically for ``projection="orthographic"``.
    """

    position: tuple[float, float, float]
    look_at: tuple[float, float, float]
    up: tuple[float, float, float]
    fovy_deg: float
    width: int
    height: int
    projection: str = "perspective"
    ortho_height: float = 2.0

    def __post_init__(self):
        self.position = _vec3(self.position, "position")
        self.look_at = _vec3(self.look_at, "look_at")
        self.up = _vec3(self.up, "up")
        self.fovy_deg, self.ortho_height = float(self.fovy_deg), float(self.ortho_height)
        self.width, self.height = int(self.width), int(self.height)
        if self.width < 1 or self.height < 1:
            raise AssetError(f"image size must be positive, got {self.width}x{self.height}", field="camera")
        if self.projection not in ("perspective", "orthographic"):
            raise AssetError(f"projection must be 'perspective' or 'orthographic', got {self.projection!r}",
                             field="camera.projection")
        if self.projection == "perspective" and not 0.0 < self.fovy_deg < 180.0:
            raise AssetError(f"fovy_deg must be in (0, 180), got {self.fovy_deg}", field="camera.fovy_deg")
        if self.projection == "orthographic" and not self.ortho_height > 0.0:
            raise AssetError(f"ortho_height must be positive, got {self.ortho_height}", field="camera.ortho_height")
        forward = [b - a for a, b in zip(self.position, self.look_at)]
        norm_f = math.sqrt(sum(v * v for v in forward))
        if norm_f < 1e-9:
            raise AssetError("camera position and look_at coincide", field="camera.look_at")
        cross = _cross([v / norm_f for v in forward], self.up)
        if math.sqrt(sum(v * v for v in cross)) < 1e-6 * math.sqrt(sum(v * v for v in self.up)) + 1e-12:
            raise AssetError("camera up vector is parallel to the viewing direction", field="camera.up")

    @classmethod
    def from_spec(cls, spec) -> "Camera":
        """Build from any object with the same attribute names (e.g. a pydantic model)."""
        kwargs = {name: getattr(spec, name) for name in _FIELDS}
        for name in ("projection", "ortho_height"):
            if getattr(spec, name, None) is not None:
                kwargs[name] = getattr(spec, name)
        return cls(**kwargs)

    @property
    def orthographic(self) -> bool:
        """True for ``projection == "orthographic"``."""
        return self.projection == "orthographic"

    def focal(self) -> float:
        """Perspective: focal length in pixels; orthographic: scale in pixels per metre."""
        if self.orthographic:
            return self.height / self.ortho_height
        return (self.height / 2.0) / math.tan(math.radians(self.fovy_deg) / 2.0)

    def rotation(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """World-to-camera rotation (3, 3); rows are camera x (right), y (down), z (forward) in world."""
        pos, at, up = (torch.tensor(v, device=device, dtype=torch.float64) for v in (self.position, self.look_at, self.up))
        forward = torch.nn.functional.normalize(at - pos, dim=0)
        right = torch.nn.functional.normalize(torch.linalg.cross(forward, up), dim=0)
        down = torch.linalg.cross(forward, right)
        return torch.stack([right, down, forward]).to(dtype)

    def extrinsics(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """World-to-camera transform (4, 4): x_cam = R (x_world - position)."""
        rot = self.rotation(device, torch.float64)
        pos = torch.tensor(self.position, device=device, dtype=torch.float64)
        mat = torch.eye(4, device=device, dtype=torch.float64)
        mat[:3, :3] = rot
        mat[:3, 3] = -rot @ pos
        return mat.to(dtype)

    def intrinsics(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """K (3, 3) with fx = fy = focal(), cx = width/2, cy = height/2.

        Perspective: pixel = K @ x_cam / z. Orthographic: fx = fy are pixels per metre and
        pixel = K @ (x, y, 1) of the camera-space point (depth does not divide).
        """
        f = self.focal()
        return torch.tensor([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]],
                            device=device, dtype=dtype)

    def rays(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """One ray per pixel centre: origins (H, W, 3) and unit directions (H, W, 3), world frame, metres."""
        rot = self.rotation(device, dtype)
        f = self.focal()
        xs = (torch.arange(self.width, device=device, dtype=dtype) + 0.5 - self.width / 2.0) / f
        ys = (torch.arange(self.height, device=device, dtype=dtype) + 0.5 - self.height / 2.0) / f
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        pos = torch.tensor(self.position, device=device, dtype=dtype)
        if self.orthographic:
            offset = torch.stack([xx, yy, torch.zeros_like(xx)], dim=-1) @ rot
            return pos + offset, rot[2].expand(self.height, self.width, 3).clone()
        dirs = torch.nn.functional.normalize(torch.stack([xx, yy, torch.ones_like(xx)], dim=-1), dim=-1) @ rot
        return pos.expand(self.height, self.width, 3).clone(), dirs

    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points (..., 3) -> camera-space points (..., 3) in metres (OpenCV axes). Differentiable."""
        rot = self.rotation(points.device, points.dtype)
        pos = torch.tensor(self.position, device=points.device, dtype=points.dtype)
        return (points - pos) @ rot.T

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World points (..., 3) -> pixels (..., 2) as (x, y) and depth (...) = camera z in metres."""
        cam = self.to_camera(points)
        f = self.focal()
        z = cam[..., 2]
        xy = cam[..., :2] * f if self.orthographic else cam[..., :2] * (f / z)[..., None]
        centre = torch.tensor([self.width / 2.0, self.height / 2.0], device=points.device, dtype=points.dtype)
        return xy + centre, z


def _vec3(value, name: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise AssetError(f"expected 3 finite numbers, got {value!r}", field=f"camera.{name}")
    return out


def _cross(a, b):
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
