"""Scene description: pydantic models for everything a TOML scene file can say.

A scene is a frozen :class:`SceneSpec`. Vectors are tuples of three floats (SI units, z-up).
Numeric fields may be *learnable*: in TOML they are written ``{ value = ..., learn = true,
range = [lo, hi] }``; the loader strips those markers, puts the plain value in the field and
records a :class:`Learnable` under the field's path (``"objects[0].restitution"``) in
``SceneSpec.learnable``.

Every validator here reports problems as a ``PydanticCustomError`` of type ``"scene"`` whose
context holds the finished human message (``msg``) and, where the problem sits below the
validated value, the rest of the field path (``subpath``). The loader turns those into one-line
:class:`~hybridsim.errors.SceneError` messages naming the file, field path and line.

Nothing here imports torch, Warp or Taichi.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
import reprlib
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from ..errors import SceneError

__all__ = [
    "TimeSpec",
    "CameraSpec",
    "CameraKeyframeSpec",
    "JointSpec",
    "SpringSpec",
    "GroundSpec",
    "LightSpec",
    "SphereSpec",
    "BoxSpec",
    "CapsuleSpec",
    "MeshSpec",
    "StaticBoxSpec",
    "StaticMeshSpec",
    "FluidSpec",
    "FluidInflowSpec",
    "FluidShapeSpec",
    "MPMSpec",
    "MPMMaterialSpec",
    "MPMBodySpec",
    "ObjectSpec",
    "OBJECT_TYPES",
    "Learnable",
    "SceneSpec",
    "parse_path",
    "format_path",
    "dumps_toml",
    "LEARN_KEYS",
    "MAX_FRAMES",
    "MAX_SUBSTEPS",
    "MAX_SEED",
]

MAX_FRAMES = 1_000_000
MAX_SUBSTEPS = 10_000
MAX_SEED = 2**31 - 1  # fits every backend's seed type (Taichi's is a C int)
MAX_NAME = 200
LEARN_KEYS = frozenset({"value", "learn", "range"})


# --------------------------------------------------------------------------------------------
# Small helpers shared with the loader
# --------------------------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlist = 4
_repr.maxtuple = 4
_repr.maxdict = 3
_repr.maxlevel = 2


def show(value: Any) -> str:
    """Short one-line rendering of a user value for error messages, in TOML-ish terms."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a table"
    if value is None:
        return "nothing"
    try:
        return _repr.repr(value)
    except (ValueError, RecursionError):  # ints past Python's str-digits limit, absurd nesting
        return f"a {type(value).__name__}"


def fmt_num(x: float) -> str:
    """Render a bound or value compactly: ``0``, ``0.5``, ``1e-06``."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fail(msg: str, subpath: str = "") -> None:
    """Raise the error type the loader understands (message plus optional sub-path)."""
    raise PydanticCustomError("scene", "{msg}", {"msg": msg, "subpath": subpath})


def join_path(path: str, sub: str | int) -> str:
    if isinstance(sub, int):
        return f"{path}[{sub}]"
    if not sub:
        return path
    if sub.startswith("["):
        return path + sub
    return f"{path}.{sub}" if path else sub


_TOKEN = re.compile(r"(?:^|\.)([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def parse_path(path: str) -> tuple[str | int, ...]:
    """``"objects[1].velocity"`` -> ``("objects", 1, "velocity")``; ValueError if malformed."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"invalid field path {path!r}")
    tokens: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None or (pos == 0 and path.startswith(".")):
            raise ValueError(f"invalid field path {path!r}")
        tokens.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not isinstance(tokens[0], str):
        raise ValueError(f"invalid field path {path!r}")
    return tuple(tokens)


def format_path(tokens) -> str:
    out = ""
    for t in tokens:
        out = join_path(out, t if isinstance(t, int) else str(t))
    return out


def range_violation(value: Any, rng: tuple[float, float] | None) -> str | None:
    """Message if ``value`` (number or 3-vector) lies outside ``rng`` (per component), else None."""
    if rng is None:
        return None
    lo, hi = rng
    comps = value if isinstance(value, (list, tuple)) else (value,)
    for c in comps:
        if not (lo <= c <= hi):
            shown = "[" + ", ".join(fmt_num(float(x)) for x in comps) + "]" if isinstance(value, (list, tuple)) else fmt_num(float(value))
            return f"value {shown} is outside its learnable range [{fmt_num(lo)}, {fmt_num(hi)}]"
    return None


# --------------------------------------------------------------------------------------------
# Field types with human messages
# --------------------------------------------------------------------------------------------


def _maybe_list(v: Any) -> Any:
    """numpy arrays / torch tensors from Python callers become plain lists."""
    if not isinstance(v, (list, tuple, str, bytes, Mapping)) and hasattr(v, "tolist"):
        try:
            return v.tolist()
        except Exception:  # noqa: BLE001 - an odd object: leave it for the type check to reject
            return v
    return v


def _to_float(v: Any, subpath: str = "") -> float:
    v = _maybe_list(v)
    if not is_number(v):
        fail(f"must be a number (got {show(v)})", subpath)
    try:
        f = float(v)
    except (OverflowError, ValueError, TypeError):
        fail(f"must be a finite number (got {show(v)})", subpath)
    if not math.isfinite(f):
        fail(f"must be finite (got {show(v)})", subpath)
    return f


def _check_bounds(x: float, gt=None, ge=None, lt=None, le=None, subpath: str = "") -> None:
    lo = gt if gt is not None else ge
    hi = lt if lt is not None else le
    ok = (gt is None or x > gt) and (ge is None or x >= ge) and (lt is None or x < lt) and (le is None or x <= le)
    if ok:
        return
    got = fmt_num(x)
    if lo is not None and hi is not None:
        left = "(" if gt is not None else "["
        right = ")" if lt is not None else "]"
        fail(f"must be in {left}{fmt_num(lo)}, {fmt_num(hi)}{right} (got {got})", subpath)
    if gt is not None:
        fail(f"must be > {fmt_num(gt)} (got {got})", subpath)
    if ge is not None:
        fail(f"must be >= {fmt_num(ge)} (got {got})", subpath)
    if lt is not None:
        fail(f"must be < {fmt_num(lt)} (got {got})", subpath)
    fail(f"must be <= {fmt_num(le)} (got {got})", subpath)


def _num_type(*, gt=None, ge=None, lt=None, le=None, optional: bool = False):
    def check(v: Any):
        if v is None and optional:
            return None
        f = _to_float(v)
        _check_bounds(f, gt, ge, lt, le)
        return f

    return Annotated[float | None if optional else float, BeforeValidator(check)]


def _int_type(*, ge=None, le=None, optional: bool = False):
    def check(v: Any):
        if v is None and optional:
            return None
        v = _maybe_list(v)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            fail(f"must be an integer (got {show(v)})")
        i = int(v)
        if (ge is not None and i < ge) or (le is not None and i > le):
            if ge is not None and le is not None:
                fail(f"must be in [{ge}, {le}] (got {show(i)})")
            fail(f"must be >= {ge} (got {show(i)})" if ge is not None else f"must be <= {le} (got {show(i)})")
        return i

    return Annotated[int | None if optional else int, BeforeValidator(check)]


def _to_vec3(v: Any, subpath: str = "") -> tuple[float, float, float]:
    v = _maybe_list(v)
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        fail(f"must be a list of 3 numbers (got {show(v)})", subpath)
    return tuple(_to_float(c, f"{subpath}[{i}]") for i, c in enumerate(v))  # type: ignore[return-value]


def _to_vec2(v: Any, subpath: str = "") -> tuple[float, float]:
    v = _maybe_list(v)
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        fail(f"must be a list of 2 numbers (got {show(v)})", subpath)
    return tuple(_to_float(c, f"{subpath}[{i}]") for i, c in enumerate(v))  # type: ignore[return-value]


def _to_color(v: Any, subpath: str = "") -> tuple[float, float, float]:
    c = _to_vec3(v, subpath)
    for i, x in enumerate(c):
        if not 0.0 <= x <= 1.0:
            fail(f"colour components must be in [0, 1] (got {fmt_num(x)})", f"{subpath}[{i}]")
    return c


def _to_color_pair(v: Any):
    v = _maybe_list(v)
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        fail(f"must be a list of 2 RGB colours (got {show(v)})")
    return (_to_color(v[0], "[0]"), _to_color(v[1], "[1]"))


def _nonzero_vec3(v: Any):
    t = _to_vec3(v)
    if not any(t):
        fail("must be a non-zero vector (got [0, 0, 0])")
    return t


def _to_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        fail(f"must be true or false (got {show(v)})")
    return v


def _to_name(v: Any, optional: bool = False):
    if v is None and optional:
        return None
    if not isinstance(v, str):
        fail(f"must be a string (got {show(v)})")
    if not v.strip():
        fail("must not be empty")
    if len(v) > MAX_NAME:
        fail(f"must be at most {MAX_NAME} characters (got {len(v)})")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in v):
        fail("must not contain control characters")
    return v


def _choice_type(*options: str):
    def check(v: Any):
        if isinstance(v, str) and v in options:
            return v
        allowed = ", ".join(repr(o) for o in options)
        hint = ""
        if isinstance(v, str):
            close = difflib.get_close_matches(v.lower(), options, n=1, cutoff=0.5)
            if close:
                hint = f"; did you mean {close[0]!r}?"
        fail(f"must be one of {allowed} (got {show(v)}{hint})")

    return Annotated[Literal[options], BeforeValidator(check)]  # type: ignore[valid-type]


Float = _num_type()
PosFloat = _num_type(gt=0.0)
NonNegFloat = _num_type(ge=0.0)
Vec3 = Annotated[tuple[float, float, float], BeforeValidator(_to_vec3)]
Vec2 = Annotated[tuple[float, float], BeforeValidator(_to_vec2)]
NonZeroVec3 = Annotated[tuple[float, float, float], BeforeValidator(_nonzero_vec3)]
Color = Annotated[tuple[float, float, float], BeforeValidator(_to_color)]
Bool = Annotated[bool, BeforeValidator(_to_bool)]
Name = Annotated[str, BeforeValidator(_to_name)]
OptName = Annotated[str | None, BeforeValidator(lambda v: _to_name(v, optional=True))]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _one_of(data: Any, first: str, second: str, default: Any) -> Any:
    """A table may give ``first`` or ``second`` but not both; with neither, ``first = default``."""
    if isinstance(data, Mapping):
        has_first = data.get(first) is not None
        has_second = data.get(second) is not None
        if has_first and has_second:
            fail(f"give {first} or {second}, not both")
        if not has_first and not has_second:
            data = {**data, first: default}
    return data


class TimeSpec(_Spec):
    """``[time]``: frame rate, clip length (``frames`` or ``duration``) and substeps per frame."""

    fps: PosFloat = 30.0
    frames: _int_type(ge=1, le=MAX_FRAMES, optional=True) = None  # type: ignore[valid-type]
    duration: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    substeps: _int_type(ge=1, le=MAX_SUBSTEPS) = 8  # type: ignore[valid-type]

    @model_validator(mode="before")
    @classmethod
    def _frames_or_duration(cls, data: Any) -> Any:
        return _one_of(data, "frames", "duration", 60)

    @model_validator(mode="after")
    def _check(self) -> "TimeSpec":
        if self.duration is not None:
            exact = self.duration * self.fps
            n = round(exact) if math.isfinite(exact) else MAX_FRAMES + 1
            if not 1 <= n <= MAX_FRAMES:
                fail(
                    f"{fmt_num(self.duration)} s at {fmt_num(self.fps)} fps gives {n} frames; "
                    f"need 1 to {MAX_FRAMES}",
                    "duration",
                )
        rate = self.fps * self.substeps
        if not (math.isfinite(rate) and 1.0 / rate > 0.0):
            fail(f"fps * substeps is too large (got {fmt_num(rate)})", "fps")
        return self

    @property
    def frame_count(self) -> int:
        if self.frames is not None:
            return self.frames
        return int(round(self.duration * self.fps))  # type: ignore[operator]

    @property
    def dt(self) -> float:
        """Simulation step in seconds: ``1 / (fps * substeps)``."""
        return 1.0 / (self.fps * self.substeps)


def _unit(v) -> tuple[float, float, float] | None:
    """``v / |v|`` computed without overflow or underflow; None for the zero vector."""
    m = max(abs(c) for c in v)
    if m == 0.0 or not math.isfinite(m):
        return None
    w = [c / m for c in v]
    n = math.sqrt(sum(c * c for c in w))
    return (w[0] / n, w[1] / n, w[2] / n)


class CameraKeyframeSpec(_Spec):
    """``[[camera.keyframes]]``: the camera at ``time`` seconds; fields left out keep the ``[camera]``
    value. Between keyframes the camera is interpolated (``camera.interpolation``); before the
    first and after the last it holds still."""

    time: NonNegFloat
    position: Vec3 | None = None
    look_at: Vec3 | None = None
    up: Vec3 | None = None
    fovy_deg: _num_type(gt=0.0, lt=180.0, optional=True) = None  # type: ignore[valid-type]


def _check_view(position, look_at, up, prefix: str) -> None:
    """look_at must differ from position, up must be non-zero and not along the view."""
    # Scale before subtracting so huge coordinates cannot overflow to inf.
    scale = max(abs(c) for c in (*position, *look_at))
    view = _unit([(b / scale - a / scale) if scale else 0.0 for a, b in zip(position, look_at)])
    if view is None:
        fail("must differ from the camera position", prefix + "look_at")
    unit_up = _unit(up)
    if unit_up is None:
        fail("must be a non-zero vector (got [0, 0, 0])", prefix + "up")
    d, u = view, unit_up
    cross = (d[1] * u[2] - d[2] * u[1], d[2] * u[0] - d[0] * u[2], d[0] * u[1] - d[1] * u[0])
    if math.sqrt(sum(c * c for c in cross)) < 1e-6:
        fail("must not be parallel to the viewing direction (look_at - position)", prefix + "up")


def _principal_point(v: Any):
    return None if v is None else _to_vec2(v)


class CameraSpec(_Spec):
    """``[camera]``: pinhole (perspective) or orthographic camera looking at ``look_at``; optionally
    moving along ``[[camera.keyframes]]``."""

    position: Vec3
    look_at: Vec3
    up: Vec3 = (0.0, 0.0, 1.0)
    fovy_deg: _num_type(gt=0.0, lt=180.0) = 40.0  # type: ignore[valid-type]
    width: _int_type(ge=1, le=8192) = 320  # type: ignore[valid-type]
    height: _int_type(ge=1, le=8192) = 240  # type: ignore[valid-type]
    projection: _choice_type("perspective", "orthographic") = "perspective"  # type: ignore[valid-type]
    ortho_height: PosFloat = 2.0
    principal_point: Annotated[tuple[float, float] | None, BeforeValidator(_principal_point)] = None
    keyframes: tuple[CameraKeyframeSpec, ...] = ()
    interpolation: _choice_type("linear", "smooth") = "smooth"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> "CameraSpec":
        times = [k.time for k in self.keyframes]
        for i in range(1, len(times)):
            if not times[i] > times[i - 1]:
                fail(f"keyframe times must increase (keyframes[{i - 1}].time = {fmt_num(times[i - 1])}, "
                     f"keyframes[{i}].time = {fmt_num(times[i])})", f"keyframes[{i}].time")
        _check_view(self.position, self.look_at, self.up, "")
        for i, key in enumerate(self.keyframes):
            _check_view(key.position or self.position, key.look_at or self.look_at, key.up or self.up,
                        f"keyframes[{i}].")
        return self

    @property
    def aspect(self) -> float:
        return self.width / self.height


class GroundSpec(_Spec):
    """``[ground]``: an infinite checkered plane ``z = height``."""

    height: Float = 0.0
    checker_size: PosFloat = 0.5
    colors: Annotated[
        tuple[tuple[float, float, float], tuple[float, float, float]], BeforeValidator(_to_color_pair)
    ] = ((0.85, 0.85, 0.85), (0.35, 0.35, 0.35))
    enabled: Bool = True
    friction: NonNegFloat = 0.5  # Coulomb friction of the plane for rigid bodies (contacts use the mean)
    restitution: _num_type(ge=0.0, le=1.0) = 0.5  # type: ignore[valid-type]  # rigid bodies only


class LightSpec(_Spec):
    """``[light]``: one directional or spot light plus ambient term and sky colour. A spot
    (``type = "spot"``, drawn by the mesh and sphere renderers: rigid-body and sphere scenes) sits at ``position`` and
    shines along ``direction`` within a cone of half angle ``cone_deg``, fading out over the
    outer ``falloff`` fraction of it. ``object_shadows``: objects shadow each other (mesh
    renderer), not only the ground."""

    type: _choice_type("directional", "spot") = "directional"  # type: ignore[valid-type]
    direction: NonZeroVec3 = (-0.4, 0.3, -1.0)
    intensity: NonNegFloat = 0.8
    ambient: NonNegFloat = 0.35
    sky_color: Color = (0.55, 0.7, 0.9)
    position: Annotated[tuple[float, float, float] | None,
                        BeforeValidator(lambda v: None if v is None else _to_vec3(v))] = None  # spot only
    cone_deg: _num_type(gt=0.0, lt=90.0) = 30.0  # type: ignore[valid-type]
    falloff: _num_type(gt=0.0, le=1.0) = 0.2  # type: ignore[valid-type]
    object_shadows: Bool = True

    @model_validator(mode="after")
    def _check(self) -> "LightSpec":
        if self.type == "spot" and self.position is None:
            fail("a spot light needs a position [x, y, z]", "position")
        if self.type == "directional" and self.position is not None:
            fail('a directional light has no position (set type = "spot" for a spot light)', "position")
        return self


class SphereSpec(_Spec):
    """``[[objects]]`` with ``type = "sphere"``: a rigid ball."""

    type: Literal["sphere"] = "sphere"
    name: OptName = None
    position: Vec3
    velocity: Vec3 = (0.0, 0.0, 0.0)
    radius: PosFloat
    mass: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    density: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    restitution: _num_type(ge=0.0, le=1.0) = 0.5  # type: ignore[valid-type]
    color: Color = (0.8, 0.3, 0.2)
    texture: TextureSpec | None = None
    """Drawn in the sphere's frame (point - centre; spheres do not rotate), tinted by ``color``."""

    @model_validator(mode="before")
    @classmethod
    def _mass_or_density(cls, data: Any) -> Any:
        return _white_if_textured(_one_of(data, "mass", "density", 1.0))

    @model_validator(mode="after")
    def _check(self) -> "SphereSpec":
        if not math.isfinite(self.mass_kg) or self.mass_kg <= 0.0:
            fail(f"density {fmt_num(self.density)} with radius {fmt_num(self.radius)} gives an unusable mass", "density")
        return self

    @property
    def volume(self) -> float:
        r = self.radius
        return 4.0 / 3.0 * math.pi * r * r * r  # products overflow to inf, ** would raise

    @property
    def mass_kg(self) -> float:
        """The mass in kg, from ``mass`` or from ``density * volume``."""
        if self.mass is not None:
            return self.mass
        return self.density * self.volume  # type: ignore[operator]


def _positive_vec3(v: Any):
    t = _to_vec3(v)
    for i, x in enumerate(t):
        if not x > 0.0:
            fail(f"must be > 0 (got {fmt_num(x)})", f"[{i}]")
    return t


PosVec3 = Annotated[tuple[float, float, float], BeforeValidator(_positive_vec3)]


def _relative_file(v: Any):
    """A path relative to the scene file's folder that cannot leave it (no absolute paths, no ``..``
    climbing out) unless the user allows it; checked again against the real folder (symbolic
    links resolved) when the mesh is loaded (``hybridsim.assets.resolve_asset_path``)."""
    import posixpath

    if not isinstance(v, str) or not v.strip():
        fail(f"must be a non-empty path relative to the scene file (got {show(v)})")
    if any(ord(c) < 32 for c in v):
        fail("must not contain control characters")
    from ..assets import outside_paths_allowed

    if outside_paths_allowed():  # the user opted in (HYBRIDSIM_ALLOW_OUTSIDE_PATHS=1, --allow-outside-paths)
        return v
    unix = v.replace("\\", "/")
    if unix.startswith("/") or re.match(r"^[A-Za-z]:", unix):
        fail(f"must be relative to the scene file's folder (got the absolute path {show(v)})")
    norm = posixpath.normpath(unix)
    if norm == ".." or norm.startswith("../"):
        fail(f"must stay inside the scene file's folder (got {show(v)})")
    return v


class TextureSpec(_Spec):
    """``texture = { ... }`` of a rigid object (``hybridsim.render.textures``): ``kind = "checker"``
    (3D checker of ``size`` [m] cells in the object's frame) or ``"stripes"`` (of width ``size``
    across ``direction``, object frame), in ``colors``; or ``image = "file.png"`` (png/jpg,
    relative to the scene file's folder) repeated every ``scale`` metres by triplanar projection.
    The object's ``color`` multiplies the texture (it defaults to white on a textured object)."""

    kind: _choice_type("checker", "stripes", "image")  # type: ignore[valid-type]
    size: PosFloat = 0.1
    colors: Annotated[
        tuple[tuple[float, float, float], tuple[float, float, float]], BeforeValidator(_to_color_pair)
    ] = ((0.9, 0.9, 0.9), (0.2, 0.2, 0.2))
    direction: NonZeroVec3 = (0.0, 0.0, 1.0)
    image: Annotated[str | None, BeforeValidator(lambda v: None if v is None else _relative_file(v))] = None
    scale: PosFloat = 1.0

    @model_validator(mode="before")
    @classmethod
    def _image_kind(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("kind") is None and data.get("image") is not None:
            data = {**data, "kind": "image"}
        return data

    @model_validator(mode="after")
    def _check(self) -> "TextureSpec":
        if self.kind == "image" and self.image is None:
            fail("an image texture needs image = \"file.png\" (relative to the scene file)", "image")
        if self.kind != "image" and self.image is not None:
            fail(f"a {self.kind} texture takes no image (leave kind out for an image texture)", "image")
        return self


def _white_if_textured(data: Any) -> Any:
    """A textured object's ``color`` tints its texture; left out, it is white (the texture's own colours)."""
    if isinstance(data, Mapping) and data.get("texture") is not None and data.get("color") is None:
        data = {**data, "color": (1.0, 1.0, 1.0)}
    return data


class _RigidObjectSpec(_Spec):
    """Fields shared by the rigid-body objects (simulated by ``hybridsim.solvers.rigid``)."""

    name: OptName = None
    position: Vec3
    orientation: Vec3 = (0.0, 0.0, 0.0)
    """Rotation vector (axis times angle) [rad]."""
    velocity: Vec3 = (0.0, 0.0, 0.0)
    """Velocity of the centre of mass [m/s]."""
    angular_velocity: Vec3 = (0.0, 0.0, 0.0)
    """World-frame angular velocity [rad/s]."""
    mass: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    density: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    friction: NonNegFloat = 0.5
    restitution: _num_type(ge=0.0, le=1.0) = 0.5  # type: ignore[valid-type]
    color: Color = (0.3, 0.5, 0.85)
    texture: TextureSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _mass_or_density(cls, data: Any) -> Any:
        return _white_if_textured(_one_of(data, "mass", "density", 1.0))


class BoxSpec(_RigidObjectSpec):
    """``[[objects]]`` with ``type = "box"``: a rigid box of ``half_extents`` [m]."""

    type: Literal["box"] = "box"
    half_extents: PosVec3


class CapsuleSpec(_RigidObjectSpec):
    """``[[objects]]`` with ``type = "capsule"``: segment of ``half_height`` [m] either side of the
    centre along the local z axis, swept by ``radius`` [m]."""

    type: Literal["capsule"] = "capsule"
    radius: PosFloat
    half_height: PosFloat


class MeshSpec(_RigidObjectSpec):
    """``[[objects]]`` with ``type = "mesh"``: a closed triangle mesh read from ``file`` (obj, stl,
    ply, glb; relative to the scene file's folder), scaled by ``scale``; contacts use its convex hull.
    ``position`` places the mesh file's origin; ``velocity`` is that of the centre of mass."""

    type: Literal["mesh"] = "mesh"
    file: Annotated[str, BeforeValidator(_relative_file)]
    scale: PosFloat = 1.0


class StaticBoxSpec(_Spec):
    """``[[objects]]`` with ``type = "static_box"``: an immovable box (a step, a wall, a ramp)."""

    type: Literal["static_box"] = "static_box"
    name: OptName = None
    half_extents: PosVec3
    position: Vec3
    orientation: Vec3 = (0.0, 0.0, 0.0)
    friction: NonNegFloat = 0.5
    restitution: _num_type(ge=0.0, le=1.0) = 0.5  # type: ignore[valid-type]
    color: Color = (0.6, 0.6, 0.6)
    texture: TextureSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _textured(cls, data: Any) -> Any:
        return _white_if_textured(data)


class StaticMeshSpec(_Spec):
    """``[[objects]]`` with ``type = "static_mesh"``: an immovable convex mesh (a wedge ramp, a wall,
    one side of a container) read from ``file`` (obj, stl, ply, glb; relative to the scene file's
    folder), scaled by ``scale``, its file origin placed at ``position`` and turned by
    ``orientation`` (rotation vector [rad]). Contacts use its convex hull (a mesh that is not
    closed is replaced by its hull); it is drawn as the file's triangles."""

    type: Literal["static_mesh"] = "static_mesh"
    name: OptName = None
    file: Annotated[str, BeforeValidator(_relative_file)]
    scale: PosFloat = 1.0
    position: Vec3
    orientation: Vec3 = (0.0, 0.0, 0.0)
    friction: NonNegFloat = 0.5
    restitution: _num_type(ge=0.0, le=1.0) = 0.5  # type: ignore[valid-type]
    color: Color = (0.6, 0.6, 0.6)
    texture: TextureSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _textured(cls, data: Any) -> Any:
        return _white_if_textured(data)


#: Object types by their ``type`` tag. Add new object models here and to ``ObjectSpec``.
OBJECT_TYPES: dict[str, type[BaseModel]] = {"sphere": SphereSpec, "box": BoxSpec, "capsule": CapsuleSpec,
                                            "mesh": MeshSpec, "static_box": StaticBoxSpec,
                                            "static_mesh": StaticMeshSpec}
#: Object types simulated by the rigid-body solver (a scene with any of them uses it for all objects).
RIGID_TYPES = frozenset({"box", "capsule", "mesh", "static_box", "static_mesh"})
#: Immovable rigid object types (static shapes, no bodies; drawn but never moving).
STATIC_TYPES = frozenset({"static_box", "static_mesh"})

ObjectSpec = Annotated[Union[tuple(OBJECT_TYPES.values())], Field(discriminator="type")]  # type: ignore[misc]


def _objects_list(v: Any) -> Any:
    if not isinstance(v, (list, tuple)):
        fail(f"must be an array of tables ([[objects]]) (got {show(v)})")
    for i, item in enumerate(v):
        if not isinstance(item, (Mapping, BaseModel)):
            fail(f"must be a table (got {show(item)})", f"[{i}]")
    return v


# --------------------------------------------------------------------------------------------
# Learnable values
# --------------------------------------------------------------------------------------------


def _scalar_or_vec3(v: Any):
    v = _maybe_list(v)
    if isinstance(v, (list, tuple)):
        return _to_vec2(v) if len(v) == 2 else _to_vec3(v)
    return _to_float(v)


def _opt_range(v: Any):
    if v is None:
        return None
    v = _maybe_list(v)
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        fail(f"range must be [lo, hi] (got {show(v)})")
    lo, hi = _to_float(v[0], "[0]"), _to_float(v[1], "[1]")
    if not lo < hi:
        fail(f"range needs lo < hi (got [{fmt_num(lo)}, {fmt_num(hi)}])")
    return (lo, hi)


class Learnable(_Spec):
    """A field marked learnable: its path in the scene, initial value and optional range."""

    path: str
    value: Annotated[float | tuple[float, float, float] | tuple[float, float], BeforeValidator(_scalar_or_vec3)]
    range: Annotated[tuple[float, float] | None, BeforeValidator(_opt_range)] = None

    @model_validator(mode="after")
    def _check(self) -> "Learnable":
        msg = range_violation(self.value, self.range)
        if msg:
            fail(msg, "value")
        return self

    @property
    def is_vector(self) -> bool:
        return isinstance(self.value, tuple)

    @property
    def size(self) -> int:
        return len(self.value) if self.is_vector else 1

    def to_marker(self) -> dict:
        """The TOML inline table ``{ value = ..., learn = true, range = [lo, hi] }`` as a dict."""
        marker: dict[str, Any] = {"value": list(self.value) if self.is_vector else self.value, "learn": True}
        if self.range is not None:
            marker["range"] = list(self.range)
        return marker


# --------------------------------------------------------------------------------------------
# 2D and 3D grid fluid (smoke)
# --------------------------------------------------------------------------------------------


def _boundary(v: Any):
    kinds = ("wall", "open", "periodic")
    v = _maybe_list(v)
    if isinstance(v, str):
        v = [v] * 4  # one kind everywhere; FluidSpec widens it to 6 sides for a 3D grid
    if not isinstance(v, (list, tuple)) or len(v) not in (4, 6) or not all(isinstance(k, str) for k in v):
        fail(f"must be one of {kinds} or a list of 4 of them [x_lo, x_hi, y_lo, y_hi] (6 in 3D: "
             f"[x_lo, x_hi, y_lo, y_hi, z_lo, z_hi]) (got {show(v)})")
    for i, kind in enumerate(v):
        if kind not in kinds:
            fail(f"must be one of {', '.join(map(repr, kinds))} (got {show(kind)})", f"[{i}]")
    if any((v[a] == "periodic") != (v[a + 1] == "periodic") for a in range(0, len(v), 2)):
        fail("periodic sides come in pairs (x_lo with x_hi, y_lo with y_hi, z_lo with z_hi)")
    return tuple(v)


def _cells(v: Any):
    v = _maybe_list(v)
    if not isinstance(v, (list, tuple)) or len(v) not in (2, 3) or not all(isinstance(c, int) and not isinstance(c, bool) for c in v):
        fail(f"must be a list of 2 integers [nx, ny] (a 2D fluid) or 3 [nx, ny, nz] (3D) (got {show(v)})")
    for i, c in enumerate(v):
        if not 3 <= c <= 4096:
            fail(f"must be in [3, 4096] (got {c})", f"[{i}]")
    return tuple(v)


class FluidShapeSpec(_Spec):
    """A disc (``radius``) or axis-aligned box (``half_size`` [hx, hy]) in the fluid plane [m]; in a
    3D fluid a sphere (``radius``) or box (``half_size`` [hx, hy, hz]) with a 3-vector ``center``."""

    shape: _choice_type("disc", "sphere", "box") = "disc"  # type: ignore[valid-type]
    center: Annotated[tuple[float, ...], BeforeValidator(lambda v: _to_vec23(v))]
    radius: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    half_size: Annotated[tuple[float, ...] | None, BeforeValidator(lambda v: None if v is None else _to_vec23(v))] = None

    @model_validator(mode="after")
    def _check_size(self):
        if self.shape in ("disc", "sphere") and self.radius is None:
            fail(f"a {self.shape} needs a radius", "radius")
        if self.shape == "box" and (self.half_size is None or min(self.half_size) <= 0):
            fail("a box needs a positive half_size [hx, hy] ([hx, hy, hz] in 3D)", "half_size")
        return self


class FluidInflowSpec(FluidShapeSpec):
    """A smoke source: density added per second inside the shape (soft edges); with ``temperature``
    (needs ``[fluid.temperature]``) it also holds that temperature inside the shape."""

    rate: Float = 1.0
    temperature: _num_type(optional=True) = None  # type: ignore[valid-type]


class FluidObstacleSpec(FluidShapeSpec):
    """A solid disc or box in the fluid; ``velocity`` [m/s] (world x, z) and ``angular_velocity``
    [rad/s, counter-clockwise seen from the camera at -y] make it move (prescribed); ``angle`` [rad]
    rotates a box. In a 3D fluid (sphere or axis-aligned box) ``velocity`` is a world 3-vector
    [vx, vy, vz] (translation only)."""

    velocity: Annotated[tuple[float, ...], BeforeValidator(lambda v: _to_vec23(v))] = (0.0, 0.0)
    angular_velocity: Float = 0.0
    angle: Float = 0.0


class FluidTemperatureSpec(_Spec):
    """``[fluid.temperature]``: a temperature field advected like density, lift
    ``buoyancy * (T - ambient) - density_weight * density`` [m/s^2] against gravity (Boussinesq),
    cooling towards ``ambient`` at ``cooling`` [1/s]."""

    ambient: Float = 0.0
    buoyancy: Float = 1.0
    cooling: NonNegFloat = 0.0
    density_weight: Float = 0.0


class FluidSpec(_Spec):
    """A 2D smoke domain in the world's x-z plane (grid x is world x, grid y is world z), or with
    ``cells = [nx, ny, nz]`` a 3D one (grid (i, j, k) is world (x, y, z); 3-vector ``origin`` and
    centres, sphere / box shapes, six boundary sides)."""

    cells: Annotated[tuple[int, ...], BeforeValidator(_cells)]
    cell_size: PosFloat = 1.0
    origin: Annotated[tuple[float, ...], BeforeValidator(lambda v: _to_vec23(v))] = (0.0, 0.0)
    boundary: Annotated[tuple[str, ...], BeforeValidator(_boundary)] = ("wall",) * 4
    wall_slip: _choice_type("free_slip", "no_slip") = "free_slip"  # type: ignore[valid-type]
    buoyancy: Float = 1.0
    vorticity: NonNegFloat = 0.0
    viscosity: NonNegFloat = 0.0
    advection: _choice_type("semi_lagrangian", "maccormack") = "maccormack"  # type: ignore[valid-type]
    density_advection: _choice_type("semi_lagrangian", "conservative") = "conservative"  # type: ignore[valid-type]
    smoke_color: Color = (0.95, 0.95, 0.95)
    background: Color = (0.08, 0.09, 0.12)
    opacity: PosFloat = 2.0
    inflows: tuple[FluidInflowSpec, ...] = ()
    obstacles: tuple[FluidObstacleSpec, ...] = ()
    obstacle_color: Color = (0.45, 0.42, 0.4)
    temperature: FluidTemperatureSpec | None = None
    density: PosFloat = 1.2
    """Mass density of the fluid [kg/m^3] (air: 1.2); with ``[[objects]]`` it scales the pressure
    loads on the bodies (the 2D grid is a slab 1 m thick; hybridsim.sim.fluid_rigid)."""

    @property
    def dimension(self) -> int:
        """2 for a smoke plane, 3 for a smoke volume."""
        return len(self.cells)

    @model_validator(mode="after")
    def _check_dimensions(self) -> "FluidSpec":
        dim = self.dimension
        if dim == 3 and "origin" not in self.model_fields_set:
            object.__setattr__(self, "origin", (0.0, 0.0, 0.0))  # frozen: the default is the 2D one
        if len(self.origin) != dim:
            fail(f"origin has {len(self.origin)} components but cells has {dim} (a {dim}D fluid)", "origin")
        if dim == 3 and len(self.boundary) == 4:
            if len(set(self.boundary)) != 1:
                fail("a 3D fluid needs 6 sides [x_lo, x_hi, y_lo, y_hi, z_lo, z_hi] (or one kind)", "boundary")
            object.__setattr__(self, "boundary", (self.boundary[0],) * 6)
        if len(self.boundary) != 2 * dim:
            fail(f"a {dim}D fluid needs {2 * dim} boundary sides (got {len(self.boundary)})", "boundary")
        round_shape = "sphere" if dim == 3 else "disc"
        for group, shapes in (("inflows", self.inflows), ("obstacles", self.obstacles)):
            for i, shape in enumerate(shapes):
                if len(shape.center) != dim:
                    fail(f"center has {len(shape.center)} components but cells has {dim} (a {dim}D fluid)",
                         f"{group}[{i}].center")
                if shape.shape not in (round_shape, "box"):
                    fail(f"a {dim}D fluid takes shape = {round_shape!r} or 'box' (got {shape.shape!r})",
                         f"{group}[{i}].shape")
                if shape.shape == "box" and len(shape.half_size) != dim:
                    fail(f"half_size has {len(shape.half_size)} components but cells has {dim} (a {dim}D fluid)",
                         f"{group}[{i}].half_size")
        for i, obstacle in enumerate(self.obstacles):
            if dim == 3 and "velocity" not in obstacle.model_fields_set:
                object.__setattr__(obstacle, "velocity", (0.0, 0.0, 0.0))  # frozen: the default is the 2D one
            if len(obstacle.velocity) != dim:
                fail(f"velocity has {len(obstacle.velocity)} components but cells has {dim} (a {dim}D fluid)",
                     f"obstacles[{i}].velocity")
            if dim == 3 and (obstacle.angular_velocity or obstacle.angle):
                fail("obstacles of a 3D fluid are axis-aligned and do not rotate (angular_velocity and angle are "
                     "2D only; velocity translates them)", f"obstacles[{i}]")
        return self

    @model_validator(mode="after")
    def _check_temperature(self) -> "FluidSpec":
        if self.temperature is None:
            for i, inflow in enumerate(self.inflows):
                if inflow.temperature is not None:
                    fail("an inflow temperature needs a [fluid.temperature] table", f"inflows[{i}].temperature")
        elif "buoyancy" in self.model_fields_set:
            fail("with [fluid.temperature] the density term is temperature.density_weight (lift = "
                 "temperature.buoyancy * (T - ambient) - density_weight * density): leave buoyancy out", "buoyancy")
        return self


# --------------------------------------------------------------------------------------------
# MPM: particles of liquids, elastic solids and snow (hybridsim.solvers.mpm)
# --------------------------------------------------------------------------------------------

MPM_MAX_NODES = 1 << 24
MPM_MAX_PARTICLES = 4_000_000
#: Colour of a material's particles when neither the body nor the material gives one.
MPM_DEFAULT_COLORS = {"liquid": (0.2, 0.45, 0.9), "elastic": (0.9, 0.35, 0.25), "snow": (0.92, 0.94, 0.97)}
#: Snow defaults (Stomakhin et al. 2013): hardening xi, critical compression / stretch.
MPM_SNOW_DEFAULTS = {"hardening": 10.0, "critical_compression": 2.5e-2, "critical_stretch": 7.5e-3}
MPM_DEFAULT_POISSON = 0.3


def _to_vec23(v: Any, subpath: str = "") -> tuple[float, ...]:
    v = _maybe_list(v)
    if not isinstance(v, (list, tuple)) or len(v) not in (2, 3):
        fail(f"must be a list of 2 (x, z) or 3 (x, y, z) numbers (got {show(v)})", subpath)
    return tuple(_to_float(c, f"{subpath}[{i}]") for i, c in enumerate(v))


OptVec23 = Annotated[tuple[float, ...] | None, BeforeValidator(lambda v: None if v is None else _to_vec23(v))]
OptColor = Annotated[tuple[float, float, float] | None, BeforeValidator(lambda v: None if v is None else _to_color(v))]


def _mpm_resolution(v: Any):
    v = _maybe_list(v)
    is_int = lambda c: isinstance(c, numbers.Integral) and not isinstance(c, bool)  # noqa: E731
    if is_int(v):
        if not 5 <= int(v) <= 4096:
            fail(f"must be in [5, 4096] nodes per axis (got {show(v)})")
        return int(v)
    if not isinstance(v, (list, tuple)) or len(v) not in (2, 3) or not all(is_int(c) for c in v):
        fail(f"must be an integer or a list of 2 or 3 integers (nodes per axis) (got {show(v)})")
    for i, c in enumerate(v):
        if not 5 <= int(c) <= 4096:
            fail(f"must be in [5, 4096] (got {c})", f"[{i}]")
    return tuple(int(c) for c in v)


class MPMMaterialSpec(_Spec):
    """``[[mpm.materials]]``: a named material. Liquids take ``bulk_modulus`` K [Pa] (or
    ``youngs_modulus`` and ``poisson_ratio``), elastic solids (neo-Hookean) and snow take
    ``youngs_modulus`` E [Pa] and ``poisson_ratio``; snow also ``hardening``,
    ``critical_compression`` and ``critical_stretch``. ``viscosity`` [Pa s] applies to every kind."""

    name: Name
    kind: _choice_type("liquid", "elastic", "snow")  # type: ignore[valid-type]
    youngs_modulus: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    poisson_ratio: _num_type(ge=0.0, lt=0.5, optional=True) = None  # type: ignore[valid-type]
    bulk_modulus: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    viscosity: NonNegFloat = 0.0
    density: PosFloat = 1000.0
    hardening: _num_type(ge=0.0, optional=True) = None  # type: ignore[valid-type]
    critical_compression: _num_type(gt=0.0, lt=1.0, optional=True) = None  # type: ignore[valid-type]
    critical_stretch: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    color: OptColor = None

    @model_validator(mode="after")
    def _check(self) -> "MPMMaterialSpec":
        if self.kind == "liquid":
            if self.bulk_modulus is not None and self.youngs_modulus is not None:
                fail("give bulk_modulus or youngs_modulus, not both", "bulk_modulus")
            if self.bulk_modulus is None and self.youngs_modulus is None:
                fail("a liquid needs bulk_modulus [Pa] (or youngs_modulus and poisson_ratio)", "bulk_modulus")
            if self.bulk_modulus is not None and self.poisson_ratio is not None:
                fail("is not used with bulk_modulus (a liquid resists only volume change)", "poisson_ratio")
        else:
            if self.bulk_modulus is not None:
                fail(f"is for liquids; a {self.kind} material takes youngs_modulus and poisson_ratio", "bulk_modulus")
            if self.youngs_modulus is None:
                fail(f"required field is missing (the Young's modulus [Pa] of a {self.kind} material)",
                     "youngs_modulus")
        if self.kind != "snow":
            for key in MPM_SNOW_DEFAULTS:
                if getattr(self, key) is not None:
                    fail(f"is a snow parameter (this material has kind = {self.kind!r})", key)
        return self

    @property
    def poisson(self) -> float:
        """The Poisson ratio the solver uses (0 for a liquid given by its bulk modulus)."""
        if self.bulk_modulus is not None:
            return 0.0
        return MPM_DEFAULT_POISSON if self.poisson_ratio is None else self.poisson_ratio

    def snow(self, key: str) -> float:
        """A snow parameter, or its default (also for other kinds, where the solver ignores it)."""
        value = getattr(self, key)
        return MPM_SNOW_DEFAULTS[key] if value is None else value

    @property
    def display_color(self) -> tuple[float, float, float]:
        return self.color if self.color is not None else MPM_DEFAULT_COLORS[self.kind]


class MPMBodySpec(_Spec):
    """``[[mpm.bodies]]``: particles filling a ``box`` (``center``, ``half_size``), a ``sphere`` (a
    disc in 2D; ``center``, ``radius``) or a watertight ``mesh`` (3D only; ``file`` relative to the
    scene file, ``scale``, ``position`` of the mesh origin), made of ``material`` (a material name)."""

    name: OptName = None
    shape: _choice_type("box", "sphere", "mesh") = "box"  # type: ignore[valid-type]
    material: Name
    center: OptVec23 = None
    half_size: OptVec23 = None
    radius: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    file: Annotated[str | None, BeforeValidator(lambda v: None if v is None else _relative_file(v))] = None
    scale: PosFloat = 1.0
    position: OptVec23 = None
    velocity: OptVec23 = None
    color: OptColor = None
    spacing: _num_type(gt=0.0, optional=True) = None  # type: ignore[valid-type]
    particles_per_cell: _num_type(ge=1.0, le=512.0, optional=True) = None  # type: ignore[valid-type]
    jitter: _num_type(ge=0.0, le=1.0) = 0.5  # type: ignore[valid-type]
    seed: _int_type(ge=0, le=MAX_SEED, optional=True) = None  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _check(self) -> "MPMBodySpec":
        needs = {"box": ("center", "half_size"), "sphere": ("center", "radius"), "mesh": ("file",)}[self.shape]
        for key in needs:
            if getattr(self, key) is None:
                fail(f"required field is missing (a {self.shape} body needs {' and '.join(needs)})", key)
        for key in ("center", "half_size", "radius", "file", "position"):
            used = key in needs or (self.shape == "mesh" and key == "position")
            if not used and getattr(self, key) is not None:
                fail(f"is not used by a {self.shape} body (it takes {', '.join(needs)})", key)
        if self.half_size is not None:
            for i, h in enumerate(self.half_size):
                if not h > 0.0:
                    fail(f"must be > 0 (got {fmt_num(h)})", f"half_size[{i}]")
        if self.spacing is not None and self.particles_per_cell is not None:
            fail("give spacing or particles_per_cell, not both", "spacing")
        return self


class MPMSpec(_Spec):
    """``[mpm]``: an MLS-MPM domain. ``dim = 2`` lives in the world's x-z plane (vectors are
    (x, z), gravity is the scene's (x, z) part), ``dim = 3`` in world coordinates. The grid has
    ``resolution`` nodes per axis from ``origin``; ``size`` is its length along x [m], so
    dx = size / (resolution_x - 1). Walls (``boundary_cells`` nodes thick) close every face."""

    dim: _int_type(ge=2, le=3) = 2  # type: ignore[valid-type]
    resolution: Annotated[int | tuple[int, ...], BeforeValidator(_mpm_resolution)] = 64
    size: PosFloat = 1.0
    origin: OptVec23 = None
    boundary_cells: _int_type(ge=1, le=32) = 3  # type: ignore[valid-type]
    wall_mode: _choice_type("separate", "slip", "no_slip") = "separate"  # type: ignore[valid-type]
    substeps: _int_type(ge=1, le=MAX_SUBSTEPS, optional=True) = None  # type: ignore[valid-type]
    cfl: _num_type(gt=0.0, le=1.0) = 0.4  # type: ignore[valid-type]
    splat_scale: _num_type(gt=0.0, le=10.0) = 0.6  # type: ignore[valid-type]
    liquid_render: _choice_type("surface", "splats") = "surface"  # type: ignore[valid-type]
    background: Color = (0.08, 0.09, 0.12)
    materials: tuple[MPMMaterialSpec, ...]
    bodies: tuple[MPMBodySpec, ...]

    @model_validator(mode="after")
    def _check(self) -> "MPMSpec":
        dim = self.dim
        axes = "(x, z)" if dim == 2 else "(x, y, z)"

        def check_len(value, where):
            if value is not None and len(value) != dim:
                fail(f"needs {dim} components {axes} in a {dim}D [mpm] (got {len(value)})", where)

        check_len(self.origin, "origin")
        if isinstance(self.resolution, tuple) and len(self.resolution) != dim:
            fail(f"needs {dim} entries {axes} in a {dim}D [mpm] (got {len(self.resolution)})", "resolution")
        res = self.resolution_tuple
        smallest = 2 * self.boundary_cells + 3
        if min(res) < smallest:
            fail(f"needs at least {smallest} nodes per axis for {self.boundary_cells} wall cells (got {min(res)})",
                 "resolution")
        if math.prod(res) > MPM_MAX_NODES:
            fail(f"{math.prod(res)} grid nodes is more than {MPM_MAX_NODES}", "resolution")
        if not self.materials:
            fail("needs at least one [[mpm.materials]] table", "materials")
        if not self.bodies:
            fail("needs at least one [[mpm.bodies]] table", "bodies")
        names: dict[str, int] = {}
        for i, material in enumerate(self.materials):
            if material.name in names:
                fail(f"duplicate material name {material.name!r} (also materials[{names[material.name]}])",
                     f"materials[{i}].name")
            names[material.name] = i
        lower = [o + self.dx for o in self.origin_tuple]
        upper = [u - self.dx for u in self.upper]
        total = 0.0
        for i, body in enumerate(self.bodies):
            where = f"bodies[{i}]"
            if body.material not in names:
                close = difflib.get_close_matches(body.material, list(names), n=1, cutoff=0.5)
                hint = f"; did you mean {close[0]!r}?" if close else f" (materials: {', '.join(map(repr, names))})"
                fail(f"unknown material {body.material!r}{hint}", f"{where}.material")
            for key in ("center", "half_size", "position", "velocity"):
                check_len(getattr(body, key), f"{where}.{key}")
            if body.shape == "mesh" and dim != 3:
                fail("mesh bodies need a 3D [mpm] (dim = 3)", f"{where}.shape")
            spacing = self.body_spacing(body)
            if body.shape == "box":
                extent = [h for h in body.half_size]
                volume = math.prod(2.0 * h for h in body.half_size)
            elif body.shape == "sphere":
                extent = [body.radius] * dim
                volume = math.pi * body.radius ** 2 if dim == 2 else 4.0 / 3.0 * math.pi * body.radius ** 3
            else:
                continue
            lo = [c - e for c, e in zip(body.center, extent)]
            hi = [c + e for c, e in zip(body.center, extent)]
            if any(a < b - 1e-9 for a, b in zip(lo, lower)) or any(a > b + 1e-9 for a, b in zip(hi, upper)):
                box = "[" + ", ".join(fmt_num(round(x, 6)) for x in lower) + "] to [" + \
                      ", ".join(fmt_num(round(x, 6)) for x in upper) + "]"
                fail(f"the {body.shape} reaches outside the MPM grid interior {box} m", f"{where}.center")
            total += volume / spacing ** dim
            if total > MPM_MAX_PARTICLES:
                fail(f"the bodies would hold about {int(total)} particles, more than {MPM_MAX_PARTICLES}; "
                     "use a larger spacing or fewer particles_per_cell", f"{where}.spacing")
        return self

    @property
    def resolution_tuple(self) -> tuple[int, ...]:
        return self.resolution if isinstance(self.resolution, tuple) else (self.resolution,) * self.dim

    @property
    def dx(self) -> float:
        """Grid node spacing [m]."""
        return self.size / (self.resolution_tuple[0] - 1)

    @property
    def origin_tuple(self) -> tuple[float, ...]:
        return self.origin if self.origin is not None else (0.0,) * self.dim

    @property
    def upper(self) -> tuple[float, ...]:
        """Position of the last grid node [m] per axis."""
        return tuple(o + (n - 1) * self.dx for o, n in zip(self.origin_tuple, self.resolution_tuple))

    def body_spacing(self, body: MPMBodySpec) -> float:
        """Particle lattice spacing [m]: ``spacing``, else dx / particles_per_cell^(1/dim), else dx / 2."""
        if body.spacing is not None:
            return body.spacing
        if body.particles_per_cell is not None:
            return self.dx / body.particles_per_cell ** (1.0 / self.dim)
        return 0.5 * self.dx

    def material(self, name: str) -> int:
        """Index of the material called ``name``."""
        return [m.name for m in self.materials].index(name)


class JointSpec(_Spec):
    """``[[joints]]``: a ball or hinge joint between object ``a`` and object ``b`` (left out, or a
    static box: the world), pinned at the world point ``anchor`` where the objects stand in the
    scene; a hinge turns only about the world direction ``axis`` (at the start)."""

    type: _choice_type("ball", "hinge")  # type: ignore[valid-type]
    a: Name
    b: OptName = None
    anchor: Vec3
    axis: NonZeroVec3 = (0.0, 0.0, 1.0)


class SpringSpec(_Spec):
    """``[[springs]]``: a spring-damper between a point of object ``a`` and one of object ``b``
    (left out: the world point ``anchor_b``); anchors are world points where the objects stand
    in the scene; ``rest_length`` defaults to their initial distance."""

    a: Name
    b: OptName = None
    anchor_a: Vec3
    anchor_b: Vec3
    stiffness: NonNegFloat
    damping: NonNegFloat = 0.0
    rest_length: _num_type(ge=0.0, optional=True) = None  # type: ignore[valid-type]


# --------------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------------

_NOT_COMPARED = ("source",)


class SceneSpec(_Spec):
    """A validated scene. Build it with ``load_scene``, ``parse_scene``, ``scene_from_dict`` or
    ``SceneBuilder``; compare with ``==`` (``source`` is ignored)."""

    name: Name = "scene"
    backend: _choice_type("warp", "taichi") = "warp"  # type: ignore[valid-type]
    device: _choice_type("cpu", "cuda", "auto") = "auto"  # type: ignore[valid-type]
    precision: _choice_type("float32", "float64") = "float32"  # type: ignore[valid-type]
    deterministic: Bool = False
    seed: _int_type(ge=0, le=MAX_SEED) = 0  # type: ignore[valid-type]
    gravity: Vec3 = (0.0, 0.0, -9.81)
    time: TimeSpec = Field(default_factory=TimeSpec)
    camera: CameraSpec
    ground: GroundSpec = Field(default_factory=GroundSpec)
    light: LightSpec = Field(default_factory=LightSpec)
    objects: Annotated[tuple[ObjectSpec, ...], BeforeValidator(_objects_list)] = ()  # type: ignore[valid-type]
    fluid: FluidSpec | None = None
    mpm: MPMSpec | None = None
    joints: tuple[JointSpec, ...] = ()
    springs: tuple[SpringSpec, ...] = ()
    learnable: dict[str, Learnable] = Field(default_factory=dict)
    source: str | None = None

    # ---- validation ----------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _default_object_names(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        objects = data.get("objects")
        if not isinstance(objects, (list, tuple)):
            return data
        named = []
        for i, obj in enumerate(objects):
            kind = obj.get("type") if isinstance(obj, Mapping) else getattr(obj, "type", None)
            default = f"{kind}_{i}" if isinstance(kind, str) and kind in OBJECT_TYPES else f"object_{i}"
            if isinstance(obj, Mapping) and obj.get("name") is None:
                obj = {**obj, "name": default}
            elif isinstance(obj, BaseModel) and getattr(obj, "name", "") is None:
                obj = obj.model_copy(update={"name": default})
            named.append(obj)
        return {**data, "objects": named}

    @model_validator(mode="after")
    def _check(self) -> "SceneSpec":
        seen: dict[str, int] = {}
        for i, obj in enumerate(self.objects):
            if obj.name in seen:
                fail(f"duplicate object name {obj.name!r} (also objects[{seen[obj.name]}])", f"objects[{i}].name")
            seen[obj.name] = i
            if obj.type == "static_mesh" and getattr(self, "mpm", None) is not None:
                fail("the MPM material does not collide with static meshes yet (it would pass through): use "
                     "static_box obstacles in an [mpm] scene", f"objects[{i}].type")
        for table, items in (("joints", self.joints), ("springs", self.springs)):
            for i, item in enumerate(items):
                for side in ("a", "b"):
                    name = getattr(item, side)
                    if name is None:
                        continue
                    if name not in seen:
                        close = difflib.get_close_matches(name, list(seen), n=1, cutoff=0.5)
                        hint = f"; did you mean {close[0]!r}?" if close else ""
                        fail(f"no object named {name!r}{hint}", f"{table}[{i}].{side}")
                    if side == "a" and self.objects[seen[name]].type in STATIC_TYPES:
                        fail("must be a moving object (a static box or mesh can only be b)", f"{table}[{i}].a")
                if item.b is not None and item.b == item.a:
                    fail("a and b must be different objects", f"{table}[{i}].b")
        if self.light.type == "spot" and not any(obj.type in RIGID_TYPES or obj.type == "sphere"
                                                 for obj in self.objects):
            fail("a spot light is drawn by the mesh and sphere renderers, used by rigid-body and sphere scenes only "
                 "(add an object, or use a directional light)", "light.type")
        for key in self.learnable:
            if ".texture." in key:
                fail("cannot be learnable: textures are not differentiable", key)
        for key, item in self.learnable.items():
            self._check_learnable(key, item)
        return self

    def _check_learnable(self, key: str, item: Learnable) -> None:
        if key != item.path:
            fail(f"learnable entry {key!r} has path {item.path!r}", key)
        try:
            tokens = parse_path(key)
            value = self._resolve(tokens)
        except (ValueError, LookupError):
            fail("learnable path does not name a field of the scene", key)
        if isinstance(value, bool) or isinstance(value, int):
            fail("cannot be learnable: it is an integer field (only real numbers and 3-vectors can)", key)
        if not (isinstance(value, float) or _is_vec3(value) or _is_vec2(value)):
            fail("cannot be learnable: only real numbers and 2- or 3-vectors can", key)
        if isinstance(tokens[-1], int) and (_is_vec3(self._resolve(tokens[:-1])) or _is_vec2(self._resolve(tokens[:-1]))):
            fail("mark the whole vector learnable, not one component", key)
        if item.value != value:
            fail(f"learnable value {show(item.value)} differs from the field value {show(value)}", key)
        msg = range_violation(value, item.range)
        if msg:
            fail(msg, key)

    # ---- paths ---------------------------------------------------------------------------

    def _resolve(self, tokens) -> Any:
        cur: Any = self
        for t in tokens:
            if isinstance(t, str):
                if not isinstance(cur, BaseModel) or t not in type(cur).model_fields:
                    raise LookupError(t)
                if cur is self and t in ("learnable", "source"):
                    raise LookupError(t)
                cur = getattr(cur, t)
            else:
                if not isinstance(cur, tuple) or not 0 <= t < len(cur):
                    raise LookupError(t)
                cur = cur[t]
        return cur

    def get(self, path: str) -> Any:
        """Value at a field path such as ``"objects[0].restitution"`` or ``"light.intensity"``."""
        try:
            return self._resolve(parse_path(path))
        except (ValueError, LookupError):
            raise SceneError("no such field in the scene", file=self.source, field=str(path)) from None

    def with_values(self, values: Mapping[str, Any]) -> "SceneSpec":
        """A new validated spec with the fields at the given paths replaced (e.g. fitted values).

        Learnable entries at those paths take the new value (and keep their range, so a value
        outside it raises :class:`SceneError`). Values may be numbers, sequences, numpy arrays or
        tensors (anything with ``tolist``).
        """
        from .loader import _validate  # the loader owns error conversion; imported late (cycle)

        data = self.to_data(markers=False)
        for path, value in values.items():
            self.get(path)  # SceneError for unknown paths
            _set_in(data, parse_path(path), _plain(value))
        learn = {}
        for path, item in self.learnable.items():
            learn[path] = {"path": path, "value": _get_in(data, parse_path(path)), "range": item.range}
        label = self.source or "<with_values>"
        return _validate(data, learn, label=label, source=self.source)

    # ---- conveniences --------------------------------------------------------------------

    @property
    def frame_count(self) -> int:
        """Frames to produce: ``time.frames``, or ``round(time.duration * time.fps)``."""
        return self.time.frame_count

    @property
    def dt(self) -> float:
        """Simulation step in seconds: ``1 / (fps * substeps)``."""
        return self.time.dt

    @property
    def fps(self) -> float:
        return self.time.fps

    @property
    def substeps(self) -> int:
        return self.time.substeps

    @property
    def total_steps(self) -> int:
        return self.frame_count * self.time.substeps

    @property
    def duration_s(self) -> float:
        return self.frame_count / self.time.fps

    @property
    def object_names(self) -> tuple[str, ...]:
        return tuple(obj.name for obj in self.objects)

    def object(self, name: str):
        """The object spec called ``name`` (KeyError if none)."""
        for obj in self.objects:
            if obj.name == name:
                return obj
        close = difflib.get_close_matches(name, self.object_names, n=1)
        raise KeyError(f"no object named {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))

    # ---- serialisation -------------------------------------------------------------------

    def to_data(self, markers: bool = True) -> dict:
        """Plain nested dict/list data in TOML shape; learnable fields as marker tables if
        ``markers``. ``scene_from_dict(spec.to_data()) == spec``."""
        data = _plain(self.model_dump(exclude={"learnable", "source"}, exclude_none=True))
        if markers:
            for path, item in self.learnable.items():
                _set_in(data, parse_path(path), item.to_marker())
        return data

    def to_toml(self) -> str:
        """TOML text that loads back to an equal spec (learnable markers included)."""
        head = f"# hybridsim scene {self.name!r}" if _printable(self.name) else "# hybridsim scene"
        return head + "\n\n" + dumps_toml(self.to_data(markers=True))

    def write_toml(self, path) -> None:
        """Write :meth:`to_toml` to ``path`` atomically."""
        from ..fileio import atomic_write_text

        atomic_write_text(path, self.to_toml())

    # ---- comparison ----------------------------------------------------------------------

    def _key(self) -> tuple:
        return tuple(getattr(self, f) for f in type(self).model_fields if f not in _NOT_COMPARED and f != "learnable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SceneSpec):
            return NotImplemented
        return self._key() == other._key() and self.learnable == other.learnable

    def __hash__(self) -> int:
        return hash((self._key(), tuple(sorted(self.learnable.items()))))


def _printable(s: str) -> bool:
    return s.isprintable() and "\n" not in s


def _is_vec2(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and all(isinstance(c, float) for c in v)


def _is_vec3(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 3 and all(type(c) is float for c in v)


def _plain(v: Any) -> Any:
    """Tuples to lists, arrays/tensors to lists, recursively; mappings to dicts."""
    v = _maybe_list(v)
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _get_in(data: Any, tokens) -> Any:
    for t in tokens:
        data = data[t]
    return data


def _set_in(data: Any, tokens, value: Any) -> None:
    for t in tokens[:-1]:
        data = data[t]
    data[tokens[-1]] = value


# --------------------------------------------------------------------------------------------
# A small TOML writer (tomllib only reads)
# --------------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f"}


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            raise ValueError("TOML strings cannot hold lone surrogate characters")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(k: Any) -> str:
    if not isinstance(k, str):
        raise TypeError(f"TOML keys must be strings (got {k!r})")
    return k if _BARE_KEY.fullmatch(k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return repr(f)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, Mapping):
        if not v:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _is_marker(v: Any) -> bool:
    return isinstance(v, Mapping) and "value" in v and set(v) <= LEARN_KEYS


def _is_table(v: Any) -> bool:
    return isinstance(v, Mapping) and not _is_marker(v)


def _is_table_array(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_table(x) for x in v)


def dumps_toml(data: Mapping) -> str:
    """Write nested dicts/lists/scalars as TOML: plain keys first, then ``[tables]`` and
    ``[[arrays of tables]]``; learnable markers and other small tables inside arrays inline."""
    lines: list[str] = []
    _emit_table(lines, (), data)
    return "\n".join(lines).strip("\n") + "\n"


def _emit_table(lines: list[str], prefix: tuple[str, ...], table: Mapping) -> None:
    for k, v in table.items():
        if not _is_table(v) and not _is_table_array(v):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in table.items():
        path = prefix + (k,)
        header = ".".join(_toml_key(p) for p in path)
        if _is_table(v):
            lines.extend(["", f"[{header}]"])
            _emit_table(lines, path, v)
        elif _is_table_array(v):
            for item in v:
                lines.extend(["", f"[[{header}]]"])
                _emit_table(lines, path, item)
