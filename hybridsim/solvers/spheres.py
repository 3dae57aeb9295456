"""Sphere solver: one interface, a Warp and a Taichi launcher, and the torch autograd bridge.

``SolverSpheres.step(state_in, state_out, control, dt)`` is the raw kernel launch (no autograd,
never mutates ``state_in``). ``SolverSpheres.step_differentiable(model, state, control, dt)``
is the same step as a ``torch.autograd.Function``: its forward launches the kernel, its backward
launches the kernel's adjoint (Warp ``adjoint=True``, Taichi ``kernel.grad``) on the saved
inputs. Only the step's inputs are kept for backward, so segment checkpointing in
``hybridsim.sim.rollout`` bounds a rollout's memory.
"""

from __future__ import annotations

import functools

import torch

from .. import backends
from ..errors import HybridsimError
from ..sim.state import Control, SphereModel, State

__all__ = ["SolverSpheres"]

# order of the differentiable inputs of one step
_INPUTS = ("position", "velocity", "force", "mass", "radius", "restitution", "gravity")


class _WarpSpheres:
    def __init__(self, device: str, dtype: torch.dtype):
        wp = backends.warp()
        from hybridsim.kernels.warp.spheres import integrate_spheres_kernel

        self.wp = wp
        self.real = wp.float64 if dtype == torch.float64 else wp.float32
        self.vec3 = wp.types.vector(3, self.real)
        self.kernel = integrate_spheres_kernel(self.real)
        self.device = "cuda:0" if device == "cuda" else device

    def _view(self, t: torch.Tensor):
        return self.wp.from_torch(t, dtype=self.vec3 if t.dim() == 2 else self.real)

    def forward(self, inputs, ground_height, dt, outputs):
        args = [self._view(t) for t in inputs] + [self.real(ground_height), self.real(dt)]
        self.wp.launch(self.kernel, dim=inputs[0].shape[0], inputs=args,
                       outputs=[self._view(t) for t in outputs], device=self.device)

    def backward(self, inputs, ground_height, dt, grad_outputs):
        grads = [torch.zeros_like(t) for t in inputs]
        scratch = [torch.empty_like(inputs[0]), torch.empty_like(inputs[1])]
        args = [self._view(t) for t in inputs] + [self.real(ground_height), self.real(dt)]
        adj_args = [self._view(g) for g in grads] + [self.real(0.0), self.real(0.0)]
        self.wp.launch(self.kernel, dim=inputs[0].shape[0], inputs=args,
                       outputs=[self._view(t) for t in scratch],
                       adj_inputs=adj_args, adj_outputs=[self._view(g.contiguous()) for g in grad_outputs],
                       adjoint=True, device=self.device)
        return grads


class _TaichiSpheres:
    def __init__(self, device: str, dtype: torch.dtype):
        ti = backends.taichi(device)
        from hybridsim.kernels.taichi.spheres import integrate_spheres_kernel

        self.kernel = integrate_spheres_kernel(ti.f64 if dtype == torch.float64 else ti.f32)
        self.ti = ti

    def forward(self, inputs, ground_height, dt, outputs):
        self.kernel(*inputs, ground_height, dt, *outputs)
        self.ti.sync()

    def backward(self, inputs, ground_height, dt, grad_outputs):
        # Taichi's reverse mode reads and accumulates ``.grad`` of external arrays
        ins = [t.detach().clone().requires_grad_(True) for t in inputs]
        for t in ins:
            t.grad = torch.zeros_like(t)
        outs = [torch.empty_like(ins[0]).requires_grad_(True), torch.empty_like(ins[1]).requires_grad_(True)]
        for t, g in zip(outs, grad_outputs):
            t.grad = g.detach().clone().contiguous()
        self.kernel.grad(*ins, ground_height, dt, *outs)
        self.ti.sync()
        return [t.grad for t in ins]


_LAUNCHERS = {"warp": _WarpSpheres, "taichi": _TaichiSpheres}


@functools.cache
def _launcher(backend: str, device: str, dtype: torch.dtype):
    """One launcher per (backend, device, dtype): kernels are built once."""
    return _LAUNCHERS[backend](device, dtype)


class _SphereStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launcher, ground_height, dt, *inputs):
        inputs = tuple(t.detach().contiguous() for t in inputs)
        outputs = (torch.empty_like(inputs[0]), torch.empty_like(inputs[1]))
        launcher.forward(inputs, ground_height, dt, outputs)
        ctx.launcher, ctx.ground_height, ctx.dt = launcher, ground_height, dt
        ctx.save_for_backward(*inputs)
        return outputs

    @staticmethod
    def backward(ctx, grad_position, grad_velocity):
        inputs = ctx.saved_tensors
        grad_outputs = [
            torch.zeros_like(inputs[0]) if grad_position is None else grad_position,
            torch.zeros_like(inputs[1]) if grad_velocity is None else grad_velocity,
        ]
        grads = ctx.launcher.backward(inputs, ctx.ground_height, ctx.dt, grad_outputs)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[3:])]
        return (None, None, None, *grads)


class SolverSpheres:
    """Spheres under gravity with exact time-of-impact bounces on the ground plane.

    Args:
        model: the spheres' constants (its tensors may carry gradients).
        backend: ``"warp"`` or ``"taichi"``; both run the same numerics.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: ``torch.float32`` (default) or ``torch.float64`` (for gradient checks).
    """

    def __init__(self, model: SphereModel, *, backend: str = "warp", device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        if backend not in _LAUNCHERS:
            raise HybridsimError(f"unknown backend {backend!r}; expected one of {sorted(_LAUNCHERS)}", field="backend")
        self.model, self.backend, self.device, self.dtype = model, backend, device, dtype
        self._launcher = _launcher(backend, device, dtype)
        self._zero_force = None

    def _inputs(self, state: State, control: Control | None):
        model = self.model
        force = None if control is None else control.sphere_force
        if force is None:  # one shared zero tensor, not a new one per step
            if self._zero_force is None or self._zero_force.shape != state.sphere_position.shape:
                self._zero_force = torch.zeros_like(state.sphere_position)
            force = self._zero_force
        return (state.sphere_position, state.sphere_velocity, force,
                model.mass, model.radius, model.restitution, model.gravity)

    def step(self, state_in: State, state_out: State, control: Control | None, dt: float) -> None:
        """Advance ``state_in`` by ``dt`` seconds into ``state_out`` (no autograd)."""
        inputs = tuple(t.detach().contiguous() for t in self._inputs(state_in, control))
        self._launcher.forward(inputs, float(self.model.ground_height), float(dt),
                               (state_out.sphere_position, state_out.sphere_velocity))

    def step_differentiable(self, state: State, control: Control | None, dt: float) -> State:
        """Advance ``state`` by ``dt``; a torch autograd op over state, control and model."""
        position, velocity = _SphereStep.apply(self._launcher, float(self.model.ground_height), float(dt),
                                               *self._inputs(state, control))
        return State(position, velocity)
