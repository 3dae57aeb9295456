"""Contacts against convex meshes from every side: primitive points (sphere centres, box corners,
capsule ends) and other meshes' hull vertices against a mesh's hull planes, on both backends,
with gradients through them."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
import trimesh

from hybridsim.errors import SceneError
from hybridsim.solvers.rigid import RigidBuilder, SolverRigid, quat_multiply, quat_rotate
from hybridsim.solvers.rigid.broad_phase import ShapeBounds, candidate_slots
from hybridsim.solvers.rigid.builder import KIND_MESH
from hybridsim.solvers.rigid.shapes import load_convex_mesh
from hybridsim.solvers.rigid.solver import _INPUTS, _buffers, _full_plan, _phases

F64 = torch.float64
DT = 1.0 / 240.0
G = 9.81


def _prism(radius=0.3, height=0.2, sections=8):
    """An upright octagonal prism (flat top and bottom faces), centred at its centre of mass."""
    return trimesh.creation.cylinder(radius=radius, height=height, sections=sections)


def _rock(radius=0.12):
    """An icosahedron of circumradius ``radius`` (the shape of scenes/meshes/rock.obj)."""
    mesh = trimesh.creation.icosahedron()
    mesh.apply_scale(radius)
    return mesh


def _rollout(model, steps, backend="warp", state=None, dt=DT, **options):
    solver = SolverRigid(model, backend=backend, **options)
    state = model.state() if state is None else state
    states = [state]
    for _ in range(steps):
        out = state.empty_like()
        solver.step(state, out, None, dt)
        state = out
        states.append(state)
    return states


def _hull_gap(model, state, shape_a, shape_b):
    """Least signed distance [m] (hull-plane measure) of shape_a's contact points (minus their
    radii) to the convex mesh shape_b, in torch, independent of the kernels."""
    sa, sb = model.shapes[shape_a], model.shapes[shape_b]
    points, radii = sa.contact_points()
    points, radii = torch.as_tensor(points, dtype=F64), torch.as_tensor(radii, dtype=F64)

    def world(shape, local):
        """Shape centre (3,) and orientation (P, 4) in the world."""
        q_body = state.body_orientation[shape.body].to(F64)
        q_shape = torch.as_tensor(shape.rotation, dtype=F64)
        q = quat_multiply(q_body, q_shape).expand(len(local), 4)
        centre = state.body_position[shape.body].to(F64) + quat_rotate(q_body, torch.as_tensor(shape.position, dtype=F64))
        return centre, q

    centre_a, q_a = world(sa, points)
    p = centre_a + quat_rotate(q_a, points)
    centre_b, q_b = world(sb, points)
    conj = q_b * torch.tensor([-1.0, -1.0, -1.0, 1.0], dtype=F64)
    local = quat_rotate(conj, p - centre_b)
    planes = torch.as_tensor(sb.mesh_planes, dtype=F64)
    return ((local @ planes[:, :3].T - planes[:, 3]).amax(1) - radii).min().item()


def _energy(model, state):
    """Kinetic + gravitational potential energy [J] of all bodies."""
    mass = model.body_mass.detach().to(F64)
    q = state.body_orientation.to(F64)
    qp = quat_multiply(q, model.body_inertia_rotation.to(F64))
    w_local = quat_rotate(qp * torch.tensor([-1.0, -1.0, -1.0, 1.0], dtype=F64), state.body_angular_velocity.to(F64))
    kinetic = 0.5 * (mass * state.body_velocity.to(F64).square().sum(1)).sum()
    kinetic = kinetic + 0.5 * (model.body_inertia.to(F64) * w_local.square()).sum()
    return (kinetic + (mass * G * state.body_position[:, 2].to(F64)).sum()).item()


def _box_on_prism(dtype=F64, velocity=(0.0, 0.0, -1.0), restitution=0.3, height=0.5):
    builder = RigidBuilder(ground_friction=0.6, ground_restitution=0.0)
    rock = builder.add_body(position=(0.0, 0.0, 0.1))
    builder.add_shape_mesh(rock, _prism(), density=2000.0, friction=0.6)
    box = builder.add_body(position=(0.03, -0.02, height), orientation=(0.0, 0.0, 0.2, 1.0), velocity=velocity)
    builder.add_shape_box(box, (0.1, 0.08, 0.05), density=500.0, friction=0.6, restitution=restitution)
    return builder.finalize(dtype=dtype)


# -- slots -----------------------------------------------------------------------------------
def test_slots_cover_primitives_and_both_meshes_of_a_pair():
    builder = RigidBuilder()
    a = builder.add_body(position=(0.0, 0.0, 0.1))
    builder.add_shape_mesh(a, _prism())
    b = builder.add_body(position=(0.0, 0.0, 0.5))
    builder.add_shape_mesh(b, _rock())
    c = builder.add_body(position=(1.0, 0.0, 0.5))
    builder.add_shape_box(c, (0.1, 0.1, 0.1))
    d = builder.add_body(position=(-1.0, 0.0, 0.5))
    builder.add_shape_sphere(d, 0.1)
    e = builder.add_body(position=(-1.0, 1.0, 0.5))
    builder.add_shape_capsule(e, 0.05, 0.1)
    model = builder.finalize()
    kind = model.contact["kind"]
    pair = model.contact["shape"]
    mesh_slots = kind == KIND_MESH
    prism_vertices, rock_vertices = 16, 12
    count = Counter(tuple(row) for row in pair[mesh_slots].tolist())
    # each mesh's hull vertices against the other mesh, box corners, sphere centre, capsule ends
    assert count[(1, 0)] == rock_vertices and count[(0, 1)] == prism_vertices
    for target in (0, 1):
        assert count[(2, target)] == 8 and count[(3, target)] == 1 and count[(4, target)] == 2
    # the octagonal prism's 32 triangles lie in 10 planes; the icosahedron's 20 in 20
    hull = model.contact["b_hull"]
    on = lambda target: mesh_slots & (pair[:, 1] == target)  # noqa: E731
    assert set(hull[on(0)][:, 1].tolist()) == {10} and set(hull[on(1)][:, 1].tolist()) == {20}
    # the planes come first; the edge blocks of the convex pairs' edge-edge slots follow them
    assert set(hull[mesh_slots][:, 0].tolist()) <= {0, 10} and model.has_mesh_targets
    # a slot's hull range holds exactly its target's planes
    start, width = hull[on(1)][0].tolist()
    planes = model.hull_planes[start:start + width].double()
    vertices = torch.as_tensor(model.shapes[1].mesh_vertices)
    heights = vertices @ planes[:, :3].T - planes[:, 3]
    assert heights.max().item() < 1e-6 and (heights.abs() < 1e-6).sum(0).min().item() >= 3


def test_scenes_without_meshes_have_no_mesh_phase():
    builder = RigidBuilder()
    builder.add_shape_sphere(builder.add_body(position=(0.0, 0.0, 1.0)), 0.1)
    model = builder.finalize()
    assert not model.has_mesh_targets and model.hull_planes.shape == (1, 4)
    assert "select_hull_planes" not in [p[0] for p in _phases(model, DT, model.contact_count)]


# -- behaviour -------------------------------------------------------------------------------
def test_box_dropped_on_resting_mesh_comes_to_rest_on_top():
    model = _box_on_prism()
    states = _rollout(model, 360)
    e0 = _energy(model, states[0])
    energy = [_energy(model, s) for s in states]
    overlap = min(_hull_gap(model, s, 1, 0) for s in states)
    final = states[-1]
    # the prism's top face is at z = 0.2; the box's half height is 0.05
    assert abs(final.body_position[1, 2].item() - 0.25) < 1e-3
    assert abs(final.body_position[0, 2].item() - 0.1) < 1e-3
    assert final.body_velocity.abs().max().item() < 1e-6 and final.body_angular_velocity.abs().max().item() < 1e-5
    assert overlap > -1e-3, overlap
    assert max(energy) <= e0 + 1e-9 * abs(e0), (max(energy), e0)
    # it did land with an impact (the contact did work)
    assert energy[-1] < e0 - 0.1


def test_sphere_rolling_into_a_mesh_bounces_off():
    builder = RigidBuilder(ground_friction=0.5, ground_restitution=0.0)
    rock = builder.add_body(position=(0.0, 0.0, 0.1))
    builder.add_shape_mesh(rock, _prism(radius=0.3, height=0.2), density=8000.0, restitution=0.8)
    ball = builder.add_body(position=(-0.8, 0.0, 0.08), velocity=(2.0, 0.0, 0.0), angular_velocity=(0.0, 25.0, 0.0))
    builder.add_shape_sphere(ball, 0.08, density=500.0, restitution=0.8)
    model = builder.finalize(dtype=F64)
    states = _rollout(model, 240)
    velocity = torch.stack([s.body_velocity[1, 0] for s in states])
    assert velocity[:40].min().item() > 1.9            # rolling in
    assert velocity[-1].item() < -0.5                  # bounced back (e = 0.8 against the heavy prism)
    overlap = min(_hull_gap(model, s, 1, 0) for s in states)
    assert overlap > -1e-3, overlap
    energy = [_energy(model, s) for s in states]
    assert max(energy) <= energy[0] + 1e-9 * abs(energy[0])


def test_two_meshes_stacked_rest():
    builder = RigidBuilder(ground_friction=0.6)
    low = builder.add_body(position=(0.0, 0.0, 0.1))
    builder.add_shape_mesh(low, _prism(), density=2000.0, friction=0.6)
    high = builder.add_body(position=(0.04, 0.02, 0.35), orientation=(0.0, 0.0, 0.3, 1.0))
    builder.add_shape_mesh(high, _prism(radius=0.2, height=0.1), density=2000.0, friction=0.6)
    model = builder.finalize(dtype=F64)
    states = _rollout(model, 360)
    final = states[-1]
    assert abs(final.body_position[1, 2].item() - 0.25) < 1e-3     # 0.2 (top of the low one) + 0.05
    assert final.body_velocity.abs().max().item() < 1e-6
    overlap = min(min(_hull_gap(model, s, 1, 0), _hull_gap(model, s, 0, 1)) for s in states)
    assert overlap > -1e-3, overlap
    energy = [_energy(model, s) for s in states]
    assert max(energy) <= energy[0] + 1e-9 * abs(energy[0])


def test_mesh_mesh_collision_conserves_linear_momentum():
    builder = RigidBuilder(gravity=(0.0, 0.0, 0.0), ground=False)
    a = builder.add_body(position=(-0.4, 0.03, 1.0), orientation=(0.1, 0.3, 0.0, 1.0), velocity=(1.5, 0.0, 0.1),
                         angular_velocity=(0.0, 2.0, 1.0))
    builder.add_shape_mesh(a, _rock(), density=1000.0, restitution=0.5, friction=0.4)
    b = builder.add_body(position=(0.4, -0.02, 1.0), velocity=(-1.0, 0.0, 0.0))
    builder.add_shape_mesh(b, _rock(0.15), density=1500.0, restitution=0.5, friction=0.4)
    model = builder.finalize(dtype=F64)
    states = _rollout(model, 240)
    mass = model.body_mass.detach()
    momentum = [(mass[:, None] * s.body_velocity).sum(0) for s in states]
    assert (states[-1].body_velocity[0, 0] - states[0].body_velocity[0, 0]).abs().item() > 0.5   # they collided
    for p in momentum:
        assert torch.allclose(p, momentum[0], rtol=0.0, atol=1e-12 * momentum[0].norm().item())
    overlap = min(min(_hull_gap(model, s, 0, 1), _hull_gap(model, s, 1, 0)) for s in states)
    assert overlap > -1e-3, overlap


# -- backends, broad phase, gradients ----------------------------------------------------------
def _mesh_pile(dtype):
    """A prism with a box, a rock, a ball and a capsule falling onto it and each other."""
    builder = RigidBuilder(ground_friction=0.5, ground_restitution=0.2)
    base = builder.add_body(position=(0.0, 0.0, 0.1))
    builder.add_shape_mesh(base, _prism(), density=2000.0)
    box = builder.add_body(position=(0.05, 0.0, 0.32), orientation=(0.1, 0.0, 0.2, 1.0), velocity=(0.0, 0.0, -0.5))
    builder.add_shape_box(box, (0.08, 0.06, 0.05), restitution=0.3)
    rock = builder.add_body(position=(-0.12, 0.1, 0.45), orientation=(0.2, 0.1, 0.0, 1.0), angular_velocity=(1.0, 0.0, 2.0))
    builder.add_shape_mesh(rock, _rock(0.08), restitution=0.3)
    ball = builder.add_body(position=(0.15, -0.12, 0.4), velocity=(-0.3, 0.2, 0.0))
    builder.add_shape_sphere(ball, 0.05, restitution=0.3)
    capsule = builder.add_body(position=(-0.05, -0.15, 0.55), orientation=(0.0, 0.6, 0.0, 1.0))
    builder.add_shape_capsule(capsule, 0.03, 0.08)
    return builder.finalize(dtype=dtype)


def test_warp_and_taichi_agree_on_mesh_contacts():
    model = _mesh_pile(torch.float32)
    state = _rollout(model, 80)[-1]      # a state with mesh contacts
    outs = {}
    for backend in ("warp", "taichi"):
        out = state.empty_like()
        SolverRigid(model, backend=backend).step(state, out, None, DT)
        outs[backend] = out
    for a, b in zip(outs["warp"].tensors(), outs["taichi"].tensors()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6 * max(1.0, a.abs().max().item()))
    model64 = _mesh_pile(F64)
    finals = [_rollout(model64, 120, backend=b)[-1] for b in ("warp", "taichi")]
    for a, b in zip(finals[0].tensors(), finals[1].tensors()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9), (a - b).abs().max()


def test_broad_phase_keeps_every_active_mesh_slot_and_changes_no_bits():
    model = _mesh_pile(torch.float32)
    assert model.contact_count >= 64    # the broad phase runs
    solver = SolverRigid(model)
    bounds = ShapeBounds(model)
    state, culled, mesh_active = model.state(), 0, 0
    for _ in range(150):
        inputs = [t.detach() for t in solver._inputs(state, None, DT)]
        kept = candidate_slots(model, bounds, inputs[0], inputs[2], inputs[3], inputs[5], inputs[6], DT)
        assert kept is not None
        buf = _buffers(model, _full_plan(model), dict(zip(_INPUTS, inputs)))
        solver._launcher.forward(model, _phases(model, DT, model.contact_count), buf)
        active = torch.nonzero(buf["contact_active"] > 0).squeeze(1)
        assert bool(torch.isin(active, kept).all()), "an active slot was culled"
        mesh_active += int((model.contact["kind"][active] == KIND_MESH).sum())
        culled += model.contact_count - kept.shape[0]
        out = state.empty_like()
        solver.step(state, out, None, DT)
        state = out
    assert culled > 0 and mesh_active > 0
    fast = _rollout(model, 150)[-1]
    full = _rollout(model, 150, broad_phase=False)[-1]
    assert all(torch.equal(a, b) for a, b in zip(fast.tensors(), full.tensors()))


def _box_on_prism_loss(params, backend="warp", steps=12):
    velocity, restitution = params
    model = _box_on_prism(height=0.32)
    model.shape_restitution = torch.cat([model.shape_restitution[:1], restitution])
    solver = SolverRigid(model, backend=backend)
    state = model.state()
    state.body_velocity = torch.cat([state.body_velocity[:1], velocity])
    for _ in range(steps):
        state = solver.step_differentiable(state, None, 1.0 / 120.0)
    return (state.body_position[1, 2] + 0.3 * state.body_position[1, 0] + 0.1 * state.body_velocity[1, 2]
            + 0.2 * state.body_orientation[1, 1])


def _gradient_errors(backend="warp"):
    params = [torch.tensor([[0.3, -0.2, -1.2]], dtype=F64), torch.tensor([0.6], dtype=F64)]
    params = [p.requires_grad_(True) for p in params]
    _box_on_prism_loss(params, backend).backward()
    h, rows = 1e-6, []
    with torch.no_grad():
        for index, param in enumerate(params):
            for j in range(param.numel()):
                plus = [p.detach().clone() for p in params]
                minus = [p.detach().clone() for p in params]
                plus[index].view(-1)[j] += h
                minus[index].view(-1)[j] -= h
                fd = (_box_on_prism_loss(plus, backend) - _box_on_prism_loss(minus, backend)).item() / (2 * h)
                rows.append((param.grad.view(-1)[j].item(), fd))
    return rows


def test_gradient_through_box_on_mesh_contact_matches_finite_differences():
    rows = _gradient_errors()
    for ad, fd in rows:
        assert abs(ad - fd) <= 1e-5 * max(1.0, abs(fd)), rows
    assert abs(rows[-1][0]) > 1e-3, rows    # restitution acts through the box-on-mesh impact


@pytest.mark.slow
def test_taichi_gradients_through_mesh_contact_match_warp():
    # slow: Taichi compiles the reverse of collide once (minutes on 2 cores)
    warp = _gradient_errors("warp")
    taichi = _gradient_errors("taichi")
    for (a, _), (b, _) in zip(warp, taichi):
        assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), (warp, taichi)


def test_hull_gap_is_exact_inside_and_a_lower_bound_outside():
    # the measure the kernels use, checked against trimesh's exact distance to the hull
    mesh = _prism()
    planes = load_convex_mesh(mesh)["planes"]
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, size=(400, 3))
    gap = (points @ planes[:, :3].T - planes[:, 3]).max(1)
    # exact unsigned distance to the surface: closest points on every triangle (no rtree needed)
    triangles = np.asarray(mesh.triangles)
    pairs_t = np.repeat(triangles[None], len(points), axis=0).reshape(-1, 3, 3)
    pairs_p = np.repeat(points, len(triangles), axis=0)
    closest = trimesh.triangles.closest_point(pairs_t, pairs_p)
    exact = np.linalg.norm(closest - pairs_p, axis=1).reshape(len(points), len(triangles)).min(1)
    exact = np.where(gap < 0, -exact, exact)
    inside = gap < 0
    assert np.allclose(gap[inside], exact[inside], atol=1e-9)
    assert (gap[~inside] <= exact[~inside] + 1e-9).all() and (gap[~inside] > 0).all()
    assert (exact[~inside] - gap[~inside]).max() > 1e-2     # near edges and corners it is only a bound


# -- static meshes ---------------------------------------------------------------------------
def _boxes_on_static_prism(dtype=F64):
    builder = RigidBuilder(ground_friction=0.6)
    builder.add_static_mesh(_prism(radius=0.4, height=0.2), position=(0.0, 0.0, 0.1), rotation=(0.0, 0.0, 0.2, 1.0),
                            friction=0.6)
    for k, (x, y) in enumerate([(0.15, 0.1), (-0.15, 0.1), (0.0, -0.15), (0.7, 0.0)]):
        box = builder.add_body(position=(x, y, 0.35 + 0.05 * k), orientation=(0.0, 0.0, 0.3 * k, 1.0),
                               velocity=(0.0, 0.0, -0.5))
        builder.add_shape_box(box, (0.07, 0.06, 0.05), friction=0.6, restitution=0.2)
    return builder.finalize(dtype=dtype)


def test_boxes_land_on_a_static_mesh_and_the_broad_phase_changes_no_bits():
    model = _boxes_on_static_prism()
    assert model.contact_count >= 64 and int((model.contact["kind"] == KIND_MESH).sum()) == 32
    states = _rollout(model, 300)
    final = states[-1]
    # three land on the prism's top face (z = 0.2), the fourth beside it on the ground
    assert torch.allclose(final.body_position[:3, 2], torch.full((3,), 0.25, dtype=F64), atol=1e-3)
    assert abs(final.body_position[3, 2].item() - 0.05) < 1e-3
    assert final.body_velocity.abs().max().item() < 1e-5
    overlap = min(_hull_gap_static(model, s, shape, 0) for s in states[::5] for shape in (1, 2, 3))
    assert overlap > -1e-3, overlap
    full = _rollout(model, 300, broad_phase=False)[-1]
    assert all(torch.equal(a, b) for a, b in zip(final.tensors(), full.tensors()))


def _hull_gap_static(model, state, shape_a, shape_b):
    """``_hull_gap`` for a static mesh shape_b (placed in the world frame)."""
    sa, sb = model.shapes[shape_a], model.shapes[shape_b]

    points = torch.as_tensor(sa.contact_points()[0], dtype=F64)
    q_a = quat_multiply(state.body_orientation[sa.body], torch.as_tensor(sa.rotation, dtype=F64)).expand(len(points), 4)
    centre = state.body_position[sa.body] + quat_rotate(state.body_orientation[sa.body], torch.as_tensor(sa.position, dtype=F64))
    p = centre + quat_rotate(q_a, points)
    conj = torch.as_tensor(sb.rotation, dtype=F64) * torch.tensor([-1.0, -1.0, -1.0, 1.0], dtype=F64)
    local = quat_rotate(conj.expand(len(points), 4), p - torch.as_tensor(sb.position, dtype=F64))
    planes = torch.as_tensor(sb.mesh_planes, dtype=F64)
    return (local @ planes[:, :3].T - planes[:, 3]).amax(1).min().item()


def test_static_mesh_input_errors():
    builder = RigidBuilder()
    with pytest.raises(SceneError, match="add_static_mesh"):
        builder.add_shape_mesh(-1, _prism())
    with pytest.raises(SceneError, match="scale"):
        builder.add_static_mesh(_prism(), scale=-1.0)


def test_rock_pile_settles_without_energy_gain_or_overlap():
    # eight icosahedra dropped onto each other: mesh-mesh impacts from all sides
    generator = np.random.default_rng(0)
    builder = RigidBuilder(ground_friction=0.6, ground_restitution=0.2)
    for k in range(8):
        body = builder.add_body(position=(0.1 * generator.normal(), 0.1 * generator.normal(), 0.15 + 0.2 * k),
                                orientation=tuple(generator.normal(size=4)))
        builder.add_shape_mesh(body, _rock(0.08 + 0.02 * generator.random()), density=2500.0, restitution=0.2,
                               friction=0.6)
    model = builder.finalize(dtype=F64)
    states = _rollout(model, 720)
    energy = [_energy(model, s) for s in states]
    assert max(energy) <= energy[0] + 1e-9 * abs(energy[0])
    overlap = min(_hull_gap(model, s, i, j) for s in states[::4] for i in range(8) for j in range(8) if i != j)
    assert overlap > -1e-3, overlap          # measured -4.1e-4 m, during impacts
    assert states[-1].body_velocity.abs().max().item() < 1e-6


def _box_on_static_apex(target="box", velocity=(0.0, 0.0, 0.0)):
    """A square pyramid (static mesh, apex up at z = 0.3) and a 0.4 x 0.4 x 0.1 box (or the same
    box as a convex mesh) dropped flat onto its apex from 0.1 m above it."""
    pyramid = trimesh.Trimesh(vertices=[[-0.3, -0.3, 0.0], [0.3, -0.3, 0.0], [0.3, 0.3, 0.0], [-0.3, 0.3, 0.0],
                                        [0.0, 0.0, 0.3]],
                              faces=[[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    builder = RigidBuilder()
    builder.add_static_mesh(pyramid)
    body = builder.add_body(position=(0.0, 0.0, 0.45), velocity=velocity, mass=1.0)
    if target == "box":
        builder.add_shape_box(body, (0.2, 0.2, 0.05), density=1000.0)
    else:
        builder.add_shape_mesh(body, trimesh.creation.box(extents=(0.4, 0.4, 0.1)), density=1000.0)
    return builder.finalize(dtype=F64)


def _apex_depth(state):
    """How far the pyramid's apex lies above the box's bottom face, inside the box's footprint."""
    from hybridsim.solvers.rigid.joints import quat_matrix

    local = quat_matrix(state.body_orientation[0]).T @ (torch.tensor([0.0, 0.0, 0.3], dtype=F64) - state.body_position[0])
    inside = abs(float(local[0])) < 0.2 and abs(float(local[1])) < 0.2
    return float(local[2]) + 0.05 if inside else 0.0


@pytest.mark.parametrize("target", ["box", "mesh"])
def test_box_dropped_on_a_static_apex_rests_on_it(target):
    """A static mesh's own hull vertices have slots against dynamic boxes (kind 7) and meshes
    (kind 8): the box lands on the pyramid's tip and stays there (it sank 0.2 m, onto the slopes,
    when only its corners met the pyramid's planes), on both backends, broad phase on or off."""
    from hybridsim.solvers.rigid.builder import KIND_STATIC_VERTEX_BOX, KIND_STATIC_VERTEX_MESH

    model = _box_on_static_apex(target)
    kind = KIND_STATIC_VERTEX_BOX if target == "box" else KIND_STATIC_VERTEX_MESH
    assert int((model.contact["kind"] == kind).sum()) == 5  # the pyramid's 5 hull vertices
    states = _rollout(model, 240)
    assert max(_apex_depth(s) for s in states) < 1e-4
    assert abs(states[-1].body_position[0, 2].item() - 0.35) < 1e-4
    assert states[-1].body_velocity.abs().max().item() < 1e-4
    full = _rollout(model, 240, broad_phase=False)[-1]
    assert all(torch.equal(a, b) for a, b in zip(states[-1].tensors(), full.tensors()))
    taichi = _rollout(model, 120, backend="taichi")
    assert max(_apex_depth(s) for s in taichi) < 1e-4
    assert (taichi[-1].body_position - states[120].body_position).abs().max().item() < 1e-9


def _apex_loss(velocity, spin, friction, target, backend, steps=10):
    """The box of ``_box_on_static_apex`` resting on the apex (its bottom at z = 0.3), sliding and
    spinning over it: only the static-vertex slot (kind 7 / 8) touches it."""
    model = _box_on_static_apex(target)
    model.shape_friction = torch.cat([model.shape_friction[:1], friction.reshape(1)])
    solver = SolverRigid(model, backend=backend)
    state = model.state()
    state.body_position = torch.tensor([[0.0, 0.0, 0.35 - 1e-4]], dtype=F64)
    state.body_velocity = velocity
    state.body_angular_velocity = spin
    for _ in range(steps):
        state = solver.step_differentiable(state, None, DT)
    return (state.body_position[0, 0] + 0.7 * state.body_position[0, 1] + 0.5 * state.body_position[0, 2]
            + 0.3 * state.body_orientation[0, 2] + 0.2 * state.body_angular_velocity[0, 2])


@pytest.mark.parametrize("backend", ["warp", pytest.param("taichi", marks=pytest.mark.slow)])
@pytest.mark.parametrize("target", ["box", "mesh"])
def test_gradient_through_a_static_vertex_contact_matches_finite_differences(target, backend):
    """float64 reverse pass through the static mesh vertex slots (kind 7: box, kind 8: mesh):
    a box sliding and spinning on the pyramid's apex; gradients w.r.t. the initial velocity, spin
    and the box's friction match central differences."""
    args = [torch.tensor([[0.3, 0.1, -0.05]], dtype=F64), torch.tensor([[0.0, 0.0, 2.0]], dtype=F64),
            torch.tensor(0.4, dtype=F64)]
    leaves = [a.clone().requires_grad_(True) for a in args]
    _apex_loss(*leaves, target, backend).backward()
    h = 1e-6
    checked = 0
    with torch.no_grad():
        for k, base in enumerate(args):
            flat = base.reshape(-1)
            for j in range(flat.numel()):
                plus, minus = base.clone(), base.clone()
                plus.reshape(-1)[j] += h
                minus.reshape(-1)[j] -= h
                values = [a if i != k else p for i, a in enumerate(args) for p in [plus]]
                lo = [a if i != k else m for i, a in enumerate(args) for m in [minus]]
                fd = (_apex_loss(*values, target, backend) - _apex_loss(*lo, target, backend)).item() / (2 * h)
                ad = leaves[k].grad.reshape(-1)[j].item()
                assert abs(ad - fd) <= 1e-5 * max(1.0, abs(fd)), (k, j, ad, fd)
                checked += 1
    assert checked == 7
    # the apex carries the box: its friction slows it (zero in free flight; measured -0.0064, box and mesh)
    assert abs(leaves[2].grad.item()) > 1e-3, leaves[2].grad


def _capsule_on_static_apex():
    """A capsule (radius 0.05, half length 0.1) lying along x, 0.05 m over the apex of the
    pyramid of ``_box_on_static_apex`` (apex at z = 0.3), its segment's middle over the apex."""
    pyramid = trimesh.Trimesh(vertices=[[-0.3, -0.3, 0.0], [0.3, -0.3, 0.0], [0.3, 0.3, 0.0], [-0.3, 0.3, 0.0],
                                        [0.0, 0.0, 0.3]],
                              faces=[[0, 2, 1], [0, 3, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]])
    builder = RigidBuilder()
    builder.add_static_mesh(pyramid)
    half = math.sqrt(0.5)
    body = builder.add_body(position=(0.0, 0.0, 0.4), orientation=(0.0, half, 0.0, half), mass=1.0)
    builder.add_shape_capsule(body, 0.05, 0.1, density=1000.0)
    return builder.finalize(dtype=F64), pyramid


def _capsule_clearance(state, pyramid):
    """Least distance of the capsule's segment to the pyramid's surface minus its radius [m]."""
    from hybridsim.solvers.rigid.joints import quat_matrix

    axis = quat_matrix(state.body_orientation[0])[:, 2]
    points = (state.body_position[0] + torch.linspace(-0.1, 0.1, 41, dtype=F64)[:, None] * axis).numpy()
    triangles = pyramid.triangles
    return min(float(np.linalg.norm(trimesh.triangles.closest_point(triangles, np.repeat(p[None], len(triangles), 0)) - p,
                                    axis=1).min()) for p in points) - 0.05


@pytest.mark.parametrize("backend", ["warp", pytest.param("taichi", marks=pytest.mark.slow)])
def test_capsule_dropped_across_a_static_apex_rests_on_it(backend):
    """A static mesh's hull vertices have slots against dynamic capsules (kind 9): a capsule
    landing with the middle of its segment on the pyramid's tip rests on it (without the slot its
    end slots miss the tip, which sank 0.0497 m into the 0.05 m radius)."""
    from hybridsim.solvers.rigid.builder import KIND_STATIC_VERTEX_CAPSULE

    model, pyramid = _capsule_on_static_apex()
    assert int((model.contact["kind"] == KIND_STATIC_VERTEX_CAPSULE).sum()) == 5
    states = _rollout(model, 120, backend=backend)
    assert min(_capsule_clearance(s, pyramid) for s in states[::2]) > -1e-4
    assert abs(states[-1].body_position[0, 2].item() - 0.35) < 1e-4
    assert states[-1].body_velocity.abs().max().item() < 1e-4
    if backend == "warp":  # the slots moved out of reach: the tip goes through the capsule
        plain, _ = _capsule_on_static_apex()
        plain.contact["point"][plain.contact["kind"] == KIND_STATIC_VERTEX_CAPSULE] = torch.tensor([0.0, 0.0, -100.0],
                                                                                                   dtype=F64)
        assert _capsule_clearance(_rollout(plain, 120)[-1], pyramid) < -0.04
