"""One generation job: draw a scene, simulate, gate, render and encode one sample's files.

``run_sample(job, index)`` is the unit of work of every executor (in-process, local process
pool, Ray task). It is a pure function of ``job`` and ``index``: it reads no files (except mesh
files a drawn rigid scene names, relative to the distribution file) and writes only temporary
files of its own, and returns the sample's encoded entries, so the same code runs on a laptop and
on a cluster node and gives the same bytes.

Five kinds of scene, by what the draw holds: ``[fluid]`` (2D smoke: ``hybridsim.sim.fluid``,
``hybridsim.render.fluid``), a 2D ``[fluid]`` with ``[[objects]]`` (bodies coupled two-way with
the smoke: ``hybridsim.sim.fluid_rigid``, ``hybridsim.render.fluid_rigid``) and ``[mpm]``
(particles: ``hybridsim.sim.mpm``, ``hybridsim.render.particles``), all in
:mod:`hybridsim.data.continuum`; rigid objects
(``World(spec).rigid``: boxes, capsules, meshes, static boxes, joints or springs) on
``hybridsim.sim.rigid.rigid_rollout`` and ``hybridsim.render.rigid.render_rigid_layers``; and
spheres only, on the sphere solver and renderer. Every kind writes the same entries, with the
labels every sample shares built by :func:`base_meta` / :func:`finish_meta`.

Poses: every ``object_poses`` layer is position x, y, z [m] plus a unit quaternion in the order
x, y, z, w (scalar last, as the rigid solver, ``scipy.spatial.transform.Rotation.as_quat`` and
``hybridsim render`` store it); the identity is (0, 0, 0, 1).
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
from typing import Any

from .gates import QualityGates

__all__ = ["GenerateJob", "RefinerWeights", "Draw", "run_sample", "sample_key", "npz_bytes", "prepare_process",
           "single_threaded", "base_meta", "finish_meta", "sample_entries", "rigid_links_meta", "ENTRY_SUFFIXES",
           "OPTIONAL_SUFFIXES", "QUATERNION_ORDER"]

#: File suffixes of one sample, in the order they are written to a shard.
ENTRY_SUFFIXES = ("json", "mp4", "layers.npz", "states.npz")
#: Suffixes a sample has only with some options (``refined.mp4``: ``--refiner``), written after those.
OPTIONAL_SUFFIXES = ("refined.mp4",)
#: The one quaternion order of generated samples (scalar last).
QUATERNION_ORDER = "x, y, z, w"
POSE_NOTE = ("object_poses (T, N, 7): position x, y, z [m] and unit quaternion x, y, z, w; spheres do not "
             "rotate in the sphere solver, so the quaternion is the identity (0, 0, 0, 1)")
RIGID_POSE_NOTE = ("object_poses (T, K, 7): for every scene object k (segmentation id k + 1), the position x, y, z [m] "
                   "of its centre of mass (static boxes: their centre) and its orientation as a unit quaternion "
                   "x, y, z, w (the rigid solver's order, as states.npz orientations and `hybridsim render`)")


def sample_key(index: int) -> str:
    """The WebDataset key of sample ``index``: ``sample-0000042``."""
    return f"sample-{index:07d}"


@dataclass(frozen=True)
class RefinerWeights:
    """Trained video-refiner weights carried by a job (bytes, so cluster nodes need no shared files)."""

    name: str
    sha256: str
    data: bytes = field(repr=False)
    config: str  # the RefinerConfig as JSON

    @classmethod
    def read(cls, path) -> "RefinerWeights":
        """Load and check ``path`` (AssetError naming it when missing, damaged or mismatched)."""
        import hashlib

        from ..neural.refiner import VideoRefiner

        path = Path(path)
        model = VideoRefiner.load(path)  # refuses missing / corrupt weights, naming the file
        data = path.read_bytes()
        return cls(path.name, hashlib.sha256(data).hexdigest(), data, json.dumps(model.config.to_dict(), sort_keys=True))

    def model(self):
        """The VideoRefiner (eval mode), built once per process."""
        key = ("refiner", self.sha256, self.config)
        if key not in _prepared:
            from safetensors.torch import load as load_safetensors

            from ..neural.refiner import RefinerConfig, VideoRefiner

            model = VideoRefiner(RefinerConfig.from_dict(json.loads(self.config)))
            model.load_state_dict(load_safetensors(self.data))
            model.eval()
            _prepared[key] = model
        return _prepared[key]


@dataclass(frozen=True)
class GenerateJob:
    """Everything that decides a sample's content (and nothing that does not, like worker counts).

    ``max_state_particles`` / ``field_stride`` override the distribution's ``[generate]`` table
    (None: take it from there; absent there too: keep every particle and cell). ``refiner``:
    also write ``{key}.refined.mp4``."""

    distribution_text: str
    distribution_name: str
    seed: int = 0
    frames: int | None = None
    gates: QualityGates = field(default_factory=QualityGates)
    max_attempts: int = 16
    max_state_particles: int | None = None
    field_stride: int | None = None
    refiner: RefinerWeights | None = None

    def option(self, name: str):
        """A ``[generate]`` option: this job's value, else the distribution's, else None."""
        value = getattr(self, name)
        return value if value is not None else _distribution(self).generate_options.get(name)

    def record(self) -> dict:
        """The job's identity as plain data (stored in ``OUT/job.json`` and compared on resume)."""
        record = {"distribution": Path(self.distribution_name).name,
                  "distribution_sha256": _distribution(self).sha256, "seed": self.seed, "frames": self.frames,
                  "gates": self.gates.to_dict(), "max_attempts": self.max_attempts,
                  "hybridsim": _versions()["hybridsim"]}
        for name in ("max_state_particles", "field_stride"):  # only when set: older job.json files stay valid
            if self.option(name) is not None:
                record[name] = self.option(name)
        if self.refiner is not None:
            record["refiner"] = {"name": self.refiner.name, "sha256": self.refiner.sha256}
        return record


@dataclass
class Draw:
    """One draw of a sample: its index, redraw attempt, world and the drawn values by field path."""

    index: int
    attempt: int
    world: Any
    draws: dict

    @property
    def spec(self):
        return self.world.spec

    @property
    def key(self) -> str:
        return sample_key(self.index)


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

    Returns ``{"index", "key", "entries": {suffix: bytes}, "rejected": [...], "timing": {...}}``
    (timing: seconds spent in ``simulate_s`` (with the gates), ``render_s``, ``encode_s`` (video,
    npz, json) and ``refine_s``, over every attempt).
    Raises :class:`~hybridsim.errors.HybridsimError` when ``job.max_attempts`` draws are all rejected.
    """
    from ..errors import HybridsimError
    from ..sim.world import World
    from .continuum import fluid_attempt, fluid_rigid_attempt, mpm_attempt

    dist = _distribution(job)
    rejected: list[dict] = []
    timing = {"simulate_s": 0.0, "render_s": 0.0, "encode_s": 0.0, "refine_s": 0.0}
    for attempt in range(job.max_attempts):
        spec, draws = dist.sample_with_draws(job.seed, index, attempt=attempt, frames=job.frames)
        draw = Draw(index, attempt, World(spec), draws)
        if draw.world.fluid_rigid:
            entries = fluid_rigid_attempt(job, draw, rejected, timing)
        elif spec.fluid is not None:
            entries = fluid_attempt(job, draw, rejected, timing)
        elif getattr(spec, "mpm", None) is not None:
            entries = mpm_attempt(job, draw, rejected, timing)
        elif draw.world.rigid:
            entries = _rigid_attempt(job, draw, rejected, timing)
        else:
            entries = _sphere_attempt(job, draw, rejected, timing)
        if entries is not None:
            return {"index": index, "key": draw.key, "entries": entries, "rejected": rejected, "timing": timing}
    gates = sorted({reason["gate"] for item in rejected for reason in item["reasons"]})
    raise HybridsimError(
        f"all {job.max_attempts} draws of sample {index} were rejected (gates: {', '.join(gates)}; last: "
        f"{rejected[-1]['reasons'][0]['detail']}); widen the distribution or relax the gates",
        file=job.distribution_name)


def reject(rejected: list, draw: Draw, reasons: list[dict]) -> None:
    """Record a rejected draw."""
    rejected.append({"attempt": draw.attempt, "reasons": reasons})


def non_finite_layers(rejected: list, draw: Draw, layers: dict, names) -> bool:
    """Reject the draw (and return True) when a rendered layer holds nan/inf."""
    bad = [name for name in names if name in layers and not _all_finite(layers[name])]
    if bad:
        reject(rejected, draw, [{"gate": "non_finite", "value": None, "limit": None,
                                 "detail": f"non-finite {', '.join(bad)}"}])
    return bool(bad)


def _sphere_attempt(job: GenerateJob, draw: Draw, rejected: list, timing: dict) -> dict | None:
    """One draw of a sphere-only scene: rollout, gates, render, encode (None when rejected)."""
    from ..errors import SimulationError
    from .gates import evaluate_gates
    from .sample import render_layers, simulate

    world, spec = draw.world, draw.spec
    start = time.perf_counter()
    try:
        trajectory = simulate(world)
    except SimulationError as error:
        timing["simulate_s"] += time.perf_counter() - start
        reject(rejected, draw, [{"gate": "non_finite", "value": None, "limit": None, "detail": error.message}])
        return None
    measured, failures = evaluate_gates(spec, trajectory.positions[:, 0], trajectory.velocities[:, 0], job.gates)
    timing["simulate_s"] += time.perf_counter() - start
    if failures:
        reject(rejected, draw, failures)
        return None
    start = time.perf_counter()
    rendering = render_layers(world, trajectory)
    timing["render_s"] += time.perf_counter() - start
    if non_finite_layers(rejected, draw, rendering.layers, ("normal", "alpha", "flow_forward", "flow_backward")):
        return None
    return _encode_spheres(job, draw, rendering, measured, rejected, timing)


def _rigid_attempt(job: GenerateJob, draw: Draw, rejected: list, timing: dict) -> dict | None:
    """One draw of a rigid-body scene: initial-overlap gate, guarded rollout, gates, render, encode.
    Returns the entries, or None after appending the rejection to ``rejected``."""
    from ..errors import SimulationError
    from .gates import blow_up_reason, evaluate_rigid_gates, rigid_initial_gates
    from .sample import render_rigid_sample, simulate_rigid

    world = draw.world
    start = time.perf_counter()
    initial, failures = rigid_initial_gates(world, job.gates)  # before the rollout: cheap, and a clear reason
    if failures:
        timing["simulate_s"] += time.perf_counter() - start
        reject(rejected, draw, failures)
        return None
    try:
        trajectory = simulate_rigid(world)
    except SimulationError as error:
        timing["simulate_s"] += time.perf_counter() - start
        reject(rejected, draw, [blow_up_reason(error)])
        return None
    measured, failures = evaluate_rigid_gates(world, trajectory, job.gates)
    timing["simulate_s"] += time.perf_counter() - start
    if failures:
        reject(rejected, draw, failures)
        return None
    start = time.perf_counter()
    rendering = render_rigid_sample(world, trajectory)
    timing["render_s"] += time.perf_counter() - start
    if non_finite_layers(rejected, draw, rendering.layers,
                         ("normal", "alpha", "object_coordinates", "flow_forward", "flow_backward")):
        return None
    return _encode_rigid(job, draw, rendering, {**initial, **measured}, rejected, timing)


def _all_finite(array) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all())


# --------------------------------------------------------------------------------------------
# Labels and entries shared by every kind of sample
# --------------------------------------------------------------------------------------------


def base_meta(job: GenerateJob, draw: Draw, layers: dict, simulator: str, frame_count: int) -> dict:
    """The labels every sample starts with: identity, clip, camera, light, gravity."""
    spec = draw.spec
    camera = spec.camera
    camera_meta = {"position": list(camera.position), "look_at": list(camera.look_at), "up": list(camera.up),
                   "fovy_deg": camera.fovy_deg, "projection": camera.projection,
                   "intrinsics": layers["intrinsics"][0].tolist(), "extrinsics": layers["extrinsics"][0].tolist(),
                   "moving": bool(len(camera.keyframes) > 0)}
    if camera.projection == "orthographic":
        camera_meta["ortho_height"] = camera.ortho_height
    return {
        "key": draw.key,
        "index": draw.index,
        "attempt": draw.attempt,
        "seed": job.seed,
        "scene_seed": spec.seed,
        "distribution": {"name": Path(job.distribution_name).name, "sha256": _distribution(job).sha256},
        "simulator": simulator,
        "frames": frame_count,
        "fps": spec.time.fps,
        "substeps": spec.time.substeps,
        "width": camera.width,
        "height": camera.height,
        "backend": spec.backend,
        "precision": spec.precision,
        "deterministic": spec.deterministic,
        "camera": camera_meta,
        "light": {"direction": list(spec.light.direction), "intensity": spec.light.intensity,
                  "ambient": spec.light.ambient, "sky_color": list(spec.light.sky_color)},
        "gravity": list(spec.gravity),
    }


def finish_meta(meta: dict, job: GenerateJob, draw: Draw, measured: dict, rejected: list, entries: dict,
                poses: str | None = None) -> dict:
    """Add what every sample ends with: quality, rejected draws, entry docs, the drawn values
    (``sampled``: field path -> value, as ``SceneDistribution.sample_with_draws``), the drawn scene
    as TOML and versions."""
    meta["quality"] = {"passed": True, "gates": job.gates.to_dict(), **measured}
    meta["rejected_attempts"] = rejected
    entries = dict(entries)
    if job.refiner is not None:
        entries["refined.mp4"] = (f"the mp4 refined by the neural video refiner {job.refiner.name} "
                                  f"(sha256 {job.refiner.sha256[:12]}); the layers stay those of the exact render")
    meta["entries"] = entries
    if poses is not None:
        meta["object_poses"] = poses
        meta["quaternion_order"] = QUATERNION_ORDER
    meta["sampled"] = draw.draws
    meta["scene_toml"] = draw.spec.to_toml()
    meta["versions"] = _versions()
    return meta


def sample_entries(job: GenerateJob, draw: Draw, meta: dict, rgb, layers: dict, states: dict, timing: dict) -> dict:
    """Encode one accepted sample: json, mp4, layers.npz, states.npz (+ refined.mp4 with a refiner).
    Adds the seconds spent to ``timing["encode_s"]`` and ``timing["refine_s"]``."""
    start = time.perf_counter()
    fps = draw.spec.time.fps
    entries = {
        "json": (json.dumps(_json_safe(meta), indent=1, sort_keys=False, allow_nan=False) + "\n").encode("utf-8"),
        "mp4": _video_bytes(draw.key, rgb, fps),
        "layers.npz": npz_bytes(layers),
        "states.npz": npz_bytes(states),
    }
    timing["encode_s"] += time.perf_counter() - start
    if job.refiner is not None:
        start = time.perf_counter()
        refined = job.refiner.model().refine(dict(layers, rgb=rgb), layers["flow_backward"], layers["occlusion_backward"])
        timing["refine_s"] += time.perf_counter() - start
        start = time.perf_counter()
        entries["refined.mp4"] = _video_bytes(draw.key, refined, fps)
        timing["encode_s"] += time.perf_counter() - start
    return entries


def _encode_spheres(job: GenerateJob, draw: Draw, rendering, measured: dict, rejected: list, timing: dict) -> dict:
    import numpy as np

    spec = draw.spec
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
    poses[..., 6] = 1.0  # identity quaternion, x, y, z, w
    layers["object_poses"] = poses

    mass = np.array([obj.mass_kg for obj in spheres], dtype=np.float64)
    radius = np.array([obj.radius for obj in spheres], dtype=np.float64)
    restitution = np.array([obj.restitution for obj in spheres], dtype=np.float64)
    states = {"positions": positions, "velocities": velocities, "times": trajectory.times.cpu().numpy(),
              "mass": mass, "radius": radius, "restitution": restitution}

    meta = base_meta(job, draw, layers, "spheres", frame_count)
    meta["objects"] = [{
        "name": obj.name, "type": obj.type, "segmentation_id": k + 1,
        "mass": obj.mass_kg, "radius": obj.radius, "restitution": obj.restitution, "density": obj.density,
        "color": list(obj.color), "initial_position": list(obj.position), "initial_velocity": list(obj.velocity),
    } for k, obj in enumerate(spheres)]
    meta["ground_height"] = spec.ground.height
    finish_meta(meta, job, draw, measured, rejected, {
        "mp4": _video_note(spec, frame_count),
        "layers.npz": "depth (T,H,W) m [inf sky], normal (T,H,W,3) camera space, alpha (T,H,W), segmentation "
                      "(T,H,W) int32 [0 ground/sky, k+1 object k], flow_forward/flow_backward (T,H,W,2) px, "
                      "occlusion_forward/occlusion_backward (T,H,W) bool, intrinsics (T,3,3), extrinsics "
                      "(T,4,4) world to camera (OpenCV axes), object_poses (T,N,7) [quaternion x, y, z, w]",
        "states.npz": "positions, velocities (T,N,3) [m, m/s], times (T,) s, mass (N,) kg, radius (N,) m, "
                      "restitution (N,)",
    }, POSE_NOTE)
    return sample_entries(job, draw, meta, rendering.rgb, layers, states, timing)


def _video_note(spec, frame_count: int) -> str:
    camera = spec.camera
    return f"H.264 video, {frame_count} frames of {camera.width}x{camera.height} at {spec.time.fps:g} fps"


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
    if obj.type in ("mesh", "static_mesh"):
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


def rigid_links_meta(spec) -> dict:
    """The json's ``joints``, ``springs``, ``ground_height`` and ``ground`` of a scene with rigid bodies."""
    return {
        "joints": [{"type": j.type, "a": j.a, "b": j.b, "anchor": list(j.anchor), "axis": list(j.axis)}
                   for j in spec.joints],
        "springs": [{"a": s.a, "b": s.b, "anchor_a": list(s.anchor_a), "anchor_b": list(s.anchor_b),
                     "stiffness": s.stiffness, "damping": s.damping, "rest_length": s.rest_length}
                    for s in spec.springs],
        "ground_height": spec.ground.height,
        "ground": {"enabled": spec.ground.enabled, "height": spec.ground.height, "friction": spec.ground.friction,
                   "restitution": spec.ground.restitution},
    }


def _encode_rigid(job: GenerateJob, draw: Draw, rendering, measured: dict, rejected: list, timing: dict) -> dict:
    import numpy as np

    spec = draw.spec
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
    layers = rendering.layers
    meta = base_meta(job, draw, layers, "rigid", frame_count)
    meta["objects"] = [_rigid_object_record(spec, k, body_of.get(k), model) for k in range(len(spec.objects))]
    meta.update(rigid_links_meta(spec))
    finish_meta(meta, job, draw, measured, rejected, {
        "mp4": _video_note(spec, frame_count),
        "layers.npz": "depth (T,H,W) m [inf sky], normal (T,H,W,3) camera space, alpha (T,H,W), segmentation "
                      "(T,H,W) int32 [0 ground/sky, k+1 scene object k], object_coordinates (T,H,W,3) m [the "
                      "surface point in its object's pose frame], flow_forward/flow_backward (T,H,W,2) px, "
                      "occlusion_forward/occlusion_backward (T,H,W) bool, intrinsics (T,3,3), extrinsics "
                      "(T,4,4) world to camera (OpenCV axes), object_poses (T,K,7) [quaternion x, y, z, w]",
        "states.npz": "rigid bodies b = 0..B-1 (every object but static boxes; body b is scene object "
                      "body_objects[b]): positions (T,B,3) m [centre of mass], orientations (T,B,4) quaternion "
                      "x, y, z, w, velocities (T,B,3) m/s, angular_velocities (T,B,3) rad/s [world frame], "
                      "times (T,) s, body_objects (B,) int64, mass (B,) kg, inertia (B,3) kg m^2 [principal "
                      "moments], inertia_rotation (B,4) [principal axes in the body frame, x, y, z, w]",
    }, RIGID_POSE_NOTE)
    return sample_entries(job, draw, meta, rendering.rgb, layers, states, timing)


#: zlib level of the npz entries: level 1 compresses a 128x128, 49-frame MPM sample's layers 3.3x
#: faster than the default 6 (0.55 s vs 1.8 s; the float flow dominates) for 1% more bytes.
NPZ_COMPRESSLEVEL = 1


def npz_bytes(arrays: dict) -> bytes:
    """A compressed npz (readable by ``numpy.load``) whose bytes depend only on the arrays:
    fixed zip timestamps, unlike ``numpy.savez_compressed``."""
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            array = np.asarray(array)  # (np.ascontiguousarray would turn a 0-d array into shape (1,))
            np.lib.format.write_array(member, array if array.flags.c_contiguous else np.ascontiguousarray(array),
                                      allow_pickle=False)
            archive.writestr(info, member.getvalue(), compresslevel=NPZ_COMPRESSLEVEL)
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
