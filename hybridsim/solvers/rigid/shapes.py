"""Shape geometry for rigid bodies: mass properties, contact points, and convex mesh loading.

Every shape is described in its own frame (centre at the origin; capsules lie along local z).
Contact points are the points a shape presents to the contact slots: a sphere its centre (with
its radius), a box its 8 corners, a capsule its 2 segment ends (with its radius), a convex mesh
the vertices of its convex hull.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import AssetError, SceneError

__all__ = ["ShapeSpec", "SHAPE_SPHERE", "SHAPE_BOX", "SHAPE_CAPSULE", "SHAPE_MESH", "load_convex_mesh"]

SHAPE_SPHERE = "sphere"
SHAPE_BOX = "box"
SHAPE_CAPSULE = "capsule"
SHAPE_MESH = "mesh"


@dataclass
class ShapeSpec:
    """One collision shape attached to a body (body -1: static, world frame)."""

    body: int
    kind: str
    size: tuple
    """sphere (r, 0, 0); box half extents (hx, hy, hz); capsule (r, half_height, 0); mesh (0, 0, 0) [m]."""
    position: np.ndarray
    """Shape centre in the body frame [m], shape (3,)."""
    rotation: np.ndarray
    """Shape orientation in the body frame, quaternion (x, y, z, w)."""
    density: float
    friction: float
    restitution: float
    mesh_vertices: np.ndarray | None = None
    """Convex hull vertices in the shape frame [m], shape (V, 3) (meshes only)."""
    mesh_planes: np.ndarray | None = None
    """Convex hull face planes (nx, ny, nz, offset) with n.x <= offset inside, shape (F, 4)."""
    mesh_mass: float = 0.0
    mesh_center: np.ndarray | None = None
    mesh_inertia: np.ndarray | None = None
    source: str | None = None
    extra: dict = field(default_factory=dict)

    def mass_properties(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(mass [kg], centre of mass in the shape frame [m], inertia about it [kg m^2] (3, 3))."""
        rho = self.density
        if self.kind == SHAPE_SPHERE:
            r = self.size[0]
            m = rho * 4.0 / 3.0 * math.pi * r**3
            return m, np.zeros(3), np.eye(3) * 0.4 * m * r * r
        if self.kind == SHAPE_BOX:
            hx, hy, hz = self.size
            m = rho * 8.0 * hx * hy * hz
            return m, np.zeros(3), np.diag([m / 3.0 * (hy * hy + hz * hz), m / 3.0 * (hx * hx + hz * hz), m / 3.0 * (hx * hx + hy * hy)])
        if self.kind == SHAPE_CAPSULE:
            r, h = self.size[0], self.size[1]
            length = 2.0 * h
            m_cyl = rho * math.pi * r * r * length
            m_caps = rho * 4.0 / 3.0 * math.pi * r**3
            i_axis = m_cyl * r * r / 2.0 + m_caps * 0.4 * r * r
            i_perp = m_cyl * (length * length / 12.0 + r * r / 4.0) + m_caps * (0.4 * r * r + length * length / 4.0 + 3.0 * length * r / 8.0)
            return m_cyl + m_caps, np.zeros(3), np.diag([i_perp, i_perp, i_axis])
        scale = rho / 1.0
        return self.mesh_mass * scale, self.mesh_center.copy(), self.mesh_inertia * scale

    def contact_points(self) -> tuple[np.ndarray, np.ndarray]:
        """Points (P, 3) in the shape frame and their radii (P,)."""
        if self.kind == SHAPE_SPHERE:
            return np.zeros((1, 3)), np.array([self.size[0]])
        if self.kind == SHAPE_BOX:
            hx, hy, hz = self.size
            corners = np.array([[sx * hx, sy * hy, sz * hz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
            return corners, np.zeros(8)
        if self.kind == SHAPE_CAPSULE:
            r, h = self.size[0], self.size[1]
            return np.array([[0.0, 0.0, -h], [0.0, 0.0, h]]), np.array([r, r])
        return self.mesh_vertices.copy(), np.zeros(len(self.mesh_vertices))


def load_convex_mesh(source, scale: float = 1.0) -> dict:
    """Load a mesh (obj/stl/ply/glb path, or a trimesh.Trimesh) and return its unit-density mass
    properties and convex hull. Raises AssetError naming the file when it cannot be read or is
    not watertight (a volume is needed for mass and inertia)."""
    import trimesh

    from ...assets import load_mesh, require_watertight

    if isinstance(source, trimesh.Trimesh):
        name = str(source.metadata.get("hybridsim_source", "<trimesh>"))
        mesh = source.copy()
    else:  # size and face limits, no side files, AssetError naming the file (hybridsim.assets)
        name = str(source)
        mesh = load_mesh(Path(source))
    if not (scale > 0.0 and math.isfinite(scale)):
        raise SceneError(f"mesh scale must be > 0, got {scale}", file=name, field="scale")
    mesh.apply_scale(scale)
    require_watertight(mesh, name, purpose="its volume, mass and inertia are undefined",
                       remedy="give the object a mass (its inertia then comes from the convex hull) or repair the "
                              "mesh (e.g. fill holes)")
    with np.errstate(invalid="ignore", divide="ignore"):  # trimesh divides by a zero volume
        volume = float(mesh.volume)
    if volume <= 0.0:
        mesh.invert()
        volume = -volume
    extent = float(np.ptp(np.asarray(mesh.vertices, dtype=float), axis=0).max())
    if not volume > 1e-9 * extent**3:  # a closed but flat (two-sided) surface
        raise AssetError(f"mesh encloses no volume (flat or degenerate, volume {volume:.3g} m^3): mass "
                         "and inertia need a solid", file=name)
    mesh.density = 1.0
    props = mesh.mass_properties
    try:
        hull = mesh.convex_hull
    except ImportError:  # trimesh's hull needs scipy; a convex mesh is its own hull
        normals = np.asarray(mesh.face_normals, dtype=float)
        offsets = np.einsum("ij,ij->i", normals, np.asarray(mesh.triangles_center, dtype=float))
        heights = np.asarray(mesh.vertices, dtype=float) @ normals.T - offsets
        if heights.max() > 1e-9 * max(1.0, float(np.abs(mesh.vertices).max())):
            raise AssetError("mesh is not convex and its convex hull needs scipy (pip install scipy)", file=name) from None
        hull = mesh
    normals = np.asarray(hull.face_normals, dtype=float)
    offsets = np.einsum("ij,ij->i", normals, np.asarray(hull.triangles_center, dtype=float))
    return dict(mass=float(props["mass"]), center=np.asarray(props["center_mass"], dtype=float),
                inertia=np.asarray(props["inertia"], dtype=float), vertices=np.asarray(hull.vertices, dtype=float),
                planes=np.concatenate([normals, offsets[:, None]], axis=1), source=name)
