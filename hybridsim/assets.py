"""Safe loading of user-supplied assets: where a scene's file paths may point, meshes, and the
frame folders used as fit targets.

Everything here treats its input as hostile data:

* **Paths** written in a scene file (``objects[i].file``, MPM mesh bodies, ...) are resolved against
  the scene file's folder by :func:`resolve_asset_path` and must stay inside it after symbolic
  links are followed, unless the user opts in with ``HYBRIDSIM_ALLOW_OUTSIDE_PATHS=1``
  (or ``allow_outside=True`` from Python).
* **Meshes** are read by :func:`load_mesh` from bytes (so no side files such as ``.mtl`` or
  external glTF buffers are ever opened), only in the formats obj, stl, ply and glb, refusing
  files larger than ``HYBRIDSIM_MAX_MESH_BYTES`` and meshes with more faces than
  ``HYBRIDSIM_MAX_MESH_FACES`` (checked from the file header before parsing where the format
  declares it, and again after). :func:`require_watertight` says how many open edges there are.
* **Frame folders** for fit targets are listed by :func:`frame_files`, which refuses folders
  with no frames, files that are not png/jpg images, and gaps or duplicates in the frame numbers.

Every problem is an :class:`~hybridsim.errors.AssetError` (or a
:class:`~hybridsim.errors.SceneError` for a scene field, a
:class:`~hybridsim.errors.ResourceError` for a limit) naming the file.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

from .errors import AssetError, ResourceError, SceneError

__all__ = [
    "ALLOW_OUTSIDE_ENV", "MAX_MESH_FACES_ENV", "MAX_MESH_BYTES_ENV", "DEFAULT_MAX_MESH_FACES",
    "DEFAULT_MAX_MESH_BYTES", "MAX_DECODED_BYTES_ENV", "DEFAULT_MAX_DECODED_BYTES", "MESH_FORMATS", "IMAGE_SUFFIXES", "outside_paths_allowed", "resolve_asset_path",
    "max_mesh_faces", "max_mesh_bytes", "max_decoded_bytes", "load_mesh", "open_edge_count", "require_watertight", "frame_files",
]

ALLOW_OUTSIDE_ENV = "HYBRIDSIM_ALLOW_OUTSIDE_PATHS"
"""Set to 1 to let scene files name files outside their own folder (absolute paths, ``..``, links)."""
MAX_MESH_FACES_ENV = "HYBRIDSIM_MAX_MESH_FACES"
MAX_MESH_BYTES_ENV = "HYBRIDSIM_MAX_MESH_BYTES"
DEFAULT_MAX_MESH_FACES = 1_000_000
"""Meshes with more triangles are refused (the soft rasteriser and hull code are not meant for them)."""
DEFAULT_MAX_MESH_BYTES = 256 * 2**20
"""Mesh files larger than this are refused before they are read."""
MAX_DECODED_BYTES_ENV = "HYBRIDSIM_MAX_DECODED_BYTES"
DEFAULT_MAX_DECODED_BYTES = 4 * 2**30
"""Videos and frame folders that decode to more RGB bytes than this are refused (4 GiB: 1080p
for about 11 minutes at 30 fps, but not a small file that decodes to a huge one)."""
MESH_FORMATS = ("obj", "stl", "ply", "glb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_TRUE = ("1", "true", "yes", "on")


# --------------------------------------------------------------------------------------------
# Paths named in scene files
# --------------------------------------------------------------------------------------------


def outside_paths_allowed() -> bool:
    """Whether the user opted in to scene paths outside the scene's folder (``HYBRIDSIM_ALLOW_OUTSIDE_PATHS=1``)."""
    return os.environ.get(ALLOW_OUTSIDE_ENV, "").strip().lower() in _TRUE


def resolve_asset_path(source, relative, *, field: str, allow_outside: bool | None = None) -> Path:
    """The file ``relative`` names, resolved against the folder of the scene file ``source``
    (the working directory when the scene has no file).

    Raises :class:`SceneError` (file = the scene, field = ``field``) when the path, after ``..``
    and symbolic links are resolved, leaves that folder, unless ``allow_outside`` (default: the
    ``HYBRIDSIM_ALLOW_OUTSIDE_PATHS`` environment variable) is true. Does not check that the file
    exists (the loader says so, naming the file).
    """
    if allow_outside is None:
        allow_outside = outside_paths_allowed()
    text = str(relative)
    if not text.strip() or "\x00" in text:
        raise SceneError(f"must be a non-empty file path (got {text!r})", file=source, field=field)
    base = Path(source).parent if source else Path.cwd()
    path = base / Path(text).expanduser() if allow_outside else base / text
    if allow_outside:
        return path
    try:
        inside = path.resolve().is_relative_to(base.resolve())
    except (OSError, RuntimeError):  # a symbolic-link loop, a name too long
        inside = False
    if not inside:
        raise SceneError(f"must stay inside the scene file's folder (got {text!r}, which resolves to "
                         f"{_resolved(path)}); set {ALLOW_OUTSIDE_ENV}=1 to allow files elsewhere",
                         file=source, field=field)
    return path


def _resolved(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return str(path)


# --------------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------------


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise ResourceError(f"{name} must be a positive integer (got {raw!r})") from None
    if value <= 0:
        raise ResourceError(f"{name} must be a positive integer (got {raw!r})")
    return value


def max_mesh_faces() -> int:
    """The face limit for meshes: ``HYBRIDSIM_MAX_MESH_FACES`` or :data:`DEFAULT_MAX_MESH_FACES`."""
    return _env_limit(MAX_MESH_FACES_ENV, DEFAULT_MAX_MESH_FACES)


def max_mesh_bytes() -> int:
    """The size limit for mesh files: ``HYBRIDSIM_MAX_MESH_BYTES`` or :data:`DEFAULT_MAX_MESH_BYTES`."""
    return _env_limit(MAX_MESH_BYTES_ENV, DEFAULT_MAX_MESH_BYTES)


def max_decoded_bytes() -> int:
    """The limit on decoded video / frame-folder bytes: ``HYBRIDSIM_MAX_DECODED_BYTES`` or
    :data:`DEFAULT_MAX_DECODED_BYTES`."""
    return _env_limit(MAX_DECODED_BYTES_ENV, DEFAULT_MAX_DECODED_BYTES)


def _too_many_faces(count: int, limit: int, file: str, declared: bool = False) -> ResourceError:
    what = "declares" if declared else "has"
    return ResourceError(f"mesh {what} {count} faces, more than the limit of {limit} (simplify it, or raise the "
                         f"limit with {MAX_MESH_FACES_ENV}=N)", file=file)


def _declared_faces(data: bytes, kind: str, file: str) -> int | None:
    """Face count a binary STL or a PLY header declares (None when the format does not say);
    AssetError for a binary STL shorter than the triangles it declares."""
    if kind == "stl" and len(data) >= 84 and not data[:5].lower() == b"solid":
        count = struct.unpack_from("<I", data, 80)[0]
        if len(data) < 84 + 50 * count:
            raise AssetError(f"truncated or not a valid STL file: its header declares {count} triangles "
                             f"({84 + 50 * count} bytes) but the file has {len(data)} bytes", file=file)
        return count
    if kind == "ply" and data[:3] == b"ply":
        header = data[: data.find(b"end_header")] if b"end_header" in data[:65536] else data[:65536]
        m = re.search(rb"^element\s+face\s+(\d+)", header, re.M)
        if m:
            return int(m.group(1)[:30])
    return None


def load_mesh(path, *, max_faces: int | None = None, max_bytes: int | None = None):
    """Read a triangle mesh (obj, stl, ply or glb) -> ``trimesh.Trimesh``; every problem is an
    :class:`AssetError` (or a :class:`ResourceError` for a limit) naming the file.

    The file is read as bytes and parsed from memory, so references to other files inside it
    (obj material libraries, glTF external buffers) are never followed. Files over ``max_bytes``
    (default :func:`max_mesh_bytes`) and meshes over ``max_faces`` faces (default
    :func:`max_mesh_faces`) are refused; vertices must be finite and faces must index them. The
    returned mesh keeps the file name in ``mesh.metadata["hybridsim_source"]``.
    """
    import numpy as np
    import trimesh

    path = Path(path)
    file = str(path)
    max_faces = max_mesh_faces() if max_faces is None else int(max_faces)
    max_bytes = max_mesh_bytes() if max_bytes is None else int(max_bytes)
    kind = path.suffix.lower().lstrip(".")
    if kind not in MESH_FORMATS:
        raise AssetError(f"unsupported mesh format {path.suffix or '(no extension)'!r}; use one of "
                         f"{', '.join('.' + k for k in MESH_FORMATS)}", file=file)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise AssetError("mesh file not found", file=file) from None
    except OSError as exc:
        raise AssetError(f"cannot read mesh file: {exc.strerror or exc}", file=file) from None
    if not path.is_file():
        raise AssetError("mesh path is not a regular file", file=file)
    if size > max_bytes:
        raise ResourceError(f"mesh file is {size} bytes, more than the limit of {max_bytes} (raise it with "
                            f"{MAX_MESH_BYTES_ENV}=N)", file=file)
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise AssetError(f"cannot read mesh file: {exc.strerror or exc}", file=file) from None
    if not data:
        raise AssetError(f"mesh file is empty (not a valid {kind.upper()} file)", file=file)
    declared = _declared_faces(data, kind, file)
    if declared is not None and declared > max_faces:
        raise _too_many_faces(declared, max_faces, file, declared=True)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):  # NaN and overflow in garbage input
            warnings.simplefilter("ignore", RuntimeWarning)
            mesh = trimesh.load(io.BytesIO(data), file_type=kind, force="mesh")
    except Exception as exc:  # trimesh and its parsers raise many types for bad files
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise AssetError(f"cannot read mesh (truncated or not a valid {kind.upper()} file?): {detail}",
                         file=file) from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise AssetError(f"file holds no triangle mesh (truncated or not a valid {kind.upper()} file?)", file=file)
    if len(mesh.faces) > max_faces:
        raise _too_many_faces(len(mesh.faces), max_faces, file)
    vertices, faces = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    if not np.isfinite(vertices).all():
        raise AssetError("mesh has non-finite vertex coordinates", file=file)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise AssetError("mesh faces index vertices that do not exist", file=file)
    mesh.metadata["hybridsim_source"] = file
    return mesh


def open_edge_count(mesh) -> tuple[int, int]:
    """(boundary edges used by one face, non-manifold edges used by more than two faces)."""
    import numpy as np

    edges = np.asarray(mesh.edges_sorted)
    if len(edges) == 0:
        return 0, 0
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int((counts == 1).sum()), int((counts > 2).sum())


def require_watertight(mesh, file: str | None, *, purpose: str, remedy: str) -> None:
    """AssetError naming ``file`` unless ``mesh`` is a closed surface; the message says what the
    volume is needed for (``purpose``), how many edges are open, and what to do (``remedy``)."""
    if mesh.is_watertight:
        return
    boundary, nonmanifold = open_edge_count(mesh)
    parts = []
    if boundary:
        parts.append(f"{boundary} open edge{'s' if boundary != 1 else ''}")
    if nonmanifold:
        parts.append(f"{nonmanifold} edge{'s' if nonmanifold != 1 else ''} shared by more than two faces")
    detail = f" ({', '.join(parts)})" if parts else ""
    raise AssetError(f"mesh is not watertight{detail}: {purpose}; {remedy}", file=file or "<mesh>")


# --------------------------------------------------------------------------------------------
# Frame folders
# --------------------------------------------------------------------------------------------


def _natural_key(name: str):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]


def frame_files(folder, *, strict: bool = True) -> list[Path]:
    """The png/jpg frames of ``folder`` in natural name order.

    With ``strict`` (fit targets): no other files may be there (hidden files such as
    ``.DS_Store`` are skipped), and when the names carry frame numbers (``frame_0007.png``) they
    must share one pattern and run without gaps or duplicates, so a missing or misnamed frame
    cannot silently shift the target in time. Without ``strict`` other files are ignored.
    AssetError names the folder and the offending file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AssetError("frame folder not found", file=folder)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: _natural_key(p.name))
    except OSError as exc:
        raise AssetError(f"cannot list the frame folder: {exc.strerror or exc}", file=folder) from None
    files = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
            files.append(entry)
        elif strict:
            kind = "folder" if entry.is_dir() else "file"
            raise AssetError(f"{entry.name!r} is a {kind}, not a png/jpg frame: a frame folder must hold only its "
                             "frames (move other files out)", file=folder)
    if not files:
        raise AssetError(f"no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} frames in the folder (zero frames)",
                         file=folder)
    if strict:
        _check_numbering(folder, files)
    return files


_NUMBERED = re.compile(r"^(.*?)(\d+)(\D*)$")


def _check_numbering(folder: Path, files: list[Path]) -> None:
    numbered = [(_NUMBERED.match(p.stem), p) for p in files]
    with_numbers = [(m, p) for m, p in numbered if m]
    if not with_numbers:
        return  # names without numbers: natural order is all there is
    if len(with_numbers) != len(files):
        odd = next(p for m, p in numbered if not m)
        raise AssetError(f"frame {odd.name!r} has no frame number while others do; name every frame with its "
                         "number (frame_0001.png, ...)", file=folder)
    patterns = {}
    for m, p in with_numbers:
        patterns.setdefault((m.group(1).lower(), m.group(3).lower(), p.suffix.lower()), p)
    if len(patterns) > 1:
        first, second = list(patterns.values())[:2]
        raise AssetError(f"frames follow more than one naming pattern ({first.name!r}, {second.name!r}); "
                         "keep one clip per folder", file=folder)
    by_number: dict[int, Path] = {}
    for m, p in with_numbers:
        number = int(m.group(2))
        if number in by_number:
            raise AssetError(f"frames {by_number[number].name!r} and {p.name!r} have the same frame number {number}",
                             file=folder)
        by_number[number] = p
    numbers = sorted(by_number)
    for a, b in zip(numbers, numbers[1:]):
        if b != a + 1:
            missing = f"frame {a + 1}" if b == a + 2 else f"frames {a + 1} to {b - 1}"
            raise AssetError(f"{missing} missing: the numbering jumps from {by_number[a].name!r} to "
                             f"{by_number[b].name!r}", file=folder)
