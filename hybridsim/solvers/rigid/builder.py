"""RigidBuilder: collect bodies, shapes, static boxes and meshes, and springs in Python lists, then
``finalize(device, dtype)`` into a RigidModel of tensors.

Contact candidates are enumerated once here as fixed slots (every shape point against the
ground and against every shape of another body of its world), so a slot's impulse can
warm-start the next step. Slots grow with the number of shape pairs; the solver's broad phase
(``broad_phase.py``) visits only those within reach each step (``body_collisions=False`` keeps
only ground and static contacts). ``add_builder`` appends another builder's scene as a separate
world: worlds share the ground and step together, but never touch each other.
"""

from __future__ import annotations

import math

from dataclasses import replace

import numpy as np
import torch

from ...errors import SceneError
from .model import RigidModel
from .shapes import SHAPE_BOX, SHAPE_CAPSULE, SHAPE_MESH, SHAPE_SPHERE, ShapeSpec, load_convex_mesh

__all__ = ["RigidBuilder"]

KIND_GROUND, KIND_SPHERE, KIND_BOX, KIND_CAPSULE, KIND_BOX_BOX, KIND_MESH = 0, 1, 2, 3, 4, 5
# one slot per convex pair with a mesh (mesh-mesh, mesh-box): the edge-edge contact of the pair's
# two hulls when an edge-edge axis separates them best (see ``_edge_block``)
KIND_EDGE = 6
# a static mesh's hull vertex (the slot's point, world frame) against a dynamic box's faces (7) or
# a dynamic convex mesh's hull planes (8): body = (the dynamic body, -1), b_position / b_rotation /
# b_size the dynamic shape's offset in its body, b_hull its hull as (start, -count) (the sign
# tells select_hull_planes the slot is flipped); the kernels negate the normal
KIND_STATIC_VERTEX_BOX, KIND_STATIC_VERTEX_MESH = 7, 8
# ... and against a dynamic capsule's segment (9; b_hull (0, 0)): the capsule end slots against the
# mesh's planes miss an apex under the middle of the segment (it sank 0.0497 m of r = 0.05 m)
KIND_STATIC_VERTEX_CAPSULE = 9
# edge pairs one edge-edge slot may test per step (select_hull_planes is O(E_a E_b)); finer hulls
# approximate smooth surfaces, where their dense vertices' contacts suffice: no edge slot
EDGE_PAIR_LIMIT = 20000
_TARGET_KIND = {SHAPE_SPHERE: KIND_SPHERE, SHAPE_BOX: KIND_BOX, SHAPE_CAPSULE: KIND_CAPSULE}
IDENTITY = (0.0, 0.0, 0.0, 1.0)
# box-box slots per pair: 4 incident corners, 4 reference corners, 16 edge crossings (the clipped
# face polygon has at most 8 of them); an edge-edge contact uses the first slot
BOX_BOX_CANDIDATES = 24


def _quat_matrix(q) -> np.ndarray:
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _matrix_quat(m: np.ndarray) -> np.ndarray:
    trace = np.trace(m)
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[i] = 0.25 * s
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
        q[3] = (m[k, j] - m[j, k]) / s
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def _unit_quat(q, what: str) -> np.ndarray:
    q = np.asarray(q, dtype=float).reshape(-1)
    if q.shape != (4,) or not np.isfinite(q).all() or np.linalg.norm(q) < 1e-9:
        raise SceneError(f"{what} must be a finite quaternion (x, y, z, w), got {q.tolist()}", field=what)
    return q / np.linalg.norm(q)


def _vec3(v, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=float).reshape(-1)
    if v.shape != (3,) or not np.isfinite(v).all():
        raise SceneError(f"{what} must be 3 finite numbers, got {v.tolist()}", field=what)
    return v


def _positive(value, what: str) -> float:
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise SceneError(f"{what} must be > 0, got {value}", field=what)
    return value


def _distinct_planes(planes: np.ndarray) -> np.ndarray:
    """Hull face planes (F, 4) with coplanar faces merged (a triangulated hull repeats the plane of
    each polygon face), in first-seen order, normals renormalised. Duplicates only cost time."""
    planes = np.asarray(planes, dtype=float)
    normals = planes[:, :3] / np.linalg.norm(planes[:, :3], axis=1, keepdims=True)
    planes = np.concatenate([normals, planes[:, 3:4]], axis=1)
    scale = max(float(np.abs(planes[:, 3]).max()), 1e-12)
    keys = np.round(np.concatenate([normals, planes[:, 3:4] / scale], axis=1) * 1e7)
    _, first = np.unique(keys, axis=0, return_index=True)
    return planes[np.sort(first)]


def _edge_block(shape: ShapeSpec) -> np.ndarray:
    """Rows (R, 4) describing a box's or mesh's convex hull in its body's frame (a static shape's:
    the world) for edge-edge contacts: a header (faces F, vertices V, edges E, bounding radius),
    the centroid (x, y, z, 0), F face planes (n, offset; n . x <= offset inside), V vertices
    (x, y, z, 0), then per edge 4 rows: its two end points and the outward normals of its two
    faces (coplanar triangles merged: no diagonals). ``shape.position``/``rotation`` are the
    shape's pose in that frame (the centre-of-mass frame, after ``finalize`` re-expresses them)."""
    import trimesh

    points, _ = shape.contact_points()
    rotation = _quat_matrix(shape.rotation)
    points = np.asarray(points, dtype=float) @ rotation.T + np.asarray(shape.position, dtype=float)
    hull = trimesh.Trimesh(vertices=points, process=True).convex_hull
    vertices = np.asarray(hull.vertices, dtype=float)
    normals = np.asarray(hull.face_normals, dtype=float)
    offsets = np.einsum("ij,ij->i", normals, np.asarray(hull.triangles_center, dtype=float))
    planes = _distinct_planes(np.concatenate([normals, offsets[:, None]], axis=1))
    adjacency = np.asarray(hull.face_adjacency, dtype=np.int64).reshape(-1, 2)
    ends = np.asarray(hull.face_adjacency_edges, dtype=np.int64).reshape(-1, 2)
    sharp = np.einsum("ij,ij->i", normals[adjacency[:, 0]], normals[adjacency[:, 1]]) < 1.0 - 1e-9
    adjacency, ends = adjacency[sharp], ends[sharp]
    centroid = vertices.mean(axis=0)
    radius = float(np.linalg.norm(vertices - centroid, axis=1).max())
    rows = [[len(planes), len(vertices), len(ends), radius], [*centroid, 0.0]]
    rows += planes.tolist()
    rows += [[*v, 0.0] for v in vertices]
    for (f0, f1), (e0, e1) in zip(adjacency, ends):
        rows += [[*vertices[e0], 0.0], [*vertices[e1], 0.0], [*normals[f0], 0.0], [*normals[f1], 0.0]]
    return np.asarray(rows, dtype=float)


class RigidBuilder:
    """Collects a rigid-body scene; ``finalize()`` returns a RigidModel.

    Args:
        gravity: gravitational acceleration [m/s^2].
        ground: add the static ground plane z = ground_height.
        ground_friction / ground_restitution: the plane's material (contacts use the mean of the
            two shapes' values).
        body_collisions: generate body-body contact slots (off: ground and static boxes only).
    """

    def __init__(self, *, gravity=(0.0, 0.0, -9.81), ground: bool = True, ground_height: float = 0.0,
                 ground_friction: float = 0.5, ground_restitution: float = 0.0, body_collisions: bool = True):
        self.gravity = _vec3(gravity, "gravity")
        self.ground, self.ground_height = bool(ground), float(ground_height)
        self.ground_friction, self.ground_restitution = float(ground_friction), float(ground_restitution)
        self.body_collisions = bool(body_collisions)
        self.bodies: list[dict] = []
        self.shapes: list[ShapeSpec] = []
        self.springs: list[dict] = []
        self.joints: list[dict] = []
        self.world_count = 1
        self.shape_world: list[int] = []
        """World of each shape (shapes of different worlds never collide)."""
        self.body_world: list[int] = []

    @property
    def body_count(self) -> int:
        return len(self.bodies)

    def add_body(self, *, position=(0.0, 0.0, 0.0), orientation=IDENTITY, velocity=(0.0, 0.0, 0.0),
                 angular_velocity=(0.0, 0.0, 0.0), mass: float | None = None, inertia=None, name: str | None = None) -> int:
        """Add a dynamic body with its frame at ``position``/``orientation``; returns its index.

        Mass and inertia come from the shapes' densities unless ``mass`` is given (the shapes'
        inertia is then scaled to it) or ``inertia`` (3 principal moments [kg m^2], for a body
        with no shapes)."""
        body = dict(position=_vec3(position, "position"), orientation=_unit_quat(orientation, "orientation"),
                    velocity=_vec3(velocity, "velocity"), angular_velocity=_vec3(angular_velocity, "angular_velocity"),
                    mass=None if mass is None else _positive(mass, "mass"),
                    inertia=None if inertia is None else _vec3(inertia, "inertia"),
                    name=name or f"body{len(self.bodies)}")
        self.bodies.append(body)
        self.body_world.append(0)
        return len(self.bodies) - 1

    def _add_shape(self, body: int, kind: str, size, position, rotation, density, friction, restitution, **mesh) -> int:
        if not (-1 <= body < len(self.bodies)):
            raise SceneError(f"shape attached to unknown body {body} (have {len(self.bodies)} bodies)", field="body")
        if friction < 0.0 or not (0.0 <= restitution <= 1.0):
            raise SceneError(f"friction must be >= 0 and restitution in [0, 1], got {friction}, {restitution}", field="material")
        shape = ShapeSpec(body=body, kind=kind, size=tuple(float(s) for s in size), position=_vec3(position, "position"),
                          rotation=_unit_quat(rotation, "rotation"), density=_positive(density, "density"),
                          friction=float(friction), restitution=float(restitution), **mesh)
        self.shapes.append(shape)
        self.shape_world.append(self.body_world[body] if body >= 0 else 0)  # a static shape: world 0
        return len(self.shapes) - 1

    def add_shape_sphere(self, body: int, radius: float, *, position=(0.0, 0.0, 0.0), density: float = 1000.0,
                         friction: float = 0.5, restitution: float = 0.0) -> int:
        """Sphere of ``radius`` [m] centred at ``position`` in the body frame."""
        return self._add_shape(body, SHAPE_SPHERE, (_positive(radius, "radius"), 0.0, 0.0), position, IDENTITY,
                               density, friction, restitution)

    def add_shape_box(self, body: int, half_extents, *, position=(0.0, 0.0, 0.0), rotation=IDENTITY,
                      density: float = 1000.0, friction: float = 0.5, restitution: float = 0.0) -> int:
        """Box with ``half_extents`` (hx, hy, hz) [m]; body -1 makes a static box (world frame)."""
        he = _vec3(half_extents, "half_extents")
        for h in he:
            _positive(h, "half_extents")
        return self._add_shape(body, SHAPE_BOX, he, position, rotation, density, friction, restitution)

    def add_static_box(self, half_extents, *, position=(0.0, 0.0, 0.0), rotation=IDENTITY,
                       friction: float = 0.5, restitution: float = 0.0) -> int:
        """Static (immovable) box in the world frame."""
        return self.add_shape_box(-1, half_extents, position=position, rotation=rotation, friction=friction, restitution=restitution)

    def add_shape_capsule(self, body: int, radius: float, half_height: float, *, position=(0.0, 0.0, 0.0),
                          rotation=IDENTITY, density: float = 1000.0, friction: float = 0.5, restitution: float = 0.0) -> int:
        """Capsule: segment from -half_height to +half_height along local z, swept by ``radius`` [m]."""
        return self._add_shape(body, SHAPE_CAPSULE, (_positive(radius, "radius"), _positive(half_height, "half_height"), 0.0),
                               position, rotation, density, friction, restitution)

    def add_shape_mesh(self, body: int, source, *, scale: float = 1.0, position=(0.0, 0.0, 0.0), rotation=IDENTITY,
                       density: float = 1000.0, friction: float = 0.5, restitution: float = 0.0) -> int:
        """Convex mesh from a file (obj/stl/ply/glb, read with trimesh) or a trimesh.Trimesh.

        Mass and inertia come from the closed surface (AssetError naming the file if it is not
        watertight); contacts use the vertices of its convex hull and the planes of its faces.
        Use ``add_static_mesh`` for an immovable one."""
        if body < 0:
            raise SceneError("meshes must belong to a dynamic body (add_static_mesh makes a static one)", field="body")
        return self._add_mesh(body, source, scale, position, rotation, density, friction, restitution)

    def add_static_mesh(self, source, *, scale: float = 1.0, position=(0.0, 0.0, 0.0), rotation=IDENTITY,
                        friction: float = 0.5, restitution: float = 0.0) -> int:
        """Static (immovable) convex mesh placed at ``position``/``rotation`` in the world frame.

        Other bodies' points (sphere centres, box corners, capsule ends, mesh hull vertices)
        collide with its hull planes; its own hull vertices have slots against dynamic boxes' faces
        and dynamic meshes' hull planes (kinds 7, 8), so a sharp tip under a box holds it (not
        against spheres and capsules). A downward face lying on the ground plane (a wedge's base)
        is left out of its contact planes."""
        return self._add_mesh(-1, source, scale, position, rotation, 1000.0, friction, restitution)

    def _add_mesh(self, body, source, scale, position, rotation, density, friction, restitution) -> int:
        data = load_convex_mesh(source, scale)
        return self._add_shape(body, SHAPE_MESH, (0.0, 0.0, 0.0), position, rotation, density, friction, restitution,
                               mesh_vertices=data["vertices"], mesh_planes=data["planes"], mesh_mass=data["mass"],
                               mesh_center=data["center"], mesh_inertia=data["inertia"], source=data["source"])

    def add_spring(self, body_a: int, body_b: int = -1, *, anchor_a=(0.0, 0.0, 0.0), anchor_b=(0.0, 0.0, 0.0),
                   stiffness: float, damping: float = 0.0, rest_length: float | None = None) -> int:
        """Spring-damper between a point of body_a and a point of body_b (-1: ``anchor_b`` is a
        world point). Anchors are in the bodies' frames as given to add_body [m]; rest_length
        defaults to the initial distance."""
        for b in (body_a, body_b):
            if not (-1 <= b < len(self.bodies)) or body_a < 0:
                raise SceneError(f"spring between unknown bodies {body_a}, {body_b}", field="spring")
        if stiffness < 0.0 or damping < 0.0:
            raise SceneError("spring stiffness and damping must be >= 0", field="spring")
        self.springs.append(dict(body=(body_a, body_b), anchor_a=_vec3(anchor_a, "anchor_a"), anchor_b=_vec3(anchor_b, "anchor_b"),
                                 stiffness=float(stiffness), damping=float(damping), rest_length=rest_length))
        return len(self.springs) - 1

    def add_joint(self, kind: str, body_a: int, body_b: int = -1, *, anchor, axis=(0.0, 0.0, 1.0)) -> int:
        """A ``"ball"`` or ``"hinge"`` joint between body_a and body_b (-1: the world) at the world
        point ``anchor`` [m] (where the bodies are when added); a hinge turns about the world
        direction ``axis``. Joints hold by position projection after every step (``joints.py``)."""
        if kind not in ("ball", "hinge"):
            raise SceneError(f"joint type must be 'ball' or 'hinge', got {kind!r}", field="type")
        if not (0 <= body_a < len(self.bodies)) or not (-1 <= body_b < len(self.bodies)) or body_a == body_b:
            raise SceneError(f"joint between unknown or equal bodies {body_a}, {body_b}", field="joint")
        axis = _vec3(axis, "axis")
        if not np.linalg.norm(axis) > 0:
            raise SceneError("joint axis must be a non-zero vector", field="axis")
        self.joints.append(dict(kind=kind, body=(body_a, body_b), anchor=_vec3(anchor, "anchor"),
                                axis=axis / np.linalg.norm(axis)))
        return len(self.joints) - 1

    def add_builder(self, other: "RigidBuilder") -> int:
        """Append ``other``'s bodies, shapes (static ones too), springs and joints as a new world
        and return its index. Its shapes collide only with each other and with this builder's
        ground (``other``'s gravity and ground settings are not used). A model of many worlds
        steps them all in one launch per phase; each world's results are the bits it gets alone.
        Bodies keep their order: world w's bodies follow world w-1's."""
        world = self.world_count if (self.bodies or self.shapes) else 0
        self.world_count = world + 1
        offset = len(self.bodies)
        for body in other.bodies:
            self.bodies.append(dict(body))
            self.body_world.append(world)
        for shape in other.shapes:
            self.shapes.append(replace(shape, body=shape.body + offset if shape.body >= 0 else -1))
            self.shape_world.append(world)
        moved = lambda b: b + offset if b >= 0 else -1  # noqa: E731
        for spring in other.springs:
            self.springs.append({**spring, "body": tuple(moved(b) for b in spring["body"])})
        for joint in other.joints:
            self.joints.append({**joint, "body": tuple(moved(b) for b in joint["body"])})
        return world

    # -- finalize --------------------------------------------------------------------------
    def _body_mass_properties(self):
        """Per body: (mass, centre of mass in its frame, principal moments, principal rotation)."""
        result = []
        shapes_of = [[] for _ in self.bodies]
        for shape in self.shapes:
            if shape.body >= 0:
                shapes_of[shape.body].append(shape)
        for b, body in enumerate(self.bodies):
            mass, first, second = 0.0, np.zeros(3), np.zeros((3, 3))
            parts = []
            for shape in shapes_of[b]:
                m, c, inertia = shape.mass_properties()
                rot = _quat_matrix(shape.rotation)
                parts.append((m, shape.position + rot @ c, rot @ inertia @ rot.T))
            mass = sum(p[0] for p in parts)
            if parts:
                com = sum(p[0] * p[1] for p in parts) / mass
                for m, c, inertia in parts:
                    d = c - com
                    second = second + inertia + m * (d @ d * np.eye(3) - np.outer(d, d))
            else:
                com = np.zeros(3)
                if body["mass"] is None or body["inertia"] is None:
                    raise SceneError("a body without shapes needs both mass and inertia", object=body["name"])
            if body["mass"] is not None and parts:
                second = second * (body["mass"] / mass)
            if body["mass"] is not None:
                mass = body["mass"]
            if body["inertia"] is not None:
                moments, rotation = np.asarray(body["inertia"]), np.eye(3)
            else:
                off = np.abs(second - np.diag(np.diag(second))).max()
                if off <= 1e-12 * np.trace(second):
                    moments, rotation = np.diag(second).copy(), np.eye(3)
                else:
                    moments, rotation = np.linalg.eigh(second)
                    if np.linalg.det(rotation) < 0:
                        rotation[:, 2] *= -1.0
            if mass <= 0 or (moments <= 0).any():
                raise SceneError("body mass and principal inertia must be > 0", object=body["name"])
            result.append((mass, com, moments, _matrix_quat(rotation)))
        return result

    def _drop_grounded_faces(self, planes: np.ndarray, shape: ShapeSpec) -> np.ndarray:
        """A static mesh's hull planes without its downward face lying on (or under) the ground: no
        point reaches that face from outside, but a point slipping into the mesh's thin foot (a
        wedge's edge at ground level) would find it the nearest plane and be pushed down, into the
        ground (the two contacts then fight)."""
        normals = planes[:, :3] @ _quat_matrix(shape.rotation).T  # world normals
        height = shape.position[2] - planes[:, 3]  # the face's height when its normal is -z
        extent = float(np.ptp(shape.mesh_vertices, axis=0).max())
        keep = ~((normals[:, 2] < -1.0 + 1e-6) & (height <= self.ground_height + 1e-6 * extent))
        return planes[keep]

    def _contact_slots(self, shapes: list[ShapeSpec], hull_range: dict[int, tuple[int, int]],
                       edge_block=None) -> dict:
        """The slot table; ``hull_range`` maps each mesh shape to the (start, count) of its hull
        planes in the model's ``hull_planes``; ``edge_block(index)`` gives the row of a shape's edge
        block there and its edge count (``_edge_block``; None: no edge-edge slots)."""
        rows = []

        def add(kind, shape_a, point, radius, body_b, shape_b_index, b_position, b_rotation, b_size, order=0):
            sa = shapes[shape_a]
            rows.append(dict(body=(sa.body, body_b), kind=kind, order=order, point=point, radius=radius,
                             a_position=sa.position, a_rotation=sa.rotation, a_size=sa.size,
                             b_position=b_position, b_rotation=b_rotation, b_size=b_size, shape=(shape_a, shape_b_index),
                             b_hull=hull_range.get(shape_b_index, (0, 0))))

        def points_of(index):
            s = shapes[index]
            pts, radii = s.contact_points()
            rot = _quat_matrix(s.rotation)
            return [(s.position + rot @ p, r) for p, r in zip(pts, radii)]


        def static_vertices(i, j):
            """The static mesh i's hull vertices against the dynamic box, mesh or capsule j (flipped slots)."""
            sj = shapes[j]
            start, planes = hull_range.get(j, (0, 0))
            kind = {SHAPE_BOX: KIND_STATIC_VERTEX_BOX, SHAPE_CAPSULE: KIND_STATIC_VERTEX_CAPSULE}.get(
                sj.kind, KIND_STATIC_VERTEX_MESH)
            for p, r in points_of(i):
                rows.append(dict(body=(sj.body, -1), kind=kind, order=0, point=p, radius=r, a_position=sj.position,
                                 a_rotation=sj.rotation, a_size=sj.size, b_position=sj.position, b_rotation=sj.rotation,
                                 b_size=sj.size, shape=(j, i), b_hull=(start, -planes)))

        def against(i, j, sliding=True):
            """Points of shape i (dynamic) against the solid shape j; a capsule also gets a sliding
            slot (order 1) at the point of its axis nearest j, for crossings mid-segment."""
            sj = shapes[j]
            if sj.kind == SHAPE_MESH:
                # points against the mesh's hull planes (a sphere centre / capsule end with its radius,
                # box corners, another mesh's hull vertices); no sliding slot for capsules
                for p, r in points_of(i):
                    add(KIND_MESH, i, p, r, sj.body, j, sj.position, sj.rotation, sj.size)
                return
            if shapes[i].kind == SHAPE_BOX and sj.kind == SHAPE_BOX:
                # one slot per candidate of the pair's clipped manifold (see BOX_BOX_CANDIDATES)
                for m in range(BOX_BOX_CANDIDATES):
                    add(KIND_BOX_BOX, i, np.zeros(3), 0.0, sj.body, j, sj.position, sj.rotation, sj.size, m)
                return
            for p, r in points_of(i):
                add(_TARGET_KIND[sj.kind], i, p, r, sj.body, j, sj.position, sj.rotation, sj.size)
            if sliding and shapes[i].kind == SHAPE_CAPSULE and sj.kind in (SHAPE_CAPSULE, SHAPE_BOX):
                add(_TARGET_KIND[sj.kind], i, np.zeros(3), shapes[i].size[0], sj.body, j, sj.position, sj.rotation,
                    sj.size, 1)

        # each world's slots are one contiguous range (its ground slots, then its pairs), worlds in
        # order: the solver runs one Gauss-Seidel thread per world over its range (``world_start``)
        worlds: dict[int, list[int]] = {}
        for i, world in enumerate(self.shape_world):
            worlds.setdefault(world, []).append(i)
        world_start = np.zeros(self.world_count + 1, np.int32)
        for w in range(self.world_count):
            world_start[w] = len(rows)
            group = worlds.get(w, [])
            if self.ground:
                for i in group:
                    if shapes[i].body >= 0:
                        for p, r in points_of(i):
                            add(KIND_GROUND, i, p, r, -1, -1, np.array([0.0, 0.0, self.ground_height]), np.array(IDENTITY),
                                (0.0, 0.0, 0.0))
            for position, i in enumerate(group):
                for j in group[position + 1:]:
                    si, sj = shapes[i], shapes[j]
                    if si.body == sj.body or (si.body < 0 and sj.body < 0):
                        continue
                    if si.body >= 0 and sj.body >= 0 and not self.body_collisions:
                        continue
                    kinds = {si.kind, sj.kind}
                    if kinds == {SHAPE_SPHERE}:
                        against(i, j)
                    elif SHAPE_SPHERE in kinds and kinds != {SHAPE_SPHERE, SHAPE_MESH}:
                        # the sphere's centre against the other solid (box / capsule)
                        s_idx, o_idx = (i, j) if si.kind == SHAPE_SPHERE else (j, i)
                        if shapes[s_idx].body >= 0:
                            against(s_idx, o_idx)
                    elif kinds == {SHAPE_BOX}:
                        # a box pair is one manifold: the dynamic box is side a
                        against(i, j) if si.body >= 0 else against(j, i)
                    else:
                        if si.body >= 0:
                            against(i, j)
                        if sj.body >= 0:  # two capsules: one sliding slot for the pair is enough
                            against(j, i, sliding=not (kinds == {SHAPE_CAPSULE} and si.body >= 0))
                        # a static mesh's own vertices against a dynamic box / mesh / capsule (its sharp
                        # tips; a sphere resting on a tip is held by the mesh's planes, see docs/rigid.md)
                        fixed, moving = (i, j) if si.body < 0 else (j, i)
                        if shapes[fixed].body < 0 and shapes[fixed].kind == SHAPE_MESH and shapes[moving].kind in (
                                SHAPE_BOX, SHAPE_MESH, SHAPE_CAPSULE):
                            static_vertices(fixed, moving)
                        if edge_block is not None and SHAPE_MESH in kinds and kinds <= {SHAPE_MESH, SHAPE_BOX}:
                            # the pair's edge-edge contact (a: a dynamic shape); the point slots
                            # above cover vertex-face contacts. b_hull = (-1 - a's block row, b's
                            # block row) tells select_hull_planes it is an edge slot; a_size holds
                            # the two rows as reals for collide
                            a_i, b_i = (i, j) if si.body >= 0 else (j, i)
                            (ha, edges_a), (hb, edges_b) = edge_block(a_i), edge_block(b_i)
                            if 0 < edges_a * edges_b <= EDGE_PAIR_LIMIT:
                                sb = shapes[b_i]
                                add(KIND_EDGE, a_i, np.zeros(3), 0.0, sb.body, b_i, sb.position, sb.rotation, sb.size)
                                rows[-1].update(a_size=(float(ha), float(hb), 0.0), b_hull=(-1 - ha, hb))

        count = len(rows)
        world_start[self.world_count] = count
        contact = dict(count=count)

        def stack(key, width=None, dtype=float):
            if width is None:
                return np.array([row[key] for row in rows], dtype=dtype).reshape(count)
            return np.array([row[key] for row in rows], dtype=dtype).reshape(count, width)

        for key, width, dtype in [("body", 2, np.int32), ("kind", None, np.int32), ("order", None, np.int32),
                                  ("point", 3, float), ("radius", None, float), ("a_position", 3, float),
                                  ("a_rotation", 4, float), ("a_size", 3, float), ("b_position", 3, float),
                                  ("b_rotation", 4, float), ("b_size", 3, float), ("shape", 2, np.int32),
                                  ("b_hull", 2, np.int32)]:
            contact[key] = stack(key, width, dtype)
        # Gauss-Seidel chain: where each slot finds the latest velocity of each of its bodies
        prev = -np.ones((count, 2), np.int32)
        prev_side = np.zeros((count, 2), np.int32)
        last = -np.ones(len(self.bodies), np.int32)
        last_side = np.zeros(len(self.bodies), np.int32)
        for c in range(count):
            for side in range(2):
                body = contact["body"][c, side]
                if body >= 0:
                    prev[c, side], prev_side[c, side] = last[body], last_side[body]
                    last[body], last_side[body] = c, side
        contact.update(prev=prev, prev_side=prev_side, body_last=last, body_last_side=last_side, world_start=world_start)
        return contact

    def finalize(self, device: str = "cpu", dtype: torch.dtype = torch.float32, *, iterations: int = 12,
                 position_iterations: int = 4, restitution_threshold: float = 0.05) -> RigidModel:
        """Build the RigidModel (tensors on ``device`` in ``dtype``)."""
        if not self.bodies:
            raise SceneError("a rigid scene needs at least one body", field="bodies")
        props = self._body_mass_properties()
        # re-express shapes relative to each body's centre of mass
        shapes = []
        for s in self.shapes:
            s2 = ShapeSpec(**{k: getattr(s, k) for k in s.__dataclass_fields__})
            if s.body >= 0:
                s2.position = s.position - props[s.body][1]
            shapes.append(s2)
        positions, orientations = [], []
        for body, (_, com, _, _) in zip(self.bodies, props):
            positions.append(body["position"] + _quat_matrix(body["orientation"]) @ com)
            orientations.append(body["orientation"])
        # hull planes of every mesh, concatenated (CSR: each mesh's (start, count)); one zero row
        # when there are none, so the array is never empty
        hull_range, hull_rows = {}, []
        for index, s in enumerate(shapes):
            if s.kind == SHAPE_MESH:
                planes = _distinct_planes(s.mesh_planes)
                if s.body < 0 and self.ground:
                    planes = self._drop_grounded_faces(planes, s)
                hull_range[index] = (sum(len(r) for r in hull_rows), len(planes))
                hull_rows.append(planes)
        # edge blocks (``_edge_block``) of the shapes in edge-edge slots, after all plane rows
        edge_rows, edge_start = [], {}
        plane_count = sum(len(r) for r in hull_rows)

        def edge_block(index: int) -> tuple[int, int]:
            if index not in edge_start:
                block = _edge_block(shapes[index])
                edge_start[index] = (plane_count + sum(len(r) for r in edge_rows), int(block[0, 2]))
                edge_rows.append(block)
            return edge_start[index]

        contact = self._contact_slots(shapes, hull_range, edge_block)
        hull_rows = hull_rows + edge_rows
        hull_planes = np.concatenate(hull_rows) if hull_rows else np.zeros((1, 4))

        def real(x):
            return torch.as_tensor(np.asarray(x, dtype=float), dtype=dtype, device=device)

        def integer(x):
            return torch.as_tensor(np.asarray(x), dtype=torch.int32, device=device)

        contact_t = {k: (integer(v) if np.asarray(v).dtype.kind == "i" else real(v)) for k, v in contact.items() if k != "count"}
        springs = self.springs
        spring = dict(body=torch.as_tensor([s["body"] for s in springs], dtype=torch.int64, device=device).reshape(-1, 2))
        anchors_a, anchors_b, rest = [], [], []
        for s in springs:
            a, b = s["body"]
            pa_local = s["anchor_a"] - props[a][1]
            pa_world = positions[a] + _quat_matrix(orientations[a]) @ pa_local
            if b >= 0:
                pb_local = s["anchor_b"] - props[b][1]
                pb_world = positions[b] + _quat_matrix(orientations[b]) @ pb_local
            else:
                pb_local = pb_world = s["anchor_b"]
            anchors_a.append(pa_local)
            anchors_b.append(pb_local)
            rest.append(np.linalg.norm(pa_world - pb_world) if s["rest_length"] is None else s["rest_length"])
        spring.update(anchor_a=real(np.reshape(anchors_a, (-1, 3))), anchor_b=real(np.reshape(anchors_b, (-1, 3))),
                      stiffness=real([s["stiffness"] for s in springs]), damping=real([s["damping"] for s in springs]),
                      rest_length=real(rest))
        joint = dict(body=torch.as_tensor([j["body"] for j in self.joints], dtype=torch.int64, device=device).reshape(-1, 2),
                     kind=torch.as_tensor([0 if j["kind"] == "ball" else 1 for j in self.joints], dtype=torch.int64,
                                          device=device))
        locals_ = {"anchor_a": [], "anchor_b": [], "axis_a": [], "axis_b": []}
        for j in self.joints:  # world anchor and axis -> each body's centre-of-mass frame
            for side, b in zip("ab", j["body"]):
                if b < 0:
                    locals_[f"anchor_{side}"].append(j["anchor"])
                    locals_[f"axis_{side}"].append(j["axis"])
                else:
                    rot = _quat_matrix(orientations[b])
                    locals_[f"anchor_{side}"].append(rot.T @ (j["anchor"] - positions[b]))
                    locals_[f"axis_{side}"].append(rot.T @ j["axis"])
        joint.update({k: real(np.reshape(v, (-1, 3))) for k, v in locals_.items()})
        return RigidModel(
            joint_count=len(self.joints), joint=joint,
            body_count=len(self.bodies), shape_count=len(shapes), contact_count=contact["count"], spring_count=len(springs),
            body_mass=real([p[0] for p in props]), body_inertia=real(np.reshape([p[2] for p in props], (-1, 3))),
            body_inertia_rotation=real(np.reshape([p[3] for p in props], (-1, 4))),
            body_position=real(np.reshape(positions, (-1, 3))), body_orientation=real(np.reshape(orientations, (-1, 4))),
            body_velocity=real(np.reshape([b["velocity"] for b in self.bodies], (-1, 3))),
            body_angular_velocity=real(np.reshape([b["angular_velocity"] for b in self.bodies], (-1, 3))),
            shape_body=integer([s.body for s in shapes]), shape_friction=real([s.friction for s in shapes]),
            shape_restitution=real([s.restitution for s in shapes]),
            ground_friction=real(self.ground_friction), ground_restitution=real(self.ground_restitution),
            gravity=real(self.gravity), contact=contact_t, spring=spring, shapes=shapes, hull_planes=real(hull_planes),
            has_mesh_targets=bool(np.isin(contact["kind"], (KIND_MESH, KIND_EDGE, KIND_STATIC_VERTEX_MESH)).any()) if contact["count"] else False,
            has_ground=self.ground, ground_height=self.ground_height, restitution_threshold=float(restitution_threshold),
            iterations=int(iterations), position_iterations=int(position_iterations), device=device, dtype=dtype,
            world_count=self.world_count, body_world=torch.as_tensor(self.body_world, dtype=torch.int32, device=device))
