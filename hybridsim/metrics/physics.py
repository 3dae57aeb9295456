"""Physical plausibility of simulated states, one function per simulator.

Each function takes the per-frame states a rollout records (frame 0 = the initial state) and
returns a JSON-friendly dict of floats, ints and lists; keys carry their unit where it is not
obvious (``_j`` joules, ``_m`` metres, ``_kg``, ``_j_per_kg``, ``_relative`` dimensionless).

==========================  ==================================================================
sphere_physics_metrics      energy gain / drift, ground penetration, horizontal momentum
rigid_physics_metrics       total energy (kinetic incl. rotational + potential + springs) per
                            frame, drift and largest rise; penetration (ground, bodies) per
                            frame; linear / angular momentum against gravity in flight
fluid_physics_metrics       (2D and 3D) relative divergence (max and area-weighted L2) per frame; total
                            density against the inflow budget; kinetic energy; CFL number
mpm_physics_metrics         total mass, linear momentum against the gravity impulse, kinetic +
                            gravitational (+ elastic) energy, det(F) range, particles outside
                            the domain, particle CFL number
fluid_rigid_face_geometry   per-frame face fractions and solid face velocities of a 2D fluid cut
                            by rigid bodies (for fluid_physics_metrics)
scene_physics_metrics       the right one of these for a scene and its ``OUT.states.npz``
==========================  ==================================================================

In 2D (grid fluid, 2D MPM) masses, momenta and energies are per metre of depth.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping, Sequence

import torch

__all__ = ["sphere_physics_metrics", "rigid_physics_metrics", "fluid_physics_metrics", "mpm_physics_metrics",
           "scene_physics_metrics", "fluid_rigid_face_geometry"]


def _floats(values: torch.Tensor) -> list[float]:
    return [float(x) for x in values.reshape(-1)]


def sphere_physics_metrics(positions: torch.Tensor, velocities: torch.Tensor, mass: torch.Tensor,
                           radius: torch.Tensor, gravity=(0.0, 0.0, -9.81), ground_height: float = 0.0) -> dict:
    """Energy and contact checks of sphere states (F, W, N, 3) with per-body mass and radius (W*N,).

    Returns ``energy_gain`` (largest rise of total mechanical energy above its initial value, J,
    per world, max over worlds; > 0 means energy was created), ``energy_drift`` (final minus initial
    energy relative to the initial, max |.| over worlds), ``penetration`` (deepest sphere-ground
    overlap, m) and ``momentum_change`` (|change of horizontal momentum|, kg m/s: the ground is
    frictionless and gravity vertical, so it should be 0).
    """
    frames, worlds, count = positions.shape[:3]
    m = mass.reshape(worlds, count).to(positions.dtype)
    r = radius.reshape(worlds, count).to(positions.dtype)
    g = torch.as_tensor(gravity, dtype=positions.dtype)
    kinetic = 0.5 * (m * velocities.pow(2).sum(-1)).sum(-1)  # (F, W)
    potential = -(m[..., None] * positions * g).sum(-1).sum(-1)
    energy = kinetic + potential
    gain = (energy - energy[0]).max(dim=0).values
    drift = (energy[-1] - energy[0]) / energy[0].abs().clamp(min=1e-12)
    penetration = (r + ground_height - positions[..., 2]).clamp(min=0.0).max()
    momentum = (m[..., None] * velocities[..., :2]).sum(-2)  # (F, W, 2)
    return {
        "energy_gain": float(gain.max()),
        "energy_drift": float(drift.abs().max()),
        "penetration": float(penetration),
        "momentum_change": float((momentum - momentum[0]).norm(dim=-1).max()),
    }


# ------------------------------------------------------------------------------------------ rigid
def _energy_summary(energy: torch.Tensor, total_mass: float, scale: float) -> dict:
    """Drift and rises of a per-frame energy (T,) [J]."""
    rise = energy - energy[0]
    step = energy[1:] - energy[:-1] if energy.shape[0] > 1 else energy.new_zeros(1)
    drift = float(energy[-1] - energy[0])
    return {
        "energy_j": _floats(energy),
        "energy_drift_j": drift,
        "energy_drift_relative": drift / scale,
        "energy_gain_j": float(rise.max()),
        "energy_gain_j_per_kg": float(rise.max()) / max(total_mass, 1e-300),
        "energy_step_gain_j": float(step.max()),
    }


def rigid_physics_metrics(model, positions: torch.Tensor, orientations: torch.Tensor, velocities: torch.Tensor,
                          angular_velocities: torch.Tensor, times: torch.Tensor, *, flight: bool = True,
                          energy_floor_j: float = 0.0) -> dict:
    """Energy, penetration and free-flight momentum of rigid-body states.

    ``model``: the RigidModel the rollout used (masses, inertia, shapes, springs, contact slots);
    ``positions`` (T, B, 3) centres of mass [m], ``orientations`` (T, B, 4) quaternions (x, y, z,
    w), ``velocities`` (T, B, 3) [m/s], ``angular_velocities`` (T, B, 3) world frame [rad/s],
    ``times`` (T,) [s]. Energy and penetration come from :class:`hybridsim.sim.guards.RigidGuard`
    (``energy``, ``depths``), so these metrics measure what the blow-up guard checks.

    Returns
      * ``energy_j`` (T,): kinetic (translational + rotational) + potential -m g.x + spring energy [J];
        ``energy_drift_j`` last minus first; ``energy_gain_j`` largest rise above the first (>= 0;
        > 0 means energy was created: contacts, friction and damping only remove it);
        ``energy_gain_j_per_kg`` the same per kg of total mass; ``energy_step_gain_j`` largest rise
        between two frames (<= 0 in a dissipative rollout); ``energy_drift_relative`` the drift over
        ``energy_scale_j``, the energy available at t = 0 (kinetic + spring + m g height above the
        ground, at least ``energy_floor_j`` and 1e-12 J).
      * ``ground_penetration_m`` / ``object_penetration_m`` (T,): deepest contact point of any body
        inside the ground / inside another shape (static boxes included) [m], 0 when apart;
        ``max_penetration_m`` the deepest of both over all frames.
      * free flight: a body is in flight between two frames when it has no spring or joint and
        every contact point it owns, or that faces it, stays farther from the other shape than
        either can move in the frame. Over such intervals ``flight_momentum_error`` is the largest
        |m (v1 - v0) - m g dt| [kg m/s] and ``flight_angular_momentum_error`` the largest change of
        its world-frame angular momentum |L1 - L0| [kg m^2/s] (torque free); the ``_relative``
        forms divide by m |v| + m |g| dt and by |L| (at least 1e-12). ``flight_intervals`` counts
        the body-intervals checked (0: the values are 0). With ``flight=False`` (bodies that other
        forces reach, e.g. MPM material in a coupled scene) all of these are None.
    """
    from ..sim.guards import RigidGuard

    x, q, v, w = (t.detach().double() for t in (positions, orientations, velocities, angular_velocities))
    times = torch.as_tensor(times).detach().double().reshape(-1)
    frames, bodies = x.shape[:2]
    state0 = SimpleNamespace(body_position=x[0], body_orientation=q[0], body_velocity=v[0], body_angular_velocity=w[0])
    with torch.no_grad():
        guard = RigidGuard(model, state0, substeps=1)
        energy = []
        for t in range(frames):
            kinetic, potential, spring = guard.energy(x[t], q[t], v[t], w[t])
            energy.append((kinetic + potential).sum() + spring)
        energy = torch.stack(energy)
        mass = guard.mass
        result = {"frames": frames, "body_count": bodies, "total_mass_kg": float(mass.sum()),
                  "energy_scale_j": max(guard.available, float(energy_floor_j), 1e-12)}
        result.update(_energy_summary(energy, float(mass.sum()), result["energy_scale_j"]))

        rows = guard.row_count
        depth = (torch.stack([guard.depths(x[t], q[t]) for t in range(frames)]) if rows
                 else x.new_zeros(frames, 0))  # (T, R)
        on_ground = guard.solid < 0
        for key, mask in (("ground_penetration_m", on_ground), ("object_penetration_m", ~on_ground)):
            part = depth[:, mask] if rows else depth
            result[key] = _floats(part.clamp(min=0.0).amax(-1) if part.shape[1] else x.new_zeros(frames))
        result["max_penetration_m"] = max(result["ground_penetration_m"] + result["object_penetration_m"] + [0.0])
        if flight:
            result.update(_rigid_flight(model, guard, x, q, v, w, times, depth))
        else:
            result.update(dict.fromkeys(("flight_intervals", "flight_momentum_error", "flight_momentum_error_relative",
                                         "flight_angular_momentum_error",
                                         "flight_angular_momentum_error_relative")))
    return result


def _rigid_flight(model, guard, x, q, v, w, times, depth) -> dict:
    """Linear and angular momentum checks over free-flight intervals (see rigid_physics_metrics);
    ``depth`` (T, R): the guard's contact-point depths per frame."""
    from ..solvers.rigid.model import quat_multiply, quat_rotate

    frames, bodies = x.shape[:2]
    empty = {"flight_intervals": 0, "flight_momentum_error": 0.0, "flight_momentum_error_relative": 0.0,
             "flight_angular_momentum_error": 0.0, "flight_angular_momentum_error_relative": 0.0}
    if frames < 2:
        return empty
    tied = torch.zeros(bodies, dtype=torch.bool, device=x.device)
    for count, arrays in ((model.spring_count, model.spring), (getattr(model, "joint_count", 0), model.joint)):
        if count:
            ends = arrays["body"].reshape(-1)
            tied[ends[ends >= 0]] = True
    # how far a body's points can move in one frame: |v| dt + |w| reach dt + |g| dt^2 / 2
    reach = torch.zeros(bodies, dtype=x.dtype, device=x.device)
    if guard.row_count:
        owner = guard.body >= 0
        reach.scatter_reduce_(0, guard.body[owner], guard.point[owner].norm(dim=-1) + guard.radius[owner], "amax")
        moving = guard.solid_body >= 0
        centre_reach = guard.center[moving].norm(dim=-1) + guard.size[moving].norm(dim=-1)
        reach.scatter_reduce_(0, guard.solid_body[moving], centre_reach, "amax")
    dt = (times[1:] - times[:-1])[:, None]  # (T-1, 1)
    g = guard.gravity
    speed = v.norm(dim=-1) + w.norm(dim=-1) * reach  # (T, B)
    move = torch.maximum(speed[1:], speed[:-1]) * dt + 0.5 * float(g.norm()) * dt * dt  # (T-1, B)
    free = ~tied[None].expand(frames - 1, bodies).clone()
    if guard.row_count:
        a, b = guard.body, guard.solid_body
        zero = move.new_zeros(frames - 1, 1)
        move_a = torch.where((a >= 0)[None], move[:, a.clamp(min=0)], zero)
        move_b = torch.where((b >= 0)[None], move[:, b.clamp(min=0)], zero)
        clear = (torch.maximum(depth[1:], depth[:-1]) < -(move_a + move_b))  # (T-1, R)
        for body in range(bodies):
            involved = (a == body) | (b == body)
            if bool(involved.any()):
                free[:, body] &= clear[:, involved].all(-1)
    if not bool(free.any()):
        return empty
    m = guard.mass
    linear = m[None, :, None] * (v[1:] - v[:-1] - g * dt[..., None])  # (T-1, B, 3)
    frame_q = quat_multiply(q, guard.inertia_rotation.expand_as(q))
    conj = torch.cat([-frame_q[..., :3], frame_q[..., 3:]], dim=-1)
    angular = quat_rotate(frame_q, guard.inertia * quat_rotate(conj, w))  # L in the world frame (T, B, 3)
    linear_error = linear.norm(dim=-1)[free]
    linear_scale = (m[None] * (v.norm(dim=-1)[:-1] + float(g.norm()) * dt))[free].clamp(min=1e-12)
    angular_error = (angular[1:] - angular[:-1]).norm(dim=-1)[free]
    angular_scale = angular[:-1].norm(dim=-1)[free].clamp(min=1e-12)
    return {"flight_intervals": int(free.sum()),
            "flight_momentum_error": float(linear_error.max()),
            "flight_momentum_error_relative": float((linear_error / linear_scale).max()),
            "flight_angular_momentum_error": float(angular_error.max()),
            "flight_angular_momentum_error_relative": float((angular_error / angular_scale).max())}


# ------------------------------------------------------------------------------------------ grid fluid
def _per_frame(field: torch.Tensor | None, frames: int, like: torch.Tensor, fill: float) -> torch.Tensor:
    """A face field given once (shape of one frame) or per frame (T, ...) as (T, ...)."""
    if field is None:
        return torch.full_like(like, fill)
    field = torch.as_tensor(field).detach().to(like.dtype)
    return field.expand_as(like) if field.dim() == like.dim() - 1 else field


def fluid_physics_metrics(velocity_x: torch.Tensor, velocity_y: torch.Tensor, density: torch.Tensor,
                          times: torch.Tensor, *, cell_size: float, dt: float, face_fraction_x=None,
                          face_fraction_y=None, solid_x=None, solid_y=None, periodic: Sequence[bool] = (False, False),
                          inflow_rate: float = 0.0, velocity_z: torch.Tensor | None = None,
                          face_fraction_z=None, solid_z=None) -> dict:
    """Incompressibility, mass budget, kinetic energy and CFL number of 2D or 3D MAC-grid fluid states.

    ``velocity_x`` (T, Fx, ny) and ``velocity_y`` (T, nx, Fy) face velocities [m/s] (Fx = nx + 1,
    or nx on a periodic x axis), ``density`` (T, nx, ny) [1], ``times`` (T,) [s]; ``cell_size`` dx
    [m], ``dt`` the solver step [s]. ``face_fraction_x/_y`` are the open fractions A of the faces
    (one frame's shape, or per frame for moving obstacles; default 1), ``solid_x/_y`` the solid
    velocity on faces covered by moving obstacles (the volume flux is then A u + (1 - A) u_s, as
    in the solver's projection), ``inflow_rate`` the density the sources add per second summed
    over the cells [1/s] (:func:`hybridsim.data.gates.fluid_inflow_rate`). 3D: add
    ``velocity_z`` (T, nx, ny, Fz), ``face_fraction_z`` and (moving obstacles) ``solid_z``; every
    field gains the z axis, ``periodic`` has 3 entries.

    Returns, per frame (lists of T) and as maxima over frames:
      * ``divergence_max_relative``: max over fluid cells of |div(A u)| dx / max |u| [1] (0 for a
        fluid at rest); ``divergence_l2_relative``: the root mean square of div(A u) over the fluid
        area (cells weighted by their open fraction) times dx / max |u|. A projected field is at
        the pressure solver's tolerance (about 1e-5 in float32).
      * ``mass`` [density m^2, 3D: density m^3]: sum of density x cell area (volume);
        ``inflow_budget``: the first frame's mass + rate x dx^2 (dx^3) x elapsed time;
        ``mass_error_relative`` (mass - budget) / budget, with
        ``mass_gain_relative`` its maximum (> 0: density created) and ``mass_loss_relative`` minus
        its minimum (> 0: density lost, expected only through open sides or non-conservative
        advection).
      * ``kinetic_energy_j_per_kg``: 0.5 <|u|^2> over the fluid area (open-fraction weighted)
        [m^2/s^2 = J/kg]; multiply by rho x area for joules per metre of depth.
      * ``cfl``: max |u| dt / dx [1].
    """
    velocities = [torch.as_tensor(u).detach().double() for u in (velocity_x, velocity_y, velocity_z) if u is not None]
    rho = torch.as_tensor(density).detach().double()
    times = torch.as_tensor(times).detach().double().reshape(-1)
    frames = rho.shape[0]
    dims = len(velocities)
    dx = float(cell_size)
    areas = [_per_frame(fraction, frames, u, 1.0)
             for fraction, u in zip((face_fraction_x, face_fraction_y, face_fraction_z), velocities)]
    fluxes = [area * u for area, u in zip(areas, velocities)]
    for axis, solid in enumerate((solid_x, solid_y, solid_z)[:dims]):
        if solid is not None:
            fluxes[axis] = fluxes[axis] + (1.0 - areas[axis]) * _per_frame(solid, frames, velocities[axis], 0.0)

    def across(field, dim, wraps):  # (next face - this face) per cell along grid axis ``dim``
        if wraps:
            return torch.roll(field, -1, dims=dim) - field
        return field.narrow(dim, 1, field.shape[dim] - 1) - field.narrow(dim, 0, field.shape[dim] - 1)

    def faces_of_cells(field, dim, wraps):  # (this face + next face) per cell
        if wraps:
            return torch.roll(field, -1, dims=dim) + field
        return field.narrow(dim, 1, field.shape[dim] - 1) + field.narrow(dim, 0, field.shape[dim] - 1)

    wraps = [bool(periodic[axis]) if axis < len(periodic) else False for axis in range(dims)]
    divergence = sum(across(flux, axis + 1, wraps[axis]) for axis, flux in enumerate(fluxes)) / dx  # [1/s]
    fluid = sum(faces_of_cells(area, axis + 1, wraps[axis]) for axis, area in enumerate(areas)) / (2.0 * dims)
    weight = fluid.reshape(frames, -1)
    speed = torch.stack([u.abs().reshape(frames, -1).amax(-1) for u in velocities]).amax(0)
    scale = torch.where(speed > 0, dx / speed.clamp(min=1e-300), torch.zeros_like(speed))
    div = divergence.reshape(frames, -1) * (weight > 0)
    div_max = div.abs().amax(-1) * scale
    div_l2 = ((weight * div * div).sum(-1) / weight.sum(-1).clamp(min=1e-300)).sqrt() * scale
    kinetic = 0.5 * sum((area * u * u).reshape(frames, -1).sum(-1) for area, u in zip(areas, velocities)) \
        / weight.sum(-1).clamp(min=1e-300)

    cell_measure = dx ** dims  # area (2D) or volume (3D) of a cell
    mass = rho.reshape(frames, -1).sum(-1) * cell_measure
    budget = mass[0] + float(inflow_rate) * cell_measure * (times - times[0])
    error = (mass - budget) / budget.abs().clamp(min=1e-12)
    error = torch.where(budget.abs() > 0, error, torch.zeros_like(error))
    cfl = speed * float(dt) / dx
    return {
        "frames": frames,
        "divergence_max_relative": _floats(div_max),
        "divergence_l2_relative": _floats(div_l2),
        "max_divergence_max_relative": float(div_max.max()),
        "max_divergence_l2_relative": float(div_l2.max()),
        "mass": _floats(mass),
        "inflow_budget": _floats(budget),
        "mass_error_relative": _floats(error),
        "mass_gain_relative": float(error.max()),
        "mass_loss_relative": float(-error.min()) + 0.0,  # (no -0.0 in the JSON)
        "kinetic_energy_j_per_kg": _floats(kinetic),
        "cfl": _floats(cfl),
        "max_cfl": float(cfl.max()),
    }


# ------------------------------------------------------------------------------------------ MPM
def mpm_physics_metrics(positions: torch.Tensor, velocities: torch.Tensor, mass: torch.Tensor, times: torch.Tensor,
                        *, gravity: Sequence[float], grid_lower: Sequence[float], grid_upper: Sequence[float],
                        wall_band: float = 0.0, dt: float | None = None, cell_size: float | None = None,
                        deformation: torch.Tensor | None = None, mu: torch.Tensor | None = None,
                        lam: torch.Tensor | None = None, volume: torch.Tensor | None = None,
                        elastic: torch.Tensor | None = None, free_fall: bool = True) -> dict:
    """Mass, momentum, energy, volume change and domain checks of MPM particle states.

    ``positions`` / ``velocities`` (T, N, d) [m, m/s] in the solver's axes, ``mass`` (N,) [kg]
    (2D: per metre of depth), ``times`` (T,) [s], ``gravity`` (d,) [m/s^2], the grid's node range
    ``grid_lower`` / ``grid_upper`` [m] and ``wall_band`` [m], how far inside it the walls act
    (boundary cells plus the transfer stencil). ``dt`` (substep [s]) and ``cell_size`` (dx [m])
    give the CFL number. ``deformation`` F, (N, d, d) or (T', N, d, d) (the rollout keeps only
    the final state's), gives the det(F) range; with ``mu``, ``lam`` [Pa], ``volume`` [m^d] per
    particle and an ``elastic`` mask (N,) also the neo-Hookean elastic energy of those particles
    (the solver's model), sum V (mu / 2 (tr F^T F - d) - mu log J + lam / 2 (log J)^2) [J].

    Returns
      * ``total_mass_kg``; ``non_finite_particles`` (particles with a nan/inf value in any frame).
      * ``momentum`` (T, d) [kg m/s]; ``momentum_residual`` (T,): |P(t) - P(0) - M g (t - t0)|, the
        momentum change not explained by gravity (walls and the floor add the rest).
        ``free_fall_frames``: leading frames with every particle clear of the wall band;
        ``free_fall_momentum_error`` the largest residual over them [kg m/s] and
        ``free_fall_momentum_error_relative`` that over M |g| (t_last - t0) (None when
        ``free_fall`` is False, e.g. bodies coupled to the material).
      * ``energy_j`` (T,): kinetic + gravitational -m g.x [J] and its ``energy_gain_j`` (largest rise
        above the first frame; elastic energy starts at 0, so without it this sum can only fall),
        ``energy_gain_j_per_kg``, ``energy_drift_j`` (in free fall the solver's symplectic Euler
        loses M |g|^2 dt / 2 per second), ``energy_step_gain_j`` (elastic rebounds raise it).
      * ``det_f_min`` / ``det_f_max``, ``inverted_particles`` (det F <= 0) and ``elastic_energy_j``
        (the last deformation's), when ``deformation`` is given, else None.
      * ``out_of_domain_particles`` (T,): particles outside the node range; ``max_out_of_domain``.
      * ``cfl`` (T,): max |v| dt / dx; ``max_cfl`` (None without ``dt`` and ``cell_size``).
    """
    x = torch.as_tensor(positions).detach().double()
    v = torch.as_tensor(velocities).detach().double()
    m = torch.as_tensor(mass).detach().double().reshape(-1)
    times = torch.as_tensor(times).detach().double().reshape(-1)
    frames, count, dim = x.shape
    g = torch.as_tensor(gravity, dtype=x.dtype).reshape(dim)
    lower = torch.as_tensor(grid_lower, dtype=x.dtype).reshape(dim)
    upper = torch.as_tensor(grid_upper, dtype=x.dtype).reshape(dim)
    finite = torch.isfinite(x).all(-1) & torch.isfinite(v).all(-1)  # (T, N)
    x, v = torch.nan_to_num(x), torch.nan_to_num(v)
    total = float(m.sum())
    elapsed = (times - times[0])[:, None]
    momentum = (m[None, :, None] * v).sum(1)  # (T, d)
    residual = (momentum - momentum[0] - total * g * elapsed).norm(dim=-1)
    kinetic = 0.5 * (v * v).sum(-1) @ m
    potential = -(x * g).sum(-1) @ m
    energy = kinetic + potential
    result = {"frames": frames, "particle_count": count, "dim": dim, "total_mass_kg": total,
              "non_finite_particles": int((~finite).any(0).sum()),
              "momentum": [_floats(p) for p in momentum], "momentum_residual": _floats(residual)}
    scale = float((m[None] * (0.5 * (v[:1] * v[:1]).sum(-1))).sum()) + total * float(g.norm()) * float(
        (upper - lower).max())  # kinetic + potential across the domain: a size for the relative drift
    result.update(_energy_summary(energy, total, max(scale, 1e-12)))

    inside = ((x >= lower + wall_band) & (x <= upper - wall_band)).all(-1).all(-1)  # (T,)
    if free_fall:
        clear = int(inside.long().cumprod(0).sum())
        error = float(residual[:clear].max()) if clear else 0.0
        span = float(times[clear - 1] - times[0]) if clear else 0.0
        result.update(free_fall_frames=clear, free_fall_momentum_error=error,
                      free_fall_momentum_error_relative=error / max(total * float(g.norm()) * span, 1e-12))
    else:
        result.update(free_fall_frames=None, free_fall_momentum_error=None, free_fall_momentum_error_relative=None)

    out = (~((x >= lower) & (x <= upper)).all(-1)).sum(-1)
    result.update(out_of_domain_particles=[int(n) for n in out], max_out_of_domain=int(out.max()))
    if dt is not None and cell_size is not None:
        cfl = v.abs().reshape(frames, -1).amax(-1) * float(dt) / float(cell_size) if count else x.new_zeros(frames)
        result.update(cfl=_floats(cfl), max_cfl=float(cfl.max()))
    else:
        result.update(cfl=None, max_cfl=None)
    result.update(_deformation_metrics(deformation, mu, lam, volume, elastic))
    return result


def _deformation_metrics(deformation, mu, lam, volume, elastic) -> dict:
    """det(F) range, inverted particles and the neo-Hookean energy of the last F."""
    if deformation is None:
        return {"det_f_min": None, "det_f_max": None, "inverted_particles": None, "elastic_energy_j": None}
    f = torch.as_tensor(deformation).detach().double()
    det = torch.linalg.det(f)
    last = f if f.dim() == 3 else f[-1]
    energy = None
    if mu is not None and lam is not None and volume is not None:
        # the solver's neo-Hookean model: psi = mu / 2 (tr F^T F - d) - mu log J + lam / 2 (log J)^2
        log_j = torch.log(torch.linalg.det(last).clamp(min=1e-300))
        mu_p, lam_p = torch.as_tensor(mu).double(), torch.as_tensor(lam).double()
        psi = 0.5 * mu_p * ((last * last).sum((-2, -1)) - last.shape[-1]) - mu_p * log_j + 0.5 * lam_p * log_j * log_j
        mask = torch.ones_like(psi) if elastic is None else torch.as_tensor(elastic).to(psi.dtype)
        energy = float((torch.as_tensor(volume).double() * psi * mask).sum())
    inverted = (det <= 0).reshape(-1, det.shape[-1]).any(0) if det.dim() > 1 else det <= 0
    return {"det_f_min": float(det.min()), "det_f_max": float(det.max()), "inverted_particles": int(inverted.sum()),
            "elastic_energy_j": energy}


# ------------------------------------------------------------------------------------------ scenes
def scene_physics_metrics(spec, states: Mapping[str, object]) -> dict:
    """The physics metrics of a scene's ``OUT.states.npz`` (arrays by name, as ``hybridsim render``
    writes them), dispatched on the scene's simulator; ``simulator`` names which: ``spheres``
    (the flat :func:`sphere_physics_metrics` keys), ``rigid``, ``fluid``, ``mpm`` or
    ``coupled`` (``{"mpm": ..., "rigid": ...}``: the two exchange momentum and energy through
    the coupling, so the free-fall and flight momentum checks are off and each energy is its own
    part's), ``fluid_rigid`` (a 2D ``[fluid]`` with ``[[objects]]``: ``{"fluid": ..., "rigid": ...}``,
    the same way; the fluid's face fractions and solid face velocities are those of the bodies at
    each frame, see :func:`fluid_rigid_face_geometry`; the bodies' ``energy_scale_j`` is at least their
    total mass x |g| x the domain's height; the body states are ``body_positions``,
    ``body_orientations``, ``body_velocities``, ``body_angular_velocities``, or the singular names
    ``hybridsim render`` writes for these scenes), or
    ``fluid3d`` (:func:`fluid_physics_metrics` with the z axis). Models (masses, shapes, face fractions, particle
    densities) are rebuilt from the scene on the CPU in float64."""
    from ..sim.world import World

    def array(name):
        return torch.as_tensor(states[name])

    if spec.fluid is not None:
        world = World(spec, device="cpu", precision="float64")
        if world.fluid_rigid:  # the body arrays under either name (_body_arrays)
            # energy scale at least what the bodies would release falling through the whole domain
            # (there is often no ground, and a body may start at rest on a relaxed spring)
            height = spec.fluid.cells[1] * spec.fluid.cell_size
            return {"simulator": "fluid_rigid", "fluid": _scene_fluid_rigid(world, _body_arrays(states)),
                    "rigid": _scene_rigid(world, _body_arrays(states), prefix="body_", flight=False,
                                          fall_height=height)}
        if spec.fluid.dimension == 3:
            return {"simulator": "fluid3d", **_scene_fluid3d(world, array)}
        return {"simulator": "fluid", **_scene_fluid(world, array)}
    if getattr(spec, "mpm", None) is not None:
        world = World(spec, device="cpu", precision="float64")
        if spec.objects:
            return {"simulator": "coupled", "mpm": _scene_mpm(world, array, free_fall=False),
                    "rigid": _scene_rigid(world, array, prefix="body_", flight=False)}
        return {"simulator": "mpm", **_scene_mpm(world, array)}
    world = World(spec, device="cpu", precision="float64")
    if world.rigid:
        return {"simulator": "rigid", **_scene_rigid(world, array)}
    model = world.model()
    return {"simulator": "spheres", **sphere_physics_metrics(
        array("positions").double(), array("velocities").double(), model.mass, model.radius,
        gravity=spec.gravity, ground_height=spec.ground.height)}


def _scene_rigid(world, array, prefix: str = "", flight: bool = True, fall_height: float = 0.0) -> dict:
    """``fall_height`` [m]: the energy scale is at least total mass x |g| x this."""
    from ..sim.rigid import rigid_model

    with torch.no_grad():
        model = rigid_model(world)
        floor = float(model.body_mass.detach().double().sum()) * float(model.gravity.detach().double().norm()) \
            * float(fall_height)
    return rigid_physics_metrics(model, array(f"{prefix}positions"), array(f"{prefix}orientations"),
                                 array(f"{prefix}velocities"), array(f"{prefix}angular_velocities"), array("times"),
                                 flight=flight, energy_floor_j=floor)


def _scene_fluid(world, array) -> dict:
    from ..data.gates import fluid_inflow_rate
    from ..sim.fluid import fluid_model

    spec = world.spec
    with torch.no_grad():
        model = fluid_model(world)
    times = array("times").double()
    if model.has_moving_obstacles:  # the faces the obstacles cover at each frame's time
        faces = [model.obstacle_faces(float(t)) for t in times]
        extra = {key: torch.stack([f[k] for f in faces]) for k, key in
                 enumerate(("face_fraction_x", "face_fraction_y", "solid_x", "solid_y"))}
    else:
        extra = {"face_fraction_x": model.face_fraction_x, "face_fraction_y": model.face_fraction_y}
    return fluid_physics_metrics(array("velocity_x"), array("velocity_y"), array("density"), times,
                                 cell_size=spec.fluid.cell_size, dt=spec.dt, periodic=model.periodic,
                                 inflow_rate=fluid_inflow_rate(spec.fluid), **extra)


#: body state arrays (``body_`` + key) and the singular names ``hybridsim render`` writes for a fluid with bodies
_BODY_KEYS = {"positions": "position", "orientations": "orientation", "velocities": "velocity",
              "angular_velocities": "angular_velocity"}


def _body_arrays(states: Mapping[str, object]):
    """``array(name)`` reading ``body_positions`` etc. or, where absent, ``body_position`` etc."""
    def array(name):
        if name not in states and name.startswith("body_") and name[5:] in _BODY_KEYS:
            name = "body_" + _BODY_KEYS[name[5:]]
        return torch.as_tensor(states[name])

    return array


def fluid_rigid_face_geometry(solver, positions, orientations, velocities, angular_velocities, times,
                              substeps: int, dt: float) -> dict:
    """Per-frame face fractions and solid face velocities (T, ...) of a 2D fluid cut by bodies, for
    :func:`fluid_physics_metrics`: the cut the solver's last projection of each frame used.

    ``solver``: the scene's :class:`hybridsim.sim.fluid_rigid.FluidRigidSolver` (its cross-sections
    and grid origin), body states (T, B, 3) / (T, B, 4) as the rollout records them, frame ``times``
    (T,) [s], ``substeps`` steps of ``dt`` [s] per frame. The last step of frame f projects with
    each body where its state one step earlier carries it (``FluidRigidSolver.fluid_bodies`` ahead
    by dt) and with that state's velocity as the solid velocity; frames record only the state after
    that step, so the earlier one is reconstructed: v' = v - a dt with a the acceleration at the
    frame's end (second-order backward difference of the last three frames' velocities; the frame's
    mean in frame 1), x' = x - (v' + v) dt / 2 (the rigid solver's trapezoidal position update), the
    angle about y likewise. Exact while a body's acceleration is smooth over the frames (gravity, a
    spring); the fluid's own kicks leave a residual near the bodies (scenes/plume_pushed.toml, a
    300 kg/m^3 box in air: max relative divergence about 1e-3 - 5e-3, L2 1e-4, against 5e-2 with the
    frame's own pose and velocity and O(1) ignoring the bodies; a body 40000 x denser than the air:
    4e-6). Frame 0 (no projection yet) uses the recorded state as it is."""
    from ..solvers.grid_fluid import body_face_geometry

    x, q, v, w = (torch.as_tensor(t).detach().double() for t in (positions, orientations, velocities,
                                                                  angular_velocities))
    times = torch.as_tensor(times).detach().double().reshape(-1)
    model = solver.fluid.model
    keys = ("face_fraction_x", "face_fraction_y", "solid_x", "solid_y")
    fields = {key: [] for key in keys}
    for f in range(x.shape[0]):
        if f == 0:
            state, ahead = SimpleNamespace(body_position=x[0], body_orientation=q[0], body_velocity=v[0],
                                           body_angular_velocity=w[0]), 0.0
        else:  # one step's velocity change: the acceleration at the frame's end x dt
            if f >= 2:
                dv, dw = ((3.0 * u[f] - 4.0 * u[f - 1] + u[f - 2]) / (2.0 * substeps) for u in (v, w))
            else:
                dv, dw = ((u[f] - u[f - 1]) / substeps for u in (v, w))
            v_prev, w_prev = v[f] - dv, w[f] - dw
            angle = 2.0 * torch.atan2(q[f, :, 1], q[f, :, 3]) - 0.5 * (w_prev[:, 1] + w[f, :, 1]) * dt  # about +y
            zero = torch.zeros_like(angle)
            q_prev = torch.stack([zero, torch.sin(0.5 * angle), zero, torch.cos(0.5 * angle)], dim=-1)
            state, ahead = SimpleNamespace(body_position=x[f] - 0.5 * (v_prev + v[f]) * dt, body_orientation=q_prev,
                                           body_velocity=v_prev, body_angular_velocity=w_prev), float(dt)
        cut = body_face_geometry(model, float(times[f]), solver.fluid_bodies(state, ahead))
        for key, value in zip(keys, (cut.area_x, cut.area_y, cut.solid_x, cut.solid_y)):
            fields[key].append(value.detach().double())
    return {key: torch.stack(values) for key, values in fields.items()}


def _scene_fluid_rigid(world, array) -> dict:
    from ..data.gates import fluid_inflow_rate
    from ..sim.fluid_rigid import fluid_rigid_system

    spec = world.spec
    with torch.no_grad():
        system = fluid_rigid_system(world)
        times = array("times").double()
        faces = fluid_rigid_face_geometry(system.solver, *(array(f"body_{key}") for key in _BODY_KEYS), times,
                                          substeps=system.substeps, dt=system.dt)
    return fluid_physics_metrics(array("velocity_x"), array("velocity_y"), array("density"), times,
                                 cell_size=spec.fluid.cell_size, dt=spec.dt, periodic=system.fluid_model.periodic,
                                 inflow_rate=fluid_inflow_rate(spec.fluid), **faces)


def _scene_fluid3d(world, array) -> dict:
    from ..data.gates import fluid_inflow_rate
    from ..sim.fluid3d import fluid_model3d

    spec = world.spec
    with torch.no_grad():
        model = fluid_model3d(world)
        times = array("times").double()
        if model.has_moving_obstacles:  # the faces the obstacles cover at each frame's time
            faces = [model.obstacle_faces(float(t)) for t in times]
            extra = {key: torch.stack([f[k] for f in faces]) for k, key in enumerate(
                ("face_fraction_x", "face_fraction_y", "face_fraction_z", "solid_x", "solid_y", "solid_z"))}
        else:
            extra = {"face_fraction_x": model.face_fraction_x, "face_fraction_y": model.face_fraction_y,
                     "face_fraction_z": model.face_fraction_z}
    return fluid_physics_metrics(array("velocity_x"), array("velocity_y"), array("density"), times,
                                 velocity_z=array("velocity_z"), cell_size=spec.fluid.cell_size, dt=spec.dt,
                                 periodic=model.periodic, inflow_rate=fluid_inflow_rate(spec.fluid), **extra)


def _scene_mpm(world, array, free_fall: bool = True) -> dict:
    from ..sim.mpm import mpm_model, mpm_substeps

    with torch.no_grad():
        model = mpm_model(world)
        _, dt = mpm_substeps(world, model)
    material = array("particle_material").long()
    mass = model.density.detach().double()[material] * array("particle_volume").double()
    grid = model.grid
    return mpm_physics_metrics(array("positions"), array("velocities"), mass, array("times"), gravity=model.gravity,
                               grid_lower=grid.lower, grid_upper=grid.upper,
                               wall_band=(grid.boundary_cells + 2) * grid.dx, dt=dt, cell_size=grid.dx,
                               free_fall=free_fall)
