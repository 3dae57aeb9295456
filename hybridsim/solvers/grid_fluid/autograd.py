"""The torch autograd bridge of the grid fluid: one Function per kernel phase and per solve.

- ``kernel_phase``: forward launches one kernel, backward launches its adjoint (Warp
  ``adjoint=True`` / Taichi ``kernel.grad``) on the saved inputs.
- ``project``: pressure projection; backward is one adjoint solve (implicit differentiation),
  nothing per CG iteration is stored.
- ``diffuse``: implicit viscosity; backward is one solve with the same symmetric matrix plus
  the viscosity gradient -dt <S^-1 g, K u'>.

Functions keep only their inputs (or outputs) via ``save_for_backward``, so
``torch.utils.checkpoint`` can drop and recompute them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pressure import PressureProjection, ViscousDiffusion

__all__ = ["KernelPhase", "kernel_phase", "project", "diffuse"]


@dataclass(frozen=True)
class KernelPhase:
    """One kernel launch: which kernel, over which grid, with which scalars and output shapes."""

    launcher: object
    kernel: object
    dim: tuple[int, ...]
    scalars: tuple
    output_shapes: tuple[tuple[int, ...], ...]


class _KernelFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, phase: KernelPhase, *inputs):
        inputs = tuple(t.detach().contiguous() for t in inputs)
        outputs = tuple(inputs[0].new_empty(shape) for shape in phase.output_shapes)
        phase.launcher.launch(phase.kernel, phase.dim, inputs, phase.scalars, outputs)
        ctx.phase = phase
        ctx.save_for_backward(*inputs)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        inputs = ctx.saved_tensors
        phase = ctx.phase
        grad_outputs = [torch.zeros(shape, dtype=inputs[0].dtype, device=inputs[0].device) if g is None
                        else g.contiguous() for g, shape in zip(grad_outputs, phase.output_shapes)]
        grads = phase.launcher.adjoint(phase.kernel, phase.dim, inputs, phase.scalars,
                                       [g.new_empty(g.shape) for g in grad_outputs], grad_outputs)
        return (None, *(g if need else None for g, need in zip(grads, ctx.needs_input_grad[1:])))


def kernel_phase(phase: KernelPhase, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run one kernel as an autograd op; returns its outputs."""
    return _KernelFunction.apply(phase, *inputs)


class _ProjectFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projection: PressureProjection, solid, u, v):
        ctx.projection = projection
        return projection.project(u.detach(), v.detach(), solid=solid)

    @staticmethod
    def backward(ctx, grad_u, grad_v):
        projection = ctx.projection
        grad_u = torch.zeros_like(projection.mask_x) if grad_u is None else grad_u
        grad_v = torch.zeros_like(projection.mask_y) if grad_v is None else grad_v
        return (None, None, *projection.project_adjoint(grad_u, grad_v))


def project(projection: PressureProjection, u: torch.Tensor, v: torch.Tensor,
            solid: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Divergence-free part of (u, v) (of the composite flux with moving ``solid`` face velocities,
    which are prescribed: no gradient); differentiable by one adjoint solve."""
    return _ProjectFunction.apply(projection, solid, u, v)


class _DiffuseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, diffusion: ViscousDiffusion, dt: float, viscosity, *fields):
        nu = float(viscosity.detach().reshape(-1)[0])
        outs = diffusion.solve(nu * dt, *(f.detach() for f in fields))
        ctx.diffusion, ctx.dt, ctx.nu = diffusion, dt, nu
        ctx.save_for_backward(viscosity, *outs)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        viscosity, *outs = ctx.saved_tensors
        diffusion = ctx.diffusion
        grads = [torch.zeros_like(out) if g is None else g for g, out in zip(grads, outs)]
        psi = diffusion.solve(ctx.nu * ctx.dt, *grads)
        grad_viscosity = None
        if ctx.needs_input_grad[2]:
            laplacian = diffusion.apply_laplacian(*outs)
            value = -ctx.dt * sum(torch.dot(a.reshape(-1), k.reshape(-1)) for a, k in zip(psi, laplacian))
            grad_viscosity = value.reshape(viscosity.shape)
        return (None, None, grad_viscosity, *psi)


def diffuse(diffusion: ViscousDiffusion, dt: float, viscosity: torch.Tensor,
            *fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Implicit viscous step (I + nu dt K)^-1 m (u, v[, w]); differentiable in nu and the fields."""
    return _DiffuseFunction.apply(diffusion, float(dt), viscosity, *fields)
