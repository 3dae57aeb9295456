"""World: a validated SceneSpec made runnable on one backend, device and precision.

``World.parameters()`` hands out the scene's learnable values as torch leaf tensors;
``World.model(params)`` and ``World.initial_state(params)`` turn them into per-body tensors
differentiably, so gradients of anything computed from a rollout reach the parameters.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .. import backends
from ..errors import HybridsimError, SceneError
from .state import Control, SphereModel, State

__all__ = ["World", "build_world", "PRECISIONS"]

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


class World:
    """A scene ready to simulate: spec, backend, device, dtype and a batch of ``world_count`` copies."""

    def __init__(self, spec, *, backend: str | None = None, device: str | None = None,
                 precision: str | None = None, world_count: int = 1, deterministic: bool | None = None,
                 frames: int | None = None):
        # ``frames``: how many frames the caller means to simulate (default: the scene's), for the
        # memory check below; a scene that cannot fit is refused here, before anything is allocated.
        self.spec = spec
        self.backend = backend or spec.backend
        if self.backend not in backends.BACKENDS:
            raise SceneError(f"unknown backend {self.backend!r}; expected one of {list(backends.BACKENDS)}",
                             file=spec.source, field="backend")
        self.device = backends.resolve_device(device or spec.device)
        precision = precision or spec.precision
        if precision not in PRECISIONS:
            raise SceneError(f"unknown precision {precision!r}; expected one of {list(PRECISIONS)}",
                             file=spec.source, field="precision")
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        if world_count < 1:
            raise HybridsimError(f"world_count must be >= 1 (got {world_count})")
        self.world_count = int(world_count)
        self.deterministic = spec.deterministic if deterministic is None else bool(deterministic)
        self.spheres = [obj for obj in spec.objects if obj.type == "sphere"]
        self.sphere_count = len(self.spheres)
        from ..scene.schema import RIGID_TYPES

        #: True when the scene has a box, capsule, mesh or static box: then every object (spheres
        #: too) is simulated by the rigid-body solver (``hybridsim.sim.rigid``), not the sphere solver.
        self.rigid = any(obj.type in RIGID_TYPES for obj in spec.objects) or bool(spec.joints) or bool(spec.springs)
        #: True when the scene has a 2D [fluid] and [[objects]]: two-way fluid-rigid coupling
        #: (``hybridsim.sim.fluid_rigid``).
        self.fluid_rigid = spec.fluid is not None and bool(spec.objects)
        if self.fluid_rigid:
            from .fluid_rigid import _check_scene

            _check_scene(spec)
        #: True when the scene has both [mpm] and [[objects]]: two-way MPM-rigid coupling
        #: (``hybridsim.sim.coupled``).
        self.coupled = getattr(spec, "mpm", None) is not None and bool(spec.objects)
        if getattr(spec, "mpm", None) is not None:
            if spec.fluid is not None:
                raise SceneError("a scene cannot have both [mpm] and [fluid] (they are not coupled)",
                                 file=spec.source, field="fluid")
        from .resources import check_scene_memory

        check_scene_memory(spec, frames=frames, precision=self.precision, device=self.device,
                           world_count=self.world_count)

    # ----------------------------------------------------------------- parameters
    @property
    def learnable(self) -> dict:
        """Field path -> Learnable (value and range) for every ``learn = true`` field."""
        return dict(self.spec.learnable)

    def parameters(self, requires_grad: bool = True) -> dict[str, torch.Tensor]:
        """The learnable values as fresh torch leaf tensors (shape () or (3,)), keyed by field path."""
        return {
            path: torch.tensor(item.value, dtype=self.dtype, device=self.device).requires_grad_(requires_grad)
            for path, item in self.spec.learnable.items()
        }

    def value(self, path: str, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The value at ``path``: from ``params`` when given there, else from the spec, as a tensor.

        A value may carry a leading world axis (shape (world_count,) or (world_count, 3)) to give
        each world its own value; otherwise it is shared by all worlds.
        """
        if params is not None and path in params:
            value = params[path]
            if not torch.is_tensor(value):
                value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
            return value.to(dtype=self.dtype, device=self.device)
        return torch.as_tensor(self.spec.get(path), dtype=self.dtype, device=self.device)

    def _per_world(self, path: str, params, vector: bool) -> torch.Tensor:
        value = self.value(path, params)
        base = 1 if vector else 0
        if value.dim() == base:
            return value.expand((self.world_count,) + tuple(value.shape))
        if value.dim() == base + 1 and value.shape[0] == self.world_count:
            return value
        raise HybridsimError(f"value of shape {tuple(value.shape)} does not fit {self.world_count} world(s)", field=path)

    def _per_body(self, attribute: str, params, vector: bool = False) -> torch.Tensor:
        """Stack ``objects[i].attribute`` over spheres into shape (B,) or (B, 3)."""
        columns = [self._per_world(f"objects[{self._object_index(k)}].{attribute}", params, vector)
                   for k in range(self.sphere_count)]
        if not columns:
            return torch.zeros((0, 3) if vector else (0,), dtype=self.dtype, device=self.device)
        stacked = torch.stack(columns, dim=1)  # (W, N) or (W, N, 3)
        return stacked.reshape((-1, 3) if vector else (-1,))

    def _object_index(self, sphere_index: int) -> int:
        return self.spec.objects.index(self.spheres[sphere_index])

    # ----------------------------------------------------------------- model and state
    def model(self, params: Mapping[str, torch.Tensor] | None = None) -> SphereModel:
        """Per-body constants as tensors, differentiable with respect to ``params``."""
        self._sphere_only()
        radius = self._per_body("radius", params)
        masses = []
        for k, sphere in enumerate(self.spheres):
            index = self._object_index(k)
            if sphere.mass is not None:
                masses.append(self._per_world(f"objects[{index}].mass", params, False))
            else:  # mass from density and the (possibly learned) radius
                r = self._per_world(f"objects[{index}].radius", params, False)
                density = self._per_world(f"objects[{index}].density", params, False)
                masses.append(density * (4.0 / 3.0 * math.pi) * r**3)
        mass = (torch.stack(masses, dim=1).reshape(-1) if masses
                else torch.zeros(0, dtype=self.dtype, device=self.device))
        gravity = self._per_world("gravity", params, True)
        return SphereModel(
            world_count=self.world_count,
            sphere_count=self.sphere_count,
            mass=mass,
            radius=radius,
            restitution=self._per_body("restitution", params),
            gravity=gravity.repeat_interleave(self.sphere_count, dim=0),
            ground_height=float(self.spec.ground.height),
        )

    def initial_state(self, params: Mapping[str, torch.Tensor] | None = None) -> State:
        """State at t = 0, differentiable with respect to initial positions and velocities."""
        self._sphere_only()
        return State(self._per_body("position", params, vector=True),
                     self._per_body("velocity", params, vector=True))

    def _sphere_only(self) -> None:
        if self.rigid:
            raise SceneError("this scene has rigid objects (box, capsule, mesh, static_box, static_mesh): simulate it with "
                             "hybridsim.sim.rigid (rigid_model / rigid_rollout), not the sphere solver",
                             file=self.spec.source, field="objects")

    def rigid_model(self, params: Mapping[str, torch.Tensor] | None = None):
        """The scene's objects as a RigidModel (see ``hybridsim.sim.rigid``)."""
        from .rigid import rigid_model

        return rigid_model(self, params)

    def control(self) -> Control:
        return Control()

    def solver(self, model: SphereModel):
        from ..solvers.spheres import SolverSpheres

        return SolverSpheres(model, backend=self.backend, device=self.device, dtype=self.dtype)

    def fluid_model(self, params: Mapping[str, torch.Tensor] | None = None):
        """The scene's 2D grid fluid as a GridFluidModel (see ``hybridsim.sim.fluid``)."""
        from .fluid import fluid_model

        return fluid_model(self, params)

    def mpm_model(self, params: Mapping[str, torch.Tensor] | None = None):
        """The scene's ``[mpm]`` particles as an MPMModel (see ``hybridsim.sim.mpm``)."""
        from .mpm import mpm_model

        return mpm_model(self, params)

    def colors(self, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Sphere albedo colours, shape (N, 3) (first world's values)."""
        if not self.spheres:
            return torch.zeros((0, 3), dtype=self.dtype, device=self.device)
        return torch.stack([self._per_world(f"objects[{self._object_index(k)}].color", params, True)[0]
                            for k in range(self.sphere_count)])

    def __repr__(self) -> str:
        return (f"World({self.spec.name!r}, backend={self.backend!r}, device={self.device!r}, "
                f"precision={self.precision!r}, world_count={self.world_count}, spheres={self.sphere_count})")


def build_world(spec, **kwargs) -> World:
    """Build a World from a SceneSpec or a scene file path (keyword overrides as in ``World``)."""
    if not hasattr(spec, "objects"):
        from ..scene import load_scene

        spec = load_scene(spec)
    return World(spec, **kwargs)

