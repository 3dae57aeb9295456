"""The torch autograd bridge of the grid fluid: one Function per kernel phase and per solve.

- ``kernel_phase``: forward launches one kernel, backward launches its adjoint (Warp
  ``adjoint=True`` / Taichi ``kernel.grad``) on the saved inputs.
- ``project``: pressure projection; backward is one adjoint solve (implicit differentiation),
  nothing per CG iteration is stored; it also gives the gradients with respect to the solid face
  velocities and the face open fractions (hence obstacle and body poses).
- ``diffuse``: implicit viscosity; backward is one solve with the same symmetric matrix plus
  the viscosity gradient -dt <S^-1 g, K u'>.

Functions keep only their inputs (or outputs) via ``save_for_backward``, so
``torch.utils.checkpoint`` can drop and recompute them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .pressure import PressureProjection, ViscousDiffusion

__all__ = ["KernelPhase", "kernel_phase", "project", "diffuse", "area_gradient"]


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
    def forward(ctx, projection: PressureProjection, u, v, solid_x, solid_y, area_x, area_y):
        solid = None if solid_x is None else (solid_x.detach().contiguous(), solid_y.detach().contiguous())
        outs = projection.project(u.detach(), v.detach(), solid=solid)
        ctx.projection, ctx.has_solid = projection, solid is not None
        # the outputs (and solid velocities) only for the gradients with respect to the fractions
        # and the solid velocities: a plain projection keeps nothing
        geometric = any(t is not None and t.requires_grad for t in (solid_x, solid_y, area_x, area_y))
        ctx.save_for_backward(*((*outs, *(solid or ())) if geometric else ()))
        return outs

    @staticmethod
    def backward(ctx, grad_u, grad_v):
        projection = ctx.projection
        grad_u = torch.zeros_like(projection.mask_x) if grad_u is None else grad_u.contiguous()
        grad_v = torch.zeros_like(projection.mask_y) if grad_v is None else grad_v.contiguous()
        needs = ctx.needs_input_grad  # (projection, u, v, solid_x, solid_y, area_x, area_y)
        psi = projection.adjoint_pressure(grad_u, grad_v)
        grad_velocity = projection.project_adjoint(grad_u, grad_v, psi=psi)
        grad_solid, grad_area = (None, None), (None, None)
        if any(needs[3:7]):
            saved = ctx.saved_tensors
            outs, solid = saved[:2], (saved[2:4] if ctx.has_solid else None)
            psi = (psi * projection.fluid_cells).contiguous()
            if any(needs[5:7]):
                grad_area = area_gradient(projection, psi, outs, solid, sign=-1.0)
            if any(needs[3:5]):
                zeros = (torch.zeros_like(grad_u), torch.zeros_like(grad_v))
                su, sv = projection._subtract_gradient(zeros, psi, tuple(1.0 - a for a in projection.areas))
                grad_solid = (su + (1.0 - projection.mask_x) * grad_u, sv + (1.0 - projection.mask_y) * grad_v)
        return (None, *grad_velocity, *grad_solid, *grad_area)


def area_gradient(projection: PressureProjection, adjoint: torch.Tensor, projected, solid=None,
                  sign: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of a projection's output with respect to its face open fractions A, given the
    adjoint pressure ``adjoint`` (z with M z = h, h the backward's right-hand side): with M p =
    G^T (A u + (1 - A) u_s) and u' = m (u - G p) + (1 - m) u_s, d/dA is ``sign`` (G z) (u' - u_s)
    on open faces (m the open mask; where A = 0 the fraction sits at a kink and gets none)."""
    gradient = projection.pressure_gradient(adjoint)  # m G z
    if solid is None:
        return tuple(sign * g * out for g, out in zip(gradient, projected))
    return tuple(sign * g * (out - s) for g, out, s in zip(gradient, projected, solid))


def project(projection: PressureProjection, u: torch.Tensor, v: torch.Tensor,
            solid: tuple[torch.Tensor, torch.Tensor] | None = None,
            areas: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Divergence-free part of (u, v) (of the composite flux with moving ``solid`` face velocities);
    differentiable by one adjoint solve in (u, v), in ``solid`` and in ``areas`` (the face open
    fractions the projection was built from, as differentiable tensors: their gradient reaches an
    obstacle's pose). The open mask m = [A > 0] is piecewise constant."""
    solid_x, solid_y = solid if solid is not None else (None, None)
    area_x, area_y = areas if areas is not None else (None, None)
    return _ProjectFunction.apply(projection, u, v, solid_x, solid_y, area_x, area_y)


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
