"""Warp and Taichi launchers of the MPM kernels: forward phases and their adjoints on torch tensors.

Both launchers expose the same calls on contiguous torch tensors:

* ``particle_to_grid(grid, gravity, kind, inputs, dt, momentum, mass, velocity)``: p2g then
  grid_update; ``momentum`` and ``mass`` must be zero on entry unless ``zeroes_grid``.
* ``particle_to_grid_adjoint(...)``: gradients of the particle inputs from those of the grid
  velocity and mass (adjoint of grid_update, then of p2g).
* ``grid_to_particle(...)``: g2p then project_plasticity.
* ``grid_to_particle_adjoint(...)``: hand-written adjoint of project_plasticity, then the
  backend's adjoint of g2p.
* ``substep(...)``: both forward phases with nothing between them (the raw ``SolverMPM.step``
  without grid hooks); one kernel launch on Taichi.

Taichi launches: the forward phases are fused, forward-only kernels (``p2g_update``,
``g2p_project``, ``substep``: one launch each); the adjoints launch Taichi's reverse-mode kernels of
``p2g``, ``grid_update`` and ``g2p``. Every launch goes through ``_TaichiCall``, which fills
Taichi's launch context directly instead of Taichi's per-call Python argument handling.

P2G on Taichi CPUs scatters without float atomics when it pays (``_TaichiMPM.scatter_chunks``):
particle chunks each scatter, in particle order, into a private grid copy, then the copies are
summed per node in chunk order. The result equals the atomic scatter's up to round-off (the
order of the additions differs, as it does between runs of the atomic one).

Determinism: Warp on the CPU runs a launch's threads in order on one thread, so its atomics
are already ordered. On CUDA, ``deterministic`` launches ``p2g_ordered`` / ``g2p_ordered`` on
one thread (the particle loop inside the kernel), in forward and adjoint. Taichi's CPU and CUDA
backends are multi-threaded: ``deterministic`` builds the p2g and g2p kernels with
``ti.loop_config(serialize=True)``, which also serializes their reverse-mode kernels (and makes
Taichi demote their atomics to plain adds). The chunked scatter is not used then.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch

from ... import backends

__all__ = ["LAUNCHERS", "launcher"]

# order of the differentiable particle inputs of p2g
P2G_INPUTS = ("position", "velocity", "affine", "deformation", "plastic_volume", "mass", "volume", "mu", "lam",
              "viscosity", "hardening", "force")


class _WarpMPM:
    zeroes_grid = False  # particle_to_grid needs zeroed momentum and mass

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

    def substep(self, grid, gravity, kind, inputs, clamp_low, clamp_high, dt, momentum, mass, velocity, outputs):
        self.particle_to_grid(grid, gravity, kind, inputs, dt, momentum, mass, velocity)
        self.grid_to_particle(grid, kind, clamp_low, clamp_high, velocity, inputs[0], inputs[3], inputs[4], dt,
                              outputs[0], outputs[1], outputs[2], torch.empty_like(outputs[3]), outputs[3], outputs[4])

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


class Grad(NamedTuple):
    """A Taichi reverse-mode argument: the primal array (read) and its gradient (accumulated into)."""

    primal: torch.Tensor
    grad: torch.Tensor


_ARRAY, _FLOAT, _INT, _FLOATS, _INTS = range(5)


class _TaichiCall:
    """Launch a Taichi kernel (or its reverse-mode ``.grad``) on torch tensors with little Python work.

    Taichi's ``Kernel.__call__`` spends about 10 us of Python per external-array argument (type
    extraction, checks) on every launch; our kernels take 8 to 33 arguments, which cost as much
    as the kernels of a substep. This class resolves the compiled instance once per
    pattern of gradient arguments (with Taichi's own ``ensure_compiled``), then fills the launch
    context with raw pointers: ``set_arg_external_array_with_shape``, ``set_arg_float``/``_int``,
    the calls ``Kernel.launch_kernel`` itself makes. It checks what Taichi would (tensor, dtype,
    element shape, contiguity, device) and hands anything else to the ordinary call, which raises
    Taichi's error. ``HYBRIDSIM_TAICHI_FAST_LAUNCH=0`` always takes the ordinary call (the same
    compiled kernels, so bit-identical results). Written against taichi 1.7.4 (pinned); if its
    internals differ, the ordinary call is used.
    """

    def __init__(self, ti, kernel, reverse: bool, device: str):
        self.ti = ti
        self.wrapped = kernel.grad if reverse else kernel
        self.owner = kernel._adjoint if reverse else kernel._primal
        self.reverse = reverse
        self.cuda = device.startswith("cuda")
        self.instances: dict = {}
        self.specs = None
        self.fast = os.environ.get("HYBRIDSIM_TAICHI_FAST_LAUNCH", "1") != "0"

    def __call__(self, *args):
        if self.fast:
            try:
                launch = self._prepare(args)
            except (AttributeError, TypeError, KeyError, ValueError):  # Taichi internals not as expected
                self.fast, launch = False, None
            if launch is not None:
                prog, compiled, context = launch
                prog.launch_kernel(compiled, context)
                return
        self._ordinary(args)

    def _ordinary(self, args):
        self.wrapped(*[_as_taichi_arg(v) for v in args])

    def _resolve_specs(self):
        from taichi.lang.matrix import MatrixType
        from taichi.types import ndarray_type, primitive_types

        to_torch = {id(primitive_types.f32): torch.float32, id(primitive_types.f64): torch.float64,
                    id(primitive_types.i32): torch.int32}
        specs = []
        for argument in self.owner.arguments:
            anno = argument.annotation
            if isinstance(anno, ndarray_type.NdarrayType):
                if anno.ndim != 1:
                    raise TypeError("only 1-D ndarray arguments take the fast path")
                matrix = isinstance(anno.dtype, MatrixType)
                scalar = anno.dtype.dtype if matrix else anno.dtype
                element = torch.Size(anno.dtype.get_shape() if matrix else ())
                specs.append((_ARRAY, to_torch[id(scalar)], element))
            elif isinstance(anno, MatrixType):
                real = id(anno.dtype) in primitive_types.real_type_ids
                specs.append((_FLOATS if real else _INTS, anno.n, None))
            elif id(anno) in primitive_types.real_type_ids:
                specs.append((_FLOAT, None, None))
            elif id(anno) in primitive_types.integer_type_ids:
                specs.append((_INT, None, None))
            else:
                raise TypeError(f"unsupported kernel argument {anno}")
        self.specs = specs

    def _tensor_ok(self, t, spec) -> bool:
        return (isinstance(t, torch.Tensor) and t.dtype is spec[1] and t.dim() >= 1 and t.shape[1:] == spec[2]
                and t.is_contiguous() and t.is_cuda is self.cuda)

    def _prepare(self, args):
        """(prog, compiled kernel, filled launch context), or None when Taichi's own call must run."""
        if self.specs is None:
            self._resolve_specs()
        if len(args) != len(self.specs):
            return None
        # which arrays come with gradients picks the compiled instance (only reverse kernels take any)
        pattern = tuple(type(v) is Grad for v in args) if self.reverse else ()
        instance = self.instances.get(pattern)
        if instance is None:
            # compile (or load) the instance Taichi's ordinary call would pick for these arguments
            if not all(self._tensor_ok(v.primal if type(v) is Grad else v, s) for v, s in zip(args, self.specs)
                       if s[0] == _ARRAY):
                return None
            key = self.owner.ensure_compiled(*[_as_taichi_arg(v) for v in args])
            kernel = self.owner.compiled_kernels[key]
            prog = self.ti.lang.impl.get_runtime().prog
            instance = self.instances[pattern] = (kernel, prog.compile_kernel(prog.config(), prog.get_device_caps(),
                                                                              kernel), prog)
        kernel, compiled, prog = instance
        context = kernel.make_launch_context()
        set_array, cuda, tensor = context.set_arg_external_array_with_shape, self.cuda, torch.Tensor
        for index, (value, spec) in enumerate(zip(args, self.specs)):
            kind = spec[0]
            if kind == _ARRAY:
                if type(value) is Grad:
                    primal, grad = value
                    if not (self.reverse and self._tensor_ok(grad, spec) and grad.shape == primal.shape):
                        return None
                    grad_pointer = grad.data_ptr()
                else:
                    primal, grad_pointer = value, 0
                # the checks of Taichi's own call (which takes over when one fails)
                if not (isinstance(primal, tensor) and primal.dtype is spec[1] and primal.dim() >= 1
                        and primal.shape[1:] == spec[2] and primal.is_contiguous() and primal.is_cuda is cuda):
                    return None
                set_array((index,), primal.data_ptr(), primal.nbytes, (primal.shape[0],), grad_pointer)
            elif kind == _FLOAT:
                context.set_arg_float((index,), float(value))
            elif kind == _INT:
                context.set_arg_int((index,), int(value))
            elif kind == _FLOATS:
                for k in range(spec[1]):
                    context.set_struct_arg_float((index, k), float(value[k]))
            else:
                for k in range(spec[1]):
                    context.set_struct_arg_int((index, k), int(value[k]))
        return prog, compiled, context


def _as_taichi_arg(value):
    # the argument for Taichi's ordinary call: only Grad pairs carry gradients (a tensor that
    # requires grad would make Taichi compile a gradient instance and set its .grad)
    if isinstance(value, Grad):
        tensor = value.primal.detach().requires_grad_(True)
        tensor.grad = value.grad
        return tensor
    if isinstance(value, torch.Tensor) and value.requires_grad:
        return value.detach()
    return value


MAX_SCATTER_CHUNKS = 8
"""At most this many private grid copies for the atomic-free CPU scatter (_TaichiMPM.scatter_chunks)."""
CHUNK_PARTICLES = 1024
"""At least this many particles per chunk of that scatter (fewer do not pay for a grid copy)."""


class _TaichiMPM:
    zeroes_grid = True  # the forward kernels zero (or fully write) momentum and mass themselves

    def __init__(self, device: str, dtype: torch.dtype, dim: int, deterministic: bool):
        ti = backends.taichi(device)
        from hybridsim.kernels.taichi.mpm import mpm_kernels

        self.ti = ti
        self.dim = dim
        self.cuda = device.startswith("cuda")
        self.deterministic = bool(deterministic)
        self.threads = 0 if self.cuda else int(ti.lang.impl.current_cfg().cpu_max_num_threads)
        k = mpm_kernels(ti.f64 if dtype == torch.float64 else ti.f32, dim, self.deterministic)
        self.k = k
        forward = ("p2g_update", "g2p_project", "substep", "p2g_update_chunked", "substep_chunked",
                   "project_plasticity_adjoint")
        self.call = {name: _TaichiCall(ti, getattr(k, name), False, device) for name in forward}
        self.call.update({name + ".grad": _TaichiCall(ti, getattr(k, name), True, device)
                          for name in ("p2g", "grid_update", "g2p")})
        self._scratch: dict = {}

    def _sync(self):
        if self.cuda:  # CPU launches return when the kernel is done
            self.ti.sync()

    @staticmethod
    def _consts(grid, dt):
        return [grid.origin, grid.dx, grid.resolution3, dt]

    @staticmethod
    def _update_args(grid, gravity, dt):
        return [gravity, grid.resolution3, grid.boundary_cells, grid.wall_mode_id, dt]

    def scatter_chunks(self, particles: int, nodes: int) -> int:
        """How the forward P2G scatters: 0 = parallel atomic adds (CUDA; deterministic mode, where
        Taichi serializes the loop), c >= 1 = c particle chunks, each scattered in particle order by
        one thread into its own grid copy with plain adds, the copies then summed per node.

        On CPUs a float atomic add (a compare-and-swap loop) costs about five plain adds, which on
        2 threads makes the atomic scatter slower than a serial one. c is the thread count, capped
        at MAX_SCATTER_CHUNKS and so that zeroing and summing the copies (c nodes per node) costs at
        most about twice the scatter (2 * 3^d node updates per particle); when that leaves one chunk,
        a serial scatter (c = 1, no copy) up to 4 threads, atomics beyond. Each chunk holds at least
        CHUNK_PARTICLES particles (so small scenes scatter serially, in particle order, as Warp does).
        """
        if self.cuda or self.deterministic:
            return 0
        copies = min(self.threads, MAX_SCATTER_CHUNKS, particles // CHUNK_PARTICLES,
                     (2 * particles * 3 ** self.dim) // max(nodes, 1))
        if copies >= 2:
            return copies
        return 1 if self.threads <= 4 else 0

    def _private_grid(self, chunks, momentum, mass):
        # chunk copies of the grid; one chunk scatters into the grid itself. Kept between calls
        # (launches are synchronous and run one at a time).
        if chunks == 1:
            return momentum, mass
        key = (chunks, momentum.shape, momentum.dtype, momentum.device)
        if key not in self._scratch:
            self._scratch = {key: (momentum.new_empty((chunks * momentum.shape[0],) + momentum.shape[1:]),
                                   mass.new_empty(chunks * mass.shape[0]))}
        return self._scratch[key]

    def particle_to_grid(self, grid, gravity, kind, inputs, dt, momentum, mass, velocity):
        # one launch: zero the grid (momentum and mass need not be zero on entry), p2g, grid_update
        args = [*inputs[:5], kind, *inputs[5:], *self._consts(grid, dt), gravity, grid.boundary_cells,
                grid.wall_mode_id, momentum, mass, velocity]
        chunks = self.scatter_chunks(inputs[0].shape[0], mass.shape[0])
        if chunks:
            self.call["p2g_update_chunked"](*args, chunks, *self._private_grid(chunks, momentum, mass))
        else:
            self.call["p2g_update"](*args)
        self._sync()

    def substep(self, grid, gravity, kind, inputs, clamp_low, clamp_high, dt, momentum, mass, velocity, outputs):
        # one launch: particle_to_grid then grid_to_particle (no grid hooks between them)
        args = [*inputs[:5], kind, *inputs[5:], clamp_low, clamp_high, *self._consts(grid, dt), gravity,
                grid.boundary_cells, grid.wall_mode_id, momentum, mass, velocity, *outputs]
        chunks = self.scatter_chunks(inputs[0].shape[0], mass.shape[0])
        if chunks:
            self.call["substep_chunked"](*args, chunks, *self._private_grid(chunks, momentum, mass))
        else:
            self.call["substep"](*args)
        self._sync()

    def particle_to_grid_adjoint(self, grid, gravity, kind, inputs, dt, momentum, mass, grad_velocity, grad_mass):
        adj_momentum, adj_mass = torch.zeros_like(momentum), torch.zeros_like(mass)
        self.call["grid_update.grad"](Grad(momentum, adj_momentum), Grad(mass, adj_mass),
                                      *self._update_args(grid, gravity, dt),
                                      Grad(torch.empty_like(momentum), grad_velocity.clone()))
        adj_mass += grad_mass
        grads = [torch.zeros_like(t) for t in inputs]
        ins = [Grad(t, g) for t, g in zip(inputs, grads)]
        self.call["p2g.grad"](*ins[:5], kind, *ins[5:], *self._consts(grid, dt),
                              Grad(torch.empty_like(momentum), adj_momentum), Grad(torch.empty_like(mass), adj_mass))
        self._sync()
        return grads

    def grid_to_particle(self, grid, kind, clamp_low, clamp_high, grid_velocity, position, deformation, plastic_volume,
                         dt, position_out, velocity_out, affine_out, deformation_trial, deformation_out,
                         plastic_volume_out):
        # one launch: g2p then project_plasticity, per particle
        self.call["g2p_project"](grid_velocity, position, deformation, plastic_volume, kind, clamp_low, clamp_high,
                                 *self._consts(grid, dt), position_out, velocity_out, affine_out, deformation_trial,
                                 deformation_out, plastic_volume_out)
        self._sync()

    def grid_to_particle_adjoint(self, grid, kind, clamp_low, clamp_high, grid_velocity, position, deformation,
                                 plastic_volume, deformation_trial, dt, grad_position, grad_velocity, grad_affine,
                                 grad_deformation, grad_plastic_volume):
        adj_trial, adj_plastic = torch.empty_like(deformation_trial), torch.empty_like(plastic_volume)
        self.call["project_plasticity_adjoint"](deformation_trial, plastic_volume, kind, clamp_low, clamp_high,
                                                grad_deformation, grad_plastic_volume, adj_trial, adj_plastic)
        adj_grid, adj_position, adj_deformation = (torch.zeros_like(grid_velocity), torch.zeros_like(position),
                                                   torch.zeros_like(deformation))
        # the reverse kernel may consume the output gradients, so it gets copies
        outs = [Grad(torch.empty_like(g), g.clone()) for g in (grad_position, grad_velocity, grad_affine)]
        self.call["g2p.grad"](Grad(grid_velocity, adj_grid), Grad(position, adj_position),
                              Grad(deformation, adj_deformation), kind, *self._consts(grid, dt), *outs,
                              Grad(torch.empty_like(adj_trial), adj_trial))
        self._sync()
        return adj_grid, adj_position, adj_deformation, adj_plastic


LAUNCHERS = {"warp": _WarpMPM, "taichi": _TaichiMPM}
_cache: dict = {}


def launcher(backend: str, device: str, dtype: torch.dtype, dim: int, deterministic: bool):
    """The (cached) launcher of ``backend`` for one device, precision, dimension and determinism."""
    key = (backend, device, dtype, dim, bool(deterministic))
    if key not in _cache:
        _cache[key] = LAUNCHERS[backend](device, dtype, dim, deterministic)
    return _cache[key]
