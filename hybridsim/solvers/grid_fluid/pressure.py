"""Linear solves of the grid fluid: pressure projection and implicit viscosity, with adjoints.

Both systems are symmetric and solved by a preconditioned conjugate gradient that stops at a
relative residual ``tolerance``: matrix-free operator kernels (Warp or Taichi) and torch vector
operations for the dot products and updates. The pressure solve is preconditioned by Jacobi or
by a modified incomplete Cholesky factorisation MIC(0) (serial triangular sweeps: several times
fewer iterations on CPUs); the viscosity solve, well conditioned, by Jacobi.

Projection. With G the face gradient, A the face open fractions and m = [A > 0], the projected
velocity is u' = m (u - G p) where M p = G^T A u, M = G^T A G (an area-weighted, negated
Laplacian; p = 0 beyond open sides). Then the area-weighted divergence of u' equals minus the
solver's residual, so it is below ``tolerance`` relative to the input's. The map u -> u' is
linear, P = m (I - G M^+ G^T A), so its adjoint is P^T = (I - A G M^+ G^T) m: backward solves
the same system once with the incoming gradient (no unrolled iterations are stored). Without
an open side M is singular (constants); both solves then remove the mean over fluid cells.

Max-norm stop. The CG stops on the 2-norm of the residual relative to the incoming divergence,
summed over all cells: a field far from divergence-free ends up to sqrt(cells) times above the
tolerance in the max norm relative to the velocity scale. The forward ``project`` therefore also
checks max |div(A u' + (1 - A) u_s)| dx <= tolerance max |u'| over fluid cells (the
``divergence_max_relative`` of hybridsim.metrics) and, when the first solve misses it, runs up to
``MAX_REFINEMENTS`` correction solves (iterative refinement on the true divergence, same matrix);
2D and 3D solvers share it. A simulation step (small divergence before the projection) usually
needs none: one divergence evaluation and one reduction per projection. (The driven-bodies
path, bodies.project_with_pressure, calls ``solve`` itself and keeps the plain relative stop.)

Moving solids. With u_s the solid velocity normal to each face, the volume flux through a face is
A u + (1 - A) u_s; the projection makes that composite flux divergence-free: M p = -div(A u +
(1 - A) u_s) over fluid cells, u' = m (u - G p) + (1 - m) u_s, so solid faces carry u_s. The map
is affine in u with the same linear part, so the adjoint is unchanged.

Geometry gradients. With psi the adjoint pressure (M psi = G^T m g), the same solve gives the
gradient with respect to the solid velocities, (1 - m) g - (1 - A) G psi, and with respect to the
open fractions, through both M and the right-hand side, -(m G psi) (u' - u_s) per open face (the
mask m and the fluid cells are piecewise constant): autograd.project and bodies.project_with_pressure
turn it into gradients with respect to obstacle and body poses.

Viscosity. (I + nu dt K) u' = m u per face, K the negated face Laplacian (solid faces fixed
at zero, no-slip walls through ghost values); symmetric, so the adjoint is another solve with the
same matrix and d/dnu = -dt <S^-1 g, K u'>.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["conjugate_gradient", "SolveResult", "PressureProjection", "ViscousDiffusion", "MAX_REFINEMENTS"]

#: Correction solves ``PressureProjection.project`` runs at most to meet its tolerance in the max norm.
MAX_REFINEMENTS = 3


@dataclass
class SolveResult:
    """Outcome of one conjugate gradient solve."""

    solution: torch.Tensor
    """The solution, flat."""
    iterations: int
    """Iterations taken."""
    relative_residual: float
    """|r| / |b| at exit (0 when b = 0)."""
    converged: bool
    """Whether the tolerance was reached within max_iterations."""


Binder = Callable[[torch.Tensor, torch.Tensor], Callable[[], None]]


def conjugate_gradient(apply_operator: Binder, rhs: torch.Tensor, preconditioner: torch.Tensor | Binder, *,
                       tolerance: float, max_iterations: int, fluid: torch.Tensor | None = None) -> SolveResult:
    """Solve A x = rhs (A symmetric positive (semi)definite) by preconditioned CG.

    ``apply_operator(p, out)`` returns a callable writing A p into ``out`` (both flat, fixed
    buffers). ``preconditioner`` is the inverse diagonal (Jacobi) or, like ``apply_operator``, a
    binder of z = M^-1 r for a symmetric positive definite M. ``fluid`` (0/1, flat) marks the cells
    of a singular system whose null space is the constant: the mean over them is removed from
    the right-hand side, every residual and the solution. Stops when |r| <= tolerance |rhs|.
    """
    count = None if fluid is None else max(float(fluid.sum()), 1.0)

    def remove_mean(x: torch.Tensor) -> None:
        if fluid is not None:
            x.addcmul_(fluid, torch.dot(x, fluid) / count, value=-1.0)  # in place: no temporary, no sync

    x = torch.zeros_like(rhs)
    r = rhs.clone()
    remove_mean(r)
    b_norm = float(torch.dot(r, r)) ** 0.5
    if not math.isfinite(b_norm):  # propagate: the caller's finiteness check names the quantity
        return SolveResult(x.fill_(math.nan), 0, math.nan, False)
    if b_norm == 0.0:
        return SolveResult(x, 0, 0.0, True)
    threshold = tolerance * b_norm
    z = torch.empty_like(r)
    if isinstance(preconditioner, torch.Tensor):
        precondition = functools.partial(torch.mul, preconditioner, r, out=z)
    else:
        precondition = preconditioner(r, z)
    precondition()
    p = z.clone()
    ap = torch.empty_like(r)
    apply = apply_operator(p, ap)
    rz = float(torch.dot(r, z))
    r_norm, iterations = b_norm, 0
    while iterations < max_iterations:
        apply()
        p_ap = float(torch.dot(p, ap))
        if p_ap <= 0.0:  # exhausted the (numerical) range of the operator
            break
        alpha = rz / p_ap
        x.add_(p, alpha=alpha)
        r.add_(ap, alpha=-alpha)
        remove_mean(r)
        iterations += 1
        r_norm = float(torch.dot(r, r)) ** 0.5
        if r_norm <= threshold or not math.isfinite(r_norm):
            break
        precondition()
        rz_next = float(torch.dot(r, z))
        p.mul_(rz_next / rz).add_(z)
        rz = rz_next
    remove_mean(x)
    return SolveResult(x, iterations, r_norm / b_norm, r_norm <= threshold)


def _warn_unconverged(name: str, result: SolveResult, tolerance: float, max_iterations: int) -> None:
    if not result.converged and math.isfinite(result.relative_residual):  # non-finite: the step raises
        warnings.warn(
            f"{name} solve stopped after {result.iterations} iterations at relative residual "
            f"{result.relative_residual:.3g} > tolerance {tolerance:.3g}; raise max_iterations "
            f"(now {max_iterations}), loosen the tolerance, or lower dt",
            RuntimeWarning, stacklevel=4)


def _cell_shape(face_fields) -> tuple[int, ...]:
    """Cell counts of a MAC grid from its per-axis face arrays (axis d of the next axis' array)."""
    count = len(face_fields)
    return tuple(int(face_fields[(d + 1) % count].shape[d]) for d in range(count))


class PressureProjection:
    """Makes face velocities discretely divergence-free; ``project_adjoint`` is its transpose.

    Dimension-agnostic: the face fields come one per axis (2D: u, v; 3D: u, v, w, with the 3D
    launcher), and every method takes them in that order.

    Args:
        launcher: the backend launcher (see launch.py).
        areas: face open fractions per axis, shapes (Fx, ny) and (nx, Fy) in 2D (3D: (Fx, ny, nz), ...).
        cell_size: dx [m].
        flags: boundary bits.
        singular: True when no side is open (remove the mean).
        tolerance: relative residual at which CG stops.
        max_iterations: CG iteration cap (warns when reached).
        preconditioner: "jacobi" (parallel) or "incomplete_cholesky" (MIC(0): far fewer
            iterations, but its triangular sweeps run serially: meant for CPUs), or "multigrid".
        refinements: correction solves ``project`` may add so that max |div(u')| dx <= tolerance
            max |u'| over fluid cells (the max-norm stop, see the module docstring; 0: the plain
            relative 2-norm stop). The adjoint solves keep the plain relative tolerance.

    After ``project``, ``last_refinements`` is the number of correction solves it ran and
    ``last_result`` the first solve's result with the iterations of all of them.
    """

    last_refinements: int = 0

    def __init__(self, launcher, *areas: torch.Tensor, cell_size: float, flags: int,
                 singular: bool, tolerance: float, max_iterations: int, preconditioner: str = "jacobi",
                 refinements: int = MAX_REFINEMENTS):
        self.launcher = launcher
        self.refinements = int(refinements)
        self.areas = tuple(a.contiguous() for a in areas)
        self.masks = tuple((a > 0).to(a.dtype) for a in self.areas)
        self.area_x, self.area_y = self.areas[:2]
        self.mask_x, self.mask_y = self.masks[:2]
        area_x = self.area_x
        self.cell_size, self.flags = float(cell_size), int(flags)
        self.tolerance, self.max_iterations = float(tolerance), int(max_iterations)
        self.cell_shape = _cell_shape(self.areas)
        self.face_dim = tuple(n + 1 for n in self.cell_shape)
        diagonal = area_x.new_empty(self.cell_shape)
        launcher.launch("pressure_diagonal", self.cell_shape, list(self.areas), [self.cell_size, self.flags],
                        [diagonal])
        fluid = diagonal > 0
        self.fluid_cells = fluid.to(area_x.dtype)
        self.inverse_diagonal = torch.where(fluid, 1.0 / torch.where(fluid, diagonal, torch.ones_like(diagonal)),
                                            torch.zeros_like(diagonal)).reshape(-1)
        self.fluid = fluid.to(area_x.dtype).reshape(-1) if singular else None
        self.preconditioner = preconditioner
        if preconditioner == "multigrid":
            from .multigrid import Multigrid

            self.multigrid = Multigrid(*self.areas, cell_size=self.cell_size,
                                       periodic=tuple(bool(self.flags >> axis & 1) for axis in range(len(self.areas))))
        if preconditioner == "incomplete_cholesky":
            self.precon = area_x.new_empty(self.cell_shape)
            launcher.launch("factor_incomplete_cholesky", 1, list(self.areas), [self.cell_size, self.flags],
                            [self.precon])
        self.last_result: SolveResult | None = None

    def divergence(self, *velocities: torch.Tensor, weighted: bool = True, weights=None) -> torch.Tensor:
        """Per-cell divergence [1/s] of the area-weighted (or mask-weighted, or ``weights``-weighted)
        face velocities."""
        out = velocities[0].new_empty(self.cell_shape)
        if weights is None:
            weights = self.areas if weighted else self.masks
        weights = [w.contiguous() for w in weights]
        self.launcher.launch("divergence", self.cell_shape, [*(f.contiguous() for f in velocities), *weights],
                             [self.cell_size, self.flags], [out])
        return out

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """Solve M p = rhs (cells) to the tolerance; returns p with the shape of rhs."""

        def apply_operator(p: torch.Tensor, out: torch.Tensor):
            if self.preconditioner == "multigrid":  # the same matrix as vectorised torch ops (faster on CPU)
                return self.multigrid.bind_operator(p, out)
            return self.launcher.bind("apply_pressure_operator", self.cell_shape,
                                      [p.view(self.cell_shape), *self.areas],
                                      [self.cell_size, self.flags], [out.view(self.cell_shape)])

        def apply_preconditioner(r: torch.Tensor, z: torch.Tensor):
            return self.launcher.bind("apply_incomplete_cholesky", 1,
                                      [r.view(self.cell_shape), *self.areas, self.precon],
                                      [self.cell_size], [z.new_empty(self.cell_shape), z.view(self.cell_shape)])

        preconditioner = {"incomplete_cholesky": apply_preconditioner,
                          "multigrid": getattr(self, "multigrid", None) and self.multigrid.bind}.get(
            self.preconditioner) or self.inverse_diagonal
        result = conjugate_gradient(apply_operator, rhs.reshape(-1).contiguous(), preconditioner,
                                    tolerance=self.tolerance, max_iterations=self.max_iterations, fluid=self.fluid)
        self.last_result = result
        _warn_unconverged("pressure", result, self.tolerance, self.max_iterations)
        return result.solution.view(self.cell_shape)

    def _subtract_gradient(self, velocities, p, weights) -> tuple[torch.Tensor, ...]:
        outs = tuple(torch.empty_like(f) for f in velocities)
        self.launcher.launch("subtract_pressure_gradient", self.face_dim,
                             [*velocities, p, *self.masks, *weights], [self.cell_size, self.flags], list(outs))
        return outs

    def pressure_gradient(self, p: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """m G p on every face [pressure / m], one tensor per axis (zero on solid faces)."""
        zeros = [torch.zeros_like(m) for m in self.masks]
        return tuple(-g for g in self._subtract_gradient(zeros, p.contiguous(), self.masks))

    def solid_divergence(self, *solid: torch.Tensor) -> torch.Tensor:
        """Divergence of the solid part (1 - A) u_s of the face fluxes [1/s]."""
        return self.divergence(*(s.contiguous() for s in solid), weights=tuple(1.0 - a for a in self.areas))

    def project(self, *velocities: torch.Tensor, solid=None) -> tuple[torch.Tensor, ...]:
        """u' = m (u - G p) with M p = G^T A u = -div_A(u). With ``solid`` = (u_s, v_s), the solid
        velocity normal to each face: M p = -div(A u + (1 - A) u_s) on fluid cells and solid faces
        get u_s. Refined until the divergence meets the tolerance in the max norm (see ``refinements``)."""
        velocities = tuple(f.contiguous() for f in velocities)
        if solid is None:
            pressure = self.solve(-self.divergence(*velocities))
            outs = self._subtract_gradient(velocities, pressure, self.masks)
        else:
            rhs = -(self.divergence(*velocities) + self.solid_divergence(*solid)) * self.fluid_cells
            pressure = self.solve(rhs)
            outs = self._subtract_gradient(velocities, pressure, self.masks)
            outs = tuple(out + (1.0 - m) * s for out, m, s in zip(outs, self.masks, solid))
        return self._refine(outs, solid)

    def _result_divergence(self, outs, solid) -> torch.Tensor:
        """The divergence a projection left on fluid cells (less its mean when singular: the constant
        is not the projection's to remove)."""
        divergence = self.divergence(*outs)
        if solid is not None:
            divergence = divergence + self.solid_divergence(*solid)
        divergence = divergence * self.fluid_cells
        if self.fluid is not None:
            fluid = self.fluid_cells
            divergence = divergence - fluid * (divergence.sum() / fluid.sum().clamp(min=1.0))
        return divergence

    def _refine(self, outs, solid) -> tuple[torch.Tensor, ...]:
        """The max-norm stop: correction solves on the true divergence of ``outs`` until
        max |div| dx <= tolerance max |u'| (at most ``refinements``)."""
        self.last_refinements = 0
        tolerance, base = self.tolerance, self.last_result
        iterations = base.iterations if base is not None else 0
        try:
            for _ in range(self.refinements):
                divergence = self._result_divergence(outs, solid)
                # one sync: max |div| and max |u'| per axis
                maxima = torch.stack([divergence.abs().max(), *(f.abs().max() for f in outs)]).tolist()
                excess, bound = maxima[0] * self.cell_size, tolerance * max(maxima[1:])
                if not excess > bound:  # (also stops on NaN: the caller's check names it)
                    break
                # the correction solve: reduce the residual by the factor still missing (with margin)
                self.tolerance = min(max(0.25 * bound / excess, 1e-3 * tolerance), 0.5)
                correction = self.solve(-divergence)
                corrected = self._subtract_gradient(outs, correction.contiguous(), self.masks)  # (zeroes solid faces)
                outs = tuple(c + (1.0 - m) * o for c, m, o in zip(corrected, self.masks, outs))
                self.last_refinements += 1
                iterations += self.last_result.iterations
        finally:
            self.tolerance = tolerance
        if self.last_refinements and base is not None:
            self.last_result = type(base)(base.solution, iterations, self.last_result.relative_residual,
                                          self.last_result.converged)
        return outs

    def adjoint_pressure(self, *grads: torch.Tensor) -> torch.Tensor:
        """psi with M psi = G^T (m g): the adjoint solve of ``project_adjoint``."""
        return self.solve(-self.divergence(*(g.contiguous() for g in grads), weighted=False))

    def project_adjoint(self, *grads: torch.Tensor, psi: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """P^T g = m g - A G psi with M psi = G^T (m g): one solve with the same matrix (skipped when
        ``psi`` from ``adjoint_pressure`` is given)."""
        grads = tuple(g.contiguous() for g in grads)
        psi = self.adjoint_pressure(*grads) if psi is None else psi
        return self._subtract_gradient(grads, psi, self.areas)


class ViscousDiffusion:
    """Implicit viscosity: solves (I + nu dt K) u' = m u for both face fields at once."""

    def __init__(self, launcher, *masks: torch.Tensor, cell_size: float, flags: int, tolerance: float,
                 max_iterations: int):
        self.launcher = launcher
        self.masks = tuple(m.contiguous() for m in masks)
        self.mask_x, self.mask_y = self.masks[:2]
        self.cell_size, self.flags = float(cell_size), int(flags)
        self.tolerance, self.max_iterations = float(tolerance), int(max_iterations)
        self.shapes = tuple(tuple(m.shape) for m in self.masks)
        self.shape_x, self.shape_y = self.shapes[:2]
        self.splits = [m.numel() for m in self.masks]
        self.face_dim = tuple(n + 1 for n in _cell_shape(self.masks))
        self.mask = torch.cat([m.reshape(-1) for m in self.masks])
        self.last_result: SolveResult | None = None

    def _views(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(part.view(shape) for part, shape in zip(flat.split(self.splits), self.shapes))

    def _launch(self, name: str, x: torch.Tensor, alpha: float, beta: float, out: torch.Tensor, bind: bool = False):
        launch = self.launcher.bind if bind else self.launcher.launch
        return launch(name, self.face_dim, [*self._views(x), *self.masks],
                      [float(alpha), float(beta), self.cell_size, self.flags], list(self._views(out)))

    def solve(self, coefficient: float, *fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Solve (I + coefficient K) x = m (u, v[, w]); coefficient = nu dt [m^2]."""
        rhs = torch.cat([f.reshape(-1) for f in fields]) * self.mask
        diagonal = torch.empty_like(rhs)
        self._launch("diffusion_diagonal", rhs, 1.0, coefficient, diagonal)
        result = conjugate_gradient(lambda p, out: self._launch("apply_diffusion_operator", p, 1.0, coefficient, out, bind=True),
                                    rhs, 1.0 / diagonal, tolerance=self.tolerance, max_iterations=self.max_iterations)
        self.last_result = result
        _warn_unconverged("viscosity", result, self.tolerance, self.max_iterations)
        return self._views(result.solution)

    def apply_laplacian(self, *fields: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """K (u, v[, w]): the negated face Laplacian [1/m^2 times velocity], zero on solid faces."""
        x = torch.cat([f.reshape(-1) for f in fields])
        out = torch.empty_like(x)
        self._launch("apply_diffusion_operator", x, 0.0, 1.0, out)
        return self._views(out)
