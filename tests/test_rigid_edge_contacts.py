"""Edge-edge contacts between convex hulls (mesh-mesh, mesh-box; box pairs have their own in the
box-box manifold): one slot per pair picks, by the separating axis over face normals and the
edge pairs that make a face of the Minkowski difference, the closest points of the two edges
when an edge axis separates best. Cubes and a roof prism crossed edge to edge at 90 degrees stay
apart (without the slot they sink into each other), Warp and Taichi make the same contacts, and
gradients through an edge contact match finite differences."""

import math

import numpy as np
import pytest
import torch
import trimesh

from hybridsim.solvers.rigid import RigidBuilder, SolverRigid
from hybridsim.solvers.rigid.builder import KIND_EDGE, _edge_block, _quat_matrix
from hybridsim.solvers.rigid.shapes import ShapeSpec
from hybridsim.solvers.rigid.solver import _INPUTS, _buffers, _full_plan, _phases

F64 = torch.float64
DT = 1.0 / 240.0
H = 0.1                                            # cube half size
ABOUT_X = (math.sin(math.pi / 8), 0.0, 0.0, math.cos(math.pi / 8))   # 45 degrees: bottom edge along x
ABOUT_Y = (0.0, math.sin(math.pi / 8), 0.0, math.cos(math.pi / 8))   # 45 degrees: top edge along y
TOP = 0.5 + H * math.sqrt(2.0)                     # the lower cube's top edge (centre at z = 0.5)


def _cube():
    return trimesh.creation.box(extents=(2 * H, 2 * H, 2 * H))


def _roof():
    """A triangular prism lying on its 0.5 x 0.4 base, its ridge (z = 0.1) along y."""
    vertices = [[-0.25, -0.2, 0.0], [0.25, -0.2, 0.0], [0.0, -0.2, 0.1],
                [-0.25, 0.2, 0.0], [0.25, 0.2, 0.0], [0.0, 0.2, 0.1]]
    return trimesh.convex.convex_hull(np.asarray(vertices))


class _NoEdges(RigidBuilder):
    """The builder without edge-edge slots (what the solver had before them)."""

    def _contact_slots(self, shapes, hull_range, edge_block=None):
        return super()._contact_slots(shapes, hull_range, None)


def _crossed(case: str, dtype=F64, builder_type=RigidBuilder, drop=0.02, velocity=(0.0, 0.0, 0.0)):
    """Upper cube (45 degrees about x: its bottom edge along x) over a lower solid whose top edge
    runs along y: ``mesh_on_box`` a mesh cube on a static box, ``box_on_mesh`` a box on a static
    mesh cube, ``mesh_on_mesh`` a mesh cube on a dynamic roof prism (a mesh) lying on the ground."""
    builder = builder_type(ground_friction=0.6)
    top = TOP
    if case == "mesh_on_box":
        builder.add_static_box((H, H, H), position=(0.0, 0.0, 0.5), rotation=ABOUT_Y)
    elif case == "box_on_mesh":
        builder.add_static_mesh(_cube(), position=(0.0, 0.0, 0.5), rotation=ABOUT_Y)
    else:
        roof = builder.add_body(position=(0.0, 0.0, 0.0))
        builder.add_shape_mesh(roof, _roof(), density=2000.0, friction=0.6)
        top = 0.1
    body = builder.add_body(position=(0.002, 0.003, top + H * math.sqrt(2.0) + drop), orientation=ABOUT_X,
                            velocity=velocity)
    if case == "box_on_mesh":
        builder.add_shape_box(body, (H, H, H), density=500.0, friction=0.6)
    else:
        builder.add_shape_mesh(body, _cube(), density=500.0, friction=0.6)
    return builder.finalize(dtype=dtype)


def _world_points(model, state, shape_index):
    shape = model.shapes[shape_index]
    points = np.asarray(shape.contact_points()[0], float) @ _quat_matrix(shape.rotation).T + shape.position
    if shape.body < 0:
        return points
    x = state.body_position[shape.body].detach().double().numpy()
    q = state.body_orientation[shape.body].detach().double().numpy()
    return points @ _quat_matrix(q).T + x


def _sat_depth(points_a, points_b) -> float:
    """Overlap of two convex hulls (vertex sets) by the separating axis test over their face
    normals and edge crossings [m] (< 0: apart), independent of the kernels."""
    hulls = [trimesh.convex.convex_hull(p) for p in (points_a, points_b)]
    edges = []
    for hull in hulls:
        ends = hull.vertices[hull.edges_unique]
        d = ends[:, 1] - ends[:, 0]
        edges.append(d / np.linalg.norm(d, axis=1, keepdims=True))
    crosses = np.cross(edges[0][:, None], edges[1][None]).reshape(-1, 3)
    norms = np.linalg.norm(crosses, axis=1)
    axes = np.concatenate([hulls[0].face_normals, hulls[1].face_normals, crosses[norms > 1e-6] / norms[norms > 1e-6, None]])
    pa, pb = points_a @ axes.T, points_b @ axes.T
    overlap = np.minimum(pa.max(0) - pb.min(0), pb.max(0) - pa.min(0))
    return float(overlap.min())


def _run(model, steps, backend="warp"):
    solver = SolverRigid(model, backend=backend)
    state, states = model.state(), []
    for _ in range(steps):
        out = state.empty_like()
        solver.step(state, out, None, DT)
        state = out
        states.append(state)
    return states


def test_convex_pairs_with_a_mesh_get_one_edge_slot_and_hull_blocks():
    builder = RigidBuilder()
    mesh = builder.add_body(position=(0.0, 0.0, 0.5))
    builder.add_shape_mesh(mesh, trimesh.creation.icosahedron())
    box = builder.add_body(position=(3.0, 0.0, 0.5))
    builder.add_shape_box(box, (0.1, 0.1, 0.1))
    other = builder.add_body(position=(0.0, 3.0, 0.5))
    builder.add_shape_box(other, (0.1, 0.1, 0.1))
    ball = builder.add_body(position=(3.0, 3.0, 0.5))
    builder.add_shape_sphere(ball, 0.1)
    builder.add_static_mesh(_cube(), position=(0.0, 0.0, -1.0))
    model = builder.finalize()
    kind, pair = model.contact["kind"], model.contact["shape"]
    edge_pairs = sorted(tuple(p) for p in pair[kind == KIND_EDGE].tolist())
    # mesh-box (x2), mesh-static mesh, box-static mesh (x2); no box-box, no sphere, no static pair
    assert edge_pairs == [(0, 1), (0, 2), (0, 4), (1, 4), (2, 4)]
    assert model.has_mesh_targets
    hull = model.contact["b_hull"][kind == KIND_EDGE]
    size = model.contact["a_size"][kind == KIND_EDGE]
    assert bool((hull[:, 0] < 0).all()) and torch.equal(-1 - hull[:, 0], size[:, 0].round().int())
    assert torch.equal(hull[:, 1], size[:, 1].round().int())
    # blocks: header (faces, vertices, edges, radius), centroid, planes, vertices, 4 rows per edge;
    # coplanar triangles merged (a cube has 6 faces, 12 edges: no diagonals)
    shape = ShapeSpec(body=0, kind="box", size=(0.1, 0.2, 0.3), position=np.zeros(3), rotation=np.array([0, 0, 0, 1.0]),
                      density=1.0, friction=0.5, restitution=0.0)
    block = _edge_block(shape)
    assert tuple(int(c) for c in block[0, :3]) == (6, 8, 12) and block.shape == (2 + 6 + 8 + 4 * 12, 4)
    # every edge's end points lie on both of its faces' planes
    planes, vertices, edges = block[2:8], block[8:16, :3], block[16:].reshape(12, 4, 4)
    for p0, p1, n0, n1 in edges:
        for n in (n0[:3], n1[:3]):
            offset = planes[np.argmin(np.linalg.norm(planes[:, :3] - n, axis=1)), 3]
            assert abs(p0[:3] @ n - offset) < 1e-9 and abs(p1[:3] @ n - offset) < 1e-9
    assert np.allclose(np.sort(np.abs(vertices), axis=0), [[0.1, 0.2, 0.3]] * 8)
    # the icosahedron's block (side a of its slots): 20 faces, 12 vertices, 30 edges
    start = int(-1 - model.contact["b_hull"][(kind == KIND_EDGE) & (pair[:, 0] == 0)][0, 0])
    assert [round(float(c)) for c in model.hull_planes[start, :3]] == [20, 12, 30]


@pytest.mark.parametrize("case", ["mesh_on_box", "box_on_mesh", "mesh_on_mesh"])
def test_cubes_crossed_edge_to_edge_do_not_sink_into_each_other(case):
    model = _crossed(case)
    upper, lower = model.shape_count - 1, 0
    states = _run(model, 100)
    depths = [_sat_depth(_world_points(model, s, upper), _world_points(model, s, lower)) for s in states]
    assert max(depths) < 2e-3, max(depths)
    # it lands on the crossing and rests there (it balances on a point and tips off, slowly at first)
    z = float(states[59].body_position[-1, 2])
    rest = (TOP if case != "mesh_on_mesh" else 0.1) + H * math.sqrt(2.0)
    assert abs(z - rest) < 5e-3, (z, rest)
    if case == "mesh_on_box":  # without the edge-edge slot the cube sinks into the box
        plain = _crossed(case, builder_type=_NoEdges)
        assert not (plain.contact["kind"] == KIND_EDGE).any()
        final = _run(plain, 100)[-1]
        assert _sat_depth(_world_points(plain, final, upper), _world_points(plain, final, lower)) > 0.05


def _contacts(model, state, backend):
    solver = SolverRigid(model, backend=backend)
    inputs = [t.detach() for t in solver._inputs(state, None, DT)]
    buf = _buffers(model, _full_plan(model), dict(zip(_INPUTS, inputs)))
    solver._launcher.forward(model, _phases(model, DT, model.contact_count), buf)
    return buf


def test_warp_and_taichi_make_the_same_edge_contacts():
    model = _crossed("mesh_on_mesh")
    state = _run(model, 20)[-1]  # resting on the crossing
    buffers = {b: _contacts(model, state, b) for b in ("warp", "taichi")}
    edge = torch.nonzero(model.contact["kind"] == KIND_EDGE).squeeze(1)
    assert bool((buffers["warp"]["contact_plane"][edge] >= 0).all()), "the edge pair is found"
    assert bool((buffers["warp"]["contact_active"][edge] > 0).all())
    assert torch.equal(buffers["warp"]["contact_plane"], buffers["taichi"]["contact_plane"])
    for key in ("contact_normal", "contact_arm_a", "contact_arm_b", "contact_gap", "contact_active", "contact_mass"):
        assert torch.allclose(buffers["warp"][key], buffers["taichi"][key], rtol=1e-12, atol=1e-12), key
    finals = [_run(model, 40, backend=b)[-1] for b in ("warp", "taichi")]
    for a, b in zip(finals[0].tensors(), finals[1].tensors()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), (a - b).abs().max()


def _edge_loss(velocity, backend="warp", steps=10):
    model = _crossed("mesh_on_box", drop=0.001)
    solver = SolverRigid(model, backend=backend)
    state = model.state()
    state.body_velocity = velocity
    for _ in range(steps):
        state = solver.step_differentiable(state, None, DT)
    return state.body_position[0, 2] + 0.3 * state.body_position[0, 0] + 0.2 * state.body_orientation[0, 0]


@pytest.mark.parametrize("backend", ["warp", "taichi"])
def test_gradient_through_an_edge_contact_matches_finite_differences(backend):
    velocity = torch.tensor([[0.05, -0.04, -0.3]], dtype=F64, requires_grad=True)
    _edge_loss(velocity, backend).backward()
    h = 1e-6
    with torch.no_grad():
        for j in range(3):
            plus, minus = velocity.detach().clone(), velocity.detach().clone()
            plus[0, j] += h
            minus[0, j] -= h
            fd = (_edge_loss(plus, backend) - _edge_loss(minus, backend)).item() / (2 * h)
            ad = velocity.grad[0, j].item()
            assert abs(ad - fd) <= 1e-5 * max(1.0, abs(fd)), (j, ad, fd)
    # the edge contact stops the fall: dz/dvz is far from the free-flight value (10 steps)
    assert abs(velocity.grad[0, 2].item() - 10 * DT) > 1e-3
