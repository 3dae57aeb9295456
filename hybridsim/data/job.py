"""One generation job: draw a scene, simulate, gate, render and encode one sample's files.

``run_sample(job, index)`` is the unit of work of every executor (in-process, local process
pool, Ray task). It is a pure function of ``job`` and ``index``: it reads no files (except mesh
files a drawn rigid scene names, relative to the distribution file) and writes only temporary
files of its own, and returns the sample's encoded entries, so the same code runs on a laptop and
on a cluster node and gives the same bytes.

Sphere-only scenes run on the sphere solver and sphere renderer; a scene with rigid objects
(``World(spec).rigid``: boxes, capsules, meshes, static boxes, joints or springs) on
``hybridsim.sim.rigid.rigid_rollout`` and ``hybridsim.render.rigid.render_rigid_layers``, with
the rigid gates of :mod:`hybridsim.data.gates` and its own states and labels (``_encode_rigid``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .gates import QualityGates

__all__ = ["GenerateJob", "run_sample", "sample_key", "npz_bytes", "prepare_process", "single_threaded",
           "ENTRY_SUFFIXES"]

#: File suffixes of one sample, in the order they are written to a shard.
ENTRY_SUFFIXES = ("json", "mp4", "layers.npz", "states.npz")
POSE_NOTE = ("object_poses (T, N, 7): position x, y, z [m] and unit quaternion w, x, y, z; spheres do not "
             "rotate in the sphere solver, so the quaternion is the identity (1, 0, 0, 0)")
RIGID_POSE_NOTE = ("object_poses (T, K, 7): for every scene object k (segmentation id k + 1), the position x, y, z [m] "
                   "of its centre of mass (static boxes: their centre) and its orientation as a unit quaternion "
                   "x, y, z, w (the rigid solver's order, as states.npz orientations and `hybridsim render`)")


def sample_key(index: int) -> str:
    """The WebDataset key of sample ``index``: ``sample-0000042``."""
    return f"sample-{index:07d}"


@dataclass(frozen=True)
class GenerateJob:
    """Everything that decides a sample's content (and nothing that does not, like worker counts)."""

    distribution_text: str
    distribution_name: str
    seed: int = 0
    frames: int | None = None
    gates: QualityGates = field(default_factory=QualityGates)
    max_attempts: int = 16

    def record(self) -> dict:
        """The job's identity as plain data (stored in ``OUT/job.json`` and compared on resume)."""
        return {"distribution": Path(self.distribution_name).name,
                "distribution_sha256": _distribution(self).sha256, "seed": self.seed, "frames": self.frames,
                "gates": self.gates.to_dict(), "max_attempts": self.max_attempts,
                "hybridsim": _versions()["hybridsim"]}


# --------------------------------------------------------------------------------------------
# Process setup
# --------------------------------------------------------------------------------------------

_prepared: dict = {}


def prepare_process(backend: str | None = None, rigid: bool = False) -> None:
    """Once per worker process: one torch thread (reproducible reductions, no oversubscription)
    and warm kernel caches for ``backend`` by rendering a tiny scene (a box on the rigid-body
    solver and mesh renderer with ``rigid``, else a sphere)."""
    import torch

    if not _prepared.get("threads"):
        torch.set_num_threads(1)
        _prepared["threads"] = True
    key = (backend, bool(rigid))
    if backend and not _prepared.get(key):
        _warm_up(backend, rigid)
        _prepared[key] = True


@contextlib.contextmanager
def single_threaded():
    """Run torch on one thread inside the block (as workers do), restoring the count after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _warm_up(backend: str, rigid: bool = False) -> None:
    from ..scene import scene_from_dict
    from ..sim.world import World
    from .sample import simulate_and_render

    objects = [{"type": "sphere", "position": [0.0, 0.0, 1.0], "radius": 0.2}]
    if rigid:
        objects.append({"type": "box", "position": [0.6, 0.0, 0.5], "half_extents": [0.1, 0.1, 0.1]})
    spec = scene_from_dict({
        "backend": backend, "device": "cpu", "deterministic": True, "time": {"frames": 1, "substeps": 1},
        "camera": {"position": [0.0, -3.0, 1.0], "look_at": [0.0, 0.0, 0.5], "width": 8, "height": 8},
        "objects": objects,
    }, source="<warm-up>")
    simulate_and_render(World(spec))


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------

_distributions: dict = {}


def _distribution(job: GenerateJob):
    from ..scene.distributions import parse_distribution

    key = (job.distribution_name, job.distribution_text)
    if key not in _distributions:
        _distributions.clear()
        _distributions[key] = parse_distribution(job.distribution_text, source=job.distribution_name)
    return _distributions[key]


def run_sample(job: GenerateJob, index: int) -> dict:
    """Generate sample ``index``: redraw (attempts 0, 1, ...) until a draw passes the gates.

    Returns ``{"index", "key", "entries": {suffix: bytes}, "rejected": [...], "timing": {...}}``.
    Raises :class:`~hybridsim.errors.HybridsimError` when ``job.max_attempts`` draws are all rejected.
    """
    from ..errors import HybridsimError, SimulationError
    from ..sim.world import World
    from .gates import evaluate_gates
    from .sample import render_layers, simulate

    dist = _distribution(job)
    rejected: list[dict] = []
    timing = {"simulate_s": 0.0, "render_s": 0.0, "encode_s": 0.0}
    for attempt in range(job.max_attempts):
        spec = dist.sample(job.seed, index, attempt=attempt, frames=job.frames)
        world = World(spec)
        if world.rigid:
            entries = _rigid_attempt(job, index, attempt, world, rejected, timing)
            if entries is None:
                continue
            return {"index": index, "key": sample_key(index), "entries": entries, "rejected": rejected,
                    "timing": timing}
        start = time.perf_counter()
        try:
            trajectory = simulate(world)
        except SimulationError as error:
            timing["simulate_s"] += time.perf_counter() - start
            rejected.append({"attempt": attempt, "reasons": [
                {"gate": "non_finite", "value": None, "limit": None, "detail": error.message}]})
            continue
        timing["simulate_s"] += time.perf_counter() - start
        measured, failures = evaluate_gates(spec, trajectory.positions[:, 0], trajectory.velocities[:, 0], job.gates)
        if failures:
            rejected.append({"attempt": attempt, "reasons": failures})
            continue
        start = time.perf_counter()
        rendering = render_layers(world, trajectory)
        timing["render_s"] += time.perf_counter() - start
        bad = [name for name in ("normal", "alpha", "flow_forward", "flow_backward")
               if not _all_finite(rendering.layers[name])]
        if bad:
            rejected.append({"attempt": attempt, "reasons": [
                {"gate": "non_finite", "value": None, "limit": None, "detail": f"non-finite {', '.join(bad)}"}]})
            continue
        start = time.perf_counter()
        entries = _encode(job, index, attempt, spec, rendering, measured, rejected)
        timing["encode_s"] += time.perf_counter() - start
        return {"index": index, "key": sample_key(index), "entries": entries, "rejected": rejected, "timing": timing}
    gates = sorted({reason["gate"] for item in rejected for reason in item["reasons"]})
    raise HybridsimError(
        f"all {job.max_attempts} draws of sample {index} were rejected (gates: {', '.join(gates)}; last: "
        f"{rejected[-1]['reasons'][0]['detail']}); widen the distribution or relax the gates",
        file=job.distribution_name)


def _rigid_attempt(job: GenerateJob, index: int, attempt: int, world, rejected: list, timing: dict) -> dict | None:
    """One draw of a rigid-body scene: initial-overlap gate, guarded rollout, gates, render, encode.
    Returns the entries, or None after appending the rejection to ``rejected``."""
    from ..errors import SimulationError
    from .gates import blow_up_reason, evaluate_rigid_gates, rigid_initial_gates
    from .sample import render_rigid_sample, simulate_rigid

    start = time.perf_counter()
    initial, failures = rigid_initial_gates(world, job.gates)  # before the rollout: cheap, and a clear reason
    if failures:
        timing["simulate_s"] += time.perf_counter() - start
        rejected.append({"attempt": attempt, "reasons": failures})
        return None
    try:
        trajectory = simulate_rigid(world)
    except SimulationError as error:
        timing["simulate_s"] += time.perf_counter() - start
        rejected.append({"attempt": attempt, "reasons": [blow_up_reason(error)]})
        return None
    measured, failures = evaluate_rigid_gates(world, trajectory, job.gates)
    timing["simulate_s"] += time.perf_counter() - start
    if failures:
        rejected.append({"attempt": attempt, "reasons": failures})
        return None
    start = time.perf_counter()
    rendering = render_rigid_sample(world, trajectory)
    timing["render_s"] += time.perf_counter() - start
    bad = [name for name in ("normal", "alpha", "object_coordinates", "flow_forward", "flow_backward")
           if not _all_finite(rendering.layers[name])]
    if bad:
        rejected.append({"attempt": attempt, "reasons": [
            {"gate": "non_finite", "value": None, "limit": None, "detail": f"non-finite {', '.join(bad)}"}]})
        return None
    start = time.perf_counter()
    entries = _encode_rigid(job, index, attempt, world, rendering, {**initial, **measured}, rejected)
    timing["encode_s"] += time.perf_counter() - start
    return entries


def _all_finite(array) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all())


def _encode(job: GenerateJob, index: int, attempt: int, spec, rendering, measured: dict, rejected: list) -> dict:
    import numpy as np

    from ..render import write_video

    key = sample_key(index)
    trajectory = rendering.trajectory
    positions = trajectory.positions[:, 0].cpu().numpy()  # (T, N, 3)
    velocities = trajectory.velocities[:, 0].cpu().numpy()
    frame_count = positions.shape[0]
    spheres = [obj for obj in spec.objects if obj.type == "sphere"]
    count = len(spheres)

    layers = dict(rendering.layers)
    layers["intrinsics"] = np.broadcast_to(layers["intrinsics"], (frame_count, 3, 3)).copy()
    layers["extrinsics"] = np.broadcast_to(layers["extrinsics"], (frame_count, 4, 4)).copy()
    poses = np.zeros((frame_count, count, 7), dtype=np.float64)
    poses[..., :3] = positions
    poses[..., 3] = 1.0
    layers["object_poses"] = poses

    mass = np.array([obj.mass_kg for obj in spheres], dtype=np.float64)
    radius = np.array([obj.radius for obj in spheres], dtype=np.float64)
    restitution = np.array([obj.restitution for obj in spheres], dtype=np.float64)
    states = {"positions": positions, "velocities": velocities, "times": trajectory.times.cpu().numpy(),
              "mass": mass, "radius": radius, "restitution": restitution}

    with tempfile.TemporaryDirectory(prefix="hybridsim-sample-") as folder:
        video_path = Path(folder) / f"{key}.mp4"
        write_video(video_path, rendering.rgb, fps=spec.time.fps)
        video = video_path.read_bytes()

    camera = spec.camera
    meta = {
        "key": key,
        "index": index,
        "attempt": attempt,
        "seed": job.seed,
        "scene_seed": spec.seed,
        "distribution": {"name": Path(job.distribution_name).name, "sha256": _distribution(job).sha256},
        "frames": frame_count,
        "fps": spec.time.fps,
        "substeps": spec.time.substeps,
        "width": camera.width,
        "height": camera.height,
        "backend": spec.backend,
        "precision": spec.precision,
        "deterministic": spec.deterministic,
        "objects": [{
            "name": obj.name, "type": obj.type, "segmentation_id": k + 1,
            "mass": obj.mass_kg, "radius": obj.radius, "restitution": obj.restitution, "density": obj.density,
            "color": list(obj.color), "initial_position": list(obj.position), "initial_velocity": list(obj.velocity),
        } for k, obj in enumerate(spheres)],
        "camera": {"position": list(camera.position), "look_at": list(camera.look_at), "up": list(camera.up),
                   "fovy_deg": camera.fovy_deg, "projection": camera.projection,
                   "intrinsics": rendering.layers["intrinsics"][0].tolist(),
                   "extrinsics": rendering.layers["extrinsics"][0].tolist(),
                   "moving": bool(len(camera.keyframes) > 0)},
        "light": {"direction": list(spec.light.direction), "intensity": spec.light.intensity,
                  "ambient": spec.light.ambient, "sky_color": list(spec.light.sky_color)},
        "gravity": list(spec.gravity),
        "ground_height": spec.ground.height,
        "quality": {"passed": True, "gates": job.gates.to_dict(), **measured},
        "rejected_attempts": rejected,
        "entries": {
            "mp4": f"H.264 video, {frame_count} frames of {camera.width}x{camera.height} at {spec.time.fps:g} fps",
            "layers.npz": "depth (T,H,W) m [inf sky], normal (T,H,W,3) camera space, alpha (T,H,W), segmentation "
                          "(T,H,W) int32 [0 ground/sky, k+1 object k], flow_forward/flow_backward (T,H,W,2) px, "
                          "occlusion_forward/occlusion_backward (T,H,W) bool, intrinsics (T,3,3), extrinsics "
                          "(T,4,4) world to camera (OpenCV axes), object_poses (T,N,7)",
            "states.npz": "positions, velocities (T,N,3) [m, m/s], times (T,) s, mass (N,) kg, radius (N,) m, "
                          "restitution (N,)",
        },
        "object_poses": POSE_NOTE,
        "scene_toml": spec.to_toml(),
        "versions": _versions(),
    }
    return {
        "json": (json.dumps(_json_safe(meta), indent=1, sort_keys=False, allow_nan=False) + "\n").encode("utf-8"),
        "mp4": video,
        "layers.npz": npz_bytes(layers),
        "states.npz": npz_bytes(states),
    }


def _video_bytes(key: str, rgb, fps: float) -> bytes:
    from ..render import write_video

    with tempfile.TemporaryDirectory(prefix="hybridsim-sample-") as folder:
        video_path = Path(folder) / f"{key}.mp4"
        write_video(video_path, rgb, fps=fps)
        return video_path.read_bytes()


def _rigid_object_record(spec, k: int, body: int | None, model) -> dict:
    """Per-object labels of a rigid sample: type, geometry, simulated mass and material."""
    from ..sim.rigid import SPHERE_FRICTION

    obj = spec.objects[k]
    record = {"name": obj.name, "type": obj.type, "segmentation_id": k + 1, "body": body}
    if obj.type in ("box", "static_box"):
        record["half_extents"] = list(obj.half_extents)
    if obj.type in ("sphere", "capsule"):
        record["radius"] = obj.radius
    if obj.type == "capsule":
        record["half_height"] = obj.half_height
    if obj.type == "mesh":
        record.update(file=obj.file, scale=obj.scale)
    record["mass"] = None if body is None else float(model.body_mass[body])  # static boxes do not move
    record["density"] = getattr(obj, "density", None)
    record["friction"] = SPHERE_FRICTION if obj.type == "sphere" else obj.friction
    record["restitution"] = obj.restitution
    record["color"] = list(obj.color)
    record["initial_position"] = list(obj.position)
    record["initial_orientation"] = list(getattr(obj, "orientation", (0.0, 0.0, 0.0)))  # rotation vector [rad]
    record["initial_velocity"] = list(getattr(obj, "velocity", (0.0, 0.0, 0.0)))
    record["initial_angular_velocity"] = list(getattr(obj, "angular_velocity", (0.0, 0.0, 0.0)))
    return record


def _encode_rigid(job: GenerateJob, index: int, attempt: int, world, rendering, measured: dict, rejected: list) -> dict:
    import numpy as np

    spec = world.spec
    key = sample_key(index)
    trajectory = rendering.trajectory
    model = trajectory.model
    bodies = tuple(int(b) for b in trajectory.body_objects)
    frame_count = trajectory.frame_count
    numpy = lambda tensor: tensor.detach().cpu().numpy()  # noqa: E731
    states = {
        "positions": numpy(trajectory.positions),  # (T, B, 3)
        "orientations": numpy(trajectory.orientations),  # (T, B, 4) x, y, z, w
        "velocities": numpy(trajectory.velocities),
        "angular_velocities": numpy(trajectory.angular_velocities),
        "times": numpy(trajectory.times),
        "body_objects": np.asarray(bodies, dtype=np.int64),
        "mass": numpy(model.body_mass).astype(np.float64),
        "inertia": numpy(model.body_inertia).astype(np.float64),
        "inertia_rotation": numpy(model.body_inertia_rotation).astype(np.float64),
    }
    body_of = {i: b for b, i in enumerate(bodies)}
    camera = spec.camera
    layers = rendering.layers
    meta = {
        "key": key,
        "index": index,
        "attempt": attempt,
        "seed": job.seed,
        "scene_seed": spec.seed,
        "distribution": {"name": Path(job.distribution_name).name, "sha256": _distribution(job).sha256},
        "simulator": "rigid",
        "frames": frame_count,
        "fps": spec.time.fps,
        "substeps": spec.time.substeps,
        "width": camera.width,
        "height": camera.height,
        "backend": spec.backend,
        "precision": spec.precision,
        "deterministic": spec.deterministic,
        "objects": [_rigid_object_record(spec, k, body_of.get(k), model) for k in range(len(spec.objects))],
        "joints": [{"type": j.type, "a": j.a, "b": j.b, "anchor": list(j.anchor), "axis": list(j.axis)}
                   for j in spec.joints],
        "springs": [{"a": s.a, "b": s.b, "anchor_a": list(s.anchor_a), "anchor_b": list(s.anchor_b),
                     "stiffness": s.stiffness, "damping": s.damping, "rest_length": s.rest_length}
                    for s in spec.springs],
        "camera": {"position": list(camera.position), "look_at": list(camera.look_at), "up": list(camera.up),
                   "fovy_deg": camera.fovy_deg, "projection": camera.projection,
                   "intrinsics": layers["intrinsics"][0].tolist(),
                   "extrinsics": layers["extrinsics"][0].tolist(),
                   "moving": bool(len(camera.keyframes) > 0)},
        "light": {"direction": list(spec.light.direction), "intensity": spec.light.intensity,
                  "ambient": spec.light.ambient, "sky_color": list(spec.light.sky_color)},
        "gravity": list(spec.gravity),
        "ground_height": spec.ground.height,
        "ground": {"enabled": spec.ground.enabled, "height": spec.ground.height, "friction": spec.ground.friction,
                   "restitution": spec.ground.restitution},
        "quality": {"passed": True, "gates": job.gates.to_dict(), **measured},
        "rejected_attempts": rejected,
        "entries": {
            "mp4": f"H.264 video, {frame_count} frames of {camera.width}x{camera.height} at {spec.time.fps:g} fps",
            "layers.npz": "depth (T,H,W) m [inf sky], normal (T,H,W,3) camera space, alpha (T,H,W), segmentation "
                          "(T,H,W) int32 [0 ground/sky, k+1 scene object k], object_coordinates (T,H,W,3) m [the "
                          "surface point in its object's pose frame], flow_forward/flow_backward (T,H,W,2) px, "
                          "occlusion_forward/occlusion_backward (T,H,W) bool, intrinsics (T,3,3), extrinsics "
                          "(T,4,4) world to camera (OpenCV axes), object_poses (T,K,7)",
            "states.npz": "rigid bodies b = 0..B-1 (every object but static boxes; body b is scene object "
                          "body_objects[b]): positions (T,B,3) m [centre of mass], orientations (T,B,4) quaternion "
                          "x, y, z, w, velocities (T,B,3) m/s, angular_velocities (T,B,3) rad/s [world frame], "
                          "times (T,) s, body_objects (B,) int64, mass (B,) kg, inertia (B,3) kg m^2 [principal "
                          "moments], inertia_rotation (B,4) [principal axes in the body frame, x, y, z, w]",
        },
        "object_poses": RIGID_POSE_NOTE,
        "scene_toml": spec.to_toml(),
        "versions": _versions(),
    }
    return {
        "json": (json.dumps(_json_safe(meta), indent=1, sort_keys=False, allow_nan=False) + "\n").encode("utf-8"),
        "mp4": _video_bytes(key, rendering.rgb, spec.time.fps),
        "layers.npz": npz_bytes(layers),
        "states.npz": npz_bytes(states),
    }


def npz_bytes(arrays: dict) -> bytes:
    """A compressed npz (readable by ``numpy.load``) whose bytes depend only on the arrays:
    fixed zip timestamps, unlike ``numpy.savez_compressed``."""
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _json_safe(value):
    """Non-finite floats -> None (JSON has no inf/nan)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


_version_cache: dict = {}


def _versions() -> dict:
    if not _version_cache:
        import platform
        from importlib.metadata import PackageNotFoundError, version

        from .. import __version__

        _version_cache["hybridsim"] = __version__
        for module, dist in (("torch", "torch"), ("warp", "warp-lang"), ("taichi", "taichi"), ("numpy", "numpy")):
            try:
                _version_cache[module] = version(dist)
            except PackageNotFoundError:
                _version_cache[module] = None
        _version_cache["python"] = platform.python_version()
    return dict(_version_cache)
