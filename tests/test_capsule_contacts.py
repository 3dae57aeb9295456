"""Capsules meet boxes and other capsules in the middle of their segments, not only at the ends."""

from __future__ import annotations

import math

import torch

from hybridsim.solvers.rigid import RigidBuilder, SolverRigid

F64 = torch.float64
AXIS_Y = (math.sin(math.pi / 4), 0.0, 0.0, math.cos(math.pi / 4))  # local z -> world -y: lying along y


def _run(model, steps, backend="warp", dt=1.0 / 240.0):
    solver = SolverRigid(model, backend=backend)
    state = model.state()
    for _ in range(steps):
        out = state.empty_like()
        solver.step(state, out, None, dt)
        state = out
    return state


def test_a_capsule_lying_across_a_beam_rests_on_it():
    builder = RigidBuilder(ground_friction=0.6)
    builder.add_static_box((0.5, 0.05, 0.2), position=(0.0, 0.0, 0.2))  # a beam along x, top at z = 0.4
    rod = builder.add_body(position=(0.0, 0.0, 0.5), orientation=AXIS_Y)  # ends 0.4 m either side of the beam
    builder.add_shape_capsule(rod, 0.05, 0.4, density=500.0, friction=0.6)
    model = builder.finalize(dtype=F64)
    final = _run(model, 240)
    assert abs(float(final.body_position[0, 2]) - 0.45) < 2e-3  # on the beam, not on the ground (z = 0.05)
    assert float(final.body_velocity.abs().max()) < 1e-2


def test_crossed_capsules_stack_instead_of_passing_through():
    builder = RigidBuilder(ground_friction=0.8)
    lower = builder.add_body(position=(0.0, 0.0, 0.05), orientation=(0.0, math.sin(math.pi / 4), 0.0, math.cos(math.pi / 4)))
    builder.add_shape_capsule(lower, 0.05, 0.4, density=500.0, friction=0.8)  # along x on the ground
    upper = builder.add_body(position=(0.0, 0.0, 0.2), orientation=AXIS_Y)
    builder.add_shape_capsule(upper, 0.05, 0.4, density=500.0, friction=0.8)  # along y, across its middle
    model = builder.finalize(dtype=F64)
    final = _run(model, 240)
    assert abs(float(final.body_position[1, 2]) - 0.15) < 3e-3  # resting on the lower capsule
    assert abs(float(final.body_position[0, 2]) - 0.05) < 2e-3


def test_warp_and_taichi_agree_on_sliding_capsule_contacts():
    builder = RigidBuilder(ground_friction=0.6)
    builder.add_static_box((0.5, 0.05, 0.2), position=(0.0, 0.0, 0.2), rotation=(0.0, 0.0, 0.1, 1.0))
    rod = builder.add_body(position=(0.05, 0.02, 0.52), orientation=AXIS_Y, angular_velocity=(0.5, 0.2, 0.1))
    builder.add_shape_capsule(rod, 0.05, 0.4, density=500.0)
    other = builder.add_body(position=(0.0, 0.0, 0.8), orientation=(0.0, math.sin(math.pi / 4), 0.0, math.cos(math.pi / 4)))
    builder.add_shape_capsule(other, 0.05, 0.3, density=500.0)
    model = builder.finalize(dtype=F64)
    finals = [_run(model, 120, backend) for backend in ("warp", "taichi")]
    for a, b in zip(finals[0].tensors(), finals[1].tensors()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)
