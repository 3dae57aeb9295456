"""Load scene files into :class:`~hybridsim.scene.schema.SceneSpec`, with one-line errors.

``load_scene(path)`` reads a TOML file, ``parse_scene(text)`` a string and ``scene_from_dict``
already-parsed data (the path the builder takes too). All three strip learnable markers
(``{ value = ..., learn = true, range = [lo, hi] }``) into ``SceneSpec.learnable``, validate,
and turn every problem into a :class:`~hybridsim.errors.SceneError` that names the file, the
field path (``objects[1].radius``) and, for files, the line where that field is written.
"""

from __future__ import annotations

import bisect
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from ..errors import SceneError
from .schema import (
    LEARN_KEYS,
    OBJECT_TYPES,
    SceneSpec,
    fmt_num,
    format_path,
    is_number,
    join_path,
    range_violation,
    show,
)

__all__ = ["load_scene", "load_python_scene", "parse_scene", "scene_from_dict", "toml_loads", "MAX_SCENE_BYTES"]

_RESERVED = ("learnable", "source")  # SceneSpec fields that a scene file may not set directly
MAX_SCENE_BYTES = 1 << 20
"""Scene files larger than this (1 MiB; ``HYBRIDSIM_MAX_SCENE_BYTES`` overrides) are refused before
parsing: a real scene is a few kB, and parse time and memory grow with the size."""
MAX_KEY_PARTS = 64
"""Longest dotted key (``a.b.c`` has 3 parts) accepted; Python's TOML parser is quadratic in it."""
_MAX_FIELD_CHARS = 160  # field paths in messages are cut to this length
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
# a run of 2+ key parts joined by dots; the look-behind keeps the scan linear in the text length
_KEY_CHAIN = re.compile(rf"(?<![A-Za-z0-9_-]){_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})+")


def load_python_scene(path) -> SceneSpec:
    """Run the Python scene script ``path`` and return its scene. Only call this for a script the
    user named explicitly (``hybridsim ... --python``): unlike a TOML scene file, it is executed.

    The script defines ``scene`` (a SceneSpec or SceneBuilder) or ``build()`` returning one; it
    runs with ``__name__ == "__hybridsim_scene__"`` (so an ``if __name__ == "__main__"`` block
    does not run) and the script's folder as the scene's folder for relative asset paths.
    """
    import runpy

    from .builder import SceneBuilder

    label = str(path)
    p = Path(path)
    if not p.is_file():
        raise SceneError("Python scene script not found", file=label)
    try:
        namespace = runpy.run_path(str(p), run_name="__hybridsim_scene__")
    except SceneError:
        raise
    except Exception as exc:  # the user's own script failed: say where, keep it one line
        raise SceneError(f"the scene script raised {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                         file=label) from None
    if "scene" in namespace:
        result = namespace["scene"]
    elif callable(namespace.get("build")):
        result = namespace["build"]()
    else:
        raise SceneError("a Python scene script must define `scene` (a SceneSpec or SceneBuilder) or `build()` "
                         "returning one", file=label)
    if isinstance(result, SceneBuilder):
        result = result.build()
    if not isinstance(result, SceneSpec):
        raise SceneError(f"the script's scene is a {type(result).__name__}, not a SceneSpec or SceneBuilder",
                         file=label)
    return result.model_copy(update={"source": str(p.resolve())})


def load_scene(path) -> SceneSpec:
    """Read and validate a TOML scene file. Raises :class:`SceneError` for every problem."""
    label = str(path)
    if not label.isprintable():  # a newline or terminal escape in the name must not reach the one-line error
        label = "".join(c if c.isprintable() else repr(c)[1:-1] for c in label)
    p = Path(path)
    if p.suffix.lower() == ".py":
        raise SceneError("is a Python file: scene files are TOML data and are never executed; to run a Python "
                         "scene script, pass --python (the CLI) or call load_python_scene()", file=label)
    limit = max_scene_bytes()
    try:
        if p.is_file() and p.stat().st_size > limit:
            raise SceneError(f"scene file is {p.stat().st_size} bytes, more than the limit of {limit} "
                             "(set HYBRIDSIM_MAX_SCENE_BYTES to raise it)", file=label)
        with open(p, "rb") as handle:
            raw = handle.read(limit + 1)
        if len(raw) > limit:  # not a regular file (a pipe, a device): stop reading at the limit
            raise SceneError(f"scene file is more than the limit of {limit} bytes "
                             "(set HYBRIDSIM_MAX_SCENE_BYTES to raise it)", file=label)
    except FileNotFoundError:
        raise SceneError("scene file not found", file=label) from None
    except IsADirectoryError:
        raise SceneError("is a directory, not a scene file", file=label) from None
    except OSError as exc:
        raise SceneError(f"cannot read scene file: {exc.strerror or exc}", file=label) from None
    except ValueError:  # a NUL byte in the name
        raise SceneError("not a valid file name", file=label) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SceneError(f"not UTF-8 text (bad byte at offset {exc.start})", file=label, line=line) from None
    return _parse(text, label, source=label, default_name=p.stem or "scene")


def parse_scene(text: str, source: str = "<string>") -> SceneSpec:
    """Validate TOML scene text; ``source`` names it in errors (and is the spec's ``source``
    unless it is a placeholder like ``"<string>"``)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SceneError(f"not UTF-8 text (bad byte at offset {exc.start})", file=source) from None
    if not isinstance(text, str):
        raise SceneError(f"scene text must be a string (got {type(text).__name__})", file=source)
    limit = max_scene_bytes()
    if len(text) > limit:
        raise SceneError(f"scene text is {len(text)} characters, more than the limit of {limit} "
                         "(set HYBRIDSIM_MAX_SCENE_BYTES to raise it)", file=source)
    return _parse(text, source, source=_real_source(source), default_name=_default_name(source))


def scene_from_dict(data: Mapping, source: str | None = None) -> SceneSpec:
    """Validate already-parsed scene data (a dict shaped like the TOML file; learnable markers
    allowed at any numeric field). ``source`` names the origin in errors."""
    return _from_data(data, label=source, source=_real_source(source), default_name=_default_name(source))


# --------------------------------------------------------------------------------------------
# Shared path
# --------------------------------------------------------------------------------------------


def _real_source(source: str | None) -> str | None:
    if source is None or str(source).startswith("<"):
        return None
    return str(source)


def _default_name(source: str | None) -> str:
    real = _real_source(source)
    return (Path(real).stem or "scene") if real else "scene"


def max_scene_bytes() -> int:
    """The scene size limit: ``HYBRIDSIM_MAX_SCENE_BYTES`` if set to a positive integer, else MAX_SCENE_BYTES."""
    raw = os.environ.get("HYBRIDSIM_MAX_SCENE_BYTES", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else MAX_SCENE_BYTES


def toml_loads(text: str, label: str | None) -> dict:
    """``tomllib.loads`` for untrusted text: every failure (syntax, absurd nesting, integers past
    Python's digit limit, dotted keys long enough to make the parser quadratic) is a SceneError
    naming ``label`` and, where known, the line."""
    if text.count(".") > MAX_KEY_PARTS:  # cheap test first; the scan is linear
        for m in _KEY_CHAIN.finditer(text):
            chain = m.group()
            if chain.count(".") >= MAX_KEY_PARTS and _key_parts(chain) > MAX_KEY_PARTS:
                raise SceneError(f"invalid TOML: a dotted key with more than {MAX_KEY_PARTS} parts",
                                 file=label, line=text.count("\n", 0, m.start()) + 1)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"at line (\d+)", msg)
        if m:
            line = int(m.group(1))
        elif "end of document" in msg:
            line = text.count("\n") + 1
        else:
            line = None
        raise SceneError(f"invalid TOML: {msg}", file=label, line=line) from None
    except RecursionError:
        raise SceneError("invalid TOML: nesting too deep", file=label) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts (4300)
        raise SceneError(f"invalid TOML: {' '.join(str(exc).split())[:200]}", file=label) from None


def _key_parts(chain: str) -> int:
    return sum(1 for _ in re.finditer(_KEY_PART, chain))


def _clean_field(error: SceneError) -> SceneError:
    """Make the field path safe to print on one line: control and format characters (a newline,
    a terminal escape, a right-to-left override in a key) escaped, overlong paths cut."""
    field = error.field
    if field and (len(field) > _MAX_FIELD_CHARS or not field.isprintable()):
        clean = "".join(c if c.isprintable() else repr(c)[1:-1] for c in field)
        if len(clean) > _MAX_FIELD_CHARS:
            clean = clean[: _MAX_FIELD_CHARS - 3] + "..."
        error.field = clean
        error.args = (str(error),)
    return error


def _parse(text: str, label: str, *, source: str | None, default_name: str) -> SceneSpec:
    try:
        data = toml_loads(text, label)
    except SceneError as error:
        raise _clean_field(error) from None
    locator: list[_Locator] = []

    def locate(path: str) -> int | None:  # built only when an error needs a line
        if not locator:
            locator.append(_Locator(text))
        return locator[0].line_of(path)

    return _from_data(data, label=label, source=source, default_name=default_name, locate=locate)


def _from_data(
    data: Any,
    *,
    label: str | None,
    source: str | None,
    default_name: str,
    locate: Callable[[str], int | None] | None = None,
) -> SceneSpec:
    try:
        return _from_data_checked(data, label=label, source=source, default_name=default_name, locate=locate)
    except SceneError as error:
        raise _clean_field(error) from None


def _from_data_checked(
    data: Any,
    *,
    label: str | None,
    source: str | None,
    default_name: str,
    locate: Callable[[str], int | None] | None = None,
) -> SceneSpec:
    locate = locate or (lambda path: None)
    if not isinstance(data, Mapping):
        raise SceneError(f"a scene must be a table of fields (got {show(data)})", file=label)
    for key in data:
        if key in _RESERVED:
            hint = " (mark values learnable in place: { value = ..., learn = true })" if key == "learnable" else ""
            raise SceneError(f"unknown field{hint}", file=label, field=key, line=locate(key))
    learn: dict[str, dict] = {}
    try:
        stripped = _strip(data, "", learn, label, locate)
    except RecursionError:
        raise SceneError("scene data is nested too deeply", file=label) from None
    if stripped.get("name") is None:
        stripped["name"] = default_name
    return _validate(stripped, learn, label=label, source=source, locate=locate)


def _validate(
    data: dict,
    learn: dict[str, dict],
    *,
    label: str | None,
    source: str | None,
    locate: Callable[[str], int | None] | None = None,
) -> SceneSpec:
    """Validate marker-free scene data plus learnable entries; pydantic errors -> SceneError."""
    payload = {**data, "learnable": learn, "source": source}
    try:
        return SceneSpec.model_validate(payload)
    except ValidationError as exc:
        field, message = _describe(exc, data)
        line = locate(field) if (locate and field) else None
        raise SceneError(message, file=label, field=field or None, line=line) from None


# --------------------------------------------------------------------------------------------
# Learnable markers
# --------------------------------------------------------------------------------------------


def _is_marker(node: Any) -> bool:
    return isinstance(node, Mapping) and "value" in node and all(isinstance(k, str) for k in node) and set(node) <= LEARN_KEYS


def _strip(node: Any, path: str, learn: dict, label, locate) -> Any:
    """Copy ``node`` with learnable markers replaced by their values, recording them in ``learn``."""
    if isinstance(node, Mapping):
        if path and _is_marker(node):
            return _take_marker(node, path, learn, label, locate)
        out = {}
        for key, value in node.items():
            if not isinstance(key, str):
                raise SceneError(f"field names must be strings (got {show(key)})", file=label, field=path or None, line=locate(path))
            out[key] = _strip(value, join_path(path, key), learn, label, locate)
        return out
    if isinstance(node, (list, tuple)):  # paths only for containers: a huge array of numbers stays cheap
        return [_strip(v, join_path(path, i), learn, label, locate) if isinstance(v, (Mapping, list, tuple)) else v
                for i, v in enumerate(node)]
    return node


def _as_list(v: Any) -> Any:
    if not isinstance(v, (list, tuple, str, bytes, Mapping)) and hasattr(v, "tolist"):
        return v.tolist()
    return v


def _finite(x: Any) -> bool:
    try:
        return is_number(x) and float("-inf") < float(x) < float("inf")
    except (OverflowError, TypeError, ValueError):
        return False


def _take_marker(node: Mapping, path: str, learn: dict, label, locate) -> Any:
    def err(msg: str, where: str) -> SceneError:
        return SceneError(msg, file=label, field=where, line=locate(where))

    value = _as_list(node["value"])
    if isinstance(value, (list, tuple)):
        if len(value) not in (2, 3) or not all(_finite(c) for c in value):
            raise err(f"learnable value must be a finite number or a list of 2 or 3 (got {show(value)})", f"{path}.value")
        value = list(value)
    elif not _finite(value):
        raise err(f"learnable value must be a finite number or a list of 2 or 3 (got {show(value)})", f"{path}.value")
    enabled = node.get("learn", True)
    if not isinstance(enabled, bool):
        raise err(f"must be true or false (got {show(enabled)})", f"{path}.learn")
    rng = _as_list(node.get("range"))
    if rng is not None:
        if not isinstance(rng, (list, tuple)) or len(rng) != 2 or not all(_finite(x) for x in rng):
            raise err(f"range must be [lo, hi] with finite numbers (got {show(rng)})", f"{path}.range")
        lo, hi = float(rng[0]), float(rng[1])
        if not lo < hi:
            raise err(f"range needs lo < hi (got [{fmt_num(lo)}, {fmt_num(hi)}])", f"{path}.range")
        msg = range_violation([float(c) for c in value] if isinstance(value, list) else float(value), (lo, hi))
        if msg:
            raise err(msg, path)
        rng = (lo, hi)
    if enabled:
        learn[path] = {"path": path, "value": value, "range": rng}
    return value


# --------------------------------------------------------------------------------------------
# pydantic errors -> one human message with a field path
# --------------------------------------------------------------------------------------------


def _describe(exc: ValidationError, data: dict) -> tuple[str, str]:
    errors = exc.errors(include_url=False)
    # An unknown key is usually the cause of a "missing" one (a typo): report it first.
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc, typ, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}

    if loc and loc[0] == "learnable":  # only reachable by constructing entries by hand
        key = str(loc[1]) if len(loc) > 1 else "learnable"
        if typ == "scene":
            return key, str(ctx.get("msg"))
        return key, f"learnable entry: {err['msg']}"

    tokens, node = _loc_tokens(loc, data)
    path = format_path(tokens)

    if typ == "scene":
        return join_path(path, str(ctx.get("subpath") or "")), str(ctx.get("msg"))
    if typ == "missing":
        parent = _model_for(tokens[:-1], data)
        field = parent.model_fields.get(tokens[-1]) if parent is not None and isinstance(tokens[-1], str) else None
        is_table = field is not None and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        return path, "required table is missing" if is_table else "required field is missing"
    if typ == "extra_forbidden":
        parent = _model_for(tokens[:-1], data)
        names = [f for f in parent.model_fields if not (parent is SceneSpec and f in ("learnable", "source"))] if parent else []
        close = difflib.get_close_matches(str(tokens[-1]), names, n=1, cutoff=0.6)
        return path, "unknown field" + (f" (did you mean {close[0]!r}?)" if close else "")
    if typ in ("union_tag_invalid", "union_tag_not_found"):
        expected = ", ".join(repr(t) for t in OBJECT_TYPES)
        if typ == "union_tag_not_found":
            return join_path(path, "type"), f"required field is missing (the object type: {expected})"
        tag = node.get("type") if isinstance(node, Mapping) else ctx.get("tag")
        return join_path(path, "type"), f"unknown object type {show(tag)} (expected {expected})"
    if typ in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"must be a table (got {show(err.get('input'))})"
    if typ in ("tuple_type", "list_type"):
        return path, f"must be an array (got {show(err.get('input'))})"
    if typ == "string_type":
        return path, f"must be a string (got {show(err.get('input'))})"
    return path, f"{err['msg']} (got {show(err.get('input'))})"


def _loc_tokens(loc: tuple, data: Any) -> tuple[list, Any]:
    """pydantic's error location -> field path tokens (dropping union tags), and the data node."""
    tokens: list = []
    node: Any = data
    for elem in loc:
        if isinstance(elem, int):
            tokens.append(elem)
            node = node[elem] if isinstance(node, (list, tuple)) and 0 <= elem < len(node) else None
        elif isinstance(node, Mapping) and elem in node:
            tokens.append(elem)
            node = node[elem]
        elif isinstance(node, Mapping) and elem in OBJECT_TYPES and node.get("type") == elem:
            continue  # the discriminated-union tag pydantic puts in the location
        else:
            tokens.append(elem)
            node = None
    return tokens, node


def _model_for(tokens, data: Any) -> type[BaseModel] | None:
    """The model class that validates the table at ``tokens`` (None if not a table)."""
    model: type[BaseModel] | None = SceneSpec
    node: Any = data
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if model is SceneSpec and t == "objects":
            if i + 1 >= len(tokens) or not isinstance(tokens[i + 1], int):
                return None
            objs = node.get("objects") if isinstance(node, Mapping) else None
            idx = tokens[i + 1]
            obj = objs[idx] if isinstance(objs, (list, tuple)) and 0 <= idx < len(objs) else None
            kind = obj.get("type") if isinstance(obj, Mapping) else None
            model = OBJECT_TYPES.get(kind) if isinstance(kind, str) else None
            node = obj
            i += 2
            continue
        field = model.model_fields.get(t) if (model is not None and isinstance(t, str)) else None
        ann = field.annotation if field is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
        node = node.get(t) if isinstance(node, Mapping) else None
        i += 1
    return model


# --------------------------------------------------------------------------------------------
# Line locator: field path -> line in the TOML text
# --------------------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}\n#]*")
_LOCATE_ELEMENTS = 1024  # array elements past this index are not given lines of their own


class _Locator:
    """Scan TOML text (already known to parse) and record the line of every key, table header,
    array-of-tables entry and array element, by field path (``objects[1].radius``)."""

    def __init__(self, text: str):
        self.s = text
        self.n = len(text)
        self.i = 0
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.lines: dict[str, int] = {}
        self.arrays: dict[str, int] = {}
        try:
            self._document()
        except (IndexError, ValueError, RecursionError):
            pass  # best effort: keep what was found

    def line_of(self, path: str) -> int | None:
        """Line of ``path``, else of its nearest enclosing field that is written, else None."""
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            p = _parent_path(p)
        return None

    # -- scanning helpers --

    def _line(self) -> int:
        return bisect.bisect_right(self.starts, self.i)

    def _record(self, path: str, line: int) -> None:
        if path and path not in self.lines:
            self.lines[path] = line

    def _skip_ws(self) -> None:
        while self.i < self.n and self.s[self.i] in " \t":
            self.i += 1

    def _skip_blank(self) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t\r\n":
                self.i += 1
            elif c == "#":
                j = self.s.find("\n", self.i)
                self.i = self.n if j < 0 else j
            else:
                break

    def _expect(self, token: str) -> None:
        if not self.s.startswith(token, self.i):
            raise ValueError(f"expected {token!r} at {self.i}")
        self.i += len(token)

    def _key(self) -> list[str]:
        parts = []
        while True:
            self._skip_ws()
            c = self.s[self.i]
            if c == '"':
                start = self.i + 1
                self._basic_string()
                parts.append(self.s[start : self.i - 1])
            elif c == "'":
                start = self.i + 1
                self._literal_string()
                parts.append(self.s[start : self.i - 1])
            else:
                m = _BARE.match(self.s, self.i)
                if not m:
                    raise ValueError(f"no key at {self.i}")
                parts.append(m.group())
                self.i = m.end()
            self._skip_ws()
            if self.i < self.n and self.s[self.i] == ".":
                self.i += 1
                continue
            return parts

    def _resolve(self, parts: list[str]) -> str:
        cur = ""
        for p in parts:
            cur = join_path(cur, p)
            if cur in self.arrays:
                cur = f"{cur}[{self.arrays[cur] - 1}]"
        return cur

    # -- grammar --

    def _document(self) -> None:
        table = ""
        while True:
            self._skip_blank()
            if self.i >= self.n:
                return
            line = self._line()
            if self.s.startswith("[[", self.i):
                self.i += 2
                parts = self._key()
                self._expect("]]")
                base = join_path(self._resolve(parts[:-1]), parts[-1])
                idx = self.arrays.get(base, 0)
                self.arrays[base] = idx + 1
                self._record(base, line)
                table = f"{base}[{idx}]"
                self._record(table, line)
            elif self.s[self.i] == "[":
                self.i += 1
                parts = self._key()
                self._expect("]")
                table = self._resolve(parts)
                self._record(table, line)
            else:
                self._keyval(table, line)

    def _keyval(self, table: str, line: int) -> None:
        parts = self._key()
        self._expect("=")
        self._skip_ws()
        full = table
        for p in parts:
            full = join_path(full, p)
            self._record(full, line)
        self._value(full)

    def _value(self, path: str) -> None:
        s, i = self.s, self.i
        if s.startswith('"""', i):
            self._multiline('"""', escapes=True)
        elif s.startswith("'''", i):
            self._multiline("'''", escapes=False)
        elif s[i] == '"':
            self._basic_string()
        elif s[i] == "'":
            self._literal_string()
        elif s[i] == "[":
            self.i += 1
            index = 0
            while True:
                self._skip_blank()
                if self.s[self.i] == "]":
                    self.i += 1
                    return
                if index < _LOCATE_ELEMENTS:
                    sub = join_path(path, index)
                    self._record(sub, self._line())
                    self._value(sub)
                else:  # no line of its own; a path only where a nested table may record keys
                    self._value(join_path(path, index) if self.s[self.i] in "[{" else path)
                self._skip_blank()
                if self.s[self.i] == ",":
                    self.i += 1
                index += 1
        elif s[i] == "{":
            self.i += 1
            while True:
                self._skip_blank()
                if self.s[self.i] == "}":
                    self.i += 1
                    return
                self._keyval(path, self._line())
                self._skip_blank()
                if self.s[self.i] == ",":
                    self.i += 1
        else:
            start = self.i
            self.i = _SCALAR.match(self.s, self.i).end()
            if self.i == start:
                raise ValueError(f"no value at {start}")

    def _basic_string(self) -> None:
        self.i += 1
        while True:
            c = self.s[self.i]
            if c == "\\":
                self.i += 2
            elif c == '"':
                self.i += 1
                return
            elif c == "\n":
                raise ValueError("newline in string")
            else:
                self.i += 1

    def _literal_string(self) -> None:
        j = self.s.find("'", self.i + 1)
        if j < 0 or "\n" in self.s[self.i : j]:
            raise ValueError("unterminated literal string")
        self.i = j + 1

    def _multiline(self, quote: str, escapes: bool) -> None:
        self.i += 3
        while True:
            if self.i >= self.n:
                raise ValueError("unterminated multi-line string")
            if escapes and self.s[self.i] == "\\":
                self.i += 2
            elif self.s.startswith(quote, self.i):
                self.i += 3
                extra = 0
                while extra < 2 and self.i < self.n and self.s[self.i] == quote[0]:
                    self.i += 1
                    extra += 1
                return
            else:
                self.i += 1


def _parent_path(path: str) -> str:
    if path.endswith("]"):
        return path[: path.rindex("[")]
    dot = path.rfind(".")
    return path[:dot] if dot >= 0 else ""
