"""Air drag on rigid bodies: ``rigid_rollout(force_hook=AirDrag(...))`` and the fit's drag nuisance
on rigid-body scenes (``FitSettings(drag=...)``, see ``hybridsim.fit.nuisance``).

Drag acts through each body's centre of mass (-m k v linear, -m c |v| v quadratic) and is
torque-free. The solver integrates it explicitly over each substep (first order in dt), so the
closed-form checks use 24 substeps per frame.
"""

from __future__ import annotations

import json

import pytest
import torch

from hybridsim.fit import FitSettings, fit
from hybridsim.fit.nuisance import DRAG, drag_hook
from hybridsim.fit.scenes import fit_scene
from hybridsim.render import to_uint8
from hybridsim.scene import parse_scene
from hybridsim.sim.rigid import AirDrag, rigid_rollout
from hybridsim.sim.world import World
from hybridsim.testing.fit_scenes import SLIDE

D64 = torch.float64

FLY = """
name = "fly"
precision = "float64"
[time]
fps = 30
frames = 24
substeps = 24
[camera]
position = [0.0, -4.0, 1.0]
look_at = [0.0, 0.0, 1.0]
[ground]
enabled = false
[[objects]]
type = "box"
position = [0.0, 0.0, 1.0]
half_extents = [0.1, 0.15, 0.05]
velocity = [2.0, 0.0, 3.0]
angular_velocity = [0.0, 2.0, 0.0]
mass = 0.5
"""

# The sliding box of the fit tests thrown instead: it flies 9 frames (0.3 s, where only the drag
# slows it), lands flat 0.9 m further (the impact's friction takes part of its speed) and slides
# 0.3 m to rest in about 10 frames (where friction and a little drag stop it).
THROW = (SLIDE.replace("position = [-1.0, 0.0, 0.1]", "position = [-1.5, 0.0, 0.1]")
         .replace("velocity = { value = [2.0, 0.0, 0.0], learn = true, range = [-6.0, 6.0] }",
                  "velocity = [3.6, 0.0, 1.5]")
         .replace("frames = 20", "frames = 24"))
FRICTION, C_TRUE = "objects[0].friction", 0.3


def _fly(frames=None, substeps=None, velocity=None):
    spec = parse_scene(FLY)
    changes = {k: v for k, v in (("time.frames", frames), ("time.substeps", substeps),
                                 ("objects[0].velocity", velocity)) if v is not None}
    return World(spec.with_values(changes) if changes else spec)


def test_linear_drag_matches_the_closed_form_and_is_torque_free():
    world, k = _fly(), 0.5
    with torch.no_grad():
        free = rigid_rollout(world)
        dragged = rigid_rollout(world, force_hook=AirDrag("linear", torch.tensor(k, dtype=D64)))
    t = dragged.times[:, None]
    g = torch.tensor(world.spec.gravity, dtype=D64)
    v0, x0 = torch.tensor([2.0, 0.0, 3.0], dtype=D64), torch.tensor([0.0, 0.0, 1.0], dtype=D64)
    decay = torch.exp(-k * t)
    velocity = v0 * decay + (g / k) * (1 - decay)
    position = x0 + g / k * t + (v0 - g / k) * (1 - decay) / k
    v, x = dragged.velocities[:, 0], dragged.positions[:, 0]
    assert float(((v - velocity).norm(dim=1) / velocity.norm(dim=1)).max()) < 1e-3
    assert float(((x - position).norm(dim=1) / position.norm(dim=1)).max()) < 1e-3
    # no drag torque: the spin and the orientation are those of the drag-free flight
    assert torch.allclose(dragged.angular_velocities, free.angular_velocities, atol=1e-12)
    assert torch.allclose(dragged.orientations, free.orientations, atol=1e-12)
    assert not torch.allclose(dragged.velocities, free.velocities, atol=1e-3)


def _quadratic_ode(v0, g, c, t_end, steps):
    """RK4 of dv/dt = g - c |v| v, dx/dt = v from x = 0."""
    def rate(y):
        v = y[3:]
        return torch.cat([v, g - c * v.norm() * v])

    y, h, out = torch.cat([torch.zeros(3, dtype=D64), v0]), t_end / steps, []
    for _ in range(steps):
        k1 = rate(y)
        k2 = rate(y + 0.5 * h * k1)
        k3 = rate(y + 0.5 * h * k2)
        k4 = rate(y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        out.append(y)
    return torch.stack(out)


def test_quadratic_drag_slows_the_box_like_the_ode():
    world, c = _fly(), 0.3
    with torch.no_grad():
        free = rigid_rollout(world)
        dragged = rigid_rollout(world, force_hook=AirDrag("quadratic", c))
    frames, substeps = world.spec.time.frames, world.spec.time.substeps
    g = torch.tensor(world.spec.gravity, dtype=D64)
    ode = _quadratic_ode(torch.tensor([2.0, 0.0, 3.0], dtype=D64), g, c, frames / 30.0, 4 * frames * substeps)
    ode = ode[4 * substeps - 1::4 * substeps]  # at the frames 1..F
    v, x = dragged.velocities[1:, 0], dragged.positions[1:, 0] - dragged.positions[0, 0]
    # explicit drag over each substep: first order in dt (measured: velocity 1.3e-3 relative at the
    # apex, where the speed is lowest; displacement 1.3e-3), small next to what the drag changes
    error = (v - ode[:, 3:]).norm(dim=1)
    assert float((error / ode[:, 3:].norm(dim=1)).max()) < 2e-3
    assert float((error / (free.velocities[1:, 0] - ode[:, 3:]).norm(dim=1)).max()) < 0.02
    assert float(((x - ode[:, :3]).norm(dim=1) / ode[:, :3].norm(dim=1)).max()) < 2e-3
    # slower than without drag: lower apex, shorter range, slower fall
    assert float(dragged.positions[:, 0, 2].max()) < float(free.positions[:, 0, 2].max()) - 0.02
    assert float(dragged.positions[-1, 0, 0]) < float(free.positions[-1, 0, 0]) - 0.05
    assert float(dragged.velocities[-1, 0].norm()) < float(free.velocities[-1, 0].norm())


def _loss(world, coefficient, values=None, kind="quadratic", **kwargs):
    trajectory = rigid_rollout(world, values, force_hook=AirDrag(kind, coefficient), **kwargs)
    weights = torch.linspace(0.5, 1.5, trajectory.frame_count, dtype=D64)[:, None, None]
    return (weights * trajectory.positions).sum() + 0.3 * (weights * trajectory.velocities).sum()


@pytest.mark.parametrize("kind", ["linear", "quadratic"])
def test_drag_gradient_matches_finite_differences_through_contacts_and_checkpoints(kind):
    """d loss / d drag coefficient (and / d friction) of the thrown box, which lands and slides
    within the 24 frames: plain and checkpointed rollouts (the hook is replayed in backward) give
    the same gradient, and it matches central differences."""
    spec = parse_scene(THROW).with_values({"time.frames": 24, "time.substeps": 4})
    world = World(spec)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in world.parameters().items()}
    c = torch.tensor(0.3, dtype=D64, requires_grad=True)
    grads = []
    for checkpoint in (False, True):
        loss = _loss(world, c, params, kind, checkpoint=checkpoint, segment_frames=5)
        grads.append(torch.autograd.grad(loss, [c, params[FRICTION]]))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-9) and torch.allclose(grads[0][1], grads[1][1], rtol=1e-9)
    h = 1e-5
    with torch.no_grad():
        fd_c = (_loss(world, c + h, params, kind) - _loss(world, c - h, params, kind)) / (2 * h)
        up, down = dict(params), dict(params)
        up[FRICTION], down[FRICTION] = params[FRICTION] + h, params[FRICTION] - h
        fd_mu = (_loss(world, c, up, kind) - _loss(world, c, down, kind)) / (2 * h)
    assert abs(float(fd_c)) > 0.1 and abs(float(fd_mu)) > 0.1
    assert float(grads[0][0]) == pytest.approx(float(fd_c), rel=1e-6)
    assert float(grads[0][1].sum()) == pytest.approx(float(fd_mu), rel=1e-6)


def test_a_blow_up_is_located_with_the_hook_replayed_at_its_own_steps():
    from hybridsim.errors import SimulationError

    steps = []

    def pump(step, state, model):  # anti-drag from substep 9 on (frame 3, substep 2 of 4)
        steps.append(step)
        k = 0.0 if step < 9 else -2000.0
        return -k * model.body_mass[:, None] * state.body_velocity, None

    with torch.no_grad(), pytest.raises(SimulationError, match="frame 3, substep 2 of 4"):
        rigid_rollout(_fly(frames=5, substeps=4), force_hook=pump)
    assert steps == [*range(12), 8, 9]  # frames 1-3, then frame 3 again substep by substep


def test_fit_scene_applies_the_drag_nuisance_and_still_refuses_motion_priors():
    from hybridsim.errors import HybridsimError

    world = World(parse_scene(THROW))
    scene = fit_scene(world)
    hook = drag_hook(world, {}, "quadratic", torch.tensor(C_TRUE, dtype=D64))
    assert isinstance(hook, AirDrag)
    with torch.no_grad():
        dragged = scene.rollout({}, 6, motion_prior=hook)
        reference = rigid_rollout(world, frames=6, force_hook=AirDrag("quadratic", C_TRUE))
        free = scene.rollout({}, 6)
    assert torch.equal(dragged.positions, reference.positions)
    assert not torch.allclose(dragged.positions, free.positions, atol=1e-3)
    with pytest.raises(HybridsimError, match="motion prior"):
        scene.rollout({}, 2, motion_prior=lambda state, time: None)


@pytest.mark.slow
def test_fit_learns_quadratic_drag_of_a_thrown_box(tmp_path):
    """The thrown box (96 x 72 px, 25 frames) rendered with quadratic drag c = 0.3 1/m and friction
    0.55, fitted from friction 0.3 and c = 0.1 (a tenth of drag_max = 1): the flight fixes c, the
    landing and slide the friction. Measured: friction 0.5495, c 0.3004, about 35 s on a shared core."""
    spec = parse_scene(THROW)
    world = World(spec.with_values({FRICTION: 0.55}))
    with torch.no_grad():
        from hybridsim.render.rigid import render_rigid

        trajectory = rigid_rollout(world, force_hook=AirDrag("quadratic", C_TRUE))
        target = to_uint8(render_rigid(world, trajectory)["rgb"].numpy())
    result = fit(spec, target, iterations=20, progress=False, max_render_height=None, threads=1, uncertainty=False,
                 run_dir=tmp_path / "run", settings=FitSettings(drag="quadratic", drag_max=1.0))
    assert abs(result.values[FRICTION] / 0.55 - 1.0) < 0.02, (result.values, result.nuisance)
    assert abs(result.nuisance[DRAG] / C_TRUE - 1.0) < 0.05, (result.values, result.nuisance)
    summary = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert set(summary["nuisance"]) == {DRAG}
    assert "nuisance" not in (tmp_path / "run" / "fitted.toml").read_text()
