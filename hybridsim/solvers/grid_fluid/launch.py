"""Backend launchers: one interface over the Warp and the Taichi grid-fluid kernels.

Every kernel takes its arguments in the order (input arrays..., scalars..., output arrays...);
arrays are torch tensors viewed zero-copy. ``launch`` runs a kernel forward; ``adjoint`` runs its
reverse-mode twin (Warp ``adjoint=True``, Taichi ``kernel.grad``) on the given inputs and returns
the gradients of all input arrays; ``bind`` returns a zero-argument callable that relaunches one
kernel on fixed arrays (the inner loop of the conjugate gradient solver). A kernel is named by a
string, or by ("add_inflow", source_count) / ("heat_inflow", source_count) for the source kernels.
``dimension`` picks the 2D kernels (kernels/*/grid_fluid.py) or the 3D ones (grid_fluid3d.py);
the Python around them (solves, autograd) is shared.
"""

from __future__ import annotations

import functools

from typing import Callable, Sequence

import torch

from ... import backends

__all__ = ["launcher_for"]


class _WarpLauncher:
    backend = "warp"

    def __init__(self, device: str, dtype: torch.dtype, dimension: int = 2):
        wp = backends.warp()
        if dimension == 3:
            from hybridsim.kernels.warp.grid_fluid3d import grid_fluid3d_kernels as grid_fluid_kernels
            from hybridsim.kernels.warp.grid_fluid3d import inflow3d_kernels as inflow_kernels
        else:
            from hybridsim.kernels.warp.grid_fluid import grid_fluid_kernels, inflow_kernels

        self.wp = wp
        self.real = wp.float64 if dtype == torch.float64 else wp.float32
        self._kernels = grid_fluid_kernels(self.real)
        self._inflow = lambda count: inflow_kernels(self.real, count)
        self.device = "cuda:0" if device == "cuda" else device

    def _kernel(self, key):
        return getattr(self._inflow(key[1]), key[0]) if isinstance(key, tuple) else getattr(self._kernels, key)

    def _view(self, t: torch.Tensor):
        return self.wp.from_torch(t, dtype=self.real)

    def _scalars(self, scalars: Sequence, zero: bool = False) -> list:
        return [(0 if zero else s) if isinstance(s, int) else self.real(0.0 if zero else s) for s in scalars]

    def launch(self, key, dim, inputs, scalars, outputs) -> None:
        self.wp.launch(self._kernel(key), dim=dim, inputs=[self._view(t) for t in inputs] + self._scalars(scalars),
                       outputs=[self._view(t) for t in outputs], device=self.device)

    def adjoint(self, key, dim, inputs, scalars, outputs, grad_outputs) -> list[torch.Tensor]:
        grads = [torch.zeros_like(t) for t in inputs]
        self.wp.launch(self._kernel(key), dim=dim, inputs=[self._view(t) for t in inputs] + self._scalars(scalars),
                       outputs=[self._view(torch.empty_like(t)) for t in outputs],
                       adj_inputs=[self._view(g) for g in grads] + self._scalars(scalars, zero=True),
                       adj_outputs=[self._view(g) for g in grad_outputs], adjoint=True, device=self.device)
        return grads

    def bind(self, key, dim, inputs, scalars, outputs) -> Callable[[], None]:
        arrays = ([self._view(t) for t in inputs], [self._view(t) for t in outputs])
        command = self.wp.launch(self._kernel(key), dim=dim, inputs=arrays[0] + self._scalars(scalars),
                                 outputs=arrays[1], device=self.device, record_cmd=True)

        def relaunch(command=command, arrays=arrays):  # ``arrays`` keeps the viewed tensors alive
            command.launch()

        return relaunch

    def synchronize(self) -> None:
        if self.device != "cpu":
            self.wp.synchronize_device(self.device)


class _TaichiLauncher:
    backend = "taichi"

    def __init__(self, device: str, dtype: torch.dtype, dimension: int = 2):
        ti = backends.taichi(device)
        if dimension == 3:
            from hybridsim.kernels.taichi.grid_fluid3d import grid_fluid3d_kernels as grid_fluid_kernels
            from hybridsim.kernels.taichi.grid_fluid3d import inflow3d_kernels as inflow_kernels
        else:
            from hybridsim.kernels.taichi.grid_fluid import grid_fluid_kernels, inflow_kernels

        self.ti = ti
        real = ti.f64 if dtype == torch.float64 else ti.f32
        self._kernels = grid_fluid_kernels(real)
        self._inflow = lambda count: inflow_kernels(real, count)

    def _kernel(self, key):
        return getattr(self._inflow(key[1]), key[0]) if isinstance(key, tuple) else getattr(self._kernels, key)

    def launch(self, key, dim, inputs, scalars, outputs) -> None:
        self._kernel(key)(*inputs, *scalars, *outputs)
        self.ti.sync()

    def adjoint(self, key, dim, inputs, scalars, outputs, grad_outputs) -> list[torch.Tensor]:
        # Taichi's reverse mode reads the outputs' ``.grad`` and accumulates into the inputs' ``.grad``
        ins = [t.detach().clone().requires_grad_(True) for t in inputs]
        for t in ins:
            t.grad = torch.zeros_like(t)
        outs = [torch.empty_like(t).requires_grad_(True) for t in outputs]
        for t, g in zip(outs, grad_outputs):
            t.grad = g.detach().clone().contiguous()
        self._kernel(key).grad(*ins, *scalars, *outs)
        self.ti.sync()
        return [t.grad for t in ins]

    def bind(self, key, dim, inputs, scalars, outputs) -> Callable[[], None]:
        kernel = self._kernel(key)
        arguments = (*inputs, *scalars, *outputs)
        return lambda: kernel(*arguments)

    def synchronize(self) -> None:
        self.ti.sync()


_LAUNCHERS = {"warp": _WarpLauncher, "taichi": _TaichiLauncher}


@functools.cache
def launcher_for(backend: str, device: str, dtype: torch.dtype, dimension: int = 2):
    """The (cached) launcher of ``backend`` for ``device``, ``dtype`` and grid ``dimension`` (2 or 3)."""
    return _LAUNCHERS[backend](device, dtype, dimension)
