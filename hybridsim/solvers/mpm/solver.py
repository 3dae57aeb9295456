"""SolverMPM: one interface over the Warp and Taichi MPM kernels, and the torch autograd bridge.

A substep is two ``torch.autograd.Function`` s with the grid velocity between them:

    particles --ParticleToGrid (p2g, grid_update)--> grid velocity, grid mass
              --grid hooks (torch; e.g. rigid bodies)--> grid velocity
              --GridToParticle (g2p, project_plasticity)--> particles

Each Function's forward launches kernels into fresh tensors (the grid is new every substep, so
nothing is overwritten under autograd); its backward launches the adjoints on the saved inputs
(Warp ``adjoint=True`` launches, Taichi ``kernel.grad``; the plasticity projection has a
hand-written guarded adjoint). Steps never mutate their inputs.

Grid hooks are the boundary interface for two-way coupling: a hook is a callable
``hook(grid: MPMGrid, node_position: Tensor (G, d), dt: float) -> Tensor (G, d)`` returning the
node velocities after its boundary condition, written in torch (differentiable). A rigid body
hook sets the velocity of nodes inside/near the body to the body's velocity and can read the
impulse it applied, ``grid.mass[:, None] * (velocity_out - grid.velocity)``, to push the body back.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ...errors import HybridsimError, SimulationError
from .launchers import LAUNCHERS, launcher
from .model import MPMControl, MPMGrid, MPMModel, MPMParticleParameters, MPMState

__all__ = ["SolverMPM", "GridHook"]

GridHook = Callable[[MPMGrid, torch.Tensor, float], torch.Tensor]
"""hook(grid, node_position [m] (G, d), dt [s]) -> node velocity [m/s] (G, d)."""


def _grid_buffers(launch, node_count: int, dim: int, like: torch.Tensor):
    # momentum and mass must be zero on entry unless the launcher zeroes them itself
    alloc = torch.empty if launch.zeroes_grid else torch.zeros
    momentum = alloc((node_count, dim), dtype=like.dtype, device=like.device)
    mass = alloc(node_count, dtype=like.dtype, device=like.device)
    return momentum, mass, torch.empty((node_count, dim), dtype=like.dtype, device=like.device)


class _ParticleToGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launch, grid, gravity, dt, kind, *inputs):
        inputs = tuple(t.detach().contiguous() for t in inputs)
        node_count, dim = grid.node_count, grid.dim
        momentum, mass, velocity = _grid_buffers(launch, node_count, dim, inputs[0])
        launch.particle_to_grid(grid, gravity, kind, inputs, dt, momentum, mass, velocity)
        ctx.launch, ctx.grid, ctx.gravity, ctx.dt = launch, grid, gravity, dt
        ctx.save_for_backward(kind, momentum, mass, *inputs)
        return velocity, mass

    @staticmethod
    def backward(ctx, grad_velocity, grad_mass):
        kind, momentum, mass, *inputs = ctx.saved_tensors
        grad_velocity = torch.zeros_like(momentum) if grad_velocity is None else grad_velocity.contiguous()
        grad_mass = torch.zeros_like(mass) if grad_mass is None else grad_mass.contiguous()
        grads = ctx.launch.particle_to_grid_adjoint(ctx.grid, ctx.gravity, kind, inputs, ctx.dt, momentum, mass,
                                                    grad_velocity, grad_mass)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad[5:])]
        return (None, None, None, None, None, *grads)


class _GridToParticle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launch, grid, dt, kind, clamp_low, clamp_high, grid_velocity, position, deformation,
                plastic_volume):
        grid_velocity, position, deformation, plastic_volume = (
            t.detach().contiguous() for t in (grid_velocity, position, deformation, plastic_volume))
        outputs = (torch.empty_like(position), torch.empty_like(position), torch.empty_like(deformation),
                   torch.empty_like(deformation), torch.empty_like(plastic_volume))
        trial = torch.empty_like(deformation)
        launch.grid_to_particle(grid, kind, clamp_low, clamp_high, grid_velocity, position, deformation,
                                plastic_volume, dt, outputs[0], outputs[1], outputs[2], trial, outputs[3], outputs[4])
        ctx.launch, ctx.grid, ctx.dt = launch, grid, dt
        ctx.save_for_backward(kind, clamp_low, clamp_high, grid_velocity, position, deformation, plastic_volume, trial)
        return outputs

    @staticmethod
    def backward(ctx, *grad_outputs):
        kind, low, high, grid_velocity, position, deformation, plastic_volume, trial = ctx.saved_tensors
        likes = (position, position, deformation, deformation, plastic_volume)
        grads = [torch.zeros_like(like) if g is None else g.contiguous() for g, like in zip(grad_outputs, likes)]
        result = ctx.launch.grid_to_particle_adjoint(ctx.grid, kind, low, high, grid_velocity, position, deformation,
                                                     plastic_volume, trial, ctx.dt, *grads)
        result = [g if need else None for g, need in zip(result, ctx.needs_input_grad[6:])]
        return (None, None, None, None, None, None, *result)


class SolverMPM:
    """MLS-MPM (APIC, quadratic B-splines) for liquids, neo-Hookean solids and snow, 2D or 3D.

    Args:
        model: grid, materials and particles (material tensors may require grad).
        backend: ``"warp"`` or ``"taichi"``; both run the same numerics.
        deterministic: bit-reproducible results and gradients (ordered P2G/G2P scatters; see
            hybridsim/solvers/mpm/launchers.py for how each backend does it).
        grid_hooks: boundary callables applied to the grid velocity every substep (GridHook).

    Precision and device are the model's (``model.to(dtype, device)``).
    """

    def __init__(self, model: MPMModel, *, backend: str = "warp", deterministic: bool = False,
                 grid_hooks: Sequence[GridHook] = ()):
        if backend not in LAUNCHERS:
            raise HybridsimError(f"unknown backend {backend!r}; expected one of {sorted(LAUNCHERS)}", field="backend")
        dtype = model.particle_position.dtype
        if dtype not in (torch.float32, torch.float64):
            raise HybridsimError(f"MPM runs in float32 or float64, got {dtype}", field="precision")
        self.model, self.backend, self.deterministic = model, backend, bool(deterministic)
        self.dtype, self.device = dtype, str(model.particle_position.device.type)
        self.grid_hooks = tuple(grid_hooks)
        self._launch = launcher(backend, self.device, dtype, model.dim, self.deterministic)
        self._zero_force = None
        self._node_position = None

    # -- pieces -------------------------------------------------------------------------------
    def node_positions(self) -> torch.Tensor:
        """Grid node positions [m], shape (G, d) (cached)."""
        if self._node_position is None:
            self._node_position = self.model.grid.node_positions(self.dtype, self.device)
        return self._node_position

    def _force(self, state: MPMState, control: MPMControl | None) -> torch.Tensor:
        force = None if control is None else control.particle_force
        if force is None:  # one shared zero tensor, not a new one per step
            if self._zero_force is None or self._zero_force.shape != state.particle_position.shape:
                self._zero_force = torch.zeros_like(state.particle_position.detach())
            force = self._zero_force
        return force

    def grid(self, state: MPMState, control: MPMControl | None, dt: float, *,
             parameters: MPMParticleParameters | None = None) -> MPMGrid:
        """P2G and the grid update (gravity, walls) of one substep; differentiable."""
        p = parameters or self.model.particle_parameters()
        velocity, mass = _ParticleToGrid.apply(
            self._launch, self.model.grid, self.model.gravity, float(dt), p.kind,
            state.particle_position, state.particle_velocity, state.particle_affine, state.particle_deformation,
            state.particle_plastic_volume, p.mass, p.volume, p.mu, p.lam, p.viscosity, p.hardening,
            self._force(state, control))
        return MPMGrid(velocity, mass)

    def _apply_hooks(self, grid: MPMGrid, dt: float) -> torch.Tensor:
        velocity = grid.velocity
        for hook in self.grid_hooks:
            velocity = hook(MPMGrid(velocity, grid.mass), self.node_positions(), float(dt))
        return velocity

    # -- steps --------------------------------------------------------------------------------
    def step_differentiable(self, state: MPMState, control: MPMControl | None, dt: float, *,
                            parameters: MPMParticleParameters | None = None) -> MPMState:
        """Advance ``state`` by ``dt`` [s]: a torch autograd op over state, control and materials.

        ``parameters`` (``model.particle_parameters()``) can be computed once per rollout.
        """
        p = parameters or self.model.particle_parameters()
        grid = self.grid(state, control, dt, parameters=p)
        velocity = self._apply_hooks(grid, dt)
        outputs = _GridToParticle.apply(self._launch, self.model.grid, float(dt), p.kind, p.clamp_low, p.clamp_high,
                                        velocity, state.particle_position, state.particle_deformation,
                                        state.particle_plastic_volume)
        return MPMState(*outputs)

    def step(self, state_in: MPMState, state_out: MPMState, control: MPMControl | None, dt: float, *,
             parameters: MPMParticleParameters | None = None) -> None:
        """Advance ``state_in`` by ``dt`` [s] into ``state_out`` (no autograd; state_in untouched).

        The raw launch path: no autograd Function; on Taichi one kernel launch without grid hooks
        (two with them). ``state_out`` must hold contiguous tensors of the model's dtype. Pass ``parameters``
        (``model.particle_parameters()``) when stepping in a loop; otherwise they are gathered
        from the material tensors on every call.
        """
        with torch.no_grad():
            p = parameters or self.model.particle_parameters()
            x, v, affine, deformation, plastic = (t.detach().contiguous() for t in state_in.tensors())
            inputs = (x, v, affine, deformation, plastic, p.mass.detach(), p.volume.detach(), p.mu.detach(),
                      p.lam.detach(), p.viscosity.detach(), p.hardening.detach(),
                      self._force(state_in, control).detach().contiguous())
            grid = self.model.grid
            momentum, mass, velocity = _grid_buffers(self._launch, grid.node_count, grid.dim, x)
            if not self.grid_hooks:  # one launch on Taichi
                self._launch.substep(grid, self.model.gravity, p.kind, inputs, p.clamp_low, p.clamp_high, float(dt),
                                     momentum, mass, velocity, state_out.tensors())
                return
            self._launch.particle_to_grid(grid, self.model.gravity, p.kind, inputs, float(dt), momentum, mass,
                                          velocity)
            velocity = self._apply_hooks(MPMGrid(velocity, mass), dt).contiguous()
            trial = torch.empty_like(state_out.particle_deformation)
            self._launch.grid_to_particle(
                grid, p.kind, p.clamp_low, p.clamp_high, velocity, x, deformation, plastic, float(dt),
                state_out.particle_position, state_out.particle_velocity, state_out.particle_affine, trial,
                state_out.particle_deformation, state_out.particle_plastic_volume)

    # -- checks -------------------------------------------------------------------------------
    def check_state(self, state: MPMState, step: int) -> None:
        """Raise SimulationError naming ``step`` and the quantity when the state is non-finite or a
        particle has left the grid (fields left as None are skipped)."""
        for quantity, values in (("particle_position", state.particle_position),
                                 ("particle_velocity", state.particle_velocity),
                                 ("particle_deformation", state.particle_deformation)):
            if values is None:
                continue
            bad = ~torch.isfinite(values.detach().reshape(values.shape[0], -1)).all(dim=1)
            if bool(bad.any()):
                first = int(bad.nonzero()[0])
                raise SimulationError(f"non-finite {quantity} of {int(bad.sum())} particles (first: {first}); lower "
                                      "dt (more substeps), soften the materials or check forces",
                                      step=step, quantity=quantity)
        grid = self.model.grid
        x = state.particle_position.detach()
        lower = torch.tensor(grid.lower, dtype=x.dtype, device=x.device)
        upper = torch.tensor(grid.upper, dtype=x.dtype, device=x.device)
        outside = ~((x >= lower) & (x <= upper)).all(dim=1)
        if bool(outside.any()):
            raise SimulationError(f"{int(outside.sum())} particles left the grid (first: {int(outside.nonzero()[0])}); "
                                  "lower dt or enlarge the domain", step=step, quantity="particle_position")
