"""SolverGridFluid: one 2D smoke step as a list of kernel phases, on Warp or Taichi.

A step, in order (each phase one kernel or one solve, each an autograd op):
1. ``add_inflow``: sources add density at rate x soft coverage x dt;
2. ``advect``: density and velocity by the start-of-step velocity (semi-Lagrangian with an RK2
   backtrace, or MacCormack with a clamping limiter; density also in conservative flux form);
3. ``add_buoyancy`` (+ control accelerations), ``curl`` + ``confine_vorticity``;
4. implicit viscosity (a CG solve);
5. pressure projection (a CG solve to a tolerance; adjoint solve in backward, which also gives
   the gradient with respect to the face open fractions and solid face velocities, hence the
   obstacles' poses: ``model.obstacle_center`` / ``obstacle_angle``, and driven bodies' poses).

With a temperature field (``model.has_temperature``): heating sources set it in step 1, it is
advected like density in step 2 and then cools exponentially towards the ambient temperature,
and step 3 adds the Boussinesq lift ``temperature_buoyancy * (T - ambient)``. With moving
obstacles the face fractions and solid face velocities are recomputed at the start and end of
every step: transport uses the start geometry (the conservative scheme the composite flux
A u + (1 - A) u_s), viscosity and projection the end geometry (solid faces get u_s).

``step(state_in, state_out, control, dt)`` runs it without autograd and writes ``state_out``;
``step_differentiable(state, control, dt)`` returns a new state that torch can differentiate
with respect to the state, the control and the model's learnable tensors. Neither mutates its
input state. Where no autograd graph is recorded (``step``, or nothing requires grad), steps 1-3
run forward-only: static sources add a cached increment, MacCormack scalars take two fused
launches instead of three, and semi-Lagrangian velocity transport and buoyancy one, with the
same values bit for bit as the differentiable phases.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import torch

from ... import backends
from ...errors import HybridsimError, SimulationError
from .autograd import KernelPhase, diffuse, kernel_phase, project
from .bodies import body_face_geometry, project_with_pressure
from .launch import launcher_for
from .model import GridFluidControl, GridFluidModel, GridFluidState
from .multigrid import MAX_COARSEST, Multigrid
from .pressure import PressureProjection, ViscousDiffusion

__all__ = ["SolverGridFluid", "ADVECTION_SCHEMES", "DENSITY_ADVECTION_SCHEMES", "PRECONDITIONERS"]

ADVECTION_SCHEMES = ("semi_lagrangian", "maccormack")
DENSITY_ADVECTION_SCHEMES = ADVECTION_SCHEMES + ("conservative",)
PRECONDITIONERS = ("auto", "jacobi", "incomplete_cholesky", "multigrid")


def check_solver_options(*, backend: str, advection: str, density_advection: str | None, preconditioner: str,
                         preconditioners: tuple[str, ...], dtype: torch.dtype) -> tuple[str, torch.dtype]:
    """Validate a grid fluid solver's options (2D and 3D); returns (density_advection, dtype)."""
    if backend not in ("warp", "taichi"):
        raise HybridsimError(f"unknown backend {backend!r}; expected 'warp' or 'taichi'", field="backend")
    if advection not in ADVECTION_SCHEMES:
        raise HybridsimError(f"unknown advection {advection!r}; expected one of {ADVECTION_SCHEMES}", field="advection")
    density_advection = density_advection or advection
    if density_advection not in DENSITY_ADVECTION_SCHEMES:
        raise HybridsimError(f"unknown density_advection {density_advection!r}; expected one of "
                             f"{DENSITY_ADVECTION_SCHEMES}", field="density_advection")
    if preconditioner not in preconditioners:
        raise HybridsimError(f"unknown preconditioner {preconditioner!r}; expected one of {preconditioners}",
                             field="preconditioner")
    if dtype not in (torch.float32, torch.float64):
        raise HybridsimError(f"dtype must be torch.float32 or torch.float64, got {dtype}", field="dtype")
    return density_advection, dtype


def _auto_preconditioner(cells: tuple[int, int], device: str, moving: bool) -> str:
    """Multigrid on grids of 64^2 cells and more that halve evenly (a handful of iterations at any
    size; with moving obstacles its hierarchy would be rebuilt every step, so MIC(0) on CPU
    there); else MIC(0) on CPU (serial sweeps, several times fewer iterations than Jacobi) and
    Jacobi on CUDA. Small grids gain nothing from multigrid."""
    if cells[0] * cells[1] >= 64 * 64 and Multigrid.supports(cells) and not (moving and not device.startswith("cuda")):
        return "multigrid"
    return "jacobi" if device.startswith("cuda") else "incomplete_cholesky"


class SolverGridFluid:
    """Eulerian smoke on a staggered grid with a tolerance-driven PCG pressure projection.

    Args:
        model: the domain and its coefficients (learnable tensors may require grad; the
            geometry, boundaries and face fractions are read once, here, the fractions from the
            obstacles' current ``obstacle_center`` / ``obstacle_angle``; with one of those
            requiring grad, each step recomputes the fractions (and moving obstacles' solid face
            velocities) as differentiable tensors, so gradients reach the obstacles' poses).
        backend: ``"warp"`` or ``"taichi"``; both run the same numerics.
        device: ``"cpu"`` or ``"cuda"``; default: the model's.
        dtype: ``torch.float32`` or ``torch.float64``; default: the model's.
        advection: velocity (and default density) scheme, one of ADVECTION_SCHEMES.
        density_advection: density scheme, one of DENSITY_ADVECTION_SCHEMES ("conservative"
            keeps total density to round-off in a closed box); default: ``advection``.
        pressure_tolerance: relative residual of the pressure solve (default 1e-5 in float32,
            1e-10 in float64); also the residual of the viscosity solve.
        max_iterations: cap on CG iterations per solve (default 20 * max(nx, ny) + 200).
        preconditioner: of the pressure CG: "multigrid" (a V-cycle, see multigrid.py: a handful of
            iterations at any size; needs cell counts that halve evenly), "jacobi",
            "incomplete_cholesky" (MIC(0), serial
            sweeps) or "auto" (multigrid where the grid allows it and obstacles do not move;
            otherwise incomplete Cholesky on CPU, Jacobi on CUDA).
        cfl_limit: warn when max|u| dt / dx exceeds it.
        check_finite: raise SimulationError when a step produces non-finite values.
    """

    def __init__(self, model: GridFluidModel, *, backend: str = "warp", device: str | None = None,
                 dtype: torch.dtype | None = None, advection: str = "semi_lagrangian",
                 density_advection: str | None = None, pressure_tolerance: float | None = None,
                 max_iterations: int | None = None, preconditioner: str = "auto", cfl_limit: float = 1.0,
                 check_finite: bool = True):
        density_advection, dtype = check_solver_options(backend=backend, advection=advection,
                                                        density_advection=density_advection,
                                                        preconditioner=preconditioner, preconditioners=PRECONDITIONERS,
                                                        dtype=dtype or model.dtype)
        device = backends.resolve_device(device) if device is not None else str(model.device)
        self.model, self.backend, self.device, self.dtype = model, backend, device, dtype
        self.advection, self.density_advection = advection, density_advection
        self.cfl_limit, self.check_finite = float(cfl_limit), check_finite
        self._launcher = launcher_for(backend, "cuda" if device.startswith("cuda") else device, dtype)
        nx, ny = model.cell_count
        self.cell_dim, self.face_dim = (nx, ny), (nx + 1, ny + 1)
        self._flags = model.boundary_flags
        self._grid = (self._flags, nx, ny)  # the trailing scalars of every differentiable kernel
        self._dx = float(model.cell_size)
        tolerance = pressure_tolerance if pressure_tolerance is not None else (1e-5 if dtype == torch.float32 else 1e-10)
        max_iterations = int(max_iterations) if max_iterations is not None else 20 * max(nx, ny) + 200
        to = dict(dtype=dtype, device=device)
        areas = (model.face_fraction_x, model.face_fraction_y)
        if model.obstacles:  # from the obstacles' current poses (they may have been set after finalize)
            with torch.no_grad():
                areas = model.face_fractions()
        self._area_x, self._area_y = (a.detach().to(**to).contiguous() for a in areas)
        if tuple(self._area_x.shape) != model.face_shape_x or tuple(self._area_y.shape) != model.face_shape_y:
            raise HybridsimError(f"face fractions have shapes {tuple(self._area_x.shape)} and {tuple(self._area_y.shape)}; "
                                 f"expected {model.face_shape_x} and {model.face_shape_y}", field="face_fraction_x")
        if preconditioner == "auto":
            preconditioner = _auto_preconditioner((nx, ny), device, model.has_moving_obstacles)
        elif preconditioner == "multigrid" and not Multigrid.supports((nx, ny)):
            raise HybridsimError(f"the multigrid preconditioner needs cell counts that halve evenly down to at most "
                                 f"{MAX_COARSEST} cells; {nx}x{ny} does not (use 'auto')", field="preconditioner")
        self.projection = PressureProjection(self._launcher, self._area_x, self._area_y, cell_size=self._dx,
                                             flags=self._flags, singular=model.pressure_is_singular,
                                             tolerance=tolerance, max_iterations=max_iterations,
                                             preconditioner=preconditioner)
        self.diffusion = ViscousDiffusion(self._launcher, self.projection.mask_x, self.projection.mask_y,
                                          cell_size=self._dx, flags=self._flags, tolerance=tolerance,
                                          max_iterations=max_iterations)
        self._zero_acceleration = (torch.zeros(model.face_shape_x, **to), torch.zeros(model.face_shape_y, **to))
        self._cfl_warned = False
        self._inflow_cache = None  # (key, increment): see _inflow_increment
        self._solve_options = dict(tolerance=tolerance, max_iterations=max_iterations, preconditioner=preconditioner)
        self._moving = model.has_moving_obstacles
        self._geometries: dict[float, SimpleNamespace] = {}
        self._ones = (torch.ones(model.face_shape_x, **to), torch.ones(model.face_shape_y, **to))
        #: The projection of the latest step (the end-of-step geometry with moving obstacles).
        self.last_projection = self.projection

    # ------------------------------------------------------------------ public API
    def step(self, state_in: GridFluidState, state_out: GridFluidState, control: GridFluidControl | None,
             dt: float) -> None:
        """Advance ``state_in`` by ``dt`` seconds into ``state_out`` (no autograd)."""
        with torch.no_grad():
            new = self._advance(state_in, control, float(dt))
            state_out.velocity_x.copy_(new.velocity_x)
            state_out.velocity_y.copy_(new.velocity_y)
            state_out.density.copy_(new.density)
            if new.temperature is not None and state_out.temperature is not None:
                state_out.temperature.copy_(new.temperature)
            else:
                state_out.temperature = new.temperature
        state_out.step_count, state_out.time = new.step_count, new.time

    def step_differentiable(self, state: GridFluidState, control: GridFluidControl | None, dt: float) -> GridFluidState:
        """Advance ``state`` by ``dt``; a torch autograd op over state, control and model tensors."""
        return self._advance(state, control, float(dt))

    def project(self, velocity_x: torch.Tensor, velocity_y: torch.Tensor,
                time: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The divergence-free part of a face velocity field (differentiable, adjoint solve). With
        moving obstacles and a ``time`` [s], against the obstacles there (solid faces get their velocity)."""
        self._check_shapes(velocity_x, velocity_y)
        geometry = self._geometry(time) if time is not None else None
        projection = geometry.projection if geometry is not None else self.projection
        self.last_projection = projection
        return project(projection, velocity_x.to(self.dtype), velocity_y.to(self.dtype),
                       geometry.solid if geometry is not None else None)

    def divergence(self, velocity_x: torch.Tensor, velocity_y: torch.Tensor, time: float | None = None) -> torch.Tensor:
        """Area-weighted divergence per cell [1/s], shape (nx, ny) (not differentiable). With moving
        obstacles and a ``time``: of the composite flux A u + (1 - A) u_s with the obstacles there."""
        self._check_shapes(velocity_x, velocity_y)
        u, v = velocity_x.detach().to(self.dtype), velocity_y.detach().to(self.dtype)
        geometry = self._geometry(time) if time is not None else None
        if geometry is None:
            return self.projection.divergence(u, v)
        return geometry.projection.divergence(u, v) + geometry.projection.solid_divergence(*geometry.solid)

    def step_with_bodies(self, state: GridFluidState, control: GridFluidControl | None, dt: float,
                         bodies_start, bodies_end) -> tuple[GridFluidState, torch.Tensor, SimpleNamespace]:
        """Advance ``state`` by ``dt`` with obstacles driven from outside (rigid bodies): transport
        sees ``bodies_start`` (GridFluidBody list at the start of the step), viscosity and projection
        ``bodies_end`` (the same bodies where they are at the end of it); the model's prescribed
        obstacles take part as usual. Returns (new state, the projection's pressure [m^2/s] (nx, ny),
        the end geometry, see ``bodies.body_face_geometry``); a torch autograd op that also flows
        into the bodies' velocities and, where given as tensors, their poses (centre, angle).
        ``bodies.body_impulses`` turns the pressure into loads."""
        time = float(state.time)
        start = self.body_geometry(time, bodies_start, solves=False)  # transport needs no solves
        end = self.body_geometry(time + float(dt), bodies_end)
        new = self._advance(state, control, float(dt), geometry=(start, end))
        return new, end.pressure, end

    def body_geometry(self, time: float, bodies, *, solves: bool = True) -> SimpleNamespace:
        """Face fractions, solid face velocities, owners and (with ``solves``) the pressure and
        viscosity solves with the model's obstacles at ``time`` [s] and the driven ``bodies``
        (GridFluidBody list) where they are given."""
        to = dict(dtype=self.dtype, device=self.device)
        cut = body_face_geometry(self.model, time, bodies)
        area_x, area_y = cut.area_x.to(**to).contiguous(), cut.area_y.to(**to).contiguous()
        cut.solid, cut.driven, cut.pressure = (cut.solid_x.to(**to), cut.solid_y.to(**to)), True, None
        cut.area_x, cut.area_y = area_x, area_y  # differentiable in the bodies' poses (the solves use the values)
        if not solves:
            return cut
        projection = PressureProjection(self._launcher, area_x.detach(), area_y.detach(), cell_size=self._dx,
                                        flags=self._flags,
                                        singular=self.model.pressure_is_singular, **self._solve_options)
        options = {k: v for k, v in self._solve_options.items() if k != "preconditioner"}
        diffusion = ViscousDiffusion(self._launcher, projection.mask_x, projection.mask_y, cell_size=self._dx,
                                     flags=self._flags, **options)
        cut.projection, cut.diffusion = projection, diffusion
        return cut

    def _geometry(self, time: float) -> SimpleNamespace | None:
        """Face fractions, solid face velocities and the solves with the moving obstacles at ``time``."""
        if not self._moving:
            return None
        time = float(time)
        geometry = self._geometries.get(time)
        if geometry is None:
            to = dict(dtype=self.dtype, device=self.device)
            with torch.no_grad():  # the values; ``_live_geometry`` adds the graph to the obstacles' poses
                area_x, area_y, solid_x, solid_y = (t.to(**to).contiguous() for t in self.model.obstacle_faces(time))
            projection = PressureProjection(self._launcher, area_x, area_y, cell_size=self._dx, flags=self._flags,
                                            singular=self.model.pressure_is_singular, **self._solve_options)
            options = {k: v for k, v in self._solve_options.items() if k != "preconditioner"}
            diffusion = ViscousDiffusion(self._launcher, projection.mask_x, projection.mask_y, cell_size=self._dx,
                                         flags=self._flags, **options)
            geometry = SimpleNamespace(area_x=area_x, area_y=area_y, solid=(solid_x, solid_y), projection=projection,
                                       diffusion=diffusion)
            while len(self._geometries) >= 4:  # the start and end of the last steps
                self._geometries.pop(next(iter(self._geometries)))
            self._geometries[time] = geometry
        return geometry

    def _pose_gradients(self) -> bool:
        return self.model.obstacle_pose_requires_grad and torch.is_grad_enabled()

    def _live_areas(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The static face fractions as tensors differentiable in the obstacles' poses (the values
        the solves were built from) when a pose needs a gradient, else None."""
        if not self._pose_gradients():
            return None
        to = dict(dtype=self.dtype, device=self.device)
        return tuple(a.to(**to).contiguous() for a in self.model.face_fractions())

    def _live_geometry(self, geometry: SimpleNamespace | None, time: float) -> SimpleNamespace | None:
        """``geometry`` (moving obstacles at ``time``) with its fractions and solid velocities
        recomputed as tensors differentiable in the obstacles' poses, when a pose needs a gradient
        (fresh every step: a cached graph could be backpropagated through only once)."""
        if geometry is None or not self._pose_gradients():
            return geometry
        to = dict(dtype=self.dtype, device=self.device)
        area_x, area_y, solid_x, solid_y = (t.to(**to).contiguous() for t in self.model.obstacle_faces(float(time)))
        return SimpleNamespace(area_x=area_x, area_y=area_y, solid=(solid_x, solid_y), projection=geometry.projection,
                               diffusion=geometry.diffusion)

    # ------------------------------------------------------------------ the step
    def _phase(self, kernel, dim, scalars, output_shapes, *inputs) -> tuple[torch.Tensor, ...]:
        phase = KernelPhase(self._launcher, kernel, dim, tuple(scalars), tuple(output_shapes))
        return kernel_phase(phase, *inputs)

    def _launch(self, kernel, dim, output_shapes, inputs, scalars) -> tuple[torch.Tensor, ...]:
        """One forward-only kernel launch (no autograd node) into new output tensors."""
        inputs = [t.detach().contiguous() for t in inputs]
        outputs = [inputs[0].new_empty(shape) for shape in output_shapes]
        self._launcher.launch(kernel, dim, inputs, scalars, outputs)
        return tuple(outputs)

    def _inflow_increment(self, source_count: int, dt: float, sources: tuple) -> torch.Tensor:
        """dt x sum of rate x coverage per cell (forward only): what ``add_inflow`` adds, launched on
        zeros, so ``density + increment`` is its value bit for bit. Cached while dt and the sources'
        values (a few numbers per source) stay the same: static sources cost one add per step."""
        key = (source_count, dt, tuple(torch.cat([s.detach().reshape(-1) for s in sources]).tolist()))
        cached = self._inflow_cache
        if cached is None or cached[0] != key:
            zeros = torch.zeros(self.cell_dim, dtype=self.dtype, device=self.device)
            (increment,) = self._launch(("add_inflow", source_count), self.cell_dim, (self.cell_dim,),
                                        (zeros, *sources), (self._dx, dt))
            cached = self._inflow_cache = (key, increment)
        return cached[1]

    @staticmethod
    def _forward_only(*tensors) -> bool:
        """Whether no autograd graph is recorded through these tensors: then transport and buoyancy
        run as fused forward-only kernels (MacCormack scalars in two launches instead of three,
        semi-Lagrangian velocity transport and buoyancy in one), which give the same values bit for
        bit as the separate differentiable phases."""
        return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)

    def _coefficient(self, value: torch.Tensor, name: str, shape: tuple) -> torch.Tensor:
        value = value.to(dtype=self.dtype, device=self.device)
        if tuple(value.shape) != shape:
            raise HybridsimError(f"{name} must have shape {shape}, got {tuple(value.shape)}", field=name)
        return value

    def _advance(self, state: GridFluidState, control: GridFluidControl | None, dt: float,
                 geometry: tuple[SimpleNamespace, SimpleNamespace] | None = None) -> GridFluidState:
        model, dx = self.model, self._dx
        control = control or GridFluidControl()
        u, v, density = (t.to(self.dtype) for t in state.tensors())
        self._check_shapes(u, v, density)
        self._check_cfl(u, v, dt, state.step_count)
        shape_x, shape_y, cells = tuple(u.shape), tuple(v.shape), tuple(density.shape)
        time = float(state.time)
        live = None  # static obstacles' fractions as tensors differentiable in their poses, when needed
        if geometry is None:
            start, end = (self._live_geometry(self._geometry(t), t) for t in (time, time + dt))
            live = self._live_areas() if start is None else None
        else:
            start, end = geometry
        projection = end.projection if end is not None else self.projection
        diffusion = end.diffusion if end is not None else self.diffusion
        flux = None  # conservative transport: the composite flux through faces cut by moving solids
        if start is not None:
            flux = (start.area_x * u + (1.0 - start.area_x) * start.solid[0],
                    start.area_y * v + (1.0 - start.area_y) * start.solid[1], *self._ones)
        elif live is not None:
            flux = (u, v, *live)
        temperature = None
        if model.has_temperature:
            ambient = self._coefficient(model.ambient_temperature, "ambient_temperature", (1,))
            temperature = state.temperature
            temperature = ambient.expand(cells) if temperature is None else temperature.to(self.dtype)
            self._check_shapes(u, v, temperature)

        # 1. sources
        source_count = model.inflow_count
        if source_count:
            rate = control.inflow_rate if control.inflow_rate is not None else model.inflow_rate
            sources = (self._coefficient(model.inflow_center, "inflow_center", (source_count, 2)),
                       self._coefficient(model.inflow_size, "inflow_size", (source_count, 2)),
                       self._coefficient(rate, "inflow_rate", (source_count,)),
                       self._coefficient(model.inflow_is_box, "inflow_is_box", (source_count,)))
            if self._forward_only(density, *sources):
                density = density + self._inflow_increment(source_count, dt, sources)
            else:
                (density,) = self._phase(("add_inflow", source_count), self.cell_dim, (dx, dt), (cells,), density,
                                         *sources)
            if temperature is not None and float(model.inflow_heats.detach().sum()) > 0:
                (temperature,) = self._phase(
                    ("heat_inflow", source_count), self.cell_dim, (dx,), (cells,), temperature,
                    self._coefficient(model.inflow_center, "inflow_center", (source_count, 2)),
                    self._coefficient(model.inflow_size, "inflow_size", (source_count, 2)),
                    self._coefficient(model.inflow_temperature, "inflow_temperature", (source_count,)),
                    self._coefficient(model.inflow_heats, "inflow_heats", (source_count,)),
                    self._coefficient(model.inflow_is_box, "inflow_is_box", (source_count,)))

        # 2. transport by the start-of-step velocity (velocity after the scalars: without autograd it
        # fuses with the buoyancy of the new density, see _forward_only)
        acceleration_x = control.acceleration_x if control.acceleration_x is not None else self._zero_acceleration[0]
        acceleration_y = control.acceleration_y if control.acceleration_y is not None else self._zero_acceleration[1]
        buoyancy = self._coefficient(model.buoyancy, "buoyancy", (1,))
        # (the flux may carry gradients to obstacle / body poses and velocities: then no fusion)
        fused = self._forward_only(u, v, density, temperature, acceleration_x, acceleration_y, buoyancy,
                                   *(flux if flux is not None and self.density_advection == "conservative" else ()))
        density = self._advect_density(density, u, v, dt, flux, fused=fused)
        if temperature is not None:
            temperature = self._advect_density(temperature, u, v, dt, flux, fused=fused)
            cooling = self._coefficient(model.cooling_rate, "cooling_rate", (1,))
            if cooling.requires_grad or float(cooling.detach()[0]) != 0.0:
                (temperature,) = self._phase("cool_temperature", self.cell_dim, (dt,), (cells,), temperature, ambient,
                                             cooling)

        # 3. body forces
        up_x, up_y = (-g for g in model.gravity_direction)
        masks = (projection.mask_x, projection.mask_y)
        accelerations = (acceleration_x.to(self.dtype).contiguous(), acceleration_y.to(self.dtype).contiguous())
        if fused and self.advection == "semi_lagrangian":
            u_new, v_new = self._launch("advect_velocity_buoyancy", self.face_dim, (shape_x, shape_y),
                                        (u, v, *masks, density, *accelerations, buoyancy),
                                        (dx, dt, up_x, up_y, *self._grid))
        else:
            u_new, v_new = self._advect_velocity(u, v, dt, masks, fused=fused)
            u_new, v_new = self._phase("add_buoyancy", self.face_dim, (up_x, up_y, dt, *self._grid),
                                       (shape_x, shape_y), u_new, v_new, density, *accelerations, buoyancy)
        if temperature is not None:
            u_new, v_new = self._phase("add_temperature_buoyancy", self.face_dim, (up_x, up_y, dt, *self._grid),
                                       (shape_x, shape_y), u_new, v_new, temperature,
                                       self._coefficient(model.temperature_buoyancy, "temperature_buoyancy", (1,)),
                                       ambient)
        strength = self._coefficient(model.vorticity_strength, "vorticity_strength", (1,))
        if strength.requires_grad or float(strength.detach()[0]) != 0.0:
            (vorticity,) = self._phase("curl", self.cell_dim, (dx, *self._grid), (cells,), u_new, v_new)
            u_new, v_new = self._phase("confine_vorticity", self.face_dim, (dx, dt, *self._grid), (shape_x, shape_y),
                                       u_new, v_new, vorticity, strength)

        # 4. viscosity (implicit)
        viscosity = self._coefficient(model.viscosity, "viscosity", (1,))
        if viscosity.requires_grad or float(viscosity.detach()[0]) != 0.0:
            u_new, v_new = diffuse(diffusion, dt, viscosity, u_new, v_new)

        # 5. incompressibility (against the obstacles where they are at the end of the step)
        if getattr(end, "driven", False):  # bodies: keep the pressure for their loads
            u_new, v_new, end.pressure = project_with_pressure(projection, u_new, v_new, *end.solid,
                                                               areas=(end.area_x, end.area_y))
        else:
            u_new, v_new = project(projection, u_new, v_new, end.solid if end is not None else None,
                                   (end.area_x, end.area_y) if end is not None else live)
        self.last_projection = projection

        new = GridFluidState(u_new, v_new, density, state.step_count + 1, temperature, time + dt)
        if self.check_finite:
            self._check_finite_state(new)
        return new

    def _advect_velocity(self, u, v, dt, masks, fused=False):
        """Transport the face velocities by themselves; ``fused``: MacCormack as two forward-only
        launches (the same values, no autograd)."""
        shapes, dim, scalars = (tuple(u.shape), tuple(v.shape)), self.face_dim, (self._dx, dt, *self._grid)
        if fused and self.advection == "maccormack":
            outputs = (*shapes, shapes[0], shapes[0], shapes[1], shapes[1])  # forward, u's range, v's range
            u_forward, v_forward, *ranges = self._launch("maccormack_velocity_forward", dim, outputs,
                                                         (u, v, *masks), scalars)
            return self._launch("maccormack_velocity_correct", dim, shapes,
                                (u, v, u_forward, v_forward, *ranges, *masks), scalars)
        u_forward, v_forward = self._phase("advect_velocity", dim, scalars, shapes, u, v, u, v, *masks)
        if self.advection == "semi_lagrangian":
            return u_forward, v_forward
        u_back, v_back = self._phase("advect_velocity", dim, (self._dx, -dt, *self._grid), shapes, u_forward, v_forward,
                                     u, v, *masks)
        return self._phase("correct_velocity", dim, scalars, shapes, u, v, u_forward, v_forward, u_back, v_back, *masks)

    def _advect_density(self, density, u, v, dt, flux=None, fused=False):
        """Transport a cell scalar (density, temperature); ``flux`` = (flux velocities, face weights)
        for the conservative scheme (default: u, v with the static face fractions). ``fused``: run
        MacCormack as two forward-only launches (the same values, no autograd)."""
        cells, dim, scalars = (tuple(density.shape),), self.cell_dim, (self._dx, dt, *self._grid)
        if self.density_advection == "conservative":
            flux = flux if flux is not None else (u, v, self._area_x, self._area_y)
            (out,) = self._phase("advect_conservative", dim, scalars, cells, density, *flux)
            return out
        if fused and self.density_advection == "maccormack":
            forward, lo, hi = self._launch("maccormack_scalar_forward", dim, cells * 3, (density, u, v), scalars)
            (out,) = self._launch("maccormack_scalar_correct", dim, cells, (density, forward, lo, hi, u, v), scalars)
            return out
        (forward,) = self._phase("advect_scalar", dim, scalars, cells, density, u, v)
        if self.density_advection == "semi_lagrangian":
            return forward
        (back,) = self._phase("advect_scalar", dim, (self._dx, -dt, *self._grid), cells, forward, u, v)
        (out,) = self._phase("correct_scalar", dim, scalars, cells, density, forward, back, u, v)
        return out

    # ------------------------------------------------------------------ guards
    def _check_shapes(self, u, v, density=None) -> None:
        expected = (self.model.face_shape_x, self.model.face_shape_y, self.model.cell_count)
        for name, tensor, shape in zip(("velocity_x", "velocity_y", "density"), (u, v, density), expected):
            if tensor is not None and tuple(tensor.shape) != tuple(shape):
                raise HybridsimError(f"{name} has shape {tuple(tensor.shape)}; this model expects {tuple(shape)}",
                                     field=name)

    def _check_cfl(self, u, v, dt: float, step: int) -> None:
        if self.cfl_limit <= 0:
            return
        speed = float(torch.maximum(u.detach().abs().max(), v.detach().abs().max()))
        cfl = speed * abs(dt) / self._dx
        if cfl > self.cfl_limit and not self._cfl_warned:
            self._cfl_warned = True
            warnings.warn(
                f"grid fluid step {step + 1}: CFL number max|u| dt / dx = {cfl:.3f} exceeds {self.cfl_limit:g}; "
                f"lower dt (substeps) to about {self.cfl_limit * self._dx / max(speed, 1e-30):.3g} s or coarsen the grid "
                "(advection loses accuracy and MacCormack / conservative transport can oscillate)",
                RuntimeWarning, stacklevel=4)

    def _check_finite_state(self, state: GridFluidState) -> None:
        named = [("density", state.density), ("velocity_x", state.velocity_x), ("velocity_y", state.velocity_y)]
        if state.temperature is not None:
            named.append(("temperature", state.temperature))
        total = sum(t.detach().sum() for _, t in named)
        if bool(torch.isfinite(total)):
            return
        bad = [name for name, tensor in named if not bool(torch.isfinite(tensor.detach()).all())]
        if bad:
            raise SimulationError(
                f"non-finite {' and '.join(bad)} after the step; lower dt (check the CFL warning), the inflow rate "
                "or the buoyancy, or check the initial state", step=state.step_count, quantity=", ".join(bad))
