"""Quality gates for generated samples: reject rollouts that are not physically plausible.

A gate looks only at the simulated states (and the camera), so a rejected draw costs a rollout,
never a render. Every check is deterministic, so the same command rejects the same draws.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from types import SimpleNamespace

__all__ = ["QualityGates", "evaluate_gates", "evaluate_rigid_gates", "rigid_initial_gates", "blow_up_reason",
           "evaluate_fluid_gates", "evaluate_mpm_gates", "fluid_inflow_rate", "fluid_body_margins",
           "fluid_rigid_initial_gates", "evaluate_fluid_rigid_gates", "GATE_NAMES"]

GATE_NAMES = ("non_finite", "penetration", "energy_gain", "out_of_frame", "initial_overlap", "mass_gain", "cfl",
              "out_of_domain")


@dataclass(frozen=True)
class QualityGates:
    """Tolerances of the quality gates.

    ``penetration_m``: deepest allowed overlap [m] of a sphere with the ground or with another
    sphere (the sphere solver has no sphere-sphere contact, so overlapping spheres would pass
    through each other); in rigid scenes, of any object with the ground, a static box or another
    object, and at t = 0 (``initial_overlap``: objects must not start inside each other).
    ``energy_gain_j_per_kg``: largest allowed rise of total mechanical energy (with rotation and
    springs in rigid scenes) above its initial value, per kg of total mass [J/kg] (1e-2 J/kg ~
    1 mm of height); MPM scenes: kinetic plus gravitational energy of the particles (elastic
    energy starts at zero, so that sum can only fall). ``require_in_frame``: every sphere centre
    (rigid: every body's centre of mass) must project inside the image in every frame, seen by that
    frame's camera. ``mass_gain``: a fluid's total density may exceed what its inflows added
    (plus the initial amount) by at most this fraction. ``cfl_max``: largest allowed CFL number
    at the frame boundaries (fluid: max |u| dt / dx over the faces; MPM: max |v| dt / dx over the
    particles); the simulators' own blow-up guards stop at 5 (fluid) and 1 (MPM).
    """

    penetration_m: float = 1e-3
    energy_gain_j_per_kg: float = 1e-2
    require_in_frame: bool = False
    mass_gain: float = 1e-2
    cfl_max: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_gates(spec, positions, velocities, gates: QualityGates) -> tuple[dict, list[dict]]:
    """Check one world's states against ``gates``.

    ``positions`` / ``velocities``: sphere states (T, N, 3) [m, m/s] (torch). Returns the measured
    quantities (``ground_penetration_m``, ``sphere_overlap_m``, ``energy_gain_j_per_kg``,
    ``momentum_change``, ``min_in_frame_margin_px``) and the list of failures, each
    ``{"gate", "value", "limit", "detail"}`` (empty when the sample passes).
    """
    import torch

    from ..metrics.physics import sphere_physics_metrics
    from ..render.camera import Camera

    positions = positions.detach().to(torch.float64)
    velocities = velocities.detach().to(torch.float64)
    spheres = [obj for obj in spec.objects if obj.type == "sphere"]
    failures: list[dict] = []
    if not (torch.isfinite(positions).all() and torch.isfinite(velocities).all()):
        failures.append({"gate": "non_finite", "value": None, "limit": None, "detail": "non-finite sphere states"})
        return {}, failures
    mass = torch.tensor([obj.mass_kg for obj in spheres], dtype=torch.float64)
    radius = torch.tensor([obj.radius for obj in spheres], dtype=torch.float64)
    measured: dict = {}
    if spheres:
        physics = sphere_physics_metrics(positions[:, None], velocities[:, None], mass, radius,
                                         gravity=spec.gravity, ground_height=spec.ground.height)
        ground = physics["penetration"] if spec.ground.enabled else 0.0
        energy = physics["energy_gain"] / float(mass.sum())
        measured.update(ground_penetration_m=ground, energy_gain_j_per_kg=energy,
                        momentum_change=physics["momentum_change"])
    else:
        ground, energy = 0.0, 0.0
        measured.update(ground_penetration_m=0.0, energy_gain_j_per_kg=0.0, momentum_change=0.0)
    overlap = _sphere_overlap(positions, radius)
    measured["sphere_overlap_m"] = overlap
    from ..render.camera_io import camera_moves, scene_cameras

    if camera_moves(spec.camera):  # a camera path: each frame against its own camera
        cameras = scene_cameras(spec.camera, positions.shape[0], spec.time.fps)
        margin = min(_in_frame_margin(cam, positions[t:t + 1]) for t, cam in enumerate(cameras))
    else:
        margin = _in_frame_margin(Camera.from_spec(spec.camera), positions)
    measured["min_in_frame_margin_px"] = margin

    deepest = max(ground, overlap)
    if deepest > gates.penetration_m:
        what = "the ground" if ground >= overlap else "another sphere"
        failures.append({"gate": "penetration", "value": deepest, "limit": gates.penetration_m,
                         "detail": f"a sphere overlaps {what} by {deepest:.4g} m"})
    if energy > gates.energy_gain_j_per_kg:
        failures.append({"gate": "energy_gain", "value": energy, "limit": gates.energy_gain_j_per_kg,
                         "detail": f"mechanical energy rose by {energy:.4g} J/kg"})
    if gates.require_in_frame and margin < 0:
        failures.append({"gate": "out_of_frame", "value": margin, "limit": 0.0,
                         "detail": f"a sphere centre leaves the image (by {-margin:.4g} px)"})
    return measured, failures


def _sphere_overlap(positions, radius) -> float:
    """Deepest overlap [m] between two spheres over all frames (0 for fewer than two)."""
    import torch

    count = positions.shape[1]
    if count < 2:
        return 0.0
    first, second = torch.triu_indices(count, count, offset=1)
    distance = (positions[:, first] - positions[:, second]).norm(dim=-1)  # (T, pairs)
    return max(float((radius[first] + radius[second] - distance).max()), 0.0)


def _in_frame_margin(camera, positions) -> float:
    """Smallest distance [px] of a projected sphere centre inside the image border over all frames;
    negative when a centre leaves the image, -inf when one is behind the camera."""
    if positions.shape[1] == 0:
        return math.inf
    pixels, depth = camera.project(positions)
    if bool((depth <= 0).any()):
        return -math.inf
    x, y = pixels[..., 0], pixels[..., 1]
    margins = [x.min(), (camera.width - x).min(), y.min(), (camera.height - y).min()]
    return float(min(float(m) for m in margins))


# --------------------------------------------------------------------------------------------
# Rigid-body scenes
# --------------------------------------------------------------------------------------------

#: SimulationError quantity (a blow-up guard of ``hybridsim.sim.guards``) -> the gate it counts under.
_BLOW_UP_GATES = {"penetration": "penetration", "energy": "energy_gain"}


def blow_up_reason(error) -> dict:
    """The rejection reason of a draw whose rollout raised SimulationError (a blow-up guard fired):
    penetration and energy blow-ups count under those gates, anything else (nan/inf) as non_finite."""
    gate = _BLOW_UP_GATES.get(getattr(error, "quantity", None) or "", "non_finite")
    return {"gate": gate, "value": None, "limit": None, "detail": error.message, "blow_up": True}


def _name(spec, index: int) -> str:
    from ..sim.guards import describe_object

    return "the ground" if index < 0 else describe_object(spec, index)


def _rigid_depths(spec, model, state0, positions, orientations, body_objects) -> dict:
    """Per frame, the deepest overlap with the ground and between objects (or a static box) [m]
    and which pair: exact for boxes, capsules and spheres (:mod:`hybridsim.data.overlap`), and the
    solver's contact points (box corners, sphere and capsule centres, mesh hull vertices) for
    every shape, meshes included (``RigidGuard``). Returns numpy arrays ``ground``, ``objects``
    (T,) and ``ground_pair``, ``objects_pair`` (T, 2) scene object indices (-1: the ground)."""
    import numpy as np
    import torch

    from ..render.rigid import rigid_poses
    from ..sim.guards import RigidGuard
    from .overlap import object_depths

    trajectory = SimpleNamespace(positions=positions, orientations=orientations, body_objects=body_objects)
    with torch.no_grad():  # rigid_poses reads only these and world.spec
        poses = rigid_poses(SimpleNamespace(spec=spec), trajectory).detach().cpu().double().numpy()
        frames = poses.shape[0]
        candidates = {"ground": [], "objects": []}  # lists of (depth (T,), pair)
        for a, b, depth in object_depths(spec, poses):
            candidates["ground" if b < 0 else "objects"].append((depth, (a, b)))
        guard = RigidGuard(model, state0, substeps=spec.time.substeps, spec=spec)
        if guard.row_count:  # shape index == scene object index (one shape per object, in order)
            rows = torch.stack([guard.depths(positions[t].double(), orientations[t].double())
                                for t in range(frames)]).cpu().numpy()  # (T, R)
            solid = guard.solid.cpu().numpy()
            shape = guard.shape.cpu().numpy()
            for key, mask in (("ground", solid < 0), ("objects", solid >= 0)):
                if mask.any():
                    sub = rows[:, mask]
                    deepest = sub.argmax(-1)
                    pairs = np.stack([shape[mask][deepest], solid[mask][deepest]], -1)
                    candidates[key].append((sub.max(-1), pairs))
    out = {}
    for key, found in candidates.items():
        depth = np.full(frames, -np.inf)
        pair = np.full((frames, 2), -1, dtype=np.int64)
        for values, which in found:
            values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=np.inf)
            which = np.broadcast_to(np.asarray(which, dtype=np.int64), (frames, 2))
            deeper = values > depth
            depth = np.where(deeper, values, depth)
            pair = np.where(deeper[:, None], which, pair)
        out[key], out[f"{key}_pair"] = depth, pair
    return out


def _overlap_detail(spec, depth: float, pair, frame: int | None) -> str:
    a, b = int(pair[0]), int(pair[1])
    when = "at t = 0" if frame is None else f"in frame {frame}"
    if b < 0:
        return f"{_name(spec, a)} is {depth:.4g} m inside the ground {when}"
    return f"{_name(spec, a)} overlaps {_name(spec, b)} by {depth:.4g} m {when}"


def rigid_initial_gates(world, gates: QualityGates) -> tuple[dict, list[dict]]:
    """Before simulating a rigid scene: no object may start inside another, a static box or the
    ground by more than ``gates.penetration_m`` (the solver would push them apart violently).
    Returns the measured ``initial_overlap_m`` and the failures (gate ``initial_overlap``)."""
    import torch

    from ..sim.rigid import rigid_body_objects, rigid_initial_state, rigid_model

    spec = world.spec
    with torch.no_grad():
        model = rigid_model(world)
        state = rigid_initial_state(model)
        depths = _rigid_depths(spec, model, state, state.body_position[None], state.body_orientation[None],
                               rigid_body_objects(spec))
    key = "ground" if depths["ground"][0] >= depths["objects"][0] else "objects"
    deepest = max(float(depths[key][0]), 0.0)
    failures = []
    if deepest > gates.penetration_m:
        failures.append({"gate": "initial_overlap", "value": deepest, "limit": gates.penetration_m,
                         "detail": _overlap_detail(spec, deepest, depths[f"{key}_pair"][0], None)})
    return {"initial_overlap_m": deepest}, failures


def evaluate_rigid_gates(world, trajectory, gates: QualityGates) -> tuple[dict, list[dict]]:
    """Check a rigid rollout (:class:`~hybridsim.sim.rigid.RigidTrajectory`) against ``gates``:
    non-finite states, penetration after t = 0 (ground, static boxes, other objects), energy gain
    per kg, and body centres leaving the image (per-frame cameras). Returns the measured
    ``ground_penetration_m``, ``object_overlap_m``, ``energy_gain_j_per_kg`` and
    ``min_in_frame_margin_px`` and the failures, as :func:`evaluate_gates`."""
    import numpy as np
    import torch

    from ..render.camera_io import scene_cameras

    spec = world.spec
    x, q = trajectory.positions.detach(), trajectory.orientations.detach()
    v, w = trajectory.velocities.detach(), trajectory.angular_velocities.detach()
    failures: list[dict] = []
    if not all(bool(torch.isfinite(t).all()) for t in (x, q, v, w)):
        failures.append({"gate": "non_finite", "value": None, "limit": None, "detail": "non-finite rigid-body states"})
        return {}, failures

    state0 = SimpleNamespace(body_position=x[0], body_orientation=q[0], body_velocity=v[0], body_angular_velocity=w[0])
    model = trajectory.model
    depths = _rigid_depths(spec, model, state0, x, q, trajectory.body_objects)
    measured: dict = {}
    worst = None
    for key, label in (("ground", "ground_penetration_m"), ("objects", "object_overlap_m")):
        later = depths[key][1:]
        value = max(float(later.max()), 0.0) if len(later) else 0.0
        measured[label] = value
        if len(later) and (worst is None or value > worst[0]):
            frame = int(later.argmax()) + 1
            worst = (value, depths[f"{key}_pair"][frame], frame)

    from ..sim.guards import RigidGuard

    with torch.no_grad():
        guard = RigidGuard(model, state0, substeps=spec.time.substeps, spec=spec)
        energies = []
        for t in range(x.shape[0]):
            kinetic, potential, spring = guard.energy(x[t].double(), q[t].double(), v[t].double(), w[t].double())
            energies.append(float((kinetic + potential).sum() + spring))
        total_mass = float(model.body_mass.detach().double().sum())
    energies = np.asarray(energies)
    energy = float((energies[1:] - energies[0]).max()) / total_mass if len(energies) > 1 else 0.0
    measured["energy_gain_j_per_kg"] = energy

    cameras = scene_cameras(spec.camera, x.shape[0], spec.time.fps)
    centres = x.to(torch.float64)
    margin = min(_in_frame_margin(cam, centres[t:t + 1]) for t, cam in enumerate(cameras))
    measured["min_in_frame_margin_px"] = margin

    if worst is not None and worst[0] > gates.penetration_m:
        failures.append({"gate": "penetration", "value": worst[0], "limit": gates.penetration_m,
                         "detail": _overlap_detail(spec, worst[0], worst[1], worst[2])})
    if energy > gates.energy_gain_j_per_kg:
        failures.append({"gate": "energy_gain", "value": energy, "limit": gates.energy_gain_j_per_kg,
                         "detail": f"mechanical energy rose by {energy:.4g} J/kg"})
    if gates.require_in_frame and margin < 0:
        failures.append({"gate": "out_of_frame", "value": margin, "limit": 0.0,
                         "detail": f"a body's centre of mass leaves the image (by {-margin:.4g} px)"})
    return measured, failures


# --------------------------------------------------------------------------------------------
# Fluid (2D smoke) and MPM scenes
# --------------------------------------------------------------------------------------------


def fluid_inflow_rate(fluid_spec) -> float:
    """Density the inflows add per second, summed over the cells [density x cells / s]: each source
    adds ``rate * coverage`` per cell and second, with the soft coverage of the solver's
    ``add_inflow`` kernel (a C1 ramp one cell wide across the shape's edge). 2D (discs, boxes) and
    3D (spheres, axis-aligned boxes) grids."""
    import numpy as np

    cells = tuple(int(n) for n in fluid_spec.cells)
    dx = float(fluid_spec.cell_size)
    centres = np.meshgrid(*[(np.arange(n) + 0.5) * dx for n in cells], indexing="ij", sparse=True)

    def ramp(e):
        s = np.clip(e + 0.5, 0.0, 1.0)
        return s * s * (3.0 - 2.0 * s)

    total = 0.0
    for inflow in fluid_spec.inflows:
        offset = [x - (c - o) for x, c, o in zip(centres, inflow.center, fluid_spec.origin)]
        if inflow.shape in ("disc", "sphere"):
            cover = ramp((inflow.radius - np.sqrt(sum(o * o for o in offset) + 1e-20)) / dx)
        else:
            cover = 1.0
            for o, half in zip(offset, inflow.half_size):
                cover = cover * ramp((half - np.abs(o)) / dx)
        total += float(inflow.rate) * float(np.broadcast_to(cover, cells).sum())
    return total


def evaluate_fluid_gates(world, trajectory, gates: QualityGates) -> tuple[dict, list[dict]]:
    """Check a grid-fluid rollout (GridFluidTrajectory or GridFluid3DTrajectory): non-finite fields,
    the total density against the inflow budget (initial amount + rate x time, gate ``mass_gain``)
    and the CFL number at every record (gate ``cfl``). Returns the measured ``mass`` (per record, in density x cells),
    ``inflow_budget`` (the same at the last record), ``mass_gain`` (the largest relative excess over
    the budget, <= 0 when none) and ``max_cfl``, and the failures, as :func:`evaluate_gates`."""
    import torch

    spec = world.spec
    velocities = [t.detach().to(torch.float64) for t in (trajectory.velocity_x, trajectory.velocity_y,
                                                         getattr(trajectory, "velocity_z", None)) if t is not None]
    rho = trajectory.density.detach().to(torch.float64)
    if not all(bool(torch.isfinite(t).all()) for t in (*velocities, rho)):
        return {}, [{"gate": "non_finite", "value": None, "limit": None, "detail": "non-finite fluid fields"}]
    frames = rho.shape[0]
    mass = rho.reshape(frames, -1).sum(-1)
    times = trajectory.times.detach().to(torch.float64)
    budget = mass[0] + fluid_inflow_rate(spec.fluid) * (times - times[0])
    excess = (mass - budget) / budget.clamp(min=1e-12)
    gain = float(excess[1:].max()) if frames > 1 else 0.0
    speed = max(float(u.abs().max()) for u in velocities)
    cfl = speed * spec.dt / float(spec.fluid.cell_size)
    measured = {"mass": [round(float(m), 6) for m in mass], "inflow_budget": float(budget[-1]), "mass_gain": gain,
                "max_cfl": cfl}
    failures = []
    if gain > gates.mass_gain:
        failures.append({"gate": "mass_gain", "value": gain, "limit": gates.mass_gain,
                         "detail": f"the fluid holds {100 * gain:.3g}% more density than its inflows added"})
    if cfl > gates.cfl_max:
        failures.append({"gate": "cfl", "value": cfl, "limit": gates.cfl_max,
                         "detail": f"CFL number {cfl:.3g} (raise [time] substeps or lower buoyancy / inflow rate)"})
    return measured, failures


# --------------------------------------------------------------------------------------------
# Rigid bodies in a 2D fluid
# --------------------------------------------------------------------------------------------


def fluid_body_margins(spec, positions, orientations, body_objects):
    """How far each body's cross-section with the fluid plane (y = 0) stays inside the 2D fluid's
    domain [m] per frame: (margins (T,) the smallest over the bodies, negative where one sticks out,
    bodies (T,) the scene object index of that body). ``positions`` (T, B, 3), ``orientations``
    (T, B, 4) x, y, z, w (rotation about y only), ``body_objects`` (B,) scene object per body.
    Boxes use their rotated x-z half extents, spheres their radius."""
    import numpy as np

    x = np.asarray(positions, dtype=np.float64)
    q = np.asarray(orientations, dtype=np.float64)
    frames = x.shape[0]
    fluid = spec.fluid
    lower = np.asarray(fluid.origin, dtype=np.float64)
    upper = lower + np.asarray(fluid.cells, dtype=np.float64) * float(fluid.cell_size)
    margins = np.full(frames, np.inf)
    which = np.full(frames, -1, dtype=np.int64)
    for b, k in enumerate(int(k) for k in body_objects):
        obj = spec.objects[k]
        if obj.type == "box":
            hx, hz = float(obj.half_extents[0]), float(obj.half_extents[2])
            angle = 2.0 * np.arctan2(q[:, b, 1], q[:, b, 3])  # about y
            cos, sin = np.abs(np.cos(angle)), np.abs(np.sin(angle))
            reach = np.stack([cos * hx + sin * hz, sin * hx + cos * hz], axis=-1)  # (T, 2) half widths in x, z
        else:
            reach = np.full((frames, 2), float(obj.radius))
        centre = x[:, b][:, [0, 2]]
        margin = np.minimum(centre - reach - lower, upper - centre - reach).min(-1)
        margin = np.where(np.isfinite(margin), margin, -np.inf)
        closer = margin < margins
        margins, which = np.where(closer, margin, margins), np.where(closer, k, which)
    return margins, which


def _domain_failure(spec, margin: float, obj: int, frame: int | None, gates: QualityGates) -> list[dict]:
    if margin >= -gates.penetration_m:
        return []
    when = "at t = 0" if frame is None else f"in frame {frame}"
    return [{"gate": "out_of_domain", "value": -margin, "limit": gates.penetration_m,
             "detail": f"{_name(spec, obj)} sticks out of the fluid's domain by {-margin:.4g} m {when}"}]


def fluid_rigid_initial_gates(world, gates: QualityGates) -> tuple[dict, list[dict]]:
    """Before simulating a 2D fluid with bodies: the rigid scenes' ``initial_overlap`` gate (bodies
    inside each other or the ground) and every body's cross-section inside the fluid's domain
    (gate ``out_of_domain``, tolerance ``gates.penetration_m``). Returns the measured
    ``initial_overlap_m`` and ``initial_domain_margin_m`` and the failures."""
    import torch

    from ..sim.rigid import rigid_body_objects, rigid_initial_state, rigid_model

    spec = world.spec
    measured, failures = rigid_initial_gates(world, gates)
    with torch.no_grad():
        state = rigid_initial_state(rigid_model(world))
    margins, which = fluid_body_margins(spec, state.body_position[None].detach().cpu().numpy(),
                                        state.body_orientation[None].detach().cpu().numpy(), rigid_body_objects(spec))
    measured["initial_domain_margin_m"] = float(margins[0])
    failures += _domain_failure(spec, float(margins[0]), int(which[0]), None, gates)
    return measured, failures


def evaluate_fluid_rigid_gates(world, trajectory, gates: QualityGates) -> tuple[dict, list[dict]]:
    """Check a fluid + bodies rollout (:class:`~hybridsim.sim.fluid_rigid.FluidRigidTrajectory`):
    the fluid's gates (:func:`evaluate_fluid_gates`: non-finite fields, ``mass_gain``, ``cfl``), non-finite
    body states, penetration after t = 0 (bodies into each other or the ground, as
    :func:`evaluate_rigid_gates`), every body's cross-section inside the fluid's domain (gate
    ``out_of_domain``, tolerance ``gates.penetration_m``) and, with ``gates.require_in_frame``, body
    centres in the image. No energy gate: the fluid does work on the bodies. Returns the fluid's
    measured values plus ``ground_penetration_m``, ``object_overlap_m``, ``body_domain_margin_m``
    (smallest over frames and bodies) and ``min_in_frame_margin_px``, and the failures."""
    import torch

    from ..render import Camera

    spec = world.spec
    measured, failures = evaluate_fluid_gates(world, trajectory.fluid, gates)
    rigid = trajectory.rigid
    x, q = rigid.positions.detach(), rigid.orientations.detach()
    v, w = rigid.velocities.detach(), rigid.angular_velocities.detach()
    if not all(bool(torch.isfinite(t).all()) for t in (x, q, v, w)):
        failures.append({"gate": "non_finite", "value": None, "limit": None, "detail": "non-finite rigid-body states"})
        return measured, failures
    state0 = SimpleNamespace(body_position=x[0], body_orientation=q[0], body_velocity=v[0], body_angular_velocity=w[0])
    depths = _rigid_depths(spec, rigid.model, state0, x, q, rigid.body_objects)
    worst = None
    for key, label in (("ground", "ground_penetration_m"), ("objects", "object_overlap_m")):
        later = depths[key][1:]
        value = max(float(later.max()), 0.0) if len(later) else 0.0
        measured[label] = value
        if len(later) and (worst is None or value > worst[0]):
            frame = int(later.argmax()) + 1
            worst = (value, depths[f"{key}_pair"][frame], frame)
    if worst is not None and worst[0] > gates.penetration_m:
        failures.append({"gate": "penetration", "value": worst[0], "limit": gates.penetration_m,
                         "detail": _overlap_detail(spec, worst[0], worst[1], worst[2])})
    margins, which = fluid_body_margins(spec, x.cpu().numpy(), q.cpu().numpy(), rigid.body_objects)
    frame = int(margins.argmin())
    measured["body_domain_margin_m"] = float(margins[frame])
    failures += _domain_failure(spec, float(margins[frame]), int(which[frame]), frame, gates)
    margin = _in_frame_margin(Camera.from_spec(spec.camera), x.to(torch.float64).reshape(-1, 1, 3))
    measured["min_in_frame_margin_px"] = margin
    if gates.require_in_frame and margin < 0:
        failures.append({"gate": "out_of_frame", "value": margin, "limit": 0.0,
                         "detail": f"a body's centre of mass leaves the image (by {-margin:.4g} px)"})
    return measured, failures


def mpm_particle_mass(model):
    """Mass of every particle [kg] (2D: per metre of depth), shape (N,), float64."""
    return (model.density.detach().double()[model.particle_material] * model.particle_volume.detach().double())


def evaluate_mpm_gates(world, trajectory, gates: QualityGates) -> tuple[dict, list[dict]]:
    """Check an MPM rollout (MPMSceneTrajectory) beyond what ``MPMGuard`` already stopped (non-finite
    particles, particles leaving the grid, particle CFL above 1): kinetic + gravitational energy
    gain per kg (gate ``energy_gain``; elastic and pressure energy start at zero, so the sum can
    only fall in an exact solver) and the particle CFL number at every frame (gate ``cfl``).
    Returns the measured ``energy_gain_j_per_kg``, ``max_cfl`` and ``max_speed_m_per_s``."""
    import torch

    x = trajectory.positions.detach().to(torch.float64)
    v = trajectory.velocities.detach().to(torch.float64)
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(v).all())):
        return {}, [{"gate": "non_finite", "value": None, "limit": None, "detail": "non-finite particle states"}]
    model = trajectory.model
    mass = mpm_particle_mass(model)
    g = torch.tensor(world.spec.gravity, dtype=torch.float64)
    if x.shape[-1] == 2:
        g = g[[0, 2]]
    energy = (0.5 * (v * v).sum(-1) - (x * g).sum(-1)) @ mass  # (T,)
    total = float(mass.sum())
    gain = float((energy[1:] - energy[0]).max()) / total if energy.shape[0] > 1 else 0.0
    speed = float(v.abs().amax()) if v.numel() else 0.0
    cfl = speed * trajectory.dt / float(model.grid.dx)
    measured = {"energy_gain_j_per_kg": gain, "max_cfl": cfl, "max_speed_m_per_s": speed}
    failures = []
    if gain > gates.energy_gain_j_per_kg:
        failures.append({"gate": "energy_gain", "value": gain, "limit": gates.energy_gain_j_per_kg,
                         "detail": f"kinetic + gravitational energy rose by {gain:.4g} J/kg"})
    if cfl > gates.cfl_max:
        failures.append({"gate": "cfl", "value": cfl, "limit": gates.cfl_max,
                         "detail": f"particle CFL number {cfl:.3g} (raise mpm.substeps)"})
    return measured, failures
