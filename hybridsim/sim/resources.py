"""Memory estimates and limits: refuse a scene that would not fit *before* allocating it.

One model for every simulator: bytes per cell / particle / body / pixel, times the frames kept,
with the autograd tape of a differentiable rollout accounted for by its checkpointing (only
segment boundaries plus one re-run segment are alive). The constants below were measured as
peak RSS of ``hybridsim render`` and of gradient rollouts on CPU (docs/hardening.md lists the
runs); they err on the high side.

The limit is ``HYBRIDSIM_MEMORY_LIMIT`` when set (``"4GiB"``, ``"512MB"``, ``"2e9"``, ``"50%"`` of
available memory, or ``"off"``), else 80% of available memory: ``MemAvailable`` of
``/proc/meminfo``, capped by a cgroup memory limit when the process has one (containers), and
for CUDA tensors the device's free memory (``torch.cuda.mem_get_info``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field as dataclass_field

from ..errors import ResourceError

__all__ = ["MemoryEstimate", "estimate_scene", "check_memory", "check_scene_memory", "available_memory",
           "memory_limit", "parse_size", "format_size", "DEFAULT_FRACTION", "ENV_LIMIT"]

ENV_LIMIT = "HYBRIDSIM_MEMORY_LIMIT"
DEFAULT_FRACTION = 0.8
GiB = 1 << 30

# ---- the model's constants (bytes = floats x element size unless noted) ---------------------
RECORD_COPIES = 2
"""Per-frame records exist twice at the end of a rollout (the per-segment stacks and the final stack)."""
FLUID_WORKSPACE_FLOATS = 48
"""Grid-fluid solver working set per cell: face fractions, masks, advection temporaries, PCG vectors."""
FLUID_TAPE_FLOATS = 60
"""Grid-fluid autograd tape per cell and substep (inputs saved by every kernel phase and solve)."""
SPHERE_TAPE_FLOATS = 24
"""Sphere-solver autograd tape per body and substep (the step's 7 saved inputs)."""
RIGID_BODY_FLOATS = 64
"""Rigid solver per body and substep (state, tape, contact slots: ~ 20 slots x 3 impulses)."""
MPM_PARTICLE_FLOATS = 40
"""MPM per particle: state (x, v, C, F, Jp), per-particle parameters, model attributes (3D)."""
MPM_NODE_FLOATS = 8
"""MPM per grid node and live substep: mass, momentum, velocity (3D) and their gradients."""
RENDER_BYTES = {
    # (bytes per pixel-frame per element size, fixed bytes per pixel-frame): layers kept in torch
    # (world precision), their float32 numpy copies, uint8 video frames and the transients of
    # to_uint8 / flow_to_color (float64 numpy), measured as peak RSS of ``hybridsim render``.
    "fluid": (12, 210),
    "spheres": (6, 255),
    "rigid": (12, 225),
    "mpm": (24, 200),
}


def format_size(nbytes: float) -> str:
    """``1.5 GiB``, ``320 MiB``, ``12 KiB``."""
    for unit, scale in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(nbytes)} B"


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """``"4GiB"`` -> 4294967296, ``"512MB"`` -> 512000000, ``"2e9"`` -> 2000000000 (ResourceError if unreadable)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise ResourceError(f"cannot read the size {text!r}; write e.g. 4GiB, 512MB or 2e9 (bytes)", field=ENV_LIMIT)
    return int(float(match.group(1)) * _UNITS[unit])


def _read_int(path: str) -> int | None:
    try:
        with open(path) as handle:
            text = handle.read().strip()
        return None if text in ("", "max") else int(text)
    except (OSError, ValueError):
        return None


def available_memory() -> tuple[int, str]:
    """(bytes this process may still allocate on the host, where that figure came from)."""
    available, source = None, "available memory"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            import psutil  # optional (the "bench" extra)

            available = int(psutil.virtual_memory().available)
        except Exception:
            try:
                available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                available = 1 << 62  # unknown: do not refuse
    for limit_path, usage_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_path), _read_int(usage_path)
        if limit is not None and usage is not None and limit < (1 << 60) and limit - usage < available:
            available, source = max(limit - usage, 0), "memory left under the cgroup limit"
    return available, source


def memory_limit(device: str = "cpu") -> tuple[int | None, str]:
    """(limit in bytes or None when checks are off, how it was set) for allocations on ``device``."""
    text = os.environ.get(ENV_LIMIT, "").strip()
    if text.lower() in ("off", "none", "0", "inf", "unlimited"):
        return None, f"{ENV_LIMIT}={text}"
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info()
        available, source = int(free), "free GPU memory"
    else:
        available, source = available_memory()
    if text.endswith("%"):
        try:
            fraction = float(text[:-1]) / 100.0
        except ValueError:
            raise ResourceError(f"cannot read {text!r}; write e.g. 80%", field=ENV_LIMIT) from None
        return int(fraction * available), f"{ENV_LIMIT}={text} of {source} {format_size(available)}"
    if text:
        return parse_size(text), f"{ENV_LIMIT}={text}"
    return int(DEFAULT_FRACTION * available), f"{DEFAULT_FRACTION:.0%} of {source} {format_size(available)}"


@dataclass
class MemoryEstimate:
    """Estimated peak bytes by item, each on the host or the simulation device."""

    subject: str
    """What is being sized, e.g. ``fluid grid 4096x4096 with 600 frames``."""
    field: str | None = None
    """The scene field to change (for the error), e.g. ``fluid.cells``."""
    hint: str = "reduce the resolution or frames"
    device: str = "cpu"
    items: list = dataclass_field(default_factory=list)
    """(label, bytes, on_device) tuples."""

    def add(self, label: str, nbytes: float, on_device: bool = True) -> None:
        if nbytes > 0:
            self.items.append((label, float(nbytes), on_device))

    @property
    def total(self) -> float:
        return sum(item[1] for item in self.items)

    def by_place(self) -> dict[str, float]:
        """Bytes per memory: {"host": ..., "cuda": ...} (one entry on CPU)."""
        places: dict[str, float] = {}
        for _, nbytes, on_device in self.items:
            place = self.device if on_device and str(self.device).startswith("cuda") else "host"
            places[place] = places.get(place, 0.0) + nbytes
        return places

    def breakdown(self) -> str:
        items = sorted(self.items, key=lambda item: -item[1])
        return ", ".join(f"{label} {format_size(nbytes)}" for label, nbytes, _ in items if nbytes >= 0.01 * self.total)


def _element_size(precision: str) -> int:
    return 8 if precision == "float64" else 4


def _checkpoint_segment(steps: int, substeps: int, threshold: int) -> int:
    """Substeps alive at once in a checkpointed rollout's backward (whole frames of about sqrt(steps))."""
    if steps < threshold:
        return steps
    return substeps * max(1, round(math.sqrt(steps / substeps) if substeps > 1 else math.sqrt(steps)))


def _mpm_counts(mpm) -> tuple[int, int, int]:
    """(particles, grid nodes, dim) of an ``[mpm]`` table; particles from each body's volume and
    lattice spacing (mesh bodies: their bounding box is not known before loading, so they count
    as the grid interior, an upper bound)."""
    dim = int(mpm.dim)
    resolution = mpm.resolution_tuple
    nodes = math.prod(resolution)
    particles = 0.0
    for body in mpm.bodies:
        spacing = mpm.body_spacing(body)
        if body.shape == "box":
            volume = math.prod(2.0 * h for h in body.half_size)
        elif body.shape == "sphere":
            volume = math.pi * body.radius ** 2 if dim == 2 else 4.0 / 3.0 * math.pi * body.radius ** 3
        else:
            volume = math.prod((n - 1) * mpm.dx for n in resolution)
        particles += volume / spacing ** dim
    return int(particles), nodes, dim


def _mpm_substeps(spec) -> int:
    """The MPM substeps per frame: ``mpm.substeps`` or the stable bound of the stiffest material."""
    mpm = spec.mpm
    if mpm.substeps is not None:
        return int(mpm.substeps)
    dx, dim, bound = mpm.dx, mpm.dim, math.inf
    for material in mpm.materials:
        rho = material.density
        if material.bulk_modulus is not None:
            modulus = material.bulk_modulus
        else:
            E, nu = material.youngs_modulus, material.poisson
            mu, lam = E / (2 * (1 + nu)), E * nu / ((1 + nu) * (1 - 2 * nu))
            modulus = (lam + 2 * mu / dim) if material.kind == "liquid" else (lam + 2 * mu)
            modulus *= 5.0 if material.kind == "snow" else 1.0
        if modulus > 0:
            bound = min(bound, mpm.cfl * dx / math.sqrt(modulus / rho))
        if material.viscosity > 0:
            bound = min(bound, rho * dx * dx / (2 * dim * material.viscosity))
    return max(1, math.ceil((1.0 / spec.time.fps) / bound - 1e-9)) if math.isfinite(bound) else 1


def estimate_scene(spec, *, frames: int | None = None, grad: bool = False, render: bool = False,
                   precision: str | None = None, device: str = "cpu", world_count: int = 1) -> MemoryEstimate:
    """Peak memory of simulating ``frames`` frames of ``spec`` (default: the scene's), with the
    autograd tape when ``grad``, and of rendering every frame's layers when ``render``."""
    from ..scene.schema import RIGID_TYPES

    frames = spec.frame_count if frames is None else int(frames)
    s = _element_size(precision or spec.precision)
    substeps = spec.time.substeps
    steps = frames * substeps
    kept = frames + 1
    camera = spec.camera
    pixels = camera.width * camera.height
    what = ("grad rollout of " if grad else "") + f"{frames} frames"
    mpm = getattr(spec, "mpm", None)
    if spec.fluid is not None:
        shape = tuple(spec.fluid.cells)
        cells = math.prod(shape)
        # one face array per axis (n + 1 faces along it) and the density
        state = sum(cells // n * (n + 1) for n in shape) + cells
        if getattr(spec.fluid, "temperature", None) is not None:
            state += cells  # the temperature field is recorded and carried like density
        est = MemoryEstimate(f"fluid grid {'x'.join(map(str, shape))} with {what}", "fluid.cells",
                             "reduce cells or frames", device)
        est.add("per-frame records", RECORD_COPIES * kept * state * s)
        est.add("solver workspace", FLUID_WORKSPACE_FLOATS * cells * s)
        if grad:
            alive = _checkpoint_segment(steps, substeps, 16)
            est.add("autograd tape", alive * FLUID_TAPE_FLOATS * cells * s + math.ceil(steps / alive) * state * s)
        kind = "fluid"
    elif mpm is not None:
        particles, nodes, dim = _mpm_counts(mpm)
        mpm_substeps = _mpm_substeps(spec)
        scale = (2 * dim + 2 * dim * dim + 9) / (2 * 3 + 2 * 9 + 9)
        est = MemoryEstimate(f"MPM with {particles} particles on a {'x'.join(map(str, mpm.resolution_tuple))} grid, "
                             f"{what}", "mpm.bodies", "use fewer particles (spacing / particles_per_cell), a coarser "
                             "grid or fewer frames", device)
        est.add("per-frame records", RECORD_COPIES * kept * particles * 2 * dim * s)
        est.add("particles", MPM_PARTICLE_FLOATS * scale * particles * s)
        est.add("grid", MPM_NODE_FLOATS * nodes * s)
        if grad:
            mpm_steps = frames * mpm_substeps
            alive = _checkpoint_segment(mpm_steps, mpm_substeps, 64)
            per_step = (2 * dim + 2 * dim * dim + 1) * particles * s + (2 * dim + 2) * nodes * s
            est.add("autograd tape", alive * per_step + math.ceil(mpm_steps / alive) * 2 * dim * particles * s)
        kind = "mpm"
    elif any(obj.type in RIGID_TYPES for obj in spec.objects):
        bodies = sum(obj.type not in ("static_box", "static_mesh") for obj in spec.objects)
        est = MemoryEstimate(f"{bodies} rigid bod{'ies' if bodies != 1 else 'y'}, {what}", "time.frames",
                             "reduce frames", device)
        est.add("per-frame records", RECORD_COPIES * kept * bodies * 13 * s)
        if grad:  # checkpointed like the sphere rollout (hybridsim.sim.rigid.rigid_rollout)
            alive = _checkpoint_segment(steps, substeps, 64)
            est.add("solver and autograd tape", RIGID_BODY_FLOATS * bodies * s * alive
                    + math.ceil(steps / alive) * bodies * 16 * s)
        else:
            est.add("solver", RIGID_BODY_FLOATS * bodies * s)
        kind = "rigid"
    else:
        bodies = world_count * sum(obj.type == "sphere" for obj in spec.objects)
        est = MemoryEstimate(f"{bodies} sphere{'s' if bodies != 1 else ''}, {what}", "time.frames",
                             "reduce frames or worlds", device)
        est.add("per-frame records", RECORD_COPIES * kept * bodies * 6 * s)
        if grad:
            alive = _checkpoint_segment(steps, substeps, 64)
            est.add("autograd tape", alive * SPHERE_TAPE_FLOATS * bodies * s + math.ceil(steps / alive) * bodies * 6 * s)
        kind = "spheres"
    if render:
        per_element, fixed = RENDER_BYTES[kind]
        layers = kept * pixels * (per_element * s + fixed)
        est.subject += f" rendered at {camera.width}x{camera.height}"
        if layers >= est.total:  # the image dominates
            est.field, est.hint = "camera", "reduce the image size (camera width x height) or frames"
        else:
            est.hint += " (or the image size)"
        est.add("rendered layers", layers, on_device=False)
    return est


def check_memory(estimate: MemoryEstimate, *, file: str | None = None) -> None:
    """Raise ResourceError when ``estimate`` exceeds the memory limit of any place it lives in."""
    for place, nbytes in estimate.by_place().items():
        limit, how = memory_limit(place if place != "host" else "cpu")
        if limit is None or nbytes <= limit:
            continue
        memory = "GPU memory" if place != "host" else "memory"
        raise ResourceError(
            f"{estimate.subject} needs ~{format_size(nbytes)} of {memory} ({estimate.breakdown()}); the limit is "
            f"{format_size(limit)} ({how}); {estimate.hint}, or set {ENV_LIMIT} (e.g. 8GiB, or off)",
            file=file, field=estimate.field)


def check_scene_memory(spec, *, frames: int | None = None, grad: bool = False, render: bool = False,
                       precision: str | None = None, device: str = "cpu", world_count: int = 1) -> MemoryEstimate:
    """Estimate (see ``estimate_scene``) and refuse with ResourceError when over the limit; returns the estimate."""
    estimate = estimate_scene(spec, frames=frames, grad=grad, render=render, precision=precision, device=device,
                              world_count=world_count)
    check_memory(estimate, file=spec.source)
    return estimate
