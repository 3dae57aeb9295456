"""One generation job: draw a scene, simulate, gate, render and encode one sample's files.

``run_sample(job, index)`` is the unit of work of every executor (in-process, local process
pool, Ray task). It is a pure function of ``job`` and ``index``: it reads no files and writes
only temporary files of its own, and returns the sample's encoded entries, so the same code runs
on a laptop and on a cluster node and gives the same bytes.
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


def prepare_process(backend: str | None = None) -> None:
    """Once per worker process: one torch thread (reproducible reductions, no oversubscription)
    and warm kernel caches for ``backend`` by rendering a tiny scene."""
    import torch

    if not _prepared.get("threads"):
        torch.set_num_threads(1)
        _prepared["threads"] = True
    if backend and not _prepared.get(backend):
        _warm_up(backend)
        _prepared[backend] = True


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


def _warm_up(backend: str) -> None:
    from ..scene import scene_from_dict
    from ..sim.world import World
    from .sample import simulate_and_render

    spec = scene_from_dict({
        "backend": backend, "device": "cpu", "deterministic": True, "time": {"frames": 1, "substeps": 1},
        "camera": {"position": [0.0, -3.0, 1.0], "look_at": [0.0, 0.0, 0.5], "width": 8, "height": 8},
        "objects": [{"type": "sphere", "position": [0.0, 0.0, 1.0], "radius": 0.2}],
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
