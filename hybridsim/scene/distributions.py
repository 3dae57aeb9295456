"""Scene distributions: scene files whose values are drawn at random, for data generation.

A distribution file is a scene file in which any value may be a *distribution table*:

    radius      = { uniform = [0.1, 0.3] }                 # float in [lo, hi]
    restitution = { normal = [0.7, 0.1], clip = [0, 1] }   # float; ``clip`` clamps (optional)
    density     = { loguniform = [100, 2000] }             # float, log-uniform in [lo, hi], lo > 0
    color       = { choice = [[0.9, 0.2, 0.2], [0.2, 0.4, 0.9]] }   # one of the options, any values
    frames      = { randint = [16, 32] }                   # integer in [lo, hi], both inclusive
    file        = { choice_dir = "meshes/" }               # one mesh file of a folder (see below)

Vectors take a distribution per component (``position = [{ uniform = [-1, 1] }, 0, 1.5]``), a
whole-vector ``choice``, or vector bounds drawn per component
(``velocity = { uniform = [[-1, -1, 0], [1, 1, 2]] }``). Options of a ``choice`` may themselves
hold distributions; they are drawn only when chosen. Learnable markers may wrap distributions
(``{ value = { uniform = [0.5, 0.9] }, learn = true }``).

``choice_dir`` draws one mesh file (``.obj``, ``.stl``, ``.ply``, ``.glb``) of a folder, resolved
relative to the distribution file: the drawn value is the folder as written joined with the file
name (``meshes/rock.obj``), so the scene loads it relative to the same file. The listing is sorted
(reproducible) and read once, when the file is parsed; it is part of the distribution's sha256, so
adding a mesh to the folder makes a different job.

Three tables exist only in distribution files:

* ``[[spawn]]`` generates objects: ``count`` (an integer or a distribution of one, e.g.
  ``{ randint = [1, 4] }``), ``template`` (an object table with distributions, drawn afresh for
  every object) and an optional ``name`` (objects are called ``name_0``, ``name_1``, ...; without
  it they get the scene's default names). Spawned objects follow the ``[[objects]]`` written out.
* ``[camera.orbit]`` places the camera on a sphere around ``camera.look_at`` instead of giving
  ``camera.position``: ``azimuth_deg`` (from +x towards +y, about the z axis), ``elevation_deg``
  (above the horizontal plane) and ``distance`` (m), each a number or a distribution. With
  ``sweep_deg`` (optional) the camera moves: it circles look_at by that many degrees of azimuth
  over the clip (written out as ``[[camera.keyframes]]``).
* ``[generate]`` holds options of ``hybridsim generate`` itself (plain values, no draws; CLI flags
  override them): ``max_state_particles`` (states.npz keeps at most this many MPM particles, an
  evenly strided subset, with their indices) and ``field_stride`` (states.npz keeps every n-th
  cell of a fluid's density and velocities). See ``SceneDistribution.generate_options``.

A sample is a pure function of (file content, base seed, sample index): the draws come from
``numpy.random.default_rng([base_seed, index])`` in the order the fields are written
(``[base_seed, index, attempt]`` for redraws after a rejected attempt). A sample whose file leaves
``seed`` out gets a scene seed drawn first from the same stream; one that leaves ``deterministic``
out is deterministic. Mistakes raise :class:`~hybridsim.errors.SceneError` naming the file, line
and field path (``spawn[0].template.radius.uniform``) like the scene loader; a drawn value the
scene rejects also names the sample index.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HybridsimError, SceneError
from .loader import _Locator, max_scene_bytes, scene_from_dict, toml_loads
from .schema import MAX_SEED, SceneSpec, fmt_num, is_number, join_path, parse_path, show

__all__ = ["SceneDistribution", "load_distribution", "parse_distribution", "sample_scene", "DISTRIBUTION_KINDS"]

DISTRIBUTION_KINDS = ("uniform", "normal", "loguniform", "choice", "randint", "choice_dir")
GENERATE_OPTIONS = ("max_state_particles", "field_stride")  # the [generate] table: positive integers
MAX_SPAWN = 10_000
_SPAWN_KEYS = ("count", "template", "name")
_ORBIT_KEYS = ("azimuth_deg", "elevation_deg", "distance")
_ORBIT_OPTIONAL = ("sweep_deg",)
ORBIT_STEP_DEG = 10.0  # a swept orbit gets a keyframe at least every this many degrees


# --------------------------------------------------------------------------------------------
# Compiled distribution nodes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bounded:
    """uniform / normal / loguniform / randint with scalar or per-component parameters."""

    kind: str
    first: tuple[float, ...]  # lo (uniform, loguniform, randint) or mean (normal)
    second: tuple[float, ...]  # hi or std
    vector: bool
    clip: tuple[float, float] | None = None

    def draw(self, rng) -> Any:
        values = [self._one(rng, a, b) for a, b in zip(self.first, self.second)]
        return values if self.vector else values[0]

    def _one(self, rng, a, b):
        if self.kind == "uniform":
            return float(rng.uniform(a, b))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(a), math.log(b))))
        if self.kind == "randint":
            return int(rng.integers(int(a), int(b), endpoint=True))
        value = float(rng.normal(a, b))
        if self.clip is not None:
            value = min(max(value, self.clip[0]), self.clip[1])
        return value


@dataclass(frozen=True)
class _Choice:
    options: tuple[Any, ...]  # compiled sub-trees

    def draw(self, rng) -> Any:
        return int(rng.integers(len(self.options)))


@dataclass(frozen=True)
class _Spawn:
    path: str
    count: Any  # compiled
    template: Any  # compiled mapping
    name: str | None


# --------------------------------------------------------------------------------------------
# The distribution
# --------------------------------------------------------------------------------------------


class SceneDistribution:
    """A parsed, checked distribution file; ``sample(base_seed, index)`` draws one SceneSpec."""

    def __init__(self, data: Mapping, *, label: str = "<string>", text: str | None = None):
        self.label = label
        self.text = text
        self.data = data
        canonical = text if text is not None else json.dumps(_jsonable(data), sort_keys=True)
        self._locator = _Locator(text) if text is not None else None
        if not isinstance(data, Mapping):
            raise SceneError(f"a scene must be a table of fields (got {show(data)})", file=label)
        self._listings: dict[str, list[str]] = {}  # choice_dir path -> the files drawn from
        self.generate_options = self._check_generate(data.get("generate"))
        """The ``[generate]`` table: options of ``hybridsim generate`` (``GENERATE_OPTIONS``)."""
        self._tree = {k: v for k, v in data.items() if k not in ("spawn", "generate")}
        self._tree = self._compile(self._tree, "")
        self._spawns = self._compile_spawns(data.get("spawn"))
        self._check_orbit(data.get("camera"))
        if self._listings:  # the folders' contents decide the samples too
            canonical += "\n" + json.dumps(self._listings, sort_keys=True)
        self.sha256 = hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    # -- errors ---------------------------------------------------------------------------

    def _line(self, path: str) -> int | None:
        return self._locator.line_of(path) if (self._locator is not None and path) else None

    def _error(self, message: str, path: str) -> SceneError:
        return SceneError(message, file=self.label, field=path or None, line=self._line(path))

    # -- compile: validate every distribution table once, before any draw ------------------

    def _compile(self, node: Any, path: str) -> Any:
        if isinstance(node, Mapping):
            kinds = [k for k in node if k in DISTRIBUTION_KINDS]
            if kinds:
                return self._compile_table(node, path, kinds)
            return {key: self._compile(value, join_path(path, str(key))) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [self._compile(value, join_path(path, i)) for i, value in enumerate(node)]
        return node

    def _compile_table(self, node: Mapping, path: str, kinds: list[str]) -> Any:
        if len(kinds) > 1:
            raise self._error(f"a distribution table takes one of {', '.join(DISTRIBUTION_KINDS)} "
                              f"(got {' and '.join(kinds)})", path)
        kind = kinds[0]
        allowed = {kind, "clip"} if kind == "normal" else {kind}
        for key in node:
            if key not in allowed:
                hint = " (only normal takes clip)" if key == "clip" else ""
                raise self._error(f"unknown key in a {kind} distribution{hint}", join_path(path, str(key)))
        where = join_path(path, kind)
        args = node[kind]
        if kind == "choice_dir":
            return _Choice(tuple(self._list_meshes(args, where)))
        if kind == "choice":
            if not isinstance(args, (list, tuple)) or not args:
                raise self._error(f"choice needs a non-empty array of options (got {show(args)})", where)
            return _Choice(tuple(self._compile(option, join_path(where, i)) for i, option in enumerate(args)))
        first, second, vector = self._pair(args, kind, where)
        for i, (a, b) in enumerate(zip(first, second)):
            at = f" (component {i})" if vector else ""
            if kind == "normal":
                if b < 0:
                    raise self._error(f"normal needs std >= 0 (got {fmt_num(b)}){at}", where)
            elif not a <= b:
                raise self._error(f"{kind} needs lo <= hi (got [{fmt_num(a)}, {fmt_num(b)}]){at}", where)
            if kind == "loguniform" and not a > 0:
                raise self._error(f"loguniform needs lo > 0 (got {fmt_num(a)}){at}", where)
            if kind == "randint" and not (float(a).is_integer() and float(b).is_integer()):
                raise self._error(f"randint needs integer bounds (got [{show(a)}, {show(b)}]){at}", where)
        clip = None
        if "clip" in node:
            clip_where = join_path(path, "clip")
            raw = node["clip"]
            if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and all(_finite(x) for x in raw)):
                raise self._error(f"clip must be [lo, hi] with finite numbers (got {show(raw)})", clip_where)
            clip = (float(raw[0]), float(raw[1]))
            if not clip[0] <= clip[1]:
                raise self._error(f"clip needs lo <= hi (got [{fmt_num(clip[0])}, {fmt_num(clip[1])}])", clip_where)
        return _Bounded(kind, first, second, vector, clip)

    def _list_meshes(self, folder: Any, where: str) -> list[str]:
        """The mesh files of ``folder`` (relative to the distribution file), sorted, as the folder
        is written joined with each name."""
        import posixpath

        from ..assets import MESH_FORMATS

        suffixes = tuple(f".{kind}" for kind in MESH_FORMATS)
        if not isinstance(folder, str) or not folder.strip():
            raise self._error(f"choice_dir needs a folder path relative to the distribution file (got {show(folder)})",
                              where)
        base = Path.cwd() if self.label.startswith("<") else Path(self.label).parent
        directory = base / folder
        if not directory.is_dir():
            raise self._error(f"choice_dir folder {folder!r} does not exist (looked for {directory})", where)
        names = sorted(p.name for p in directory.iterdir() if p.suffix.lower() in suffixes and p.is_file())
        if not names:
            raise self._error(f"choice_dir folder {folder!r} holds no mesh files ({', '.join(suffixes)}) "
                              f"(looked in {directory})", where)
        files = [posixpath.join(folder.replace("\\", "/"), name) for name in names]
        self._listings[where] = files
        return files

    def _check_generate(self, table: Any) -> dict:
        if table is None:
            return {}
        if not isinstance(table, Mapping):
            raise self._error(f"must be a table of {', '.join(GENERATE_OPTIONS)} (got {show(table)})", "generate")
        options = {}
        for key, value in table.items():
            where = join_path("generate", str(key))
            if key not in GENERATE_OPTIONS:
                raise self._error(f"unknown field ([generate] takes {', '.join(GENERATE_OPTIONS)})", where)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self._error(f"must be a positive integer (got {show(value)})", where)
            options[key] = int(value)
        return options

    def _pair(self, args: Any, kind: str, where: str):
        names = "[mean, std]" if kind == "normal" else "[lo, hi]"
        if not isinstance(args, (list, tuple)) or len(args) != 2:
            raise self._error(f"{kind} must be {names} (got {show(args)})", where)
        parts = []
        for arg in args:
            if isinstance(arg, (list, tuple)):
                if not arg or not all(_finite(x) for x in arg):
                    raise self._error(f"{kind} bounds must be finite numbers or arrays of them (got {show(args)})", where)
                parts.append(tuple(arg))
            elif _finite(arg):
                parts.append(arg)
            else:
                raise self._error(f"{kind} must be {names} with finite numbers (got {show(args)})", where)
        vector = any(isinstance(p, tuple) for p in parts)
        if vector:
            sizes = {len(p) for p in parts if isinstance(p, tuple)}
            if len(sizes) > 1:
                raise self._error(f"{kind} bounds must have equal lengths (got {show(args)})", where)
            size = sizes.pop()
            parts = [p if isinstance(p, tuple) else (p,) * size for p in parts]
        else:
            parts = [(p,) for p in parts]
        return parts[0], parts[1], vector

    def _compile_spawns(self, raw: Any) -> list[_Spawn]:
        if raw is None:
            return []
        if not isinstance(raw, (list, tuple)):
            raise self._error(f"must be an array of tables ([[spawn]]) (got {show(raw)})", "spawn")
        spawns = []
        for j, table in enumerate(raw):
            path = f"spawn[{j}]"
            if not isinstance(table, Mapping):
                raise self._error(f"must be a table (got {show(table)})", path)
            for key in table:
                if key not in _SPAWN_KEYS:
                    raise self._error(f"unknown field (a spawn table takes {', '.join(_SPAWN_KEYS)})",
                                      join_path(path, str(key)))
            for key in ("count", "template"):
                if key not in table:
                    raise self._error("required field is missing", join_path(path, key))
            template = table["template"]
            if not isinstance(template, Mapping) or any(k in DISTRIBUTION_KINDS for k in template):
                raise self._error(f"must be an object table (got {show(template)})", join_path(path, "template"))
            name = table.get("name")
            if name is not None and (not isinstance(name, str) or not name.strip()):
                raise self._error(f"must be a non-empty string (got {show(name)})", join_path(path, "name"))
            if name is not None and "name" in template:
                raise self._error("give the name prefix in the spawn table or the template, not both",
                                  join_path(path, "template.name"))
            spawns.append(_Spawn(path, self._compile(table["count"], join_path(path, "count")),
                                 self._compile(template, join_path(path, "template")), name))
        return spawns

    def _check_orbit(self, camera: Any) -> None:
        if not isinstance(camera, Mapping) or "orbit" not in camera:
            return
        orbit = camera["orbit"]
        if not isinstance(orbit, Mapping) or any(k in DISTRIBUTION_KINDS for k in orbit):
            raise self._error(f"must be a table of azimuth_deg, elevation_deg, distance (got {show(orbit)})", "camera.orbit")
        for key in orbit:
            if key not in _ORBIT_KEYS + _ORBIT_OPTIONAL:
                raise self._error(f"unknown field (an orbit takes {', '.join(_ORBIT_KEYS + _ORBIT_OPTIONAL)})",
                                  f"camera.orbit.{key}")
        if "sweep_deg" in orbit and "keyframes" in camera:
            raise self._error("give camera.keyframes or camera.orbit.sweep_deg, not both", "camera.orbit.sweep_deg")
        for key in _ORBIT_KEYS:
            if key not in orbit:
                raise self._error("required field is missing", f"camera.orbit.{key}")
        if "position" in camera:
            raise self._error("give camera.position or camera.orbit, not both", "camera.orbit")
        if "look_at" not in camera:
            raise self._error("an orbit needs camera.look_at", "camera.look_at")

    # -- drawing ---------------------------------------------------------------------------

    def sample_data(self, base_seed: int, index: int, *, attempt: int = 0, frames: int | None = None) -> dict:
        """The drawn scene data (plain dicts and lists, before validation)."""
        return self._sample_data(base_seed, index, attempt, frames)[0]

    def _sample_data(self, base_seed: int, index: int, attempt: int, frames: int | None) -> tuple[dict, dict, dict]:
        """Drawn data, where each spawned object comes from (object index -> file path), and the
        drawn values by their path in the drawn scene (see :meth:`sample_with_draws`)."""
        import numpy as np

        for name, value in (("seed", base_seed), ("index", index), ("attempt", attempt)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise HybridsimError(f"{name} must be a non-negative integer (got {value!r})")
        rng = np.random.default_rng([base_seed, index] if attempt == 0 else [base_seed, index, attempt])
        scene_seed = int(rng.integers(0, MAX_SEED, endpoint=True))
        draws: dict[str, Any] = {}
        data = self._draw(self._tree, rng, draws, "")
        data.setdefault("seed", scene_seed)
        data.setdefault("deterministic", True)
        objects = data.get("objects")
        objects = list(objects) if isinstance(objects, list) else ([] if objects is None else objects)
        origins: dict[int, str] = {}
        for spawn in self._spawns:
            count = self._draw(spawn.count, rng, draws, join_path(spawn.path, "count"))
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_SPAWN:
                raise self._sample_error(f"count must be an integer in [0, {MAX_SPAWN}] (drew {show(count)})",
                                         join_path(spawn.path, "count"), index, attempt)
            if not isinstance(objects, list):
                break  # the scene validator reports the malformed [[objects]]
            for k in range(count):
                obj = self._draw(spawn.template, rng, draws, f"objects[{len(objects)}]")
                if spawn.name is not None:
                    obj["name"] = f"{spawn.name}_{k}"
                origins[len(objects)] = join_path(spawn.path, "template")
                objects.append(obj)
        if objects or "objects" in data:
            data["objects"] = objects
        if frames is not None:
            time = data.setdefault("time", {})
            if isinstance(time, dict):
                time.pop("duration", None)
                time["frames"] = int(frames)
        camera = data.get("camera")
        if isinstance(camera, dict) and "orbit" in camera:
            orbit = camera.pop("orbit")
            camera["position"] = self._orbit_position(orbit, camera.get("look_at"), index, attempt)
            if "sweep_deg" in orbit:
                self._orbit_path(camera, orbit, data.get("time"), index, attempt)
        return data, origins, draws

    def _orbit_path(self, camera: dict, orbit: dict, time: Any, index: int, attempt: int) -> None:
        """``sweep_deg``: the camera circles look_at by that many degrees of azimuth over the clip,
        as linear keyframes at most ORBIT_STEP_DEG apart (the chords stay within 0.4% of the circle)."""
        from .schema import TimeSpec

        sweep = orbit["sweep_deg"]
        if not _finite(sweep):
            raise self._sample_error(f"must be a finite number (drew {show(sweep)})", "camera.orbit.sweep_deg",
                                     index, attempt)
        time = time if isinstance(time, dict) else {}
        fps = time.get("fps", TimeSpec.model_fields["fps"].default)
        if "duration" in time:
            duration = time["duration"]
        else:
            frames_ = time.get("frames", 60)  # TimeSpec's default clip length
            duration = frames_ / fps if _finite(fps) and _finite(frames_) and fps else 0
        if not (_finite(duration) and duration > 0) or float(sweep) == 0.0:
            return  # the scene validator reports bad timing; no sweep, no path
        count = max(2, math.ceil(abs(float(sweep)) / ORBIT_STEP_DEG) + 1)
        keys = []
        for k in range(count):
            s = k / (count - 1)
            at = dict(orbit, azimuth_deg=float(orbit["azimuth_deg"]) + s * float(sweep))
            keys.append({"time": s * float(duration),
                         "position": self._orbit_position(at, camera.get("look_at"), index, attempt)})
        camera["keyframes"] = keys
        camera["interpolation"] = "linear"

    def sample(self, base_seed: int, index: int, *, attempt: int = 0, frames: int | None = None) -> SceneSpec:
        """Draw sample ``index`` (redraw ``attempt``) and validate it into a SceneSpec."""
        return self.sample_with_draws(base_seed, index, attempt=attempt, frames=frames)[0]

    def sample_with_draws(self, base_seed: int, index: int, *, attempt: int = 0,
                          frames: int | None = None) -> tuple[SceneSpec, dict]:
        """As :meth:`sample`, plus every drawn value by its field path in the drawn scene
        (``fluid.buoyancy``, ``objects[2].radius``, ``spawn[0].count``, ``camera.orbit.azimuth_deg``):
        numbers, vectors, strings; a ``choice`` among tables or arrays records the option index
        under ``PATH#choice`` and the draws inside it under their own paths."""
        data, origins, draws = self._sample_data(base_seed, index, attempt, frames)
        try:
            return scene_from_dict(data, source=self.label), draws
        except SceneError as error:
            path = self._file_path(error.field or "", origins)
            raise self._sample_error(error.message, path, index, attempt) from None

    def _draw(self, node: Any, rng, draws: dict | None = None, path: str = "") -> Any:
        if isinstance(node, _Bounded):
            value = node.draw(rng)
            if draws is not None:
                draws[path] = value
            return value
        if isinstance(node, _Choice):
            which = node.draw(rng)
            option = node.options[which]
            if draws is not None and isinstance(option, (dict, list, _Bounded, _Choice)):
                draws[f"{path}#choice"] = which
            value = self._draw(option, rng, draws, path)
            if draws is not None and not isinstance(option, (dict, list, _Bounded, _Choice)):
                draws[path] = value
            return value
        if isinstance(node, dict):
            return {key: self._draw(value, rng, draws, join_path(path, str(key))) for key, value in node.items()}
        if isinstance(node, list):
            return [self._draw(value, rng, draws, join_path(path, i)) for i, value in enumerate(node)]
        return node

    def _orbit_position(self, orbit: dict, look_at: Any, index: int, attempt: int) -> list[float]:
        values = {}
        for key in _ORBIT_KEYS:
            value = orbit[key]
            if not _finite(value):
                raise self._sample_error(f"must be a finite number (drew {show(value)})", f"camera.orbit.{key}", index, attempt)
            values[key] = float(value)
        if not values["distance"] > 0:
            raise self._sample_error(f"must be > 0 (drew {fmt_num(values['distance'])})", "camera.orbit.distance", index, attempt)
        if not (isinstance(look_at, list) and len(look_at) == 3 and all(_finite(c) for c in look_at)):
            raise self._sample_error(f"must be a list of 3 numbers (got {show(look_at)})", "camera.look_at", index, attempt)
        az, el, d = math.radians(values["azimuth_deg"]), math.radians(values["elevation_deg"]), values["distance"]
        offset = (d * math.cos(el) * math.cos(az), d * math.cos(el) * math.sin(az), d * math.sin(el))
        return [float(c) + o for c, o in zip(look_at, offset)]

    def _file_path(self, field: str, origins: dict[int, str]) -> str:
        """Map a field path of the drawn scene back to where the file writes it."""
        if not field:
            return field
        try:
            tokens = parse_path(field)
        except ValueError:
            return field
        if len(tokens) >= 2 and tokens[0] == "objects" and isinstance(tokens[1], int) and tokens[1] in origins:
            return origins[tokens[1]] + field[len(f"objects[{tokens[1]}]"):]
        if field.startswith("camera.position") and isinstance(self.data.get("camera"), Mapping) \
                and "orbit" in self.data["camera"]:
            return "camera.orbit"
        return field

    def _sample_error(self, message: str, path: str, index: int, attempt: int) -> SceneError:
        which = f"sample {index}" + (f", attempt {attempt}" if attempt else "")
        return self._error(f"{message} (in {which}; narrow the distribution or add clip)", path)


def _finite(x: Any) -> bool:
    try:
        return is_number(x) and math.isfinite(float(x))
    except (OverflowError, TypeError, ValueError):
        return False


def _jsonable(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _jsonable(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_jsonable(v) for v in node]
    if hasattr(node, "isoformat"):
        return node.isoformat()
    return node


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def parse_distribution(text: str, source: str = "<string>") -> SceneDistribution:
    """Parse distribution TOML text; ``source`` names it in errors."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SceneError(f"not UTF-8 text (bad byte at offset {exc.start})", file=source) from None
    limit = max_scene_bytes()
    if len(text) > limit:
        raise SceneError(f"distribution file is larger than {limit} bytes; refusing to parse it "
                         "(set HYBRIDSIM_MAX_SCENE_BYTES to raise it)", file=source)
    data = toml_loads(text, str(source))  # guarded: every parser failure is a SceneError
    return SceneDistribution(data, label=str(source), text=text)


def load_distribution(path: str | os.PathLike) -> SceneDistribution:
    """Read a distribution file (a scene file with distribution tables)."""
    label = str(path)
    try:
        size = Path(path).stat().st_size
        if size > max_scene_bytes():
            raise SceneError(f"distribution file is {size} bytes, more than {max_scene_bytes()}; refusing to read "
                             "it (set HYBRIDSIM_MAX_SCENE_BYTES to raise it)", file=label)
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise SceneError("distribution file not found", file=label) from None
    except IsADirectoryError:
        raise SceneError("is a directory, not a scene file", file=label) from None
    except OSError as exc:
        raise SceneError(f"cannot read distribution file: {exc.strerror or exc}", file=label) from None
    return parse_distribution(raw, source=label)


def sample_scene(distribution, base_seed: int, index: int, *, attempt: int = 0,
                 frames: int | None = None) -> SceneSpec:
    """Draw sample ``index`` of a distribution: TOML text (str), a file path (``os.PathLike``),
    parsed data (a dict shaped like the file) or a :class:`SceneDistribution`.

    Deterministic in (file content, ``base_seed``, ``index``, ``attempt``); ``frames`` overrides
    the clip length.
    """
    if isinstance(distribution, SceneDistribution):
        dist = distribution
    elif isinstance(distribution, os.PathLike):
        dist = load_distribution(distribution)
    elif isinstance(distribution, (str, bytes, bytearray)):
        dist = parse_distribution(distribution)
    elif isinstance(distribution, Mapping):
        dist = SceneDistribution(distribution, label="<dict>")
    else:
        raise SceneError(f"a distribution must be TOML text, a path, a table or a SceneDistribution "
                         f"(got {type(distribution).__name__})")
    return dist.sample(base_seed, index, attempt=attempt, frames=frames)
