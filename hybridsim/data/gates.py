"""Quality gates for generated samples: reject rollouts that are not physically plausible.

A gate looks only at the simulated states (and the camera), so a rejected draw costs a rollout,
never a render. Every check is deterministic, so the same command rejects the same draws.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["QualityGates", "evaluate_gates", "GATE_NAMES"]

GATE_NAMES = ("non_finite", "penetration", "energy_gain", "out_of_frame")


@dataclass(frozen=True)
class QualityGates:
    """Tolerances of the quality gates.

    ``penetration_m``: deepest allowed overlap [m] of a sphere with the ground or with another
    sphere (the sphere solver has no sphere-sphere contact, so overlapping spheres would pass
    through each other). ``energy_gain_j_per_kg``: largest allowed rise of total mechanical energy
    above its initial value, per kg of total mass [J/kg] (1e-2 J/kg ~ 1 mm of height).
    ``require_in_frame``: every sphere centre must project inside the image in every frame.
    """

    penetration_m: float = 1e-3
    energy_gain_j_per_kg: float = 1e-2
    require_in_frame: bool = False

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
