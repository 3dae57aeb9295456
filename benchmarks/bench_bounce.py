"""Bounce scene throughput: Warp and Taichi kernels against the vectorised numpy reference,
and the cost of a backward pass relative to the forward rollout."""

import numpy as np
import torch

from hybridsim.bench import Record, case, median_time
from hybridsim.sim.state import SphereModel, State
from hybridsim.solvers.spheres import SolverSpheres
from hybridsim.testing.reference import bounce_step_numpy

DT = 1.0 / 240.0


def _scene(body_count: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    model = SphereModel(
        world_count=1, sphere_count=body_count,
        mass=torch.ones(body_count, dtype=dtype),
        radius=0.05 + 0.1 * torch.rand(body_count, generator=generator, dtype=dtype),
        restitution=0.3 + 0.6 * torch.rand(body_count, generator=generator, dtype=dtype),
        gravity=torch.tensor([0.0, 0.0, -9.81], dtype=dtype).expand(body_count, 3).contiguous(),
    )
    position = torch.rand(body_count, 3, generator=generator, dtype=dtype) * torch.tensor([10.0, 10.0, 2.0], dtype=dtype)
    position[:, 2] += 0.3
    velocity = torch.randn(body_count, 3, generator=generator, dtype=dtype)
    return model, State(position, velocity)


def _kernel_vs_numpy(backend: str, quick: bool) -> Record:
    body_count, steps = (1024, 50) if quick else (16384, 200)
    model, state0 = _scene(body_count)
    solver = SolverSpheres(model, backend=backend)
    states = [state0.clone(), state0.empty_like()]

    def ours():
        for k in range(steps):
            solver.step(states[k % 2], states[(k + 1) % 2], None, DT)

    arrays = [t.numpy().copy() for t in (state0.sphere_position, state0.sphere_velocity)]
    consts = dict(force=np.zeros((body_count, 3), np.float32), mass=model.mass.numpy(), radius=model.radius.numpy(),
                  restitution=model.restitution.numpy(), gravity=model.gravity.numpy(), ground_height=0.0)

    def reference():
        x, v = arrays
        for _ in range(steps):
            x, v = bounce_step_numpy(x, v, dt=np.float32(DT), **consts)

    t_ours = median_time(ours, repeats=3 if quick else 5) / steps
    t_ref = median_time(reference, repeats=3 if quick else 5) / steps
    return Record(f"bounce_{backend}_vs_numpy", t_ours * 1e3, t_ref * 1e3, "ms/step",
                  f"{backend} kernel, {body_count} spheres, float32", "vectorised numpy, same numerics",
                  torch.get_num_threads(), notes=f"{steps} steps; ratio < 1 means faster than numpy")


@case("bounce_warp_vs_numpy")
def bounce_warp(quick: bool) -> Record:
    return _kernel_vs_numpy("warp", quick)


@case("bounce_taichi_vs_numpy")
def bounce_taichi(quick: bool) -> Record:
    return _kernel_vs_numpy("taichi", quick)


@case("bounce_backward_vs_forward")
def backward_vs_forward(quick: bool) -> Record:
    body_count, steps = (256, 60) if quick else (4096, 240)
    model, state0 = _scene(body_count)
    restitution = model.restitution.clone().requires_grad_(True)
    model.restitution = restitution
    solver = SolverSpheres(model, backend="warp")

    def forward():
        state = State(state0.sphere_position, state0.sphere_velocity.clone().requires_grad_(True))
        for _ in range(steps):
            state = solver.step_differentiable(state, None, DT)
        return state.sphere_position.sum()

    t_forward = median_time(forward, repeats=3)
    losses = []

    def backward():
        losses[-1].backward()

    samples = []
    import time

    for _ in range(3):
        losses.append(forward())
        start = time.perf_counter()
        backward()
        samples.append(time.perf_counter() - start)
    t_backward = sorted(samples)[1]
    return Record("bounce_backward_vs_forward", t_backward, t_forward, "s",
                  f"backward of {steps} steps x {body_count} spheres (warp)", "forward of the same rollout",
                  torch.get_num_threads(), notes="ratio = backward / forward time")
