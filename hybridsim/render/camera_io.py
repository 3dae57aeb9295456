"""Camera paths and camera files.

* :func:`scene_cameras` turns a scene's ``[camera]`` (with optional ``[[camera.keyframes]]``) into
  one :class:`~hybridsim.render.camera.Camera` per frame.
* :func:`read_camera_file` reads a ``camera.json`` (position, look_at, up, fovy_deg, width,
  height, fps), an OpenCV calibration in JSON (``camera_matrix`` / ``K``, ``R`` + ``t``,
  ``rvec`` + ``tvec`` or a 4x4 ``extrinsics``) or an OpenCV ``FileStorage`` YAML file (what
  ``cv::FileStorage`` writes, with ``!!opencv-matrix`` entries).
* :func:`write_camera_json` and :func:`write_opencv_yaml` export per-frame cameras: the first
  frame's camera in ``camera.json`` form at the top level (so ``hybridsim fit --camera`` reads
  it back), and every frame's K and [R | t] under ``frames``.

Everything here is data: nothing is executed or unpickled.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import AssetError
from ..fileio import atomic_write_text
from .camera import Camera, rvec_to_rotation

__all__ = ["scene_cameras", "camera_moves", "read_camera_file", "write_camera_json", "write_opencv_yaml",
           "camera_toml", "CAMERA_JSON_KEYS", "MAX_CAMERA_FILE_BYTES"]

CAMERA_JSON_KEYS = ("position", "look_at", "up", "fovy_deg", "width", "height", "fps", "principal_point",
                    "projection", "ortho_height", "frames")
MAX_CAMERA_FILE_BYTES = 64 * 1024 * 1024

# --------------------------------------------------------------------------------------------
# Camera paths
# --------------------------------------------------------------------------------------------

def camera_moves(camera_spec) -> bool:
    """True when ``[[camera.keyframes]]`` change anything over time."""
    keys = getattr(camera_spec, "keyframes", ()) or ()
    if not keys:
        return False
    first = _key_values(camera_spec, keys[0])
    return any(_key_values(camera_spec, k) != first for k in keys[1:]) or first != _key_values(camera_spec, None)

def _key_values(spec, key) -> tuple:
    pick = lambda name: getattr(key, name, None) if key is not None and getattr(key, name, None) is not None \
        else getattr(spec, name)  # noqa: E731
    return tuple(pick(name) for name in ("position", "look_at", "up", "fovy_deg"))

def scene_cameras(camera_spec, count: int, fps: float) -> list[Camera]:
    """One camera per frame k = 0 .. count-1 at time k / fps [s].

    Without keyframes every frame has the ``[camera]`` camera. With keyframes, position, look_at,
    up and fovy_deg are interpolated in time between them ("linear", or "smooth": a cubic Hermite
    spline with Catmull-Rom tangents and zero velocity at the ends); before the first keyframe
    and after the last the camera holds the nearest keyframe.
    """
    base = Camera.from_spec(camera_spec)
    keys = tuple(getattr(camera_spec, "keyframes", ()) or ())
    if not keys:
        return [base] * count
    times = np.array([k.time for k in keys], dtype=np.float64)
    values = np.array([[*v[0], *v[1], *v[2], v[3]] for v in (_key_values(camera_spec, k) for k in keys)],
                      dtype=np.float64)  # (K, 10)
    smooth = getattr(camera_spec, "interpolation", "smooth") == "smooth"
    cameras = []
    for frame in range(count):
        v = _interpolate(times, values, frame / float(fps), smooth)
        fovy = float(min(max(v[9], 1e-3), 180.0 - 1e-3))
        cameras.append(base.replace(position=tuple(v[0:3]), look_at=tuple(v[3:6]), up=tuple(v[6:9]), fovy_deg=fovy))
    return cameras

def _interpolate(times: np.ndarray, values: np.ndarray, t: float, smooth: bool) -> np.ndarray:
    if len(times) == 1 or t <= times[0]:
        return values[0]
    if t >= times[-1]:
        return values[-1]
    i = int(np.searchsorted(times, t, side="right")) - 1
    t0, t1 = times[i], times[i + 1]
    h = t1 - t0
    s = (t - t0) / h
    p0, p1 = values[i], values[i + 1]
    if not smooth:
        return p0 + s * (p1 - p0)

    def tangent(j):  # Catmull-Rom in time; zero at the ends (ease in and out)
        if j == 0 or j == len(times) - 1:
            return np.zeros_like(values[j])
        return (values[j + 1] - values[j - 1]) / (times[j + 1] - times[j - 1])

    m0, m1 = tangent(i) * h, tangent(i + 1) * h
    s2, s3 = s * s, s * s * s
    return (2 * s3 - 3 * s2 + 1) * p0 + (s3 - 2 * s2 + s) * m0 + (-2 * s3 + 3 * s2) * p1 + (s3 - s2) * m1

# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def read_camera_file(path, *, width: int | None = None, height: int | None = None) -> tuple[Camera | None, dict]:
    """Read a camera file -> (camera or None, fields).

    ``fields`` holds what the file gave in ``camera.json`` terms (position, look_at, up,
    fovy_deg, width, height, fps, principal_point); ``camera`` is built when the file has
    enough for one (a partial ``camera.json`` may leave it to the scene). OpenCV files need the
    image size in the file (``image_width``/``image_height`` or ``width``/``height``) or as
    arguments. Errors are :class:`~hybridsim.errors.AssetError` naming the file and key.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AssetError("camera file not found", file=path) from None
    if size > MAX_CAMERA_FILE_BYTES:
        raise AssetError(f"camera file is {size} bytes; more than {MAX_CAMERA_FILE_BYTES} is not a camera", file=path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AssetError(f"not a readable camera file: {exc}", file=path) from None
    if path.suffix.lower() in (".yml", ".yaml") or text.lstrip().startswith("%YAML"):
        data = _parse_opencv_yaml(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AssetError(f"not a readable camera JSON file: {exc}", file=path) from None
        if not isinstance(data, dict):
            raise AssetError("camera JSON must be an object", file=path)
    if any(key in data for key in ("camera_matrix", "K", "intrinsics")):
        return _from_opencv_dict(data, path, width, height)
    return _from_camera_json(data, path)

def _from_camera_json(data: dict, path: Path) -> tuple[Camera | None, dict]:
    unknown = sorted(set(data) - set(CAMERA_JSON_KEYS))
    if unknown:
        raise AssetError(f"unknown camera key(s) {unknown}; expected some of {list(CAMERA_JSON_KEYS[:-1])} "
                         "(or an OpenCV calibration with camera_matrix)", file=path)
    for key in ("position", "look_at", "up"):
        if key in data and not _is_vector(data[key], 3):
            raise AssetError(f"{key} must be a list of 3 numbers, got {data[key]!r}", file=path, field=key)
    if "principal_point" in data and not _is_vector(data["principal_point"], 2):
        raise AssetError(f"principal_point must be a list of 2 numbers, got {data['principal_point']!r}",
                         file=path, field="principal_point")
    for key in ("fovy_deg", "fps"):
        if key in data and not (_is_number(data[key]) and data[key] > 0):
            raise AssetError(f"{key} must be a positive number, got {data[key]!r}", file=path, field=key)
    if "fovy_deg" in data and not data["fovy_deg"] < 180:
        raise AssetError(f"fovy_deg must be below 180, got {data['fovy_deg']!r}", file=path, field="fovy_deg")
    for key in ("width", "height"):
        if key in data and not (isinstance(data[key], int) and not isinstance(data[key], bool) and data[key] >= 1):
            raise AssetError(f"{key} must be a positive integer, got {data[key]!r}", file=path, field=key)
    if data.get("projection", "perspective") not in ("perspective", "orthographic"):
        raise AssetError(f"projection must be 'perspective' or 'orthographic', got {data['projection']!r}",
                         file=path, field="projection")
    if "ortho_height" in data and not (_is_number(data["ortho_height"]) and data["ortho_height"] > 0):
        raise AssetError(f"ortho_height must be a positive number, got {data['ortho_height']!r}", file=path,
                         field="ortho_height")
    if "frames" in data and not isinstance(data["frames"], list):
        raise AssetError("frames must be a list of per-frame cameras", file=path, field="frames")
    fields = {k: v for k, v in data.items() if k != "frames"}
    frames = data.get("frames") or []
    views = {tuple(tuple(f.get(k) or ()) for k in ("position", "look_at", "up")) + (f.get("fovy_deg"),)
             for f in frames if isinstance(f, dict)}
    if len(views) > 1:
        fields["moving"] = True  # a camera path: per-frame cameras under "frames"
    camera = None
    if all(k in data for k in ("position", "look_at", "width", "height")):
        try:
            camera = Camera(position=data["position"], look_at=data["look_at"], up=data.get("up", (0.0, 0.0, 1.0)),
                            fovy_deg=data.get("fovy_deg", 40.0), width=data["width"], height=data["height"],
                            principal_point=data.get("principal_point"),
                            projection=data.get("projection", "perspective"), ortho_height=data.get("ortho_height", 2.0))
        except AssetError as exc:
            raise AssetError(exc.message, file=path, field=exc.field) from None
    return camera, fields

def _from_opencv_dict(data: dict, path: Path, width, height) -> tuple[Camera, dict]:
    def get(*names):
        for name in names:
            if name in data:
                return name, data[name]
        return None, None

    def matrix(name, value, shape):
        try:
            out = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise AssetError(f"{name} must be numeric, got {value!r}", file=path, field=name) from None
        if out.size == int(np.prod(shape)):
            out = out.reshape(shape)
        if out.shape != shape or not np.isfinite(out).all():
            raise AssetError(f"{name} must be {shape} finite numbers, got shape {out.shape}", file=path, field=name)
        return out

    k_name, k_value = get("camera_matrix", "K", "intrinsics")
    k = matrix(k_name, k_value, (3, 3))
    e_name, e_value = get("extrinsics")
    if e_value is not None:
        e = np.asarray(e_value, dtype=np.float64)
        if e.shape not in ((3, 4), (4, 4)):
            raise AssetError(f"extrinsics must be 3x4 or 4x4, got shape {e.shape}", file=path, field="extrinsics")
        rot, t = e[:3, :3], e[:3, 3]
    else:
        r_name, r_value = get("R", "rotation_matrix")
        v_name, v_value = get("rvec", "rotation_vector")
        t_name, t_value = get("t", "tvec", "translation_vector")
        if t_value is None or (r_value is None and v_value is None):
            raise AssetError("an OpenCV camera needs extrinsics: 'R' and 't', 'rvec' and 'tvec', or a 4x4 "
                             "'extrinsics' (world to camera)", file=path)
        rot = matrix(r_name, r_value, (3, 3)) if r_value is not None else rvec_to_rotation(matrix(v_name, v_value, (3,)))
        t = matrix(t_name, t_value, (3,))
    dist_name, dist = get("distortion_coefficients", "dist_coeffs", "dist", "D")
    if dist is not None:
        coeffs = np.asarray(dist, dtype=np.float64).ravel()
        if coeffs.size and np.abs(coeffs).max() > 1e-9:
            raise AssetError(f"lens distortion ({dist_name} = {coeffs.tolist()}) is not modelled; undistort the "
                             "images and give zero distortion", file=path, field=dist_name)
    w = width if width is not None else _first_int(data, "image_width", "width")
    h = height if height is not None else _first_int(data, "image_height", "height")
    if w is None or h is None:
        raise AssetError("an OpenCV camera needs the image size: image_width and image_height", file=path)
    try:
        camera = Camera.from_opencv(k, np.concatenate([rot, t[:, None]], axis=1), int(w), int(h))
    except AssetError as exc:
        raise AssetError(exc.message, file=path, field=exc.field) from None
    fields = {"position": list(camera.position), "look_at": list(camera.look_at), "up": list(camera.up),
              "fovy_deg": camera.fovy_deg, "width": camera.width, "height": camera.height}
    if camera.principal_point is not None:
        fields["principal_point"] = list(camera.principal_point)
    fps = data.get("fps")
    if fps is not None:
        if not (_is_number(fps) and fps > 0):
            raise AssetError(f"fps must be a positive number, got {fps!r}", file=path, field="fps")
        fields["fps"] = fps
    return camera, fields

def _first_int(data, *names):
    for name in names:
        if name in data:
            value = data[name]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                return value
            raise AssetError(f"{name} must be a positive integer, got {value!r}", field=name)
    return None

_MATRIX = re.compile(r"^(\w+):\s*!!opencv-matrix\s*$")
_SCALAR = re.compile(r"^(\w+):\s*(\S.*)?$")

def _parse_opencv_yaml(text: str, path: Path) -> dict:
    """The subset of OpenCV FileStorage YAML that calibrations use: scalars and !!opencv-matrix."""
    lines = text.splitlines()
    data: dict = {}
    i = 0
    while i < len(lines):
        line = lines[i].split("#", 1)[0].rstrip()
        i += 1
        if not line or line.startswith("%YAML") or line.strip() == "---":
            continue
        match = _MATRIX.match(line)
        if match:
            name, block = match.group(1), []
            while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()):
                block.append(lines[i].strip())
                i += 1
            body = " ".join(block)
            fields = dict(re.findall(r"(rows|cols|dt):\s*([^\s,\]\[]+)", body))
            values = re.search(r"data:\s*\[(.*)\]", body, re.S)
            try:
                rows, cols = int(fields["rows"]), int(fields["cols"])
                numbers = [float(x) for x in values.group(1).replace("\n", " ").split(",") if x.strip()]
            except (KeyError, AttributeError, ValueError):
                raise AssetError(f"malformed !!opencv-matrix '{name}' (needs rows, cols and data)", file=path,
                                 field=name) from None
            if len(numbers) != rows * cols:
                raise AssetError(f"matrix '{name}' says {rows}x{cols} but holds {len(numbers)} numbers", file=path,
                                 field=name)
            data[name] = np.asarray(numbers, dtype=np.float64).reshape(rows, cols)
            continue
        match = _SCALAR.match(line)
        if match and match.group(2) is not None:
            raw = match.group(2).strip().strip('"')
            try:
                value: object = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
            data[match.group(1)] = value
            continue
        raise AssetError(f"line {i}: not OpenCV FileStorage YAML: {line.strip()[:60]!r}", file=path)
    return data

# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def write_camera_json(path, cameras: Sequence[Camera], fps: float) -> Path:
    """camera.json for frame 0 at the top level plus ``frames``: per frame time [s], position,
    look_at, up, fovy_deg and OpenCV K (3x3) and extrinsics (4x4, world to camera)."""
    first = cameras[0]
    data = _camera_fields(first)
    data["fps"] = float(fps)
    data["frames"] = [dict(time=k / float(fps), **_camera_fields(cam),
                           K=cam.intrinsics().double().numpy().tolist(),
                           extrinsics=cam.extrinsics().double().numpy().tolist()) for k, cam in enumerate(cameras)]
    for frame in data["frames"]:
        frame.pop("width"), frame.pop("height")
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
    return path

def _camera_fields(cam: Camera) -> dict:
    out = {"position": list(cam.position), "look_at": list(cam.look_at), "up": list(cam.up),
           "fovy_deg": cam.fovy_deg, "width": cam.width, "height": cam.height}
    if cam.principal_point is not None:
        out["principal_point"] = list(cam.principal_point)
    if cam.orthographic:
        out["projection"], out["ortho_height"] = "orthographic", cam.ortho_height
    return out

def write_opencv_yaml(path, camera: Camera, *, fps: float | None = None) -> Path:
    """One camera as OpenCV FileStorage YAML (image size, camera_matrix, zero distortion, R, t, rvec)."""
    cv = camera.to_opencv()

    def mat(name, array):
        array = np.atleast_2d(np.asarray(array, dtype=np.float64))
        if array.shape[0] == 1:
            array = array.T
        values = ", ".join(repr(float(v)) for v in array.ravel())
        return f"{name}: !!opencv-matrix\n   rows: {array.shape[0]}\n   cols: {array.shape[1]}\n   dt: d\n" \
               f"   data: [ {values} ]\n"

    text = "%YAML:1.0\n---\n" + f"image_width: {cv['width']}\nimage_height: {cv['height']}\n"
    if fps is not None:
        text += f"fps: {float(fps)!r}\n"
    text += mat("camera_matrix", cv["K"]) + mat("distortion_coefficients", cv["dist"]) + mat("R", cv["R"])
    text += mat("t", cv["t"]) + mat("rvec", cv["rvec"])
    path = Path(path)
    atomic_write_text(path, text)
    return path

def camera_toml(camera: Camera) -> str:
    """The ``[camera]`` table of a scene file for ``camera``."""
    from ..scene.schema import dumps_toml

    tidy = lambda v: [tidy(x) for x in v] if isinstance(v, (list, tuple)) else \
        (round(v, 10) if isinstance(v, float) else v)  # noqa: E731  (drop float noise from conversions)
    fields = {key: tidy(value) for key, value in _camera_fields(camera).items()}
    return dumps_toml({"camera": fields})

def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

def _is_vector(v, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)
