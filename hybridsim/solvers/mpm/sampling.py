"""Particle sampling (jittered lattices in boxes, spheres and watertight meshes) and the MPM builder.

    builder = MPMBuilder(dim=2, resolution=64, size=1.0)
    jelly = builder.add_material("elastic", youngs_modulus=1e5, poisson_ratio=0.3, density=1000.0)
    builder.add_box((0.3, 0.5), (0.5, 0.7), material=jelly, color=(0.9, 0.3, 0.2))
    model = builder.finalize(dtype=torch.float64)
    state = model.state()

Samples sit on a regular lattice of ``spacing`` (default dx / 2: 2^d particles per cell), each
moved by a seeded uniform jitter of up to ``jitter * spacing / 2``; a particle's volume is
spacing^d.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import AssetError, HybridsimError
from .model import MATERIAL_KINDS, MPMGridSpec, MPMModel

__all__ = ["MPMBuilder", "lattice_box", "lattice_sphere", "lattice_mesh", "load_watertight_mesh"]


def _lattice(lower, upper, spacing: float, jitter: float, seed: int) -> np.ndarray:
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    counts = np.maximum(np.floor((upper - lower) / spacing + 1e-9).astype(int), 0)
    if counts.min() <= 0:
        return np.zeros((0, lower.size))
    # centre the lattice in the region
    start = lower + 0.5 * ((upper - lower) - counts * spacing) + 0.5 * spacing
    axes = [start[a] + spacing * np.arange(counts[a]) for a in range(lower.size)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, lower.size)
    if jitter > 0.0:
        rng = np.random.default_rng(seed)
        points = points + (rng.random(points.shape) - 0.5) * (jitter * spacing)
    return points


def lattice_box(lower, upper, spacing: float, *, jitter: float = 0.5, seed: int = 0) -> np.ndarray:
    """Jittered lattice points filling the axis-aligned box [lower, upper] [m], shape (n, d)."""
    return _lattice(lower, upper, spacing, jitter, seed)


def lattice_sphere(center, radius: float, spacing: float, *, jitter: float = 0.5, seed: int = 0) -> np.ndarray:
    """Jittered lattice points inside the ball (disc in 2D) of ``radius`` [m] around ``center``."""
    center = np.asarray(center, np.float64)
    points = _lattice(center - radius, center + radius, spacing, 0.0, seed)
    points = points[np.linalg.norm(points - center, axis=1) <= radius]
    if jitter > 0.0:
        rng = np.random.default_rng(seed)
        points = points + (rng.random(points.shape) - 0.5) * (jitter * spacing)
    return points


def load_watertight_mesh(mesh):
    """Load a mesh (path or trimesh.Trimesh) and check that it is watertight; AssetError otherwise."""
    import trimesh

    from ...assets import load_mesh, require_watertight

    if isinstance(mesh, trimesh.Trimesh):
        file = mesh.metadata.get("hybridsim_source")
        if len(mesh.faces) == 0:
            raise AssetError("mesh holds no triangles", file=file or "<mesh>")
    else:  # size and face limits, no side files, AssetError naming the file (hybridsim.assets)
        file = str(mesh)
        mesh = load_mesh(Path(file))
    require_watertight(mesh, file, purpose="its inside is undefined, so it cannot be filled with particles",
                       remedy="repair it (e.g. trimesh.repair.fill_holes) or fill a box or sphere instead")
    return mesh


def lattice_mesh(mesh, spacing: float, *, scale: float = 1.0, translate=(0.0, 0.0, 0.0), jitter: float = 0.5,
                 seed: int = 0) -> np.ndarray:
    """Jittered lattice points inside a watertight mesh (3D) after ``scale`` then ``translate`` [m]."""
    mesh = load_watertight_mesh(mesh).copy()
    mesh.apply_scale(scale)
    mesh.apply_translation(np.asarray(translate, np.float64))
    lower, upper = mesh.bounds
    points = _lattice(lower, upper, spacing, 0.0, seed)
    if len(points):
        points = points[_inside_mesh(mesh, points)]
    if jitter > 0.0:
        rng = np.random.default_rng(seed)
        points = points + (rng.random(points.shape) - 0.5) * (jitter * spacing)
    return points


def _inside_mesh(mesh, points: np.ndarray) -> np.ndarray:
    """Inside test of a watertight mesh for lattice points: ray parity along +z, per lattice column.

    Each triangle is intersected only with the columns under its xy bounding box, so the cost
    grows with triangles x columns-per-triangle (trimesh's own ``contains`` needs rtree). Ray
    origins are shifted by a tiny irrational xy offset so no ray runs exactly through an edge.
    """
    xs, ys = np.unique(points[:, 0]), np.unique(points[:, 1])
    point_column = np.searchsorted(xs, points[:, 0]) * len(ys) + np.searchsorted(ys, points[:, 1])
    extent = float(np.ptp(points, axis=0).max()) or 1.0
    shift = 1e-7 * extent * np.array([np.sqrt(2.0), np.sqrt(3.0)])
    tri = np.asarray(mesh.triangles, np.float64)  # (T, 3, 3)
    lo, hi = tri[:, :, :2].min(axis=1) - shift, tri[:, :, :2].max(axis=1) - shift
    i0, i1 = np.searchsorted(xs, lo[:, 0], "left"), np.searchsorted(xs, hi[:, 0], "right")
    j0, j1 = np.searchsorted(ys, lo[:, 1], "left"), np.searchsorted(ys, hi[:, 1], "right")
    nj = np.maximum(j1 - j0, 0)
    pair_count = np.maximum(i1 - i0, 0) * nj
    owner = np.repeat(np.arange(len(tri)), pair_count)  # one row per (triangle, column under it)
    local = np.arange(pair_count.sum()) - np.repeat(np.cumsum(pair_count) - pair_count, pair_count)
    ix = i0[owner] + local // np.maximum(nj[owner], 1)
    iy = j0[owner] + local % np.maximum(nj[owner], 1)
    px, py = xs[ix] + shift[0], ys[iy] + shift[1]
    (x0, y0, z0), (x1, y1, z1), (x2, y2, z2) = (tri[owner, k].T for k in range(3))
    det = (y1 - y2) * (x0 - x2) + (x2 - x1) * (y0 - y2)
    with np.errstate(divide="ignore", invalid="ignore"):
        l0 = ((y1 - y2) * (px - x2) + (x2 - x1) * (py - y2)) / det
        l1 = ((y2 - y0) * (px - x2) + (x0 - x2) * (py - y2)) / det
        l2 = 1.0 - l0 - l1
    hit = (det != 0) & (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
    hit_z = (l0 * z0 + l1 * z1 + l2 * z2)[hit]
    hit_column = (ix * len(ys) + iy)[hit]
    # one sorted key per crossing: column id + its z mapped into (0, 0.5)
    z_all = np.concatenate([points[:, 2], hit_z])
    z_lo, z_span = z_all.min() - 1.0, np.ptp(z_all) + 2.0
    keys = np.sort(hit_column + 0.5 * (hit_z - z_lo) / z_span)
    column_end = np.searchsorted(keys, point_column + 0.75, "left")
    above = column_end - np.searchsorted(keys, point_column + 0.5 * (points[:, 2] - z_lo) / z_span, "right")
    return above % 2 == 1


class MPMBuilder:
    """Collect materials and particle bodies; ``finalize()`` returns an :class:`MPMModel`.

    Args:
        dim: 2 or 3.
        resolution: nodes per axis (an int for a square/cubic grid, or a tuple).
        size: length of the domain along the first axis [m]; dx = size / (resolution[0] - 1).
        origin: position of node 0 [m].
        boundary_cells: wall band thickness [nodes].
        wall_mode: ``separate``, ``slip`` or ``no_slip``.
        gravity: [m/s^2]; default -9.81 along the last axis (y in 2D, z in 3D).
    """

    def __init__(self, *, dim: int = 2, resolution=64, size: float = 1.0, origin=None, boundary_cells: int = 3,
                 wall_mode: str = "separate", gravity=None):
        resolution = (int(resolution),) * dim if np.isscalar(resolution) else tuple(int(r) for r in resolution)
        origin = (0.0,) * dim if origin is None else tuple(float(o) for o in origin)
        self.grid = MPMGridSpec(dim, resolution, float(size) / (resolution[0] - 1), origin, int(boundary_cells),
                                wall_mode)
        self.dim = dim
        self.gravity = tuple(float(g) for g in gravity) if gravity is not None else (0.0,) * (dim - 1) + (-9.81,)
        if len(self.gravity) != dim:
            raise HybridsimError(f"gravity needs {dim} components, got {self.gravity}", field="gravity")
        self._materials: list[dict] = []
        self._bodies: list[tuple[np.ndarray, int, np.ndarray, np.ndarray, float]] = []

    @property
    def dx(self) -> float:
        return self.grid.dx

    def add_material(self, kind: str, *, youngs_modulus: float | None = None, poisson_ratio: float = 0.3,
                     bulk_modulus: float | None = None, viscosity: float = 0.0, density: float = 1000.0,
                     hardening: float = 10.0, critical_compression: float = 2.5e-2, critical_stretch: float = 7.5e-3,
                     name: str | None = None) -> int:
        """Add a material and return its index. A liquid may give ``bulk_modulus`` K [Pa] instead of
        E and nu (stored as nu = 0, E = d K, so that lam + 2 mu / d = K)."""
        if kind not in MATERIAL_KINDS:
            raise HybridsimError(f"unknown material kind {kind!r}; expected one of {sorted(MATERIAL_KINDS)}",
                                 field="kind")
        if bulk_modulus is not None:
            if kind != "liquid" or youngs_modulus is not None:
                raise HybridsimError("bulk_modulus is for liquids, instead of youngs_modulus", field="bulk_modulus")
            youngs_modulus, poisson_ratio = self.dim * float(bulk_modulus), 0.0
        if youngs_modulus is None or not youngs_modulus > 0.0:
            raise HybridsimError(f"material needs a positive youngs_modulus, got {youngs_modulus}", field="youngs_modulus")
        if not 0.0 <= poisson_ratio < 0.5:
            raise HybridsimError(f"poisson_ratio must be in [0, 0.5), got {poisson_ratio}", field="poisson_ratio")
        if not density > 0.0 or viscosity < 0.0:
            raise HybridsimError("density must be positive and viscosity non-negative", field="density")
        self._materials.append(dict(kind=MATERIAL_KINDS[kind], youngs_modulus=float(youngs_modulus),
                                    poisson_ratio=float(poisson_ratio), viscosity=float(viscosity),
                                    density=float(density), hardening=float(hardening),
                                    critical_compression=float(critical_compression),
                                    critical_stretch=float(critical_stretch), name=name or f"{kind}{len(self._materials)}"))
        return len(self._materials) - 1

    def _add(self, points: np.ndarray, material: int, velocity, color, spacing: float) -> range:
        if not 0 <= material < len(self._materials):
            raise HybridsimError(f"unknown material index {material}", field="material")
        if len(points) == 0:
            raise HybridsimError("the body holds no particles (smaller than the particle spacing?)", field="spacing")
        velocity = np.broadcast_to(np.asarray(velocity, np.float64), (len(points), self.dim))
        color = np.broadcast_to(np.asarray(color, np.float64), (len(points), 3))
        first = sum(len(b[0]) for b in self._bodies)
        self._bodies.append((points, material, velocity, color, spacing ** self.dim))
        return range(first, first + len(points))

    def add_box(self, lower, upper, *, material: int, velocity=0.0, color=(0.8, 0.8, 0.8), spacing: float | None = None,
                jitter: float = 0.5, seed: int = 0) -> range:
        """Fill the box [lower, upper] [m]; return the new particles' index range."""
        spacing = spacing or 0.5 * self.dx
        return self._add(lattice_box(lower, upper, spacing, jitter=jitter, seed=seed), material, velocity, color, spacing)

    def add_sphere(self, center, radius: float, *, material: int, velocity=0.0, color=(0.8, 0.8, 0.8),
                   spacing: float | None = None, jitter: float = 0.5, seed: int = 0) -> range:
        """Fill a ball (a disc in 2D) [m]; return the new particles' index range."""
        spacing = spacing or 0.5 * self.dx
        return self._add(lattice_sphere(center, radius, spacing, jitter=jitter, seed=seed), material, velocity, color,
                         spacing)

    def add_particles(self, points, *, material: int, velocity=0.0, color=(0.8, 0.8, 0.8),
                      spacing: float | None = None) -> range:
        """Add particles at given positions [m], shape (n, d), each of volume spacing^d (default
        spacing dx / 2); e.g. to reproduce another code's random initial positions."""
        points = np.asarray(points, np.float64)
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise HybridsimError(f"particle positions need shape (n, {self.dim}), got {points.shape}", field="points")
        return self._add(points, material, velocity, color, spacing or 0.5 * self.dx)

    def add_mesh(self, mesh, *, material: int, scale: float = 1.0, translate=(0.0, 0.0, 0.0), velocity=0.0,
                 color=(0.8, 0.8, 0.8), spacing: float | None = None, jitter: float = 0.5, seed: int = 0) -> range:
        """Fill a watertight triangle mesh (path or trimesh.Trimesh; 3D only)."""
        if self.dim != 3:
            raise HybridsimError("mesh sampling needs a 3D grid", field="dim")
        spacing = spacing or 0.5 * self.dx
        points = lattice_mesh(mesh, spacing, scale=scale, translate=translate, jitter=jitter, seed=seed)
        return self._add(points, material, velocity, color, spacing)

    def finalize(self, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> MPMModel:
        """Build the MPMModel (tensors on ``device``); particles must lie inside the walls."""
        if not self._bodies:
            raise HybridsimError("the MPM model has no particles")
        position = np.concatenate([b[0] for b in self._bodies])
        grid = self.grid
        lower = np.asarray(grid.origin) + grid.dx
        upper = np.asarray(grid.upper) - grid.dx
        outside = ~((position >= lower) & (position <= upper)).all(axis=1)
        if outside.any():
            raise HybridsimError(f"{int(outside.sum())} particles lie outside the grid interior "
                                 f"[{lower.tolist()}, {upper.tolist()}] m", field="particles")

        def tensor(values, kind=dtype):
            return torch.as_tensor(np.asarray(values), dtype=kind, device=device).contiguous()

        mats = self._materials
        return MPMModel(
            grid=grid, gravity=self.gravity,
            material_kind=tensor([m["kind"] for m in mats], torch.int32),
            **{key: tensor([m[key] for m in mats]) for key in (
                "youngs_modulus", "poisson_ratio", "viscosity", "density", "hardening", "critical_compression",
                "critical_stretch")},
            particle_material=tensor(np.concatenate([np.full(len(b[0]), b[1]) for b in self._bodies]), torch.int64),
            particle_volume=tensor(np.concatenate([np.full(len(b[0]), b[4]) for b in self._bodies])),
            particle_position=tensor(position),
            particle_velocity=tensor(np.concatenate([b[2] for b in self._bodies])),
            particle_color=tensor(np.concatenate([b[3] for b in self._bodies])),
            material_names=tuple(m["name"] for m in mats),
        )
