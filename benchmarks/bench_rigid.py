"""Rigid boxes on the ground: Warp against Taichi (same numerics), and our ground-contact step
against a vectorised numpy reference of one velocity-level contact step."""

import numpy as np
import torch

from hybridsim.bench import Record, case, median_time
from hybridsim.solvers.rigid import RigidBuilder, SolverRigid

DT = 1.0 / 240.0


def _boxes(count: int):
    builder = RigidBuilder(ground_friction=0.5, body_collisions=False)
    generator = np.random.default_rng(0)
    for k in range(count):
        body = builder.add_body(position=(2.0 * (k % 16), 2.0 * (k // 16), 0.1 + 0.5 * generator.random()),
                                velocity=tuple(generator.normal(size=3)), angular_velocity=tuple(generator.normal(size=3)))
        builder.add_shape_box(body, (0.2, 0.15, 0.1))
    return builder.finalize(dtype=torch.float32)


def _run(model, backend, steps):
    solver = SolverRigid(model, backend=backend)
    state = model.state()

    def go():
        nonlocal state
        s = state
        for _ in range(steps):
            out = s.empty_like()
            solver.step(s, out, None, DT)
            s = out

    return go


@case("rigid_boxes_warp_vs_taichi")
def boxes_warp_vs_taichi(quick: bool) -> Record:
    count, steps = (16, 20) if quick else (128, 100)
    model = _boxes(count)
    t_warp = median_time(_run(model, "warp", steps), repeats=3) / steps
    t_taichi = median_time(_run(model, "taichi", steps), repeats=3) / steps
    return Record("rigid_boxes_warp_vs_taichi", t_warp * 1e3, t_taichi * 1e3, "ms/step",
                  f"warp, {count} boxes x 8 ground slots, float32", "taichi, same scene and numerics",
                  torch.get_num_threads(), notes=f"{steps} steps; serial Gauss-Seidel solve (one thread)")


def _numpy_ground_step(x, v, dt, mu, g=9.81):
    """Reference: one point-mass ground step (gravity, inelastic normal impulse, Coulomb disc)."""
    v = v.copy()
    v[:, 2] -= g * dt
    contact = x[:, 2] + v[:, 2] * dt <= 0.1
    dvn = np.where(contact, -np.minimum(v[:, 2], 0.0), 0.0)
    v[:, 2] += dvn
    vt = v[:, :2]
    speed = np.linalg.norm(vt, axis=1)
    cut = np.minimum(mu * dvn, speed) / np.maximum(speed, 1e-30)
    v[:, :2] = vt * (1.0 - cut)[:, None]
    return x + dt * v, v


@case("rigid_ground_step_vs_numpy")
def ground_step_vs_numpy(quick: bool) -> Record:
    count, steps = (16, 20) if quick else (128, 100)
    model = _boxes(count)
    t_ours = median_time(_run(model, "warp", steps), repeats=3) / steps
    x = model.body_position.numpy().astype(np.float64)
    v = model.body_velocity.numpy().astype(np.float64)

    def reference():
        xs, vs = x, v
        for _ in range(steps):
            xs, vs = _numpy_ground_step(xs, vs, DT, 0.5)

    t_ref = median_time(reference, repeats=3) / steps
    return Record("rigid_ground_step_vs_numpy", t_ours * 1e3, t_ref * 1e3, "ms/step",
                  f"warp full rigid step, {count} boxes (8 corner slots each, 13 passes)",
                  "vectorised numpy point-mass ground step (one contact, no rotation)", torch.get_num_threads(),
                  notes="the reference does far less work: it bounds the launch/solve overhead, not a like-for-like solver")
