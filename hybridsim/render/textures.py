"""Textures for the mesh renderer: 3D checker and stripes in an object's own frame, and images
mapped by triplanar (box) projection; all filtered by the pixel footprint so they do not alias.

A texture maps points in an object's frame (``coords`` (N, 3) [m]) to an RGB albedo (N, 3),
given the screen derivatives of the coordinates (``d_dx``, ``d_dy`` (N, 3): metres per pixel
along the image x and y axes, from the rasteriser's perspective-correct interpolation) and the
face's unit normal in the object frame (N, 3). The derivatives give each point's pixel footprint:
procedural textures are box-filtered over it analytically, images are sampled from a mip pyramid
(trilinear: bilinear in the two nearest levels), so distant or grazing surfaces fade to their mean
colour instead of shimmering. Values are differentiable w.r.t. the coordinates (hence object
poses), not w.r.t. the texture's own colours, sizes or image.

In a scene file (``[[objects]] texture = {...}``, see ``hybridsim.scene.schema.TextureSpec``)::

    texture = { kind = "checker", size = 0.1, colors = [[0.9, 0.9, 0.9], [0.2, 0.2, 0.2]] }
    texture = { kind = "stripes", size = 0.05, direction = [0, 0, 1], colors = [...] }
    texture = { image = "wood.png", scale = 0.5 }   # one image tile per 0.5 m, path beside the scene
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from ..errors import AssetError, ResourceError

__all__ = ["Texture", "CheckerTexture", "StripesTexture", "ImageTexture", "load_texture_image", "texture_from_spec",
           "MAX_TEXTURE_PIXELS"]

MAX_TEXTURE_PIXELS = 4096 * 4096
"""Images with more pixels are refused before they are decoded."""
_INSET = 1e-3  # procedural textures are evaluated this many cells inside the surface (see _inset)


class Texture:
    """Base class: ``evaluate(coords, d_dx, d_dy, normals) -> (N, 3)`` albedo in [0, 1]."""

    def evaluate(self, coords: torch.Tensor, d_dx: torch.Tensor, d_dy: torch.Tensor,
                 normals: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _tri(x):
    """Integral of the +-1 square wave (-1)^floor(x), up to a constant: a triangle wave."""
    return (torch.remainder(x * 0.5, 1.0) - 0.5).abs()


def _box_wave(p, width):
    """(-1)^floor(p) averaged over [p - width / 2, p + width / 2] (width in cells, > 0)."""
    return 2.0 * (_tri(p - 0.5 * width) - _tri(p + 0.5 * width)) / width


def _inset(coords, normals, size):
    """Move points a hair inside the surface (against the outward normal) so that a face lying
    exactly on a cell boundary (a box of half extent 0.1 with 0.1 cells) shows the cell inside the
    object rather than the average of the two."""
    return coords - (_INSET * size) * normals


def _colour_pair(colors, like):
    pair = torch.as_tensor(colors, dtype=like.dtype, device=like.device)
    if pair.shape != (2, 3):
        raise AssetError(f"texture colours must be two RGB colours, got shape {tuple(pair.shape)}",
                         field="texture.colors")
    return pair


class CheckerTexture(Texture):
    """3D checker of cubic cells of ``size`` [m] in the object's frame (a cell's corner at the
    origin), alternating ``colors[0]`` (even cells) and ``colors[1]``. The +-1 square waves along
    x, y and z are box-filtered over the pixel footprint on each axis (|d/dx| + |d/dy|); their
    product is the exactly filtered checker parity for that box."""

    def __init__(self, size: float = 0.1, colors=((0.9, 0.9, 0.9), (0.2, 0.2, 0.2))):
        if not float(size) > 0.0:
            raise AssetError(f"checker size must be positive, got {size}", field="texture.size")
        self.size, self.colors = float(size), colors

    def evaluate(self, coords, d_dx, d_dy, normals):
        pair = _colour_pair(self.colors, coords)
        p = _inset(coords, normals, self.size) / self.size
        width = ((d_dx.abs() + d_dy.abs()) / self.size).clamp(min=1e-4)
        odd = 0.5 - 0.5 * _box_wave(p, width).prod(-1)
        return pair[0] + (pair[1] - pair[0]) * odd[:, None]


class StripesTexture(Texture):
    """Parallel stripes of width ``size`` [m] across ``direction`` (object frame), alternating
    ``colors[0]`` and ``colors[1]``, box-filtered over the pixel footprint along ``direction``."""

    def __init__(self, size: float = 0.1, colors=((0.9, 0.9, 0.9), (0.2, 0.2, 0.2)), direction=(0.0, 0.0, 1.0)):
        if not float(size) > 0.0:
            raise AssetError(f"stripe size must be positive, got {size}", field="texture.size")
        d = [float(c) for c in direction]
        norm = math.sqrt(sum(c * c for c in d))
        if len(d) != 3 or not norm > 0.0:
            raise AssetError(f"stripe direction must be a non-zero 3-vector, got {direction}",
                             field="texture.direction")
        self.size, self.colors, self.direction = float(size), colors, tuple(c / norm for c in d)

    def evaluate(self, coords, d_dx, d_dy, normals):
        pair = _colour_pair(self.colors, coords)
        axis = torch.tensor(self.direction, dtype=coords.dtype, device=coords.device)
        p = (_inset(coords, normals, self.size) @ axis) / self.size
        width = (((d_dx @ axis).abs() + (d_dy @ axis).abs()) / self.size).clamp(min=1e-4)
        odd = 0.5 - 0.5 * _box_wave(p, width)
        return pair[0] + (pair[1] - pair[0]) * odd[:, None]


class ImageTexture(Texture):
    """An RGB image (H, W, 3) in [0, 1] (or uint8; taken as albedo, no gamma decoding) repeated every
    ``scale`` metres and projected along the object's axes (triplanar): along x it covers the
    (y, z) plane, along y (x, z), along z (x, y), with the image's up on the second coordinate;
    the three projections are blended with weights |n_i|^4 of the face's object-frame normal
    (a box face shows exactly one). Sampled from a 2x2 box-filtered mip pyramid, with the level
    chosen by the pixel footprint in texels, bilinear within and linear between levels,
    wrapping around the edges."""

    def __init__(self, image, scale: float = 1.0):
        image = torch.as_tensor(image)
        if image.dim() != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise AssetError(f"a texture image must have shape (H, W, 3), got {tuple(image.shape)}",
                             field="texture.image")
        if not float(scale) > 0.0:
            raise AssetError(f"texture scale must be positive, got {scale}", field="texture.scale")
        image = image.to(torch.float64) / 255.0 if image.dtype == torch.uint8 else image.to(torch.float64)
        if not bool(((image >= 0.0) & (image <= 1.0)).all()):
            raise AssetError("texture image values must lie in [0, 1]", field="texture.image")
        self.scale = float(scale)
        self.height, self.width = int(image.shape[0]), int(image.shape[1])
        levels = [image]
        while levels[-1].shape[0] > 1 or levels[-1].shape[1] > 1:
            top = levels[-1].permute(2, 0, 1)[None]
            size = (max(1, top.shape[2] // 2), max(1, top.shape[3] // 2))
            levels.append(torch.nn.functional.interpolate(top, size=size, mode="area")[0].permute(1, 2, 0))
        self.levels = len(levels)
        self._flat = torch.cat([lv.reshape(-1, 3) for lv in levels])
        sizes = torch.tensor([[lv.shape[0], lv.shape[1]] for lv in levels], dtype=torch.long)
        self._sizes = sizes
        self._offsets = torch.cumsum(sizes[:, 0] * sizes[:, 1], 0) - sizes[:, 0] * sizes[:, 1]
        self._cache = {}

    def _tables(self, like):
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (self._flat.to(dtype=like.dtype, device=like.device), self._sizes.to(like.device),
                                self._offsets.to(like.device))
        return self._cache[key]

    def _sample(self, s, t, level):
        """Bilinear, wrapped sample at image coordinates (s, t) (tiles) in the given mip level (N,) long."""
        flat, sizes, offsets = self._tables(s)
        lh, lw = sizes[level, 0], sizes[level, 1]
        x = s * lw.to(s.dtype) - 0.5  # texel centres at i + 0.5
        y = (1.0 - t) * lh.to(s.dtype) - 0.5  # row 0 is the top of the image
        x0, y0 = torch.floor(x), torch.floor(y)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        x0, y0 = x0.long(), y0.long()
        base = offsets[level]

        def at(xi, yi):
            return flat[base + torch.remainder(yi, lh) * lw + torch.remainder(xi, lw)]

        top = at(x0, y0) * (1.0 - fx) + at(x0 + 1, y0) * fx
        bottom = at(x0, y0 + 1) * (1.0 - fx) + at(x0 + 1, y0 + 1) * fx
        return top * (1.0 - fy) + bottom * fy

    def evaluate(self, coords, d_dx, d_dy, normals):
        n4 = normals.abs() ** 4
        weights = n4 / n4.sum(-1, keepdim=True).clamp(min=1e-30)
        out = torch.zeros_like(coords)
        for axis, (a, b) in enumerate(((1, 2), (0, 2), (0, 1))):
            idx = (weights[:, axis] > 1e-6).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            c, gx, gy = coords[idx] / self.scale, d_dx[idx] / self.scale, d_dy[idx] / self.scale
            s, t = c[:, a], c[:, b]
            texels = torch.maximum((gx[:, a].abs() + gy[:, a].abs()) * self.width,
                                   (gx[:, b].abs() + gy[:, b].abs()) * self.height)
            lod = torch.log2(texels.clamp(min=1.0)).clamp(max=self.levels - 1.0)
            low = torch.floor(lod).detach().long().clamp(max=self.levels - 1)
            high = (low + 1).clamp(max=self.levels - 1)
            frac = (lod - low.to(lod.dtype))[:, None]
            value = self._sample(s, t, low) * (1.0 - frac) + self._sample(s, t, high) * frac
            out = out.index_add(0, idx, weights[idx, axis, None] * value)
        return out


def load_texture_image(path) -> torch.Tensor:
    """Read a png/jpg texture as a float64 tensor (H, W, 3) in [0, 1] (alpha dropped, grey expanded).

    AssetError naming the file when it is missing or not a readable image; ResourceError when it
    has more than ``MAX_TEXTURE_PIXELS`` pixels (checked from the header, before decoding).
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise AssetError("texture image not found", file=str(path))
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_TEXTURE_PIXELS:
                raise ResourceError(f"texture image is {width}x{height} pixels, more than the limit of "
                                    f"{MAX_TEXTURE_PIXELS} (scale it down)", file=str(path))
            if img.format not in ("PNG", "JPEG"):
                raise AssetError(f"texture images must be png or jpg, not {img.format}", file=str(path))
            data = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise AssetError(f"cannot read the texture image: {exc}", file=str(path)) from None
    return torch.from_numpy(data.copy())


def texture_from_spec(spec, source=None, *, field: str = "texture") -> Texture:
    """A ``Texture`` from a scene's ``TextureSpec``; image paths are resolved against the folder of
    the scene file ``source`` (and must stay inside it, see ``hybridsim.assets.resolve_asset_path``)."""
    if spec.kind == "checker":
        return CheckerTexture(spec.size, spec.colors)
    if spec.kind == "stripes":
        return StripesTexture(spec.size, spec.colors, spec.direction)
    from ..assets import resolve_asset_path

    path = resolve_asset_path(source, spec.image, field=f"{field}.image")
    try:
        stat = path.stat()
    except OSError:
        raise AssetError("texture image not found", file=str(path)) from None
    return _image_texture(str(path), stat.st_mtime_ns, stat.st_size, float(spec.scale))


@functools.lru_cache(maxsize=16)
def _image_texture(path: str, _mtime_ns: int, _size: int, scale: float) -> ImageTexture:
    """Image textures by file and modification time: renders called once per fitting step do not
    decode the image (and build its mip pyramid) again."""
    return ImageTexture(load_texture_image(path), scale)
