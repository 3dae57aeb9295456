"""Rigid broad phase and forward-only fast path: skipping far slots and reusing buffers change
no bits. Every slot that the full collide marks active is kept; trajectories and gradients with
and without the broad phase, and of ``step`` and ``step_differentiable``, are bit-identical."""

import numpy as np
import pytest
import torch

from hybridsim.solvers.rigid import RigidBuilder, SolverRigid
from hybridsim.solvers.rigid.broad_phase import ShapeBounds, candidate_slots, slot_chain
from hybridsim.solvers.rigid.solver import _buffers, _full_plan, _phases

DT = 1.0 / 240.0


def _sphere_pile(count=27, seed=0, dtype=torch.float32):
    """Spheres dropped from a jittered lattice into an open box of four static walls (the
    benchmark scene, smaller)."""
    side = round(count ** (1 / 3))
    generator = np.random.default_rng(seed)
    builder = RigidBuilder(ground_friction=0.5)
    for k in range(count):
        x = -0.11 * (side - 1) + 0.22 * (k % side) + 0.02 * (generator.random() - 0.5)
        y = -0.11 * (side - 1) + 0.22 * ((k // side) % side) + 0.02 * (generator.random() - 0.5)
        z = 0.3 + 0.22 * (k // side**2) + 0.04 * generator.random()
        body = builder.add_body(position=(x, y, z), velocity=tuple(generator.normal(scale=0.5, size=3)))
        builder.add_shape_sphere(body, 0.1, restitution=0.3)
    outer = 0.125 * side + 0.1
    for centre, size in [((outer, 0, 0.5), (0.1, outer + 0.1, 0.5)), ((-outer, 0, 0.5), (0.1, outer + 0.1, 0.5)),
                         ((0, outer, 0.5), (outer + 0.1, 0.1, 0.5)), ((0, -outer, 0.5), (outer + 0.1, 0.1, 0.5))]:
        builder.add_static_box(size, position=centre)
    return builder.finalize(dtype=dtype)


def _mixed_pile(dtype=torch.float32):
    """Boxes, capsules and balls tumbling onto each other, a static box and the ground."""
    generator = np.random.default_rng(1)
    builder = RigidBuilder(ground_friction=0.6, ground_restitution=0.2)
    for k in range(9):
        position = (0.25 * (k % 3) - 0.25, 0.25 * (k // 3 % 3) - 0.25, 0.25 + 0.28 * k)
        spin = tuple(generator.normal(size=3))
        body = builder.add_body(position=position, orientation=tuple(generator.normal(size=4)), angular_velocity=spin,
                                velocity=(0.0, 0.0, -1.0))
        if k % 3 == 0:
            builder.add_shape_box(body, (0.12, 0.09, 0.07), restitution=0.2)
        elif k % 3 == 1:
            builder.add_shape_capsule(body, 0.06, 0.1)
        else:
            builder.add_shape_sphere(body, 0.09)
    builder.add_static_box((0.6, 0.6, 0.05), position=(0.0, 0.0, 0.05))
    return builder.finalize(dtype=dtype)


def _states(model, steps, **options):
    solver = SolverRigid(model, **options)
    state, states, kept = model.state(), [], []
    for _ in range(steps):
        out = state.empty_like()
        solver.step(state, out, None, DT)
        state = out
        states.append(state)
        kept.append(solver._last_plan.count)
    return states, kept


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.tensors(), b.tensors()))


@pytest.mark.parametrize("make", [_sphere_pile, _mixed_pile], ids=["spheres", "mixed"])
def test_every_active_slot_is_kept(make):
    model = make()
    solver = SolverRigid(model)
    bounds = ShapeBounds(model)
    state, culled = model.state(), 0
    for _ in range(200):
        inputs = [t.detach() for t in solver._inputs(state, None, DT)]
        kept = candidate_slots(model, bounds, inputs[0], inputs[2], inputs[3], inputs[5], inputs[6], DT)
        assert kept is not None
        # the full collide over every slot
        buf = _buffers(model, _full_plan(model), dict(zip(("position", "orientation", "velocity", "angular_velocity",
                                                           "warm_impulse", "force", "torque", "inv_mass", "inv_inertia",
                                                           "inertia", "gravity", "slot_friction", "slot_restitution"),
                                                          inputs)))
        solver._launcher.forward(model, _phases(model, DT, model.contact_count), buf)
        active = torch.nonzero(buf["contact_active"] > 0).squeeze(1)
        assert bool(torch.isin(active, kept).all()), "an active slot was culled"
        culled += model.contact_count - kept.shape[0]
        out = state.empty_like()
        solver.step(state, out, None, DT)
        state = out
    assert culled > 0, "the scene never exercised the broad phase"


def test_chain_of_all_slots_is_the_builders():
    for model in (_sphere_pile(), _mixed_pile()):
        chain = slot_chain(model.contact["body"], model.body_count)
        for key in ("prev", "prev_side", "body_last", "body_last_side"):
            assert torch.equal(chain[key], model.contact[key]), key


@pytest.mark.parametrize("make", [_sphere_pile, _mixed_pile], ids=["spheres", "mixed"])
def test_broad_phase_and_reused_buffers_change_no_bits(make):
    model = make()
    fast, kept = _states(model, 240)
    full, kept_full = _states(model, 240, broad_phase=False)
    assert min(kept) < model.contact_count and set(kept_full) == {model.contact_count}
    for a, b in zip(fast, full):
        assert _same(a, b)
    again, _ = _states(model, 240)
    assert _same(again[-1], fast[-1]), "deterministic"


def test_step_differentiable_matches_step_and_its_gradients_ignore_the_broad_phase():
    model = _mixed_pile()
    start, _ = _states(model, 90)
    grads, finals = [], []
    for broad_phase in (True, False):
        solver = SolverRigid(model, broad_phase=broad_phase)
        state = start[-1].clone()
        state.body_velocity.requires_grad_(True)
        state.body_position.requires_grad_(True)
        current, plain = state, start[-1]
        for _ in range(6):
            current = solver.step_differentiable(current, None, DT)
            out = plain.empty_like()
            solver.step(plain, out, None, DT)
            plain = out
            assert _same(current.detach(), plain)
        loss = (current.body_position[:, 2] ** 2).sum() + current.body_velocity.square().sum() + current.contact_impulse.sum()
        loss.backward()
        grads.append((state.body_velocity.grad, state.body_position.grad))
        finals.append(current.detach())
    assert _same(finals[0], finals[1])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
        assert a.abs().max() > 0


def test_taichi_agrees_with_warp_under_the_broad_phase():
    # float64: a pile is chaotic, float32 rounding differences between the backends grow
    model = _sphere_pile(dtype=torch.float64)
    warp, kept = _states(model, 120)
    taichi, _ = _states(model, 120, backend="taichi")
    assert min(kept) < model.contact_count
    for a, b in zip(warp[-1].tensors(), taichi[-1].tensors()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)


# -- worlds ------------------------------------------------------------------------------------
def _mixed_pile_builder(seed):
    generator = np.random.default_rng(seed)
    builder = RigidBuilder()
    bodies = []
    for k in range(4):
        body = builder.add_body(position=(0.2 * k - 0.3, 0.0, 0.3 + 0.25 * k), orientation=tuple(generator.normal(size=4)),
                                angular_velocity=tuple(generator.normal(size=3)))
        [builder.add_shape_box, builder.add_shape_capsule, builder.add_shape_sphere, builder.add_shape_box][k](
            body, *[((0.1, 0.08, 0.06),), (0.05, 0.1), (0.08,), ((0.07, 0.07, 0.07),)][k])
        bodies.append(body)
    builder.add_spring(bodies[0], bodies[3], stiffness=50.0, damping=0.5)
    builder.add_static_box((0.5, 0.5, 0.05), position=(0.0, 0.0, 0.05))
    return builder


def test_worlds_step_together_with_the_bits_each_gets_alone():
    # worlds 0 and 1 are the same scene at the same place: any contact between worlds would show
    parts = [_mixed_pile_builder(3), _mixed_pile_builder(3), _mixed_pile_builder(4)]
    batch = RigidBuilder()
    assert [batch.add_builder(part) for part in parts] == [0, 1, 2]
    model = batch.finalize()
    alone = [part.finalize() for part in parts]
    assert model.world_count == 3 and model.contact_count == sum(m.contact_count for m in alone)
    assert model.body_world.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # each world's slots are one range, in the order the world has alone (one solve thread per world)
    start = model.contact["world_start"].tolist()
    assert start == [0, *np.cumsum([m.contact_count for m in alone]).tolist()]
    together, _ = _states(model, 150)
    for world, single in enumerate(alone):
        final, _ = _states(single, 150)
        rows = slice(4 * world, 4 * world + 4)
        slots = slice(start[world], start[world + 1])
        assert torch.equal(model.contact["body"][slots], single.contact["body"] + torch.where(
            single.contact["body"] >= 0, 4 * world, 0).to(torch.int32))
        for a, b in zip(together[-1].tensors()[:4], final[-1].tensors()[:4]):
            assert torch.equal(a[rows], b)
        assert torch.equal(together[-1].contact_impulse[slots], final[-1].contact_impulse)
    assert not torch.equal(together[-1].body_position[:4], together[-1].body_position[8:])
    # Warp on the CPU: the solves' worlds as 2 launches side by side, the same bits
    split, _ = _states(model, 150, cpu_threads=2)
    for a, b in zip(together[-1].tensors(), split[-1].tensors()):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("backend", ["warp", "taichi"])
def test_world_batch_states_and_gradients_are_each_world_alone(backend):
    # float64; three worlds (two identical) stepped together, differentiably, through contacts
    parts = [_mixed_pile_builder(3), _mixed_pile_builder(3), _mixed_pile_builder(4)]
    batch = RigidBuilder()
    for part in parts:
        batch.add_builder(part)
    model = batch.finalize(dtype=torch.float64)
    alone = [part.finalize(dtype=torch.float64) for part in parts]
    start = model.contact["world_start"].tolist()

    def run(m):
        initial, _ = _states(m, 60)  # into contact (forward only)
        state = initial[-1].clone()
        for t in (state.body_velocity, state.body_position, state.contact_impulse):
            t.requires_grad_(True)
        solver = SolverRigid(m, backend=backend)
        current = state
        for _ in range(4):
            current = solver.step_differentiable(current, None, DT)
        # per body (and slot) terms only, so each world's loss is the batch loss's share
        loss = ((current.body_position[:, 2] ** 2).sum() + current.body_velocity.square().sum()
                + (current.contact_impulse ** 2).sum())
        loss.backward()
        return current.detach(), (state.body_velocity.grad, state.body_position.grad, state.contact_impulse.grad)

    together, grads = run(model)
    assert model.contact_count and grads[0].abs().max() > 0
    assert together.contact_impulse.abs().max() > 0, "the worlds are in contact"
    for world, single in enumerate(alone):
        final, single_grads = run(single)
        rows = slice(4 * world, 4 * world + 4)
        slots = slice(start[world], start[world + 1])
        for a, b in zip(together.tensors()[:4], final.tensors()[:4]):
            assert torch.equal(a[rows], b)
        assert torch.equal(together.contact_impulse[slots], final.contact_impulse)
        # Taichi's reverse kernels add into body rows from parallel threads: the same to rounding
        same = torch.equal if backend == "warp" else (lambda a, b: torch.allclose(a, b, rtol=1e-12, atol=1e-12))
        for g, single_g in zip(grads[:2], single_grads[:2]):
            assert same(g[rows], single_g)
        assert same(grads[2][slots], single_grads[2])
