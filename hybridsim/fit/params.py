"""Reparameterisation of learnable values so that gradient descent never leaves their ranges.

A bounded value is ``lo + (hi - lo) * sigmoid(u)``; an unbounded one is ``u`` itself. The
optimiser works on ``u`` (float64).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ParamSpec", "param_specs"]

EDGE = 1e-4
"""Initial values on (or beyond) a range end start this fraction of the range inside it."""


@dataclass(frozen=True)
class ParamSpec:
    path: str
    size: int  # 1 for a scalar, 3 for a vector
    lo: float | None
    hi: float | None
    initial: tuple[float, ...]

    @property
    def bounded(self) -> bool:
        return self.lo is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return () if self.size == 1 else (self.size,)

    def scale(self, value: float) -> float:
        """A natural size of changes of this parameter: its range width, else max(|value|, 1)."""
        if self.bounded:
            return float(self.hi - self.lo)
        return max(abs(float(value)), 1.0)

    def to_u(self, value) -> torch.Tensor:
        value = torch.as_tensor(value, dtype=torch.float64).reshape(self.shape)
        if not self.bounded:
            return value.clone()
        frac = ((value - self.lo) / (self.hi - self.lo)).clamp(EDGE, 1.0 - EDGE)
        return torch.log(frac) - torch.log1p(-frac)

    def to_value(self, u: torch.Tensor) -> torch.Tensor:
        if not self.bounded:
            return u
        return self.lo + (self.hi - self.lo) * torch.sigmoid(u)

    def sample(self, generator: torch.Generator, count: int) -> torch.Tensor:
        """``count`` random values (count, *shape): uniform in the range, or the initial value plus
        a normal of standard deviation max(|initial|, 1) / 2 when unbounded."""
        shape = (count,) + self.shape
        if self.bounded:
            lo, hi = self.lo + EDGE * (self.hi - self.lo), self.hi - EDGE * (self.hi - self.lo)
            return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)
        init = torch.tensor(self.initial, dtype=torch.float64).reshape(self.shape)
        spread = torch.clamp(init.abs(), min=1.0) * 0.5
        return init + spread * torch.randn(shape, generator=generator, dtype=torch.float64)


def param_specs(spec) -> list[ParamSpec]:
    out = []
    for path, item in spec.learnable.items():
        value = item.value
        initial = tuple(float(v) for v in value) if isinstance(value, tuple) else (float(value),)
        lo, hi = (None, None) if item.range is None else (float(item.range[0]), float(item.range[1]))
        if lo is not None and not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = None, None  # an infinite range is no constraint
        out.append(ParamSpec(path=path, size=len(initial) if isinstance(value, tuple) else 1, lo=lo, hi=hi,
                             initial=initial))
    return out
