"""Warp and Taichi launchers of the MPM kernels: forward phases and their adjoints on torch tensors.

Both launchers expose the same four calls on contiguous torch tensors:

* ``particle_to_grid(grid, kind, inputs, dt, momentum, mass, velocity)``: p2g then grid_update;
  ``momentum`` and ``mass`` must be zero on entry.
* ``particle_to_grid_adjoint(...)``: gradients of the particle inputs from those of the grid
  velocity and mass (adjoint of grid_update, then of p2g).
* ``grid_to_particle(...)``: g2p then project_plasticity.
* ``grid_to_particle_adjoint(...)``: hand-written adjoint of project_plasticity, then the
  backend's adjoint of g2p.

Determinism: Warp on the CPU runs a launch's threads in order on one thread, so its atomics
are already ordered. On CUDA, ``deterministic`` launches ``p2g_ordered`` / ``g2p_ordered`` on
one thread (the particle loop inside the kernel), in forward and adjoint. Taichi's CPU and CUDA
backends are multi-threaded: ``deterministic`` builds the p2g and g2p kernels with
``ti.loop_config(serialize=True)``, which also serializes their reverse-mode kernels.
"""

from __future__ import annotations

import torch

from ... import backends

__all__ = ["LAUNCHERS", "launcher"]

# order of the differentiable particle inputs of p2g
P2G_INPUTS = ("position", "velocity", "affine", "deformation", "plastic_volume", "mass", "volume", "mu", "lam",
              "viscosity", "hardening", "force")


class _WarpMPM:
    def __init__(self, device: str, dtype: torch.dtype, dim: int, deterministic: bool):
        wp = backends.warp()
        from hybridsim.kernels.warp.mpm import mpm_kernels

        self.wp = wp
        self.real = wp.float64 if dtype == torch.float64 else wp.float32
        self.k = mpm_kernels(self.real, dim)
        self.device = "cuda:0" if device == "cuda" else device
        self.cuda = self.device.startswith("cuda")
        self.ordered = deterministic and self.cuda

    def _view(self, t: torch.Tensor):
        t = t.detach()  # a saved output comes back from autograd as a non-leaf
        if t.dtype == torch.int32:
            return self.wp.from_torch(t, dtype=self.wp.int32)
        return self.wp.from_torch(t, dtype={1: self.real, 2: self.k.vec, 3: self.k.mat}[t.dim()])

    def _consts(self, grid, dt):
        return [self.k.vec(*grid.origin), self.real(grid.dx), self.wp.vec3i(*grid.resolution3), self.real(dt)]

    def _zero_consts(self):
        return [self.k.vec(), self.real(0.0), self.wp.vec3i(), self.real(0.0)]

    def _p2g_args(self, kind, inputs):
        views = [self._view(t) for t in inputs]
        return views[:5] + [self._view(kind)] + views[5:]

    def _launch(self, kernel, dim, **kwargs):
        # on CUDA, launch on torch's current stream so torch ops before and after are ordered
        stream = self.wp.stream_from_torch(torch.cuda.current_stream(self.device)) if self.cuda else None
        self.wp.launch(kernel, dim=dim, device=self.device, stream=stream, **kwargs)

    def _launch_particles(self, kernel, ordered_kernel, count, **kwargs):
        if self.ordered:
            self._launch(ordered_kernel, 1, **kwargs)
        else:
            self._launch(kernel, count, **kwargs)

    def _update_args(self, grid, model_gravity, dt):
        return [self.k.vec(*model_gravity), self.wp.vec3i(*grid.resolution3), int(grid.boundary_cells),
                int(grid.wall_mode_id), self.real(dt)]

    def particle_to_grid(self, grid, gravity, kind, inputs, dt, momentum, mass, velocity):
        self._launch_particles(self.k.p2g, self.k.p2g_ordered, inputs[0].shape[0],
                               inputs=self._p2g_args(kind, inputs) + self._consts(grid, dt),
                               outputs=[self._view(momentum), self._view(mass)])
        self._launch(self.k.grid_update, mass.shape[0],
                       inputs=[self._view(momentum), self._view(mass)] + self._update_args(grid, gravity, dt),
                       outputs=[self._view(velocity)])

    def particle_to_grid_adjoint(self, grid, gravity, kind, inputs, dt, momentum, mass, grad_velocity, grad_mass):
        adj_momentum, adj_mass = torch.zeros_like(momentum), torch.zeros_like(mass)
        self._launch(self.k.grid_update, mass.shape[0], adjoint=True,
                       inputs=[self._view(momentum), self._view(mass)] + self._update_args(grid, gravity, dt),
                       outputs=[self._view(torch.empty_like(momentum))],
                       adj_inputs=[self._view(adj_momentum), self._view(adj_mass), self.k.vec(), self.wp.vec3i(),
                                   0, 0, self.real(0.0)],
                       adj_outputs=[self._view(grad_velocity.clone())])
        adj_mass += grad_mass
        grads = [torch.zeros_like(t) for t in inputs]
        self._launch_particles(self.k.p2g, self.k.p2g_ordered, inputs[0].shape[0], adjoint=True,
                               inputs=self._p2g_args(kind, inputs) + self._consts(grid, dt),
                               outputs=[self._view(torch.zeros_like(momentum)), self._view(torch.zeros_like(mass))],
                               adj_inputs=[self._view(g) for g in grads[:5]] + [None] + [self._view(g) for g in grads[5:]]
                               + self._zero_consts(),
                               adj_outputs=[self._view(adj_momentum), self._view(adj_mass)])
        return grads

    def grid_to_particle(self, grid, kind, clamp_low, clamp_high, grid_velocity, position, deformation, plastic_volume,
                         dt, position_out, velocity_out, affine_out, deformation_trial, deformation_out,
                         plastic_volume_out):
        self._launch_particles(self.k.g2p, self.k.g2p_ordered, position.shape[0],
                               inputs=[self._view(grid_velocity), self._view(position), self._view(deformation),
                                       self._view(kind)] + self._consts(grid, dt),
                               outputs=[self._view(t) for t in (position_out, velocity_out, affine_out,
                                                                deformation_trial)])
        self._launch(self.k.project_plasticity, position.shape[0],
                       inputs=[self._view(t) for t in (deformation_trial, plastic_volume, kind, clamp_low, clamp_high)],
                       outputs=[self._view(deformation_out), self._view(plastic_volume_out)])

    def grid_to_particle_adjoint(self, grid, kind, clamp_low, clamp_high, grid_velocity, position, deformation,
                                 plastic_volume, deformation_trial, dt, grad_position, grad_velocity, grad_affine,
                                 grad_deformation, grad_plastic_volume):
        adj_trial, adj_plastic = torch.empty_like(deformation_trial), torch.empty_like(plastic_volume)
        self._launch(self.k.project_plasticity_adjoint, position.shape[0],
                       inputs=[self._view(t) for t in (deformation_trial, plastic_volume, kind, clamp_low, clamp_high,
                                                      grad_deformation, grad_plastic_volume)],
                       outputs=[self._view(adj_trial), self._view(adj_plastic)])
        adj_grid, adj_position, adj_deformation = (torch.zeros_like(grid_velocity), torch.zeros_like(position),
                                                   torch.zeros_like(deformation))
        scratch = [torch.empty_like(position), torch.empty_like(position), torch.empty_like(deformation),
                   torch.empty_like(deformation)]
        self._launch_particles(self.k.g2p, self.k.g2p_ordered, position.shape[0], adjoint=True,
                               inputs=[self._view(grid_velocity), self._view(position), self._view(deformation),
                                       self._view(kind)] + self._consts(grid, dt),
                               outputs=[self._view(t) for t in scratch],
                               adj_inputs=[self._view(adj_grid), self._view(adj_position), self._view(adj_deformation),
                                           None] + self._zero_consts(),
                               adj_outputs=[self._view(t.clone()) for t in (grad_position, grad_velocity, grad_affine)]
                               + [self._view(adj_trial)])
        return adj_grid, adj_position, adj_deformation, adj_plastic


class _TaichiMPM:
    def __init__(self, device: str, dtype: torch.dtype, dim: int, deterministic: bool):
        ti = backends.taichi(device)
        from hybridsim.kernels.taichi.mpm import mpm_kernels

        self.ti = ti
        self.k = mpm_kernels(ti.f64 if dtype == torch.float64 else ti.f32, dim, bool(deterministic))

    @staticmethod
    def _consts(grid, dt):
        return [tuple(float(o) for o in grid.origin), float(grid.dx), tuple(grid.resolution3), float(dt)]

    @staticmethod
    def _update_args(grid, gravity, dt):
        return [tuple(float(g) for g in gravity), tuple(grid.resolution3), int(grid.boundary_cells),
                int(grid.wall_mode_id), float(dt)]

    @staticmethod
    def _with_grad(t: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
        # Taichi's reverse mode reads and accumulates the ``.grad`` of external arrays
        clone = t.detach().clone().requires_grad_(True)
        clone.grad = torch.zeros_like(t) if grad is None else grad.detach().clone().contiguous()
        return clone

    def particle_to_grid(self, grid, gravity, kind, inputs, dt, momentum, mass, velocity):
        self.k.p2g(*inputs[:5], kind, *inputs[5:], *self._consts(grid, dt), momentum, mass)
        self.k.grid_update(momentum, mass, *self._update_args(grid, gravity, dt), velocity)
        self.ti.sync()

    def particle_to_grid_adjoint(self, grid, gravity, kind, inputs, dt, momentum, mass, grad_velocity, grad_mass):
        momentum_in, mass_in = self._with_grad(momentum), self._with_grad(mass)
        velocity_out = self._with_grad(torch.empty_like(momentum), grad_velocity)
        self.k.grid_update.grad(momentum_in, mass_in, *self._update_args(grid, gravity, dt), velocity_out)
        ins = [self._with_grad(t) for t in inputs]
        momentum_out = self._with_grad(torch.zeros_like(momentum), momentum_in.grad)
        mass_out = self._with_grad(torch.zeros_like(mass), mass_in.grad + grad_mass)
        self.k.p2g.grad(*ins[:5], kind, *ins[5:], *self._consts(grid, dt), momentum_out, mass_out)
        self.ti.sync()
        return [t.grad for t in ins]

    def grid_to_particle(self, grid, kind, clamp_low, clamp_high, grid_velocity, position, deformation, plastic_volume,
                         dt, position_out, velocity_out, affine_out, deformation_trial, deformation_out,
                         plastic_volume_out):
        self.k.g2p(grid_velocity, position, deformation, kind, *self._consts(grid, dt), position_out, velocity_out,
                   affine_out, deformation_trial)
        self.k.project_plasticity(deformation_trial, plastic_volume, kind, clamp_low, clamp_high, deformation_out,
                                  plastic_volume_out)
        self.ti.sync()

    def grid_to_particle_adjoint(self, grid, kind, clamp_low, clamp_high, grid_velocity, position, deformation,
                                 plastic_volume, deformation_trial, dt, grad_position, grad_velocity, grad_affine,
                                 grad_deformation, grad_plastic_volume):
        adj_trial, adj_plastic = torch.empty_like(deformation_trial), torch.empty_like(plastic_volume)
        self.k.project_plasticity_adjoint(deformation_trial, plastic_volume, kind, clamp_low, clamp_high,
                                          grad_deformation, grad_plastic_volume, adj_trial, adj_plastic)
        ins = [self._with_grad(t) for t in (grid_velocity, position, deformation)]
        outs = [self._with_grad(torch.empty_like(g), g) for g in (grad_position, grad_velocity, grad_affine, adj_trial)]
        self.k.g2p.grad(*ins, kind, *self._consts(grid, dt), *outs)
        self.ti.sync()
        return ins[0].grad, ins[1].grad, ins[2].grad, adj_plastic


LAUNCHERS = {"warp": _WarpMPM, "taichi": _TaichiMPM}
_cache: dict = {}


def launcher(backend: str, device: str, dtype: torch.dtype, dim: int, deterministic: bool):
    """The (cached) launcher of ``backend`` for one device, precision, dimension and determinism."""
    key = (backend, device, dtype, dim, bool(deterministic))
    if key not in _cache:
        _cache[key] = LAUNCHERS[backend](device, dtype, dim, deterministic)
    return _cache[key]
