"""MPM model, state, control and grid types, material constants and the stable substep bound.

Shapes use ``N`` = particle_count, ``M`` = material_count, ``G`` = node_count, ``d`` = dim (2 or 3).
In 2D, "volume" is an area [m^2] and density an areal density [kg/m^2].
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace

import torch

from ...errors import HybridsimError

__all__ = [
    "MATERIAL_KINDS", "WALL_MODES", "MPMGridSpec", "MPMModel", "MPMState", "MPMControl", "MPMGrid",
    "MPMParticleParameters", "lame_parameters", "stable_dt", "check_dt", "substep_count",
]

MATERIAL_KINDS = {"liquid": 0, "elastic": 1, "snow": 2}
"""Material kind name -> id used by the kernels (kernels/*/mpm.py MATERIAL_*)."""
WALL_MODES = {"separate": 0, "slip": 1, "no_slip": 2}
"""Domain wall mode name -> id used by the kernels (kernels/*/mpm.py WALL_*)."""
SNOW_HARDENING_MAX = 5.0
"""Upper clamp of the snow hardening factor exp(xi (1 - Jp)); the stable dt assumes it."""


@dataclass(frozen=True)
class MPMGridSpec:
    """The background grid: nodes at ``origin + index * dx``, walls on every face."""

    dim: int
    """Spatial dimension, 2 or 3."""
    resolution: tuple[int, ...]
    """Nodes per axis, length ``dim`` (each >= 2 * boundary_cells + 3)."""
    dx: float
    """Node spacing [m]."""
    origin: tuple[float, ...] = (0.0, 0.0)
    """Position of node 0 [m], length ``dim``."""
    boundary_cells: int = 3
    """Thickness of the wall band on each face [nodes]."""
    wall_mode: str = "separate"
    """``separate`` (no penetration, may leave), ``slip`` (normal velocity zeroed), ``no_slip`` (stick)."""

    def __post_init__(self):
        if self.dim not in (2, 3):
            raise HybridsimError(f"MPM grid dim must be 2 or 3, got {self.dim}", field="dim")
        if len(self.resolution) != self.dim or len(self.origin) != self.dim:
            raise HybridsimError(f"grid resolution {self.resolution} and origin {self.origin} need {self.dim} entries",
                                 field="resolution")
        if min(self.resolution) < 2 * self.boundary_cells + 3:
            raise HybridsimError(f"grid resolution {self.resolution} is too small for {self.boundary_cells} wall cells",
                                 field="resolution")
        if not self.dx > 0.0:
            raise HybridsimError(f"grid dx must be positive, got {self.dx}", field="dx")
        if self.wall_mode not in WALL_MODES:
            raise HybridsimError(f"unknown wall mode {self.wall_mode!r}; expected one of {sorted(WALL_MODES)}",
                                 field="wall_mode")

    @property
    def node_count(self) -> int:
        return math.prod(self.resolution)

    @property
    def wall_mode_id(self) -> int:
        return WALL_MODES[self.wall_mode]

    @property
    def resolution3(self) -> tuple[int, int, int]:
        """Resolution padded with 1 to three axes (the kernels' flat node index)."""
        return tuple(self.resolution) + (1,) * (3 - self.dim)

    @property
    def lower(self) -> tuple[float, ...]:
        return tuple(self.origin)

    @property
    def upper(self) -> tuple[float, ...]:
        """Position of the last node [m]."""
        return tuple(o + (n - 1) * self.dx for o, n in zip(self.origin, self.resolution))

    def node_positions(self, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """Node positions [m], shape (G, d), in the kernels' flat node order."""
        axes = [torch.arange(n, dtype=dtype, device=device) * self.dx + o for n, o in zip(self.resolution, self.origin)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)


@dataclass
class MPMModel:
    """Constants of an MPM world: grid, materials (differentiable) and per-particle attributes."""

    grid: MPMGridSpec
    """The background grid and its walls."""
    gravity: tuple[float, ...]
    """Gravitational acceleration [m/s^2], length d."""
    material_kind: torch.Tensor
    """Material kind id per material (MATERIAL_KINDS), shape (M,), int32."""
    youngs_modulus: torch.Tensor
    """Young's modulus E [Pa], shape (M,); a liquid's E and nu define its bulk modulus lam + 2 mu / d."""
    poisson_ratio: torch.Tensor
    """Poisson ratio nu [1], shape (M,), in [0, 0.5)."""
    viscosity: torch.Tensor
    """Dynamic viscosity eta [Pa s], shape (M,) (any material; 0 for none)."""
    density: torch.Tensor
    """Rest density [kg/m^d], shape (M,)."""
    hardening: torch.Tensor
    """Snow hardening coefficient xi [1], shape (M,)."""
    critical_compression: torch.Tensor
    """Snow critical compression theta_c [1], shape (M,); singular values >= 1 - theta_c."""
    critical_stretch: torch.Tensor
    """Snow critical stretch theta_s [1], shape (M,); singular values <= 1 + theta_s."""
    particle_material: torch.Tensor
    """Material index of each particle, shape (N,), int64."""
    particle_volume: torch.Tensor
    """Rest volume of each particle [m^d], shape (N,)."""
    particle_position: torch.Tensor
    """Initial particle positions [m], shape (N, d)."""
    particle_velocity: torch.Tensor
    """Initial particle velocities [m/s], shape (N, d)."""
    particle_color: torch.Tensor
    """Particle colours (linear RGB in [0, 1]), shape (N, 3)."""
    material_names: tuple[str, ...] = ()
    """Optional material names, length M (for messages)."""

    @property
    def dim(self) -> int:
        return self.grid.dim

    @property
    def particle_count(self) -> int:
        return int(self.particle_position.shape[0])

    @property
    def material_count(self) -> int:
        return int(self.material_kind.shape[0])

    def state(self, requires_grad: bool = False) -> "MPMState":
        """A fresh initial state: C = 0, F = I, Jp = 1 (position and velocity cloned)."""
        n, d = self.particle_count, self.dim
        like = self.particle_position
        state = MPMState(
            self.particle_position.detach().clone(), self.particle_velocity.detach().clone(),
            torch.zeros((n, d, d), dtype=like.dtype, device=like.device),
            torch.eye(d, dtype=like.dtype, device=like.device).expand(n, d, d).contiguous(),
            torch.ones(n, dtype=like.dtype, device=like.device),
        )
        if requires_grad:
            state.particle_position.requires_grad_(True)
            state.particle_velocity.requires_grad_(True)
        return state

    def particle_parameters(self) -> "MPMParticleParameters":
        """Per-particle material constants, differentiable w.r.t. the per-material tensors."""
        index = self.particle_material
        mu, lam = lame_parameters(self.youngs_modulus, self.poisson_ratio)
        kind = self.material_kind.to(torch.int32)[index].contiguous()
        return MPMParticleParameters(
            kind=kind,
            mass=(self.density[index] * self.particle_volume).contiguous(),
            volume=self.particle_volume.contiguous(),
            mu=mu[index].contiguous(),
            lam=lam[index].contiguous(),
            viscosity=self.viscosity[index].contiguous(),
            hardening=self.hardening[index].contiguous(),
            clamp_low=(1.0 - self.critical_compression.detach())[index].contiguous(),
            clamp_high=(1.0 + self.critical_stretch.detach())[index].contiguous(),
        )

    def to(self, dtype: torch.dtype | None = None, device: str | None = None) -> "MPMModel":
        """A copy with floating tensors cast to ``dtype`` and every tensor moved to ``device``."""
        def move(t):
            if isinstance(t, torch.Tensor):
                return t.to(device=device, dtype=dtype if t.is_floating_point() and dtype else t.dtype)
            return t
        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


@dataclass
class MPMParticleParameters:
    """Per-particle constants the kernels read (gathered from the per-material tensors)."""

    kind: torch.Tensor
    """Material kind id, shape (N,), int32."""
    mass: torch.Tensor
    """Particle mass [kg], shape (N,)."""
    volume: torch.Tensor
    """Particle rest volume [m^d], shape (N,)."""
    mu: torch.Tensor
    """First Lame parameter mu (shear modulus) [Pa], shape (N,)."""
    lam: torch.Tensor
    """Second Lame parameter lambda [Pa], shape (N,)."""
    viscosity: torch.Tensor
    """Dynamic viscosity [Pa s], shape (N,)."""
    hardening: torch.Tensor
    """Snow hardening coefficient [1], shape (N,)."""
    clamp_low: torch.Tensor
    """Lower singular-value clamp 1 - theta_c [1], shape (N,) (not differentiated)."""
    clamp_high: torch.Tensor
    """Upper singular-value clamp 1 + theta_s [1], shape (N,) (not differentiated)."""


@dataclass
class MPMState:
    """Particle state; ``step()`` reads one MPMState and writes another."""

    particle_position: torch.Tensor
    """Particle positions [m], shape (N, d)."""
    particle_velocity: torch.Tensor
    """Particle velocities [m/s], shape (N, d)."""
    particle_affine: torch.Tensor
    """APIC affine velocity field C (approximate velocity gradient) [1/s], shape (N, d, d)."""
    particle_deformation: torch.Tensor
    """Elastic deformation gradient F [1], shape (N, d, d) (diag(J, 1, ...) for liquids)."""
    particle_plastic_volume: torch.Tensor
    """Plastic volume ratio Jp of snow [1], shape (N,) (1 for other materials)."""

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(position, velocity, affine, deformation, plastic_volume), the field order."""
        return (self.particle_position, self.particle_velocity, self.particle_affine, self.particle_deformation,
                self.particle_plastic_volume)

    def clone(self) -> "MPMState":
        return MPMState(*(t.clone() for t in self.tensors()))

    def detach(self) -> "MPMState":
        return MPMState(*(t.detach() for t in self.tensors()))

    def empty_like(self) -> "MPMState":
        return MPMState(*(torch.empty_like(t) for t in self.tensors()))


@dataclass
class MPMControl:
    """Inputs applied during a step."""

    particle_force: torch.Tensor | None = None
    """External force on each particle [N], shape (N, d); None means zero."""


@dataclass
class MPMGrid:
    """Grid quantities of one substep (after gravity and walls, before grid hooks)."""

    velocity: torch.Tensor
    """Node velocities [m/s], shape (G, d), flat node order of MPMGridSpec.node_positions."""
    mass: torch.Tensor
    """Node masses [kg], shape (G,)."""


def lame_parameters(youngs_modulus: torch.Tensor, poisson_ratio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, lambda) [Pa] from Young's modulus [Pa] and Poisson ratio [1]."""
    mu = youngs_modulus / (2.0 * (1.0 + poisson_ratio))
    lam = youngs_modulus * poisson_ratio / ((1.0 + poisson_ratio) * (1.0 - 2.0 * poisson_ratio))
    return mu, lam


def stable_dt(model: MPMModel, *, cfl: float = 0.4, youngs_modulus: torch.Tensor | None = None,
              density: torch.Tensor | None = None) -> float:
    """Largest stable explicit substep [s] for the stiffest material present.

    dt <= cfl * dx / c with the P-wave speed c = sqrt((lambda + 2 mu) h / rho) of solids (h = 5, the
    hardening clamp, for snow) and the sound speed c = sqrt(K / rho), K = lambda + 2 mu / d, of
    liquids; and dt <= rho dx^2 / (2 d eta) for viscosity. ``youngs_modulus`` / ``density``
    (shape (M,)) replace the model's values, e.g. with the ends of a learnable range.
    """
    youngs = (model.youngs_modulus if youngs_modulus is None else youngs_modulus).detach().double().cpu()
    rho = (model.density if density is None else density).detach().double().cpu()
    nu = model.poisson_ratio.detach().double().cpu()
    eta = model.viscosity.detach().double().cpu()
    kind = model.material_kind.cpu()
    used = torch.zeros(model.material_count, dtype=torch.bool)
    used[model.particle_material.unique().cpu()] = True
    mu, lam = lame_parameters(youngs, nu)
    factor = torch.where(kind == MATERIAL_KINDS["snow"], SNOW_HARDENING_MAX, 1.0).double()
    modulus = torch.where(kind == MATERIAL_KINDS["liquid"], lam + 2.0 * mu / model.dim, lam + 2.0 * mu)
    speed = torch.sqrt(modulus * factor / rho)
    dx = model.grid.dx
    bound = math.inf
    for m in range(model.material_count):
        if not used[m]:
            continue
        if speed[m] > 0:
            bound = min(bound, cfl * dx / float(speed[m]))
        if eta[m] > 0:
            bound = min(bound, float(rho[m]) * dx * dx / (2.0 * model.dim * float(eta[m])))
    return bound


def check_dt(model: MPMModel, dt: float, *, cfl: float = 0.4,
             youngs_modulus_range: tuple[torch.Tensor, torch.Tensor] | None = None,
             density_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """Warn (``warnings.warn``) when ``dt`` exceeds the stable bound now or at the stiff end of a
    learnable range (largest E, smallest density); return the bound at that end."""
    bound = stable_dt(model, cfl=cfl)
    youngs_hi = None if youngs_modulus_range is None else torch.as_tensor(youngs_modulus_range[1])
    rho_lo = None if density_range is None else torch.as_tensor(density_range[0])
    worst = stable_dt(model, cfl=cfl, youngs_modulus=youngs_hi, density=rho_lo)
    if dt > bound:
        warnings.warn(f"MPM substep dt={dt:.3g} s exceeds the stable bound {bound:.3g} s of the stiffest material "
                      f"(cfl {cfl}); use at least {math.ceil(dt / bound)}x more substeps", stacklevel=2)
    elif dt > worst:
        warnings.warn(f"MPM substep dt={dt:.3g} s is stable now but not at the stiff end of the learnable range "
                      f"(bound {worst:.3g} s); use at least {math.ceil(dt / worst)}x more substeps or narrow the range",
                      stacklevel=2)
    return min(bound, worst)


def substep_count(model: MPMModel, frame_dt: float, *, cfl: float = 0.4,
                  youngs_modulus_range: tuple[torch.Tensor, torch.Tensor] | None = None,
                  density_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> int:
    """Fewest substeps per frame of ``frame_dt`` [s] that keep dt stable for the stiffest material,
    also at the stiff end of the learnable ranges when given."""
    youngs_hi = None if youngs_modulus_range is None else torch.as_tensor(youngs_modulus_range[1])
    rho_lo = None if density_range is None else torch.as_tensor(density_range[0])
    bound = min(stable_dt(model, cfl=cfl), stable_dt(model, cfl=cfl, youngs_modulus=youngs_hi, density=rho_lo))
    return max(1, math.ceil(frame_dt / bound - 1e-9))
