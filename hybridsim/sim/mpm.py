"""Scenes with MPM particles: the ``[mpm]`` table of a scene made into an MPMModel, and
differentiable rollouts of it recorded once per frame.

A 2D domain (``mpm.dim = 2``) lives in the world's x-z plane (y = 0): solver axis 0 is world x,
axis 1 is world z, and gravity is the scene gravity's (x, z) part. A 3D domain uses world
coordinates (z up). ``MPMBuilder`` samples the bodies' particles from the plain scene values;
the learnable tensors are then replaced by tensors derived from ``params`` (as ``sim/fluid.py``
and ``sim/rigid.py`` do), so gradients of anything computed from a rollout reach:

* per material: ``youngs_modulus``, ``poisson_ratio``, ``bulk_modulus`` (liquids: E = d K,
  nu = 0), ``viscosity``, ``density``, ``hardening`` (snow) and ``color``;
* per body: ``velocity`` (initial, every particle of the body), ``center`` (box / sphere) or
  ``position`` (mesh) (translates the body's particles) and ``color``;
* the light (``light.intensity``, ``light.ambient``, ``light.direction``; renderer only).

Geometry (sizes, radii, spacing), the grid, the snow clamps and gravity are fixed (SceneError if
marked learnable). Substeps per frame default to the fewest that keep the stiffest material
stable, also at the stiff end of every learnable range (largest E, K, nu and viscosity,
smallest density); ``mpm.substeps`` overrides that, with a warning when it is too few.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import HybridsimError, SceneError, SimulationError

__all__ = ["MPMSceneTrajectory", "mpm_model", "mpm_initial_state", "mpm_substeps", "mpm_rollout", "mpm_body_file",
           "lift_positions", "MPM_LEARNABLE"]

MPM_LEARNABLE = ("mpm.materials[i].youngs_modulus", "mpm.materials[i].poisson_ratio", "mpm.materials[i].bulk_modulus",
                 "mpm.materials[i].viscosity", "mpm.materials[i].density", "mpm.materials[i].hardening",
                 "mpm.materials[i].color", "mpm.bodies[i].velocity", "mpm.bodies[i].center", "mpm.bodies[i].position",
                 "mpm.bodies[i].color", "light.intensity", "light.ambient", "light.direction")
_MATERIAL_FIELDS = ("youngs_modulus", "poisson_ratio", "bulk_modulus", "viscosity", "density", "hardening", "color")
_BODY_FIELDS = ("velocity", "center", "position", "color")
_LIGHT_FIELDS = ("light.intensity", "light.ambient", "light.direction")


@dataclass
class MPMSceneTrajectory:
    """Per-frame particle states of an MPM scene rollout; frame 0 is the initial state."""

    positions: torch.Tensor
    """Particle positions per frame [m], shape (F+1, N, d) in solver axes ((x, z) in 2D)."""
    velocities: torch.Tensor
    """Particle velocities per frame [m/s], shape (F+1, N, d)."""
    times: torch.Tensor
    """Frame times [s], shape (F+1,)."""
    model: object
    """The MPMModel the rollout used (materials, particle colours and volumes; differentiable)."""
    particle_body: torch.Tensor
    """Body index of each particle (``mpm.bodies[b]``), shape (N,), int64."""
    substeps: int
    """Substeps per frame."""
    dt: float
    """Substep [s]."""
    final_state: object = None
    """The MPMState after the last substep."""

    @property
    def frame_count(self) -> int:
        return self.positions.shape[0]

    @property
    def dim(self) -> int:
        return self.positions.shape[-1]

    def world_positions(self) -> torch.Tensor:
        """Positions in world coordinates, shape (F+1, N, 3) (2D: (x, 0, z))."""
        return lift_positions(self.positions)


def lift_positions(positions: torch.Tensor) -> torch.Tensor:
    """Solver positions (..., d) -> world points (..., 3); a 2D (x, z) point goes to (x, 0, z)."""
    if positions.shape[-1] == 3:
        return positions
    zero = torch.zeros_like(positions[..., :1])
    return torch.cat([positions[..., :1], zero, positions[..., 1:2]], dim=-1)


def mpm_body_file(spec, index: int) -> Path:
    """The mesh file of ``mpm.bodies[index]``, resolved against the scene file's folder (SceneError
    if it leaves that folder, e.g. through a symbolic link; see ``hybridsim.assets``)."""
    from ..assets import resolve_asset_path

    body = spec.mpm.bodies[index]
    return resolve_asset_path(spec.source, body.file, field=f"mpm.bodies[{index}].file")


def _check_learnable(spec) -> None:
    coupled = bool(spec.objects)  # [[objects]] of a coupled scene: hybridsim.sim.rigid checks them
    for path in spec.learnable:
        if coupled and (path.startswith("objects[") or path in ("ground.friction", "ground.restitution")):
            continue
        ok = path in _LIGHT_FIELDS
        if path.startswith("mpm.materials["):
            ok = path.split("].", 1)[-1] in _MATERIAL_FIELDS
        elif path.startswith("mpm.bodies["):
            ok = path.split("].", 1)[-1] in _BODY_FIELDS
        if not ok:
            raise SceneError("cannot be learned in an MPM scene (learnable there: material constants and colours, "
                             "body velocity, centre/position and colour, light)", file=spec.source, field=path)


def _mpm_spec(world):
    spec = getattr(world.spec, "mpm", None)
    if spec is None:
        raise SceneError("the scene has no [mpm] table", file=world.spec.source, field="mpm")
    if world.world_count != 1:
        raise HybridsimError(f"MPM scenes run one world at a time (got world_count={world.world_count})",
                             field="world_count")
    return spec


def _gravity(world) -> tuple[float, ...]:
    g = world.spec.gravity
    return (g[0], g[2]) if world.spec.mpm.dim == 2 else tuple(g)


def mpm_model(world, params: Mapping[str, torch.Tensor] | None = None):
    """An MPMModel of the scene's ``[mpm]`` (tensors on the world's device and dtype),
    differentiable w.r.t. the learnable fields listed in the module docstring. The model also
    carries ``particle_body`` (N,) (body index per particle)."""
    from ..solvers.mpm import MPMBuilder

    scene = world.spec
    spec = _mpm_spec(world)
    _check_learnable(scene)
    dim = spec.dim
    try:
        builder = MPMBuilder(dim=dim, resolution=spec.resolution_tuple, size=spec.size, origin=spec.origin_tuple,
                             boundary_cells=spec.boundary_cells, wall_mode=spec.wall_mode, gravity=_gravity(world))
    except HybridsimError as error:
        raise SceneError(error.message, file=scene.source, field=f"mpm.{error.field or ''}".rstrip(".")) from None
    for i, material in enumerate(spec.materials):
        try:
            builder.add_material(material.kind, youngs_modulus=material.youngs_modulus, poisson_ratio=material.poisson,
                                 bulk_modulus=material.bulk_modulus, viscosity=material.viscosity,
                                 density=material.density, hardening=material.snow("hardening"),
                                 critical_compression=material.snow("critical_compression"),
                                 critical_stretch=material.snow("critical_stretch"), name=material.name)
        except HybridsimError as error:
            raise SceneError(error.message, file=scene.source,
                             field=f"mpm.materials[{i}].{error.field or 'kind'}") from None
    ranges = []
    for i, body in enumerate(spec.bodies):
        material = spec.material(body.material)
        common = dict(material=material, velocity=body.velocity or 0.0,
                      color=body.color or spec.materials[material].display_color, spacing=spec.body_spacing(body),
                      jitter=body.jitter, seed=body.seed if body.seed is not None else scene.seed + i)
        try:
            if body.shape == "box":
                lower = [c - h for c, h in zip(body.center, body.half_size)]
                upper = [c + h for c, h in zip(body.center, body.half_size)]
                ranges.append(builder.add_box(lower, upper, **common))
            elif body.shape == "sphere":
                ranges.append(builder.add_sphere(body.center, body.radius, **common))
            else:
                ranges.append(builder.add_mesh(str(mpm_body_file(scene, i)), scale=body.scale,
                                               translate=body.position or (0.0, 0.0, 0.0), **common))
        except HybridsimError as error:
            if error.file is not None:  # AssetError of the mesh file
                raise
            raise SceneError(error.message, file=scene.source, field=f"mpm.bodies[{i}]") from None
    try:
        model = builder.finalize(dtype=world.dtype, device=world.device)
    except HybridsimError as error:
        raise SceneError(error.message, file=scene.source, field="mpm.bodies") from None

    dtype, device = world.dtype, world.device
    value = lambda path: world.value(path, params)  # noqa: E731
    const = lambda x: torch.as_tensor(x, dtype=dtype, device=device)  # noqa: E731
    youngs, poisson, viscosity, density, hardening, material_color = [], [], [], [], [], []
    for i, material in enumerate(spec.materials):
        base = f"mpm.materials[{i}]"
        if material.bulk_modulus is not None:
            youngs.append(dim * value(f"{base}.bulk_modulus").reshape(()))
            poisson.append(const(0.0))
        else:
            youngs.append(value(f"{base}.youngs_modulus").reshape(()))
            poisson.append(value(f"{base}.poisson_ratio").reshape(()) if material.poisson_ratio is not None
                           else const(material.poisson))
        viscosity.append(value(f"{base}.viscosity").reshape(()))
        density.append(value(f"{base}.density").reshape(()))
        hardening.append(value(f"{base}.hardening").reshape(()) if material.hardening is not None
                         else const(material.snow("hardening")))
        material_color.append(value(f"{base}.color").reshape(3) if material.color is not None
                              else const(material.display_color))
    model.youngs_modulus = torch.stack(youngs)
    model.poisson_ratio = torch.stack(poisson)
    model.viscosity = torch.stack(viscosity)
    model.density = torch.stack(density)
    model.hardening = torch.stack(hardening)

    positions, velocities, colors, owner = [], [], [], []
    for i, (body, rng) in enumerate(zip(spec.bodies, ranges)):
        base, count = f"mpm.bodies[{i}]", len(rng)
        x = model.particle_position[rng.start:rng.stop]
        anchor = f"{base}.{'position' if body.shape == 'mesh' else 'center'}"
        if params is not None and anchor in params:  # translate the sampled particles with the parameter
            x = x + (value(anchor).reshape(dim) - const(scene.get(anchor)))
        positions.append(x)
        velocity = value(f"{base}.velocity").reshape(dim) if body.velocity is not None else torch.zeros(
            dim, dtype=dtype, device=device)
        velocities.append(velocity.expand(count, dim))
        color = value(f"{base}.color").reshape(3) if body.color is not None else material_color[
            spec.material(body.material)]
        colors.append(color.expand(count, 3))
        owner.append(torch.full((count,), i, dtype=torch.int64, device=device))
    model.particle_position = torch.cat(positions).contiguous()
    model.particle_velocity = torch.cat(velocities).contiguous()
    model.particle_color = torch.cat(colors).contiguous()
    model.particle_body = torch.cat(owner)
    return model


def mpm_initial_state(model):
    """The state at t = 0 holding the model's (possibly param-derived) positions and velocities, so
    gradients flow into them (``model.state()`` detaches): C = 0, F = I, Jp = 1."""
    from ..solvers.mpm import MPMState

    n, d = model.particle_count, model.dim
    like = model.particle_position
    return MPMState(model.particle_position, model.particle_velocity,
                    torch.zeros((n, d, d), dtype=like.dtype, device=like.device),
                    torch.eye(d, dtype=like.dtype, device=like.device).expand(n, d, d).contiguous(),
                    torch.ones(n, dtype=like.dtype, device=like.device))


def _range_end(world, path: str, current: float, end: int) -> float:
    item = world.spec.learnable.get(path)
    if item is None or item.range is None:
        return current
    return item.range[end]


def _stiff_end(world, model):
    """A copy of ``model`` with every learnable material constant at its stiff range end (largest
    E, K, nu, viscosity; smallest density), for the substep bound over the whole range."""
    spec = world.spec.mpm
    youngs, poisson, viscosity, density = (t.detach().clone() for t in (
        model.youngs_modulus, model.poisson_ratio, model.viscosity, model.density))
    for i, material in enumerate(spec.materials):
        base = f"mpm.materials[{i}]"
        if material.bulk_modulus is not None:
            youngs[i] = spec.dim * _range_end(world, f"{base}.bulk_modulus", float(youngs[i]) / spec.dim, 1)
        else:
            youngs[i] = _range_end(world, f"{base}.youngs_modulus", float(youngs[i]), 1)
            poisson[i] = min(_range_end(world, f"{base}.poisson_ratio", float(poisson[i]), 1), 0.499)
        viscosity[i] = _range_end(world, f"{base}.viscosity", float(viscosity[i]), 1)
        density[i] = _range_end(world, f"{base}.density", float(density[i]), 0)
    return replace(model, youngs_modulus=youngs, poisson_ratio=poisson, viscosity=viscosity, density=density)


def mpm_substeps(world, model=None) -> tuple[int, float]:
    """(substeps per frame, dt [s]) of the scene: ``mpm.substeps``, or by default the fewest that
    keep every material stable at its current values and at the stiff end of its learnable ranges.
    A given ``mpm.substeps`` that is too few warns (``check_dt``)."""
    from ..solvers.mpm import check_dt, stable_dt
    from ..scene.schema import MAX_SUBSTEPS

    spec = _mpm_spec(world)
    model = mpm_model(world) if model is None else model
    frame_dt = 1.0 / world.spec.time.fps
    stiff = _stiff_end(world, model)
    bound = min(stable_dt(model, cfl=spec.cfl), stable_dt(stiff, cfl=spec.cfl))
    if spec.substeps is None:
        substeps = max(1, math.ceil(frame_dt / bound - 1e-9))
        if substeps > MAX_SUBSTEPS:
            raise SceneError(f"the stiffest material needs {substeps} substeps per frame (more than {MAX_SUBSTEPS}); "
                             "soften it, narrow its learnable range, coarsen the grid or raise the frame rate",
                             file=world.spec.source, field="mpm.materials")
        return substeps, frame_dt / substeps
    substeps = spec.substeps
    dt = frame_dt / substeps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_dt(model, dt, cfl=spec.cfl, youngs_modulus_range=(model.youngs_modulus.detach(), stiff.youngs_modulus),
                 density_range=(stiff.density, model.density.detach()))
    if not caught and dt > bound:  # stiff only through a poisson ratio or viscosity range
        caught = [f"MPM substep dt={dt:.3g} s is stable now but not at the stiff end of the learnable ranges "
                  f"(bound {bound:.3g} s)"]
    for message in caught:
        text = str(getattr(message, "message", message))
        warnings.warn(f"{world.spec.source or 'scene'}: mpm.substeps = {substeps}: {text} "
                      f"(leave mpm.substeps out to get {math.ceil(frame_dt / bound - 1e-9)} automatically)",
                      stacklevel=2)
    return substeps, dt


def mpm_rollout(world, params: Mapping[str, torch.Tensor] | None = None, *, frames: int | None = None,
                progress: Callable[[int], None] | None = None, checkpoint: bool | str = "auto",
                segment_frames: int | None = None) -> MPMSceneTrajectory:
    """Simulate the scene's particles for ``frames`` frames (default: the scene's) and return
    per-frame states, differentiable w.r.t. ``params`` (checkpointed: see ``rollout_mpm``).
    ``progress(frames_done)`` is called as frames finish; a non-finite state or a particle leaving
    the grid raises SimulationError naming the scene file, step and quantity (without gradients it
    carries ``partial``, an MPMSceneTrajectory of the frames simulated before it)."""
    from ..solvers.mpm import SolverMPM, rollout_mpm

    scene = world.spec
    frames = scene.frame_count if frames is None else int(frames)
    model = mpm_model(world, params)
    substeps, dt = mpm_substeps(world, model)
    solver = SolverMPM(model, backend=world.backend, deterministic=world.deterministic)
    state = mpm_initial_state(model)
    positions, velocities = [state.particle_position], [state.particle_velocity]
    from .guards import MPMGuard

    guard = MPMGuard(model, dt=dt, substeps=substeps, spec=scene)  # CFL, non-finite, leaving the grid
    try:
        if torch.is_grad_enabled():
            trajectory = rollout_mpm(solver, state, frames=frames, substeps=substeps, dt=dt, checkpoint=checkpoint,
                                     segment_frames=segment_frames, warn_dt=False, progress=progress,
                                     control=guard.control())
            positions, velocities = [trajectory.positions], [trajectory.velocities]
            state = trajectory.final_state
        else:  # one frame per call, so progress moves every frame (no graph to checkpoint)
            for frame in range(frames):
                part = rollout_mpm(solver, state, frames=1, substeps=substeps, dt=dt, checkpoint=False,
                                   first_step=frame * substeps, warn_dt=False)
                violation = guard.check(part.positions[1], part.velocities[1])
                if violation is not None:
                    raise guard.error(violation, frame + 1)
                positions.append(part.positions[1])
                velocities.append(part.velocities[1])
                state = part.final_state
                if progress is not None:
                    progress(frame + 1)
            positions, velocities = [torch.stack(positions)], [torch.stack(velocities)]
    except SimulationError as error:
        if error.frame is None and not torch.is_grad_enabled():  # the solver's own check, inside a frame
            frame = len(positions)
            step = f"step {error.step}, " if error.step is not None else ""
            error = SimulationError(f"MPM simulation blew up in frame {frame} ({step}t <= {frame / scene.time.fps:.3g} s): "
                                    f"{error.message}", file=scene.source or error.file, step=error.step,
                                    quantity=error.quantity, frame=frame)
        elif error.file is None:
            error = SimulationError(error.message, file=scene.source, step=error.step, quantity=error.quantity,
                                    frame=error.frame)
        if not torch.is_grad_enabled():  # keep the good frames (one per list entry) for the caller
            error.partial = MPMSceneTrajectory(
                torch.stack(positions), torch.stack(velocities),
                torch.arange(len(positions), dtype=torch.float64) / scene.time.fps, model, model.particle_body,
                substeps, dt)
        raise error from None
    times = torch.arange(frames + 1, dtype=torch.float64) / scene.time.fps
    return MPMSceneTrajectory(positions[0], velocities[0], times, model, model.particle_body, substeps, dt, state)
