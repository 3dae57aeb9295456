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

Moving obstacles (``model.obstacle_velocity``, prescribed translation) as in 2D: the face
fractions and solid face velocities u_s are recomputed at the start and end of every step;
conservative transport uses the start geometry's composite flux A u + (1 - A) u_s, velocity
advection, viscosity and projection the end geometry (the projection makes div(A u + (1 - A) u_s)
vanish on fluid cells, and covered faces get u_s).

The kernel phases, the solves and their adjoints are the 2D solver's Python (autograd.py,
pressure.py, launch.py), run on the 3D kernels (kernels/*/grid_fluid3d.py). With a temperature
field (``model.has_temperature``) heating sources set it in step 1, it is advected like density
and cools exponentially in step 2, and step 3 adds the Boussinesq lift
``temperature_buoyancy * (T - ambient)``, as in 2D.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

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
    def forward(ctx, projection: PressureProjection, u, v, w, area_x, area_y, area_z, solid_x, solid_y, solid_z):
        solid = None if solid_x is None else tuple(s.detach().contiguous() for s in (solid_x, solid_y, solid_z))
        outs = projection.project(u.detach(), v.detach(), w.detach(), solid=solid)
        ctx.projection, ctx.has_solid = projection, solid is not None
        ctx.save_for_backward(*outs, *(solid or ()))
        return outs

    @staticmethod
    def backward(ctx, *grads):
        projection = ctx.projection
        saved = ctx.saved_tensors
        projected, solid = saved[:3], (saved[3:6] if ctx.has_solid else None)
        grads = [torch.zeros_like(m) if g is None else g.contiguous() for g, m in zip(grads, projection.masks)]
        needs = ctx.needs_input_grad  # (projection, u, v, w, area x3, solid x3)
        psi = projection.adjoint_pressure(*grads)
        grad_velocity = projection.project_adjoint(*grads, psi=psi)
        grad_area, grad_solid = [None, None, None], [None, None, None]
        if any(needs[4:10]):
            psi = (psi * projection.fluid_cells).contiguous()
        if any(needs[4:7]):
            # d/dA of m (u - G M^-1 G^T (A u + (1 - A) u_s)) against g is -(G psi) (u' - u_s) per face
            gradient = projection.pressure_gradient(psi)
            grad_area = [-g * (out if solid is None else out - s) for g, out, s in
                         zip(gradient, projected, solid or (None,) * 3)]
        if any(needs[7:10]):
            zeros = tuple(torch.zeros_like(g) for g in grads)
            sub = projection._subtract_gradient(zeros, psi, tuple(1.0 - a for a in projection.areas))
            grad_solid = [s + (1.0 - m) * g for s, m, g in zip(sub, projection.masks, grads)]
        return (None, *grad_velocity, *grad_area, *grad_solid)


def project3d(projection: PressureProjection, u, v, w, areas=None, solid=None):
    """Divergence-free part of (u, v, w) (of the composite flux A u + (1 - A) u_s with moving
    ``solid`` face velocities (u_s, v_s, w_s)); differentiable by one adjoint solve, also with
    respect to ``areas`` (the face open fractions the projection was built from, as
    differentiable tensors) and ``solid``."""
    areas = areas if areas is not None else projection.areas
    solid = solid if solid is not None else (None, None, None)
    return _Project3DFunction.apply(projection, u, v, w, *areas, *solid)


class SolverGridFluid3D:
    """Eulerian smoke on a 3D staggered grid with a tolerance-driven PCG pressure projection.

    Args:
        model: the domain (geometry, boundaries and static obstacles' face fractions are read
            once, here; with moving obstacles (``model.obstacle_velocity``) each step computes the
            fractions and solid face velocities where they are at its start and end; with
            ``model.obstacle_center`` or ``obstacle_velocity`` requiring grad, each step recomputes
            them as differentiable tensors for the backward pass).
        backend: ``"warp"`` or ``"taichi"``; both run the same numerics.
        device: ``"cpu"`` or ``"cuda"``; default: the model's.
        dtype: ``torch.float32`` or ``torch.float64``; default: the model's.
        advection: velocity (and default density) scheme, one of ADVECTION_SCHEMES.
        density_advection: one of DENSITY_ADVECTION_SCHEMES; "conservative" keeps total density
            to round-off in a closed box. Default: ``advection``.
        pressure_tolerance: relative residual of the pressure (and viscosity) solve (default 1e-5
            in float32, 1e-10 in float64); the projection also refines until the max-norm
            divergence max |div| dx / max |u'| is below it (the max-norm stop of grid_fluid/pressure.py,
            shared with 2D).
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
        self._moving = model.has_moving_obstacles
        if preconditioner == "auto":  # (moving obstacles rebuild the solves every step: no multigrid on CPU)
            preconditioner = ("multigrid" if nx * ny * nz >= 16 ** 3 and Multigrid.supports((nx, ny, nz))
                              and not (self._moving and not device.startswith("cuda")) else
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
        self._solve_options = dict(tolerance=tolerance, max_iterations=max_iterations, preconditioner=preconditioner)
        self._geometries: dict[float, SimpleNamespace] = {}
        self._ones = tuple(torch.ones(shape, **self._to) for shape in model.face_shapes)
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

    def project(self, u: torch.Tensor, v: torch.Tensor, w: torch.Tensor,
                time: float | None = None) -> tuple[torch.Tensor, ...]:
        """The divergence-free part of a face velocity field (differentiable, adjoint solve); with
        moving obstacles and a ``time`` [s], against the obstacles there (covered faces get their
        velocity)."""
        self._check_shapes(u, v, w)
        velocities = tuple(f.to(self.dtype) for f in (u, v, w))
        geometry = self._live_geometry(self._geometry(time), time) if time is not None else None
        if geometry is None:
            return project3d(self.projection, *velocities, self._live_areas())
        return project3d(geometry.projection, *velocities, geometry.areas, geometry.solid)

    def divergence(self, u: torch.Tensor, v: torch.Tensor, w: torch.Tensor, time: float | None = None) -> torch.Tensor:
        """Area-weighted divergence per cell [1/s], shape (nx, ny, nz) (not differentiable); with
        moving obstacles and a ``time``: of the composite flux A u + (1 - A) u_s with the obstacles
        there."""
        self._check_shapes(u, v, w)
        velocities = tuple(f.detach().to(self.dtype) for f in (u, v, w))
        geometry = self._geometry(time) if time is not None else None
        if geometry is None:
            return self.projection.divergence(*velocities)
        return geometry.projection.divergence(*velocities) + geometry.projection.solid_divergence(*geometry.solid)

    def _geometry(self, time: float) -> SimpleNamespace | None:
        """Face fractions, solid face velocities and the solves with the moving obstacles at ``time``
        (None without moving obstacles); the start and end of the last steps are cached."""
        if not self._moving:
            return None
        time = float(time)
        geometry = self._geometries.get(time)
        if geometry is None:
            with torch.no_grad():  # the values; ``_live_geometry`` adds the graph to the obstacles' motion
                faces = tuple(t.detach().to(**self._to).contiguous() for t in self.model.obstacle_faces(time))
            projection = PressureProjection(self._launcher, *faces[:3], cell_size=self._dx, flags=self._flags,
                                             singular=self.model.pressure_is_singular, **self._solve_options)
            options = {k: v for k, v in self._solve_options.items() if k != "preconditioner"}
            diffusion = ViscousDiffusion(self._launcher, *projection.masks, cell_size=self._dx, flags=self._flags,
                                         **options)
            geometry = SimpleNamespace(areas=faces[:3], solid=faces[3:], projection=projection, diffusion=diffusion)
            while len(self._geometries) >= 4:
                self._geometries.pop(next(iter(self._geometries)))
            self._geometries[time] = geometry
        return geometry

    def _live_geometry(self, geometry: SimpleNamespace | None, time: float) -> SimpleNamespace | None:
        """``geometry`` with its fractions and solid velocities recomputed as tensors differentiable
        in the obstacles' centres and velocities, when one needs a gradient."""
        if geometry is None or not (self.model.obstacle_pose_requires_grad and torch.is_grad_enabled()):
            return geometry
        faces = tuple(t.to(**self._to).contiguous() for t in self.model.obstacle_faces(float(time)))
        return SimpleNamespace(areas=faces[:3], solid=faces[3:], projection=geometry.projection,
                               diffusion=geometry.diffusion)

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
        time = float(state.time)
        start, end = (self._live_geometry(self._geometry(t), t) for t in (time, time + dt))
        projection = end.projection if end is not None else self.projection
        diffusion = end.diffusion if end is not None else self.diffusion
        areas = self._live_areas() if end is None else end.areas
        # conservative transport through faces cut by moving solids: the composite flux, unit areas
        flux = None if start is None else tuple(a * f + (1.0 - a) * s for a, f, s in
                                                zip(start.areas, (u, v, w), start.solid))
        masks = projection.masks
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
        transport = (flux, self._ones) if flux is not None and self.density_advection == "conservative" else \
            ((u, v, w), areas)
        density = self._advect_density(density, transport[0], dt, transport[1])
        if temperature is not None:
            temperature = self._advect_density(temperature, transport[0], dt, transport[1])
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
            velocities = diffuse(diffusion, dt, viscosity, *velocities)

        # 5. incompressibility (against the obstacles where they are at the end of the step)
        velocities = project3d(projection, *velocities, areas, end.solid if end is not None else None)
        self.last_projection = projection

        new = GridFluid3DState(*velocities, density, state.step_count + 1, time + dt, temperature)
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
