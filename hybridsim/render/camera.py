"""Pinhole and orthographic cameras in a z-up world, OpenCV camera axes (x right, y down, z forward).

Pixel (row i, col j) has its centre at image coordinates (x, y) = (j + 0.5, i + 0.5). The
principal point is the image centre unless ``principal_point`` gives another (as calibrated
cameras have); pixels are square (fx = fy).

``Camera.from_opencv(K, extrinsics, width, height)`` and ``camera.to_opencv()`` convert to and
from OpenCV's intrinsic matrix K and world-to-camera extrinsics [R | t] (x_cam = R x_world + t).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hybridsim.errors import AssetError

__all__ = ["Camera", "rotation_to_rvec", "rvec_to_rotation"]

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
    principal_point: tuple[float, float] | None = None
    """(cx, cy) in pixels; ``None`` is the image centre (width / 2, height / 2)."""

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
        if self.principal_point is not None:
            try:
                cx, cy = (float(v) for v in self.principal_point)
            except (TypeError, ValueError):
                raise AssetError(f"principal_point must be two numbers (cx, cy), got {self.principal_point!r}",
                                 field="camera.principal_point") from None
            if not (math.isfinite(cx) and math.isfinite(cy)):
                raise AssetError(f"principal_point must be finite, got {self.principal_point!r}",
                                 field="camera.principal_point")
            self.principal_point = (cx, cy)
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
        for name in ("projection", "ortho_height", "principal_point"):
            if getattr(spec, name, None) is not None:
                kwargs[name] = getattr(spec, name)
        return cls(**kwargs)

    @property
    def orthographic(self) -> bool:
        """True for ``projection == "orthographic"``."""
        return self.projection == "orthographic"

    @property
    def cx(self) -> float:
        """Principal point x in pixels (image centre by default)."""
        return self.width / 2.0 if self.principal_point is None else self.principal_point[0]

    @property
    def cy(self) -> float:
        """Principal point y in pixels (image centre by default)."""
        return self.height / 2.0 if self.principal_point is None else self.principal_point[1]

    def replace(self, **changes) -> "Camera":
        """A copy with some fields changed (validated again)."""
        fields = {name: getattr(self, name) for name in (*_FIELDS, "projection", "ortho_height", "principal_point")}
        fields.update(changes)
        return Camera(**fields)

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
        """K (3, 3) with fx = fy = focal() and the principal point (cx, cy) (default: the image centre).

        Perspective: pixel = K @ x_cam / z. Orthographic: fx = fy are pixels per metre and
        pixel = K @ (x, y, 1) of the camera-space point (depth does not divide).
        """
        f = self.focal()
        return torch.tensor([[f, 0.0, self.cx], [0.0, f, self.cy], [0.0, 0.0, 1.0]],
                            device=device, dtype=dtype)

    def rays(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """One ray per pixel centre: origins (H, W, 3) and unit directions (H, W, 3), world frame, metres."""
        rot = self.rotation(device, dtype)
        f = self.focal()
        xs = (torch.arange(self.width, device=device, dtype=dtype) + 0.5 - self.cx) / f
        ys = (torch.arange(self.height, device=device, dtype=dtype) + 0.5 - self.cy) / f
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
        centre = torch.tensor([self.cx, self.cy], device=points.device, dtype=points.dtype)
        return xy + centre, z

    # ----------------------------------------------------------------- OpenCV
    @classmethod
    def from_opencv(cls, intrinsics, extrinsics, width: int, height: int, *, rel_tol: float = 1e-3) -> "Camera":
        """A perspective camera from OpenCV's K (3, 3) and world-to-camera extrinsics (4, 4) or (3, 4)
        [R | t] (x_cam = R x_world + t; camera x right, y down, z forward).

        hybridsim cameras have square pixels and no skew: K with fx != fy (beyond ``rel_tol``) or a
        skew term is refused with an error naming the value. Lens distortion is not modelled;
        undistort images first.
        """
        k = _matrix(intrinsics, (3, 3), "intrinsics")
        e = _matrix(extrinsics, None, "extrinsics")
        if e.shape not in ((3, 4), (4, 4)):
            raise AssetError(f"extrinsics must be 3x4 or 4x4 [R | t], got shape {tuple(e.shape)}", field="extrinsics")
        fx, fy, skew = float(k[0, 0]), float(k[1, 1]), float(k[0, 1])
        if not (fx > 0 and fy > 0):
            raise AssetError(f"focal lengths must be positive, got fx={fx:g}, fy={fy:g}", field="intrinsics")
        if abs(fx - fy) > rel_tol * max(fx, fy):
            raise AssetError(f"non-square pixels (fx={fx:g}, fy={fy:g}) are not supported; resample the images "
                             "so that fx = fy", field="intrinsics")
        if abs(skew) > rel_tol * fx or float(k[1, 0]) != 0.0 or k[2].tolist() != [0.0, 0.0, 1.0]:
            raise AssetError(f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {k.tolist()}", field="intrinsics")
        rot, t = e[:3, :3], e[:3, 3]
        if not torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-5) or float(torch.det(rot)) < 0:
            raise AssetError("the rotation part of the extrinsics is not a proper rotation (R R^T = I, det R = +1)",
                             field="extrinsics")
        position = -(rot.T @ t)
        focal = 0.5 * (fx + fy)
        fovy = math.degrees(2.0 * math.atan(height / (2.0 * focal)))
        cx, cy = float(k[0, 2]), float(k[1, 2])
        centred = abs(cx - width / 2.0) < 1e-9 and abs(cy - height / 2.0) < 1e-9
        return cls(position=position.tolist(), look_at=(position + rot[2]).tolist(), up=(-rot[1]).tolist(),
                   fovy_deg=fovy, width=width, height=height, principal_point=None if centred else (cx, cy))

    def to_opencv(self) -> dict:
        """OpenCV form: ``K`` (3, 3), ``R`` (3, 3), ``t`` (3,), ``rvec`` (3,) (Rodrigues vector of R),
        ``extrinsics`` (4, 4) world to camera, ``dist`` (5,) zeros, ``width``, ``height`` (numpy, float64).

        Perspective only: an orthographic camera has no OpenCV pinhole form.
        """
        if self.orthographic:
            raise AssetError("an orthographic camera has no OpenCV pinhole form", field="camera.projection")
        import numpy as np

        ext = self.extrinsics(dtype=torch.float64).numpy()
        return {"K": self.intrinsics(dtype=torch.float64).numpy(), "R": ext[:3, :3].copy(), "t": ext[:3, 3].copy(),
                "rvec": rotation_to_rvec(ext[:3, :3]), "extrinsics": ext, "dist": np.zeros(5),
                "width": self.width, "height": self.height}


def _matrix(value, shape, name) -> torch.Tensor:
    try:
        out = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise AssetError(f"{name} must be a numeric matrix, got {value!r}", field=name) from None
    if shape is not None and tuple(out.shape) != shape:
        raise AssetError(f"{name} must have shape {shape}, got {tuple(out.shape)}", field=name)
    if not bool(torch.isfinite(out).all()):
        raise AssetError(f"{name} has non-finite entries", field=name)
    return out


def rvec_to_rotation(rvec):
    """Rodrigues: rotation vector (3,) [rad] -> rotation matrix (3, 3) (numpy float64)."""
    import numpy as np

    r = np.asarray(rvec, dtype=np.float64).reshape(3)
    theta = float(np.linalg.norm(r))
    if theta < 1e-12:
        return np.eye(3)
    k = r / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(theta) * kx + (1.0 - math.cos(theta)) * (kx @ kx)


def rotation_to_rvec(rot):
    """Inverse Rodrigues: rotation matrix (3, 3) -> rotation vector (3,) [rad] (numpy float64)."""
    import numpy as np

    rot = np.asarray(rot, dtype=np.float64)
    cos = min(1.0, max(-1.0, (np.trace(rot) - 1.0) / 2.0))
    theta = math.acos(cos)
    axis = np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])
    if theta < 1e-8:
        return 0.5 * axis  # small angle: R ~ I + [r]x
    if math.pi - theta < 1e-5:  # near 180 degrees: the axis from the symmetric part
        sym = (rot + np.eye(3)) / 2.0
        i = int(np.argmax(np.diag(sym)))
        k = sym[:, i] / math.sqrt(max(sym[i, i], 1e-300))
        if np.dot(k, axis) < 0:
            k = -k
        return theta * k / np.linalg.norm(k)
    return theta * axis / (2.0 * math.sin(theta))


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
