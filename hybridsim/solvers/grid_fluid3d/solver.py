"""SolverGridFluid3D: one 3D smoke step as a list of kernel phases, on Warp or Taichi.

The numerics of the 2D solver (hybridsim/solvers/grid_fluid/solver.py) on a 3D MAC grid:
1. ``add_inflow``: sphere and box sources add density at rate x soft coverage x dt;
2. ``advect``: density and velocity by the start-of-step velocity (semi-Lagrangian with an RK2
   backtrace, or MacCormack with a clamping limiter; density also in conservative flux form);
3. ``add_buoyancy`` (+ control accelerations), ``curl`` (3D vector) + ``confine_vorticity``;
4. implicit viscosity (a CG solve);
5. pressure projection (a PCG solve to a tolerance, MIC(0) or Jacobi preconditioned; adjoint
   solve in backward, which
   also gives the gradient with respect to the face open fractions, hence obstacle centres).

The kernel phases, the solves and their adjoints are the 2D solver's Python (autograd.py,
pressure.py, launch.py), run on the 3D kernels (kernels/*/grid_fluid3d.py). With a temperature
field (``model.has_temperature``) heating sources set it in step 1, it is advected like density
and cools exponentially in step 2, and step 3 adds the Boussinesq lift
``temperature_buoyancy * (T - ambient)``, as in 2D.
"""

from __future__ import annotations

import warnings

import torch

from ... import backends
from ...errors import HybridsimError, SimulationError
from ..grid_fluid.autograd import diffuse
from ..grid_fluid.launch import launcher_for
from ..grid_fluid.multigrid import MAX_COARSEST, Multigrid
from ..grid_fluid.pressure import PressureProjection, ViscousDiffusion
from ..grid_fluid.solver import SolverGridFluid, check_solver_options
from .model import GridFluid3DControl, GridFluid3DModel, GridFluid3DState

__all__ = ["SolverGridFluid3D", "project3d"]

_NAMES = ("velocity_x", "velocity_y", "velocity_z")
PRECONDITIONERS_3D = ("auto", "jacobi", "incomplete_cholesky", "multigrid")


class _Project3DFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, projection: PressureProjection, u, v, w, area_x, area_y, area_z):
        outs = projection.project(u.detach(), v.detach(), w.detach())
        ctx.projection = projection
        ctx.save_for_backward(*outs)
        return outs

    @staticmethod
    def backward(ctx, *grads):
        projection = ctx.projection
        projected = ctx.saved_tensors
        grads = [torch.zeros_like(m) if g is None else g.contiguous() for g, m in zip(grads, projection.masks)]
        psi = projection.adjoint_pressure(*grads)
        grad_velocity = projection.project_adjoint(*grads, psi=psi)
        grad_area = [None, None, None]
        if any(ctx.needs_input_grad[4:7]):
            # d/dA of m (u - G M^-1 G^T A u) against g is -(G psi) (u - G p) = -(G psi) u' per face
            gradient = projection.pressure_gradient(psi)
            grad_area = [-g * out for g, out in zip(gradient, projected)]
        return (None, *grad_velocity, *grad_area)


def project3d(projection: PressureProjection, u, v, w, areas=None):
    """Divergence-free part of (u, v, w); differentiable by one adjoint solve, also with respect to
    ``areas`` (the face open fractions the projection was built from, as differentiable tensors)."""
    areas = areas if areas is not None else projection.areas
    return _Project3DFunction.apply(projection, u, v, w, *areas)


class SolverGridFluid3D:
    """Eulerian smoke on a 3D staggered grid with a tolerance-driven PCG pressure projection.

    Args:
        model: the domain (geometry, boundaries and the obstacles' face fractions are read once,
            here; with ``model.obstacle_center`` requiring grad, each step recomputes the
            fractions as differentiable tensors for the backward pass).
        backend: ``"warp"`` or ``"taichi"``; both run the same numerics.
        device: ``"cpu"`` or ``"cuda"``; default: the model's.
        dtype: ``torch.float32`` or ``torch.float64``; default: the model's.
        advection: velocity (and default density) scheme, one of ADVECTION_SCHEMES.
        density_advection: one of DENSITY_ADVECTION_SCHEMES; "conservative" keeps total density
            to round-off in a closed box. Default: ``advection``.
        pressure_tolerance: relative residual of the pressure (and viscosity) solve (default 1e-5
            in float32, 1e-10 in float64).
        max_iterations: cap on CG iterations per solve (default 20 * max(n) + 200).
        preconditioner: of the pressure CG: "multigrid" (a V-cycle, see grid_fluid/multigrid.py; needs
            cell counts that halve evenly), "jacobi", "incomplete_cholesky" (MIC(0), serial sweeps:
            about 3x fewer iterations than Jacobi) or "auto" (multigrid where the grid allows it,
            else incomplete Cholesky on CPU and Jacobi on CUDA).
        cfl_limit: warn when max|u| dt / dx exceeds it.
        check_finite: raise SimulationError when a step produces non-finite values.
    """

    def __init__(self, model: GridFluid3DModel, *, backend: str = "warp", device: str | None = None,
                 dtype: torch.dtype | None = None, advection: str = "semi_lagrangian",
                 density_advection: str | None = None, pressure_tolerance: float | None = None,
                 max_iterations: int | None = None, preconditioner: str = "auto", cfl_limit: float = 1.0,
                 check_finite: bool = True):
        density_advection, dtype = check_solver_options(backend=backend, advection=advection,
                                                        density_advection=density_advection,
                                                        preconditioner=preconditioner,
                                                        preconditioners=PRECONDITIONERS_3D, dtype=dtype or model.dtype)
        device = backends.resolve_device(device) if device is not None else str(model.device)
        self.model, self.backend, self.device, self.dtype = model, backend, device, dtype
        self.advection, self.density_advection = advection, density_advection
        self.cfl_limit, self.check_finite = float(cfl_limit), check_finite
        self._launcher = launcher_for(backend, "cuda" if device.startswith("cuda") else device, dtype, 3)
        nx, ny, nz = model.cell_count
        self.cell_dim, self.face_dim = (nx, ny, nz), (nx + 1, ny + 1, nz + 1)
        self._flags = model.boundary_flags
        self._grid = (self._flags, nx, ny, nz)  # the trailing scalars of every differentiable kernel
        self._dx = float(model.cell_size)
        tolerance = pressure_tolerance if pressure_tolerance is not None else (1e-5 if dtype == torch.float32 else 1e-10)
        max_iterations = int(max_iterations) if max_iterations is not None else 20 * max(nx, ny, nz) + 200
        self._to = dict(dtype=dtype, device=device)
        with torch.no_grad():  # from the obstacles' current centres (they may have been set after finalize)
            areas = model.face_fractions()
        self._areas = tuple(a.detach().to(**self._to).contiguous() for a in areas)
        if preconditioner == "auto":
            preconditioner = ("multigrid" if nx * ny * nz >= 16 ** 3 and Multigrid.supports((nx, ny, nz)) else
                              "jacobi" if device.startswith("cuda") else "incomplete_cholesky")
        elif preconditioner == "multigrid" and not Multigrid.supports((nx, ny, nz)):
            raise HybridsimError(f"the multigrid preconditioner needs cell counts that halve evenly down to at most "
                                 f"{MAX_COARSEST} cells; {nx}x{ny}x{nz} does not (use 'auto')", field="preconditioner")
        for axis, area in enumerate(self._areas):
            if tuple(area.shape) != model.face_shape(axis):
                raise HybridsimError(f"face_fraction_{'xyz'[axis]} has shape {tuple(area.shape)}; expected "
                                     f"{model.face_shape(axis)}", field=f"face_fraction_{'xyz'[axis]}")
        self.projection = PressureProjection(self._launcher, *self._areas, cell_size=self._dx, flags=self._flags,
                                             singular=model.pressure_is_singular, tolerance=tolerance,
                                             max_iterations=max_iterations, preconditioner=preconditioner)
        self.diffusion = ViscousDiffusion(self._launcher, *self.projection.masks, cell_size=self._dx,
                                          flags=self._flags, tolerance=tolerance, max_iterations=max_iterations)
        self._zero_acceleration = tuple(torch.zeros(shape, **self._to) for shape in model.face_shapes)
        self._origin = torch.tensor(model.origin, **self._to)
        self._cfl_warned = False

    # ------------------------------------------------------------------ public API
    def step(self, state_in: GridFluid3DState, state_out: GridFluid3DState, control: GridFluid3DControl | None,
             dt: float) -> None:
        """Advance ``state_in`` by ``dt`` seconds into ``state_out`` (no autograd)."""
        with torch.no_grad():
            new = self._advance(state_in, control, float(dt))
            for out, value in zip(state_out.tensors(), new.tensors()):
                out.copy_(value)
            if new.temperature is not None and state_out.temperature is not None:
                state_out.temperature.copy_(new.temperature)
            else:
                state_out.temperature = new.temperature
        state_out.step_count, state_out.time = new.step_count, new.time

    def step_differentiable(self, state: GridFluid3DState, control: GridFluid3DControl | None,
                            dt: float) -> GridFluid3DState:
        """Advance ``state`` by ``dt``; a torch autograd op over state, control and model tensors
        (buoyancy, vorticity, viscosity, inflow centres and rates, obstacle centres)."""
        return self._advance(state, control, float(dt))

    def project(self, u: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The divergence-free part of a face velocity field (differentiable, adjoint solve)."""
        self._check_shapes(u, v, w)
        return project3d(self.projection, *(f.to(self.dtype) for f in (u, v, w)), self._live_areas())

    def divergence(self, u: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Area-weighted divergence per cell [1/s], shape (nx, ny, nz) (not differentiable)."""
        self._check_shapes(u, v, w)
        return self.projection.divergence(*(f.detach().to(self.dtype) for f in (u, v, w)))

    # ------------------------------------------------------------------ the step
    # one kernel launch as an autograd op, and a model coefficient checked and cast: the 2D solver's
    _phase = SolverGridFluid._phase
    _coefficient = SolverGridFluid._coefficient

    def _live_areas(self) -> tuple[torch.Tensor, ...]:
        """The face fractions as differentiable tensors when an obstacle centre needs a gradient
        (the same values the solves were built from), else the fixed ones."""
        model = self.model
        if model.obstacle_count and model.obstacle_center.requires_grad and torch.is_grad_enabled():
            return tuple(a.to(**self._to) for a in model.face_fractions())
        return self._areas

    def _advance(self, state: GridFluid3DState, control: GridFluid3DControl | None, dt: float) -> GridFluid3DState:
        model, dx = self.model, self._dx
        control = control or GridFluid3DControl()
        u, v, w, density = (t.to(self.dtype) for t in state.tensors())
        self._check_shapes(u, v, w, density)
        self._check_cfl((u, v, w), dt, state.step_count)
        shapes, cells = tuple(tuple(f.shape) for f in (u, v, w)), tuple(density.shape)
        areas = self._live_areas()
        masks = self.projection.masks
        temperature = None
        if model.has_temperature:
            ambient = self._coefficient(model.ambient_temperature, "ambient_temperature", (1,))
            temperature = ambient.expand(cells) if state.temperature is None else state.temperature.to(self.dtype)
            self._check_shapes(u, v, w, temperature)

        # 1. sources (kernels work in grid coordinates: centres relative to the low corner)
        source_count = model.inflow_count
        if source_count:
            rate = control.inflow_rate if control.inflow_rate is not None else model.inflow_rate
            center = self._coefficient(model.inflow_center, "inflow_center", (source_count, 3)) - self._origin
            (density,) = self._phase(("add_inflow", source_count), self.cell_dim, (dx, dt), (cells,), density,
                                     center.contiguous(),
                                     self._coefficient(model.inflow_size, "inflow_size", (source_count, 3)),
                                     self._coefficient(rate, "inflow_rate", (source_count,)),
                                     self._coefficient(model.inflow_is_box, "inflow_is_box", (source_count,)))
            if temperature is not None and float(model.inflow_heats.detach().sum()) > 0:
                (temperature,) = self._phase(
                    ("heat_inflow", source_count), self.cell_dim, (dx,), (cells,), temperature, center.contiguous(),
                    self._coefficient(model.inflow_size, "inflow_size", (source_count, 3)),
                    self._coefficient(model.inflow_temperature, "inflow_temperature", (source_count,)),
                    self._coefficient(model.inflow_heats, "inflow_heats", (source_count,)),
                    self._coefficient(model.inflow_is_box, "inflow_is_box", (source_count,)))

        # 2. transport by the start-of-step velocity
        velocities = self._advect_velocity((u, v, w), dt, masks)
        density = self._advect_density(density, (u, v, w), dt, areas)
        if temperature is not None:
            temperature = self._advect_density(temperature, (u, v, w), dt, areas)
            cooling = self._coefficient(model.cooling_rate, "cooling_rate", (1,))
            if cooling.requires_grad or float(cooling.detach()[0]) != 0.0:
                (temperature,) = self._phase("cool_temperature", self.cell_dim, (dt,), (cells,), temperature, ambient,
                                             cooling)

        # 3. body forces
        accelerations = [a.to(self.dtype) if a is not None else zero for a, zero in
                         zip((control.acceleration_x, control.acceleration_y, control.acceleration_z),
                             self._zero_acceleration)]
        up = tuple(-g for g in model.gravity_direction)
        velocities = self._phase("add_buoyancy", self.face_dim, (*up, dt, *self._grid), shapes, *velocities, density,
                                 *accelerations, self._coefficient(model.buoyancy, "buoyancy", (1,)))
        if temperature is not None:
            velocities = self._phase("add_temperature_buoyancy", self.face_dim, (*up, dt, *self._grid), shapes,
                                     *velocities, temperature,
                                     self._coefficient(model.temperature_buoyancy, "temperature_buoyancy", (1,)),
                                     ambient)
        strength = self._coefficient(model.vorticity_strength, "vorticity_strength", (1,))
        if strength.requires_grad or float(strength.detach()[0]) != 0.0:
            vorticity = self._phase("curl", self.cell_dim, (dx, *self._grid), (cells,) * 3, *velocities)
            velocities = self._phase("confine_vorticity", self.face_dim, (dx, dt, *self._grid), shapes, *velocities,
                                     *vorticity, strength)

        # 4. viscosity (implicit)
        viscosity = self._coefficient(model.viscosity, "viscosity", (1,))
        if viscosity.requires_grad or float(viscosity.detach()[0]) != 0.0:
            velocities = diffuse(self.diffusion, dt, viscosity, *velocities)

        # 5. incompressibility
        velocities = project3d(self.projection, *velocities, areas)

        new = GridFluid3DState(*velocities, density, state.step_count + 1, float(state.time) + dt, temperature)
        if self.check_finite:
            self._check_finite_state(new)
        return new

    def _advect_velocity(self, velocities, dt, masks):
        dim, scalars = self.face_dim, (self._dx, dt, *self._grid)
        shapes = tuple(tuple(f.shape) for f in velocities)
        forward = self._phase("advect_velocity", dim, scalars, shapes, *velocities, *velocities, *masks)
        if self.advection == "semi_lagrangian":
            return forward
        back = self._phase("advect_velocity", dim, (self._dx, -dt, *self._grid), shapes, *forward, *velocities, *masks)
        return self._phase("correct_velocity", dim, scalars, shapes, *velocities, *forward, *back, *masks)

    def _advect_density(self, density, velocities, dt, areas):
        cells, dim, scalars = (tuple(density.shape),), self.cell_dim, (self._dx, dt, *self._grid)
        if self.density_advection == "conservative":
            (out,) = self._phase("advect_conservative", dim, scalars, cells, density, *velocities, *areas)
            return out
        (forward,) = self._phase("advect_scalar", dim, scalars, cells, density, *velocities)
        if self.density_advection == "semi_lagrangian":
            return forward
        (back,) = self._phase("advect_scalar", dim, (self._dx, -dt, *self._grid), cells, forward, *velocities)
        (out,) = self._phase("correct_scalar", dim, scalars, cells, density, forward, back, *velocities)
        return out

    # ------------------------------------------------------------------ guards
    def _check_shapes(self, u, v, w, density=None) -> None:
        expected = (*self.model.face_shapes, self.model.cell_count)
        for name, tensor, shape in zip((*_NAMES, "density"), (u, v, w, density), expected):
            if tensor is not None and tuple(tensor.shape) != tuple(shape):
                raise HybridsimError(f"{name} has shape {tuple(tensor.shape)}; this model expects {tuple(shape)}",
                                     field=name)

    def _check_cfl(self, velocities, dt: float, step: int) -> None:
        if self.cfl_limit <= 0:
            return
        speed = max(float(f.detach().abs().max()) for f in velocities)
        cfl = speed * abs(dt) / self._dx
        if cfl > self.cfl_limit and not self._cfl_warned:
            self._cfl_warned = True
            warnings.warn(
                f"3D grid fluid step {step + 1}: CFL number max|u| dt / dx = {cfl:.3f} exceeds {self.cfl_limit:g}; "
                f"lower dt (substeps) to about {self.cfl_limit * self._dx / max(speed, 1e-30):.3g} s or coarsen the grid "
                "(advection loses accuracy and MacCormack / conservative transport can oscillate)",
                RuntimeWarning, stacklevel=4)

    def _check_finite_state(self, state: GridFluid3DState) -> None:
        named = list(zip((*_NAMES, "density"), state.tensors()))
        if state.temperature is not None:
            named.append(("temperature", state.temperature))
        if bool(torch.isfinite(sum(t.detach().sum() for _, t in named))):
            return
        bad = [name for name, tensor in named if not bool(torch.isfinite(tensor.detach()).all())]
        if bad:
            raise SimulationError(
                f"non-finite {' and '.join(bad)} after the step; lower dt (check the CFL warning), the inflow rate "
                "or the buoyancy, or check the initial state", step=state.step_count, quantity=", ".join(bad))
