"""Ball and hinge joints: pendulum periods against closed forms, energy, constraint drift, both
backends, finite-difference gradients, and scene files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hybridsim.errors import SceneError
from hybridsim.scene import parse_scene
from hybridsim.solvers.rigid import RigidBuilder, SolverRigid
from hybridsim.solvers.rigid.joints import quat_matrix

G = 9.81
D64 = torch.float64


def _pendulum(theta0: float, *, length=1.0, radius=0.05, kind="ball", dtype=D64):
    builder = RigidBuilder(gravity=(0, 0, -G), ground=False)
    body = builder.add_body(position=(length * math.sin(theta0), 0.0, 2.0 - length * math.cos(theta0)), mass=1.0)
    builder.add_shape_sphere(body, radius, density=1000.0)
    builder.add_joint(kind, body, -1, anchor=(0.0, 0.0, 2.0), axis=(0.0, 1.0, 0.0))
    return builder.finalize(dtype=dtype)


def _run(model, backend, steps, dt, record=True):
    solver = SolverRigid(model, backend=backend)
    state, states = model.state(), []
    for _ in range(steps):
        out = state.empty_like()
        solver.step(state, out, None, dt)
        state = out
        if record:
            states.append(state)
    return states


def _crossings(x: np.ndarray, dt: float) -> np.ndarray:
    return np.array([(i + x[i] / (x[i] - x[i + 1])) * dt for i in range(len(x) - 1) if x[i] > 0 >= x[i + 1]])


@pytest.mark.parametrize("kind", ["ball", "hinge"])
def test_pendulum_period_and_amplitude_match_the_closed_form(kind):
    theta0, length, radius, dt = 0.1, 0.5, 0.05, 1.0 / 240.0
    states = _run(_pendulum(theta0, length=length, kind=kind), "warp", 240 * 3, dt)
    x = np.array([float(s.body_position[0, 0]) for s in states])
    period = float(np.diff(_crossings(x, dt)).mean())
    inertia = 0.4 * radius**2  # solid sphere about its centre, per kg
    exact = 2 * math.pi * math.sqrt((length**2 + inertia) / (G * length)) * (1 + theta0**2 / 16)  # + finite amplitude
    assert abs(period / exact - 1) < 2e-4, (period, exact)
    amplitude = length * math.sin(theta0)
    assert abs(x[-240:].max() / amplitude - 1) < 1e-4  # no damping, no gain
    # the bob stays on its sphere around the anchor and in its plane
    p = torch.stack([s.body_position[0] for s in states])
    assert float(((p - torch.tensor([0, 0, 2.0], dtype=D64)).norm(dim=1) - length).abs().max()) < 1e-6
    assert float(p[:, 1].abs().max()) < 1e-9


def test_large_swing_keeps_energy_and_the_backends_agree():
    dt, steps = 1.0 / 240.0, 240 * 2
    model = _pendulum(math.radians(80.0))
    warp_states = _run(model, "warp", steps, dt)
    taichi_states = _run(model, "taichi", steps, dt)
    deviation = max(float((a.body_position - b.body_position).abs().max()) for a, b in zip(warp_states, taichi_states))
    assert deviation < 1e-9

    def energy(s):
        v, w = s.body_velocity[0], s.body_angular_velocity[0]
        inertia = float(model.body_inertia[0, 0])
        return 0.5 * float(v @ v) + 0.5 * inertia * float(w @ w) + G * float(s.body_position[0, 2])

    energies = np.array([energy(s) for s in warp_states])
    assert np.ptp(energies) / (G * 1.0) < 2e-3  # swing height ~ 0.83 m: energy within 0.2% of m g L


def test_hinge_allows_only_rotation_about_its_axis():
    """A box hinged to the world about x, thrown with spin about all three axes: after the first
    step it turns about x only, its hinge point stays put, and it swings under gravity."""
    builder = RigidBuilder(gravity=(0, 0, -G), ground=False)
    door = builder.add_body(position=(0.0, 0.4, 1.0), angular_velocity=(2.0, 1.5, -1.0), mass=2.0)
    builder.add_shape_box(door, (0.05, 0.4, 0.3), density=500.0)
    builder.add_joint("hinge", door, -1, anchor=(0.0, 0.0, 1.0), axis=(1.0, 0.0, 0.0))
    model = builder.finalize(dtype=D64)
    states = _run(model, "warp", 480, 1.0 / 240.0)
    for s in states[5:]:
        rot = quat_matrix(s.body_orientation[0])
        assert float((rot @ torch.tensor([1.0, 0, 0], dtype=D64) - torch.tensor([1.0, 0, 0], dtype=D64)).norm()) < 1e-6
        hinge_point = s.body_position[0] + rot @ (torch.tensor([0, 0, 1.0], dtype=D64) - model.body_position[0])
        assert float((hinge_point - torch.tensor([0, 0, 1.0], dtype=D64)).norm()) < 2e-5
        w = s.body_angular_velocity[0]
        assert float(w[1:].abs().max()) < 1e-6
    angles = [math.atan2(float(quat_matrix(s.body_orientation[0])[2, 1]), float(quat_matrix(s.body_orientation[0])[1, 1]))
              for s in states]
    assert max(angles) - min(angles) > 0.5  # it swings


def test_double_pendulum_chain_holds_together_and_keeps_energy():
    builder = RigidBuilder(gravity=(0, 0, -G), ground=False)
    upper = builder.add_body(position=(0.5, 0.0, 2.0), mass=1.0)
    builder.add_shape_sphere(upper, 0.05, density=1000.0)
    lower = builder.add_body(position=(1.0, 0.0, 2.0), mass=0.5)
    builder.add_shape_sphere(lower, 0.05, density=1000.0)
    builder.add_joint("ball", upper, -1, anchor=(0.0, 0.0, 2.0))
    builder.add_joint("ball", lower, upper, anchor=(0.5, 0.0, 2.0))
    model = builder.finalize(dtype=D64)
    states = _run(model, "warp", 240 * 2, 1.0 / 480.0)
    gaps = [float((s.body_position[1] - s.body_position[0]).norm() - 0.5) for s in states]
    assert max(abs(g) for g in gaps) < 1e-5
    mass = model.body_mass
    inertia = model.body_inertia[:, 0]

    def energy(s):
        kinetic = 0.5 * (mass * (s.body_velocity ** 2).sum(1)).sum() + 0.5 * (inertia * (s.body_angular_velocity ** 2).sum(1)).sum()
        return float(kinetic + G * (mass * s.body_position[:, 2]).sum())

    e = np.array([energy(s) for s in states])
    assert np.ptp(e) < 0.01 * G * 1.5 * 1.0  # within 1% of the chain's potential energy scale (chaotic motion)


def test_gradients_through_joints_match_finite_differences():
    """d(final bob position) / d(initial velocity, mass) over 60 steps, float64."""
    dt, steps = 1.0 / 240.0, 60
    model = _pendulum(0.3)
    solver = SolverRigid(model, backend="warp")

    def final(v0, mass):
        model.body_mass = mass.reshape(1)
        state = model.state()
        state.body_velocity = v0.reshape(1, 3)
        for _ in range(steps):
            state = solver.step_differentiable(state, None, dt)
        return state.body_position[0] @ torch.tensor([1.0, 0.3, -0.7], dtype=D64)

    v0 = torch.tensor([0.2, 0.5, 0.1], dtype=D64, requires_grad=True)
    mass = torch.tensor(1.3, dtype=D64, requires_grad=True)
    final(v0, mass).backward()
    grads = torch.cat([v0.grad, mass.grad.reshape(1)])
    fd = []
    h = 1e-6
    base = torch.cat([v0.detach(), mass.detach().reshape(1)])
    for i in range(4):
        e = torch.zeros(4, dtype=D64)
        e[i] = h
        with torch.no_grad():
            plus, minus = base + e, base - e
            fd.append(float(final(plus[:3], plus[3]) - final(minus[:3], minus[3])) / (2 * h))
    fd = torch.tensor(fd, dtype=D64)
    assert torch.allclose(grads, fd, rtol=1e-5, atol=1e-8), (grads, fd)
    assert float(grads[:3].abs().max()) > 1e-3


_SCENE = """
name = "chain"
precision = "float64"
[time]
fps = 30
frames = 30
substeps = 8
[camera]
position = [0.0, -4.0, 1.5]
look_at = [0.0, 0.0, 1.5]
[ground]
enabled = false
[[objects]]
type = "box"
name = "link"
position = [0.3, 0.0, 2.0]
half_extents = [0.3, 0.05, 0.05]
mass = 1.0
[[objects]]
type = "sphere"
name = "bob"
position = [0.8, 0.0, 2.0]
radius = 0.1
mass = 0.5
[[objects]]
type = "static_box"
name = "beam"
position = [0.0, 0.0, 2.2]
half_extents = [0.2, 0.2, 0.05]
[[joints]]
type = "hinge"
a = "link"
b = "beam"
anchor = [0.0, 0.0, 2.0]
axis = [0.0, 1.0, 0.0]
[[joints]]
type = "ball"
a = "bob"
b = "link"
anchor = [0.6, 0.0, 2.0]
[[springs]]
a = "bob"
anchor_a = [0.8, 0.0, 2.0]
anchor_b = [0.8, 0.0, 3.0]
stiffness = 5.0
"""


def test_scene_joints_and_springs_simulate_and_render(tmp_path):
    from hybridsim.cli import main
    from hybridsim.sim.rigid import rigid_rollout
    from hybridsim.sim.world import World

    spec = parse_scene(_SCENE)
    world = World(spec)
    assert world.rigid
    with torch.no_grad():
        trajectory = rigid_rollout(world, frames=30)
    link, bob = trajectory.positions[:, 0], trajectory.positions[:, 1]
    # the link's end (hinge) stays at the beam; the bob stays 0.2 m from the link's far end
    rot = quat_matrix(trajectory.orientations[:, 0])
    hinge = link + (rot @ torch.tensor([-0.3, 0.0, 0.0], dtype=D64))
    assert float((hinge - torch.tensor([0.0, 0.0, 2.0], dtype=D64)).norm(dim=1).max()) < 1e-4
    far = link + (rot @ torch.tensor([0.3, 0.0, 0.0], dtype=D64))
    assert float(((bob - far).norm(dim=1) - 0.2).abs().max()) < 1e-4
    assert float(link[:, 2].min()) < 1.9  # it swings down
    assert float(trajectory.positions[:, :, 1].abs().max()) < 1e-6  # in the hinge's plane
    scene = tmp_path / "chain.toml"
    scene.write_text(_SCENE.replace("frames = 30", "frames = 4"))
    assert main(["render", str(scene), "-o", str(tmp_path / "chain.mp4"), "--quiet"]) == 0


@pytest.mark.parametrize("old, new, message", [
    ('a = "bob"\nb = "link"', 'a = "bobb"\nb = "link"', "joints[1].a: no object named 'bobb'; did you mean 'bob'"),
    ('a = "link"\nb = "beam"', 'a = "beam"\nb = "link"', "joints[0].a: must be a moving object"),
    ('a = "link"\nb = "beam"', 'a = "link"\nb = "link"', "joints[0].b: a and b must be different"),
    ('type = "hinge"', 'type = "slider"', "joints[0].type"),
    ('stiffness = 5.0', 'stiffness = -5.0', "springs[0].stiffness"),
])
def test_scene_joint_errors_name_the_field(old, new, message):
    with pytest.raises(SceneError) as info:
        parse_scene(_SCENE.replace(old, new))
    assert message in str(info.value)


def test_learnable_spring_stiffness_reaches_the_loss():
    from hybridsim.sim.rigid import rigid_rollout
    from hybridsim.sim.world import World

    text = _SCENE.replace("stiffness = 5.0", "stiffness = { value = 5.0, learn = true, range = [0.0, 50.0] }")
    world = World(parse_scene(text))
    params = world.parameters()
    assert "springs[0].stiffness" in params
    trajectory = rigid_rollout(world, params, frames=6)
    trajectory.positions[-1, 1, 2].backward()
    grad = params["springs[0].stiffness"].grad
    assert grad is not None and float(grad) > 0  # a stiffer band pulls the bob up
    h = 1e-4
    with torch.no_grad():
        ends = [float(rigid_rollout(world, {**params, "springs[0].stiffness": torch.tensor(5.0 + s * h, dtype=D64)},
                                    frames=6).positions[-1, 1, 2]) for s in (1, -1)]
    assert abs(float(grad) - (ends[0] - ends[1]) / (2 * h)) < 1e-5 * max(1.0, abs(float(grad)))


def _chain_into_ground(kind):
    """Three 0.3 m box links, the first hinged to the world at 0.5 m, released horizontally: the
    chain swings down and its lower links slam into and lie on the ground."""
    builder = RigidBuilder(gravity=(0, 0, -G))
    links = []
    for k in range(3):
        link = builder.add_body(position=(0.3 * k + 0.15, 0.0, 0.5), mass=1.0)
        builder.add_shape_box(link, (0.15, 0.05, 0.05), density=1000.0)
        links.append(link)
    builder.add_joint(kind, links[0], -1, anchor=(0.0, 0.0, 0.5), axis=(0.0, 1.0, 0.0))
    for k in (1, 2):
        builder.add_joint(kind, links[k], links[k - 1], anchor=(0.3 * k, 0.0, 0.5), axis=(0.0, 1.0, 0.0))
    return builder.finalize(dtype=D64)


def _penetration_and_drift(model, states):
    corners = torch.tensor([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=D64)
    corners = corners * torch.tensor([0.15, 0.05, 0.05], dtype=D64)
    joint, penetration, drift = model.joint, 0.0, 0.0
    for s in states:
        rot = quat_matrix(s.body_orientation)
        z = (s.body_position[:, None, :] + corners @ rot.transpose(1, 2))[..., 2]
        penetration = max(penetration, float(-z.min()))
        for j in range(model.joint_count):
            a, b = joint["body"][j].tolist()
            pa = s.body_position[a] + rot[a] @ joint["anchor_a"][j]
            pb = s.body_position[b] + rot[b] @ joint["anchor_b"][j] if b >= 0 else joint["anchor_b"][j]
            drift = max(drift, float((pa - pb).norm()))
    return penetration, drift


@pytest.mark.parametrize("kind", ["hinge", "ball"])
def test_chain_swinging_into_the_ground_neither_sinks_nor_comes_apart(kind):
    """Joints and the jointed bodies' ground contacts are projected in the same sweeps: the
    links slamming into the ground no longer sink (5.8 mm hinge and ball, 4.6-5.0 mm lasting at
    rest, when the joints were projected after the contacts; now 0.08 / 0.34 mm), and the
    anchors stay within 3 mm (2.4 mm at impact, 0.5-0.8 mm at rest, with 4 joint sweeps)."""
    model = _chain_into_ground(kind)
    states = _run(model, "warp", 480, 1.0 / 240.0)
    penetration, drift = _penetration_and_drift(model, states)
    assert penetration < 1e-3, penetration
    assert drift < 3e-3, drift
    assert float(states[-1].body_position[2, 2]) < 0.1  # the last link lies on the ground
    taichi = _run(model, "taichi", 120, 1.0 / 240.0)
    assert float((taichi[-1].body_position - states[119].body_position).abs().max()) < 1e-8


def test_gradients_through_joints_and_their_ground_rows_match_finite_differences():
    """d(final link positions) / d(initial link velocities) over 90 steps of the chain above as
    it hits the ground (its ground rows push in the joint sweeps), float64, Warp."""
    model = _chain_into_ground("hinge")
    solver = SolverRigid(model, backend="warp")
    weights = torch.tensor([0.3, -0.2, 1.0], dtype=D64)

    def final(v0):
        state = model.state()
        state.body_velocity = v0.reshape(3, 3)
        for _ in range(90):
            state = solver.step_differentiable(state, None, 1.0 / 240.0)
        return (state.body_position[1] + state.body_position[2]) @ weights

    v0 = torch.tensor([0.0, 0.0, -0.5, 0.0, 0.0, -1.0, 0.0, 0.0, -1.5], dtype=D64)
    v = v0.clone().requires_grad_(True)
    final(v).backward()
    h = 1e-6
    for i in (2, 8):  # the vertical speeds of the first and last link (the impact's)
        e = torch.zeros(9, dtype=D64)
        e[i] = h
        with torch.no_grad():
            fd = float(final(v0 + e) - final(v0 - e)) / (2 * h)
        assert abs(float(v.grad[i]) - fd) <= 1e-5 * max(abs(fd), 1e-3), (i, float(v.grad[i]), fd)


def _sliding_chain(links, velocity, kind="hinge", mu=0.5):
    """A 0.6 m x 0.1 m x 0.1 m bar of 1 kg split into ``links`` jointed boxes, lying on the ground
    (friction mu on both sides), pushed with ``velocity``."""
    builder = RigidBuilder(gravity=(0, 0, -G), ground_friction=mu)
    half, ids = 0.3 / links, []
    for k in range(links):
        body = builder.add_body(position=(2 * half * k + half, 0.0, 0.05), mass=1.0 / links, velocity=velocity)
        builder.add_shape_box(body, (half, 0.05, 0.05), density=1000.0, friction=mu)
        ids.append(body)
    for k in range(1, links):
        builder.add_joint(kind, ids[k], ids[k - 1], anchor=(2 * half * k, 0.0, 0.05), axis=(0.0, 1.0, 0.0))
    return builder.finalize(dtype=D64)


@pytest.mark.parametrize("kind, velocity", [("hinge", (0.0, 1.0, 0.0)), ("ball", (1.0, 0.0, 0.0))])
def test_jointed_chain_sliding_on_the_ground_stops_at_the_coulomb_distance(kind, velocity):
    """The jointed bodies' ground rows in the joint sweeps only push along the normal; friction
    comes from the kernels' contact solve before them: a 2-link chain pushed sideways or along
    itself at 1 m/s stops after v0^2 / (2 mu g) = 0.10194 m, as the single box of the same mass
    (measured: both 0.10194 m, to 1e-5 relative)."""
    mu, v0 = 0.5, 1.0
    axis = 0 if velocity[0] else 1
    slid = []
    for links in (1, 2):
        model = _sliding_chain(links, velocity, kind, mu)
        start = model.state().body_position.mean(0)[axis]
        final = _run(model, "warp", 96, 1.0 / 240.0)[-1]  # stops after 0.204 s (49 steps)
        slid.append(float(final.body_position.mean(0)[axis] - start))
        assert float(final.body_velocity.abs().max()) < 1e-9
        assert float((final.body_position[:, 2] - 0.05).abs().max()) < 1e-5  # flat on the ground
    expect = v0 ** 2 / (2 * mu * G)
    assert abs(slid[0] - expect) < 1e-3 * expect, (slid, expect)
    assert abs(slid[1] - slid[0]) < 1e-4 * expect, (slid, expect)
