"""Scene-loader fuzzing with hostile files: random bytes, truncated TOML, absurd nesting, huge and
non-finite numbers, wrong types in every field, unknown keys, huge arrays, unicode and very long
strings. Every file must load or give one SceneError naming the file (and the field, where the
TOML itself is valid), within a time bound and a memory bound. The CLI turns those errors into
one line on stderr and exit status 2.

The default run takes a fast sample; ``-m slow`` runs thousands of examples (docs/hardening.md
gives the counts and commands).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridsim.errors import SceneError
from hybridsim.scene import SceneSpec, load_scene

ROOT = Path(__file__).resolve().parent.parent
MESH_SCENE = """
name = "mesh_scene"
[camera]
position = [0.0, -3.0, 1.0]
look_at = [0.0, 0.0, 0.3]
[[objects]]
type = "mesh"
file = "meshes/cube.obj"
position = [0.0, 0.0, 0.5]
scale = 0.5
mass = 2.0
[[objects]]
type = "capsule"
position = [0.5, 0.0, 0.5]
radius = 0.1
half_height = 0.2
orientation = { value = [0.0, 0.3, 0.0], learn = true, range = [-3.0, 3.0] }
[[objects]]
type = "static_box"
position = [0.0, 0.0, 0.05]
half_extents = [1.0, 1.0, 0.05]
"""
BASE_TEXTS = [(ROOT / "scenes" / name).read_text() for name in ("bounce.toml", "boxes.toml", "plume2d.toml")]
BASE_TEXTS.append(MESH_SCENE)
BASE_DATA = [tomllib.loads(text) for text in BASE_TEXTS]

TIME_LIMIT_S = 20.0
"""Per-file bound on loading (a hang fails the test); the slowest legal file takes about 2-3 s."""
MEMORY_LIMIT = 256 * 2**20
"""Per-file bound on how far loading raises the process's peak memory (see memory_peak)."""


# --------------------------------------------------------------------------------------------
# A small TOML writer that can also write what scene files should not contain
# --------------------------------------------------------------------------------------------


class Raw(str):
    """Text written into the TOML as is (a number literal past every limit, ``nan``)."""


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _quote(text: str) -> str:
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if _BARE.match(key) else _quote(key)


def _value(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if abs(v) < 10**4000 else "1" + "0" * 4000
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _quote(v)
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(data: dict, sections: bool = True) -> str:
    """Top-level scalars first, then tables as ``[name]`` sections and arrays of tables as
    ``[[name]]`` (or everything inline when ``sections`` is false)."""
    lines, later = [], []
    for key, value in data.items():
        if sections and isinstance(value, dict) and value and all(not isinstance(x, dict) for x in value.values()):
            later.append(f"[{_key(key)}]\n" + "".join(f"{_key(k)} = {_value(x)}\n" for k, x in value.items()))
        elif sections and isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
            for item in value:
                later.append(f"[[{_key(key)}]]\n" + "".join(f"{_key(k)} = {_value(x)}\n" for k, x in item.items()))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    return "\n".join(lines) + "\n\n" + "\n".join(later)


def format_field(path) -> str:
    out = ""
    for part in path:
        out = f"{out}[{part}]" if isinstance(part, int) else (f"{out}.{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------------------------
# Hostile scene files
# --------------------------------------------------------------------------------------------


def _slots(node, path=()):
    """Every (path, value) of a parsed scene, tables and arrays included."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _slots(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _slots(value, path + (index,))


def _replace(data, path, value):
    import copy

    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


_text = st.text(max_size=40)
_datetimes = st.sampled_from([dt.datetime(1979, 5, 27, 7, 32), dt.date(2024, 2, 29), dt.time(12, 30),
                              dt.datetime(1979, 5, 27, 7, 32, tzinfo=dt.timezone.utc)])
_huge_tokens = st.one_of(
    st.integers(1, 6000).map(lambda n: Raw("9" * n)),
    st.integers(1, 6000).map(lambda n: Raw("-" + "1" * n)),
    st.sampled_from([Raw(t) for t in ("1e309", "-1e400", "1e-400", "nan", "+nan", "-nan", "inf", "+inf", "-inf",
                                      "0x7fffffffffffffffffff", "0o777777777777777777777777", "0b" + "1" * 200,
                                      "9223372036854775808", "-9223372036854775809", "1_000_000_000_000_000_000",
                                      "179769313486231570000000000000000000000000000000000000000000000000000.0",
                                      "4.9e-324", "1e308", "-0.0", "0.0")]),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "NaN", "Infinity", "0x10", ""]),  # as strings
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
)


def _wrong_type_for(value):
    """Values of another TOML type than ``value``."""
    options = [_datetimes, st.lists(_text, max_size=3), st.dictionaries(_text, st.integers(), max_size=2),
               st.just([]), st.just({}), st.just([[1.0, 2.0], [3.0]])]
    if not isinstance(value, str):
        options.append(_text)
    if not isinstance(value, bool):
        options.append(st.booleans())
    if isinstance(value, (str, bool, list, dict)):
        options.append(st.one_of(st.integers(-5, 5), st.floats(-1e3, 1e3)))
    if isinstance(value, list):
        options.append(st.lists(st.booleans(), min_size=1, max_size=3))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        options.append(st.just([value]))
    return st.one_of(options)


@st.composite
def random_bytes(draw):
    return "random bytes", draw(st.binary(max_size=3000)), None


@st.composite
def truncated(draw):
    text = draw(st.sampled_from(BASE_TEXTS))
    cut = draw(st.integers(0, len(text)))
    data = text[:cut].encode()
    if draw(st.booleans()):  # also cut inside a multi-byte character or mid-token
        data = data + draw(st.sampled_from([b"\xe2\x82", b"[", b"{", b"\"", b"'''", b"= ", b"[[objects", b"\\"]))
    return "truncated", data, None


@st.composite
def deep_nesting(draw):
    depth = draw(st.integers(1, 4000))
    form = draw(st.sampled_from(["array", "inline", "dotted", "header", "array_header", "mixed", "marker"]))
    where = draw(st.sampled_from(["x", "gravity", "objects", "camera"]))
    if form == "array":
        body = f"{where} = " + "[" * depth + "1.0" + "]" * depth
    elif form == "inline":
        body = f"{where} = " + "{a = " * depth + "1" + "}" * depth
    elif form == "dotted":
        body = ".".join([where] + ["a"] * depth) + " = 1"
    elif form == "header":
        body = "[" + ".".join([where] + ["a"] * depth) + "]\nb = 1"
    elif form == "array_header":
        body = "[[" + ".".join([where] + ["a"] * min(depth, 200)) + "]]\nb = 1"
    elif form == "marker":
        body = f"{where} = " + "{ value = " * depth + "0.5" + " }" * depth
    else:
        body = f"{where} = " + "[{a = " * depth + "[]" + "}]" * depth
    text = draw(st.sampled_from(BASE_TEXTS))
    text = text if draw(st.booleans()) else ""
    return "deep nesting", (body + "\n" + text).encode(), None


@st.composite
def huge_numbers(draw):
    index = draw(st.integers(0, len(BASE_DATA) - 1))
    slots = [(p, v) for p, v in _slots(BASE_DATA[index]) if p and isinstance(v, (int, float)) and not isinstance(v, bool)]
    path, _ = draw(st.sampled_from(slots))
    data = _replace(BASE_DATA[index], path, draw(_huge_tokens))
    return "huge numbers", to_toml(data, draw(st.booleans())).encode(), format_field(path)


@st.composite
def wrong_types(draw):
    index = draw(st.integers(0, len(BASE_DATA) - 1))
    path, value = draw(st.sampled_from([(p, v) for p, v in _slots(BASE_DATA[index]) if p]))
    data = _replace(BASE_DATA[index], path, draw(_wrong_type_for(value)))
    return "wrong type", to_toml(data, draw(st.booleans())).encode(), format_field(path)


@st.composite
def unknown_keys(draw):
    index = draw(st.integers(0, len(BASE_DATA) - 1))
    tables = [p for p, v in _slots(BASE_DATA[index]) if isinstance(v, dict)]
    path = draw(st.sampled_from(tables))
    key = draw(st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(["Name", "radius ", "frame", "colour",
                                                                          "learnable", "source", "__class__",
                                                                          "value", "type"])))
    data = _replace(BASE_DATA[index], path + (key,), draw(st.one_of(_text, st.integers(), st.booleans())))
    return "unknown key", to_toml(data, draw(st.booleans())).encode(), format_field(path)


@st.composite
def huge_arrays(draw, max_size=20_000):
    index = draw(st.integers(0, len(BASE_DATA) - 1))
    path, value = draw(st.sampled_from([(p, v) for p, v in _slots(BASE_DATA[index]) if p]))
    n = draw(st.integers(4, max_size))
    item = draw(st.sampled_from([Raw("1.0"), Raw("0"), Raw('"x"'), Raw("[0.1, 0.2, 0.3]"), Raw("{}")]))
    data = _replace(BASE_DATA[index], path, Raw("[" + ", ".join([item] * n) + "]"))
    return "huge array", to_toml(data, draw(st.booleans())).encode(), format_field(path)


@st.composite
def strings(draw, max_len=200_000):
    index = draw(st.integers(0, len(BASE_DATA) - 1))
    path, value = draw(st.sampled_from([(p, v) for p, v in _slots(BASE_DATA[index]) if p]))
    kind = draw(st.sampled_from(["unicode", "long", "control", "key"]))
    if kind == "unicode":
        text = draw(st.text(min_size=1, max_size=60))
    elif kind == "control":
        text = draw(st.text(st.characters(max_codepoint=0x40), min_size=1, max_size=20)) + "\u202e\x1b[31m"
    else:
        text = draw(st.sampled_from(["x", "\u00e9", "\U0001F600", "ab"])) * draw(st.integers(200, max_len))
    if kind == "key":  # a long unicode key in a table
        parent = path[:-1]
        node = BASE_DATA[index]
        for part in parent:
            node = node[part]
        if isinstance(node, dict):
            data = _replace(BASE_DATA[index], parent + (text,), 1)
            return "long key", to_toml(data, draw(st.booleans())).encode(), format_field(parent)
    data = _replace(BASE_DATA[index], path, text)
    return "strings", to_toml(data, draw(st.booleans())).encode(), format_field(path)


@st.composite
def spliced_text(draw):
    """A base scene with hostile fragments spliced in at random places (mostly invalid TOML)."""
    text = draw(st.sampled_from(BASE_TEXTS))
    fragments = st.sampled_from(["[", "]]", "{", "}", "=", '"', "'''", '"""', "\\u0000", "\x00", "\r", "\ufeff",
                                 "[[objects]]\n", "[camera]\n", "a.b.c = 1\n", "nan", "inf", "1979-05-27", "#",
                                 "\n" * 50, "x = [" * 30, "\U0001F600", "\x7f", "\\"])
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.one_of(fragments, st.text(max_size=20))) + text[at:]
    return "spliced", text.encode("utf-8", "surrogatepass"), None


def hostile_files(array_size=20_000, string_len=200_000):
    return st.one_of(random_bytes(), truncated(), deep_nesting(), huge_numbers(), wrong_types(), unknown_keys(),
                     huge_arrays(array_size), strings(string_len), spliced_text())


# --------------------------------------------------------------------------------------------
# The property
# --------------------------------------------------------------------------------------------


STATS: dict[str, int] = {}
WORST = {"seconds": 0.0, "MiB": 0.0}


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds: float):
    """Fail with Hang if the block runs longer than ``seconds`` (POSIX timers; no bound elsewhere)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"loading took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as handle:
        return int(re.search(key + r":\s+(\d+) kB", handle.read()).group(1)) * 1024


@contextlib.contextmanager
def memory_peak():
    """Yields a one-item list that holds, after the block, how far the block raised the process's
    peak memory: resident set (all allocations, C and Rust included) where Linux can reset its
    high-water mark, else the peak of Python allocations (tracemalloc, slower)."""
    result = [0]
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current resident size
        before = _proc_status("VmRSS")
    except (OSError, AttributeError):
        tracemalloc.start()
        try:
            yield result
        finally:
            result[0] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return
    yield result
    result[0] = _proc_status("VmHWM") - before


def check_file(path: Path, data: bytes, field: str | None, kind: str):
    """Load ``data`` from ``path``: a SceneSpec, or one SceneError naming the file (and a field
    related to ``field`` when the TOML is valid), within the time and memory bounds."""
    path.write_bytes(data)
    with memory_peak() as peak:
        start = time.perf_counter()
        try:
            with time_bound(TIME_LIMIT_S):
                spec = load_scene(path)
        except SceneError as error:
            outcome = error
        else:
            outcome = spec
        elapsed = time.perf_counter() - start
    assert peak[0] < MEMORY_LIMIT, f"{kind}: {peak[0] / 2**20:.0f} MiB peak"
    WORST["seconds"] = max(WORST["seconds"], elapsed)
    WORST["MiB"] = max(WORST["MiB"], round(peak[0] / 2**20, 1))
    if isinstance(outcome, SceneSpec):
        return outcome, elapsed
    message = str(outcome)
    assert message and "\n" not in message and "\r" not in message, (kind, message)
    assert outcome.file == str(path) and message.startswith(str(path)), (kind, message)
    assert len(message) < 2000, (kind, len(message))
    if field is not None and not message.startswith(f"{path}: invalid TOML") and "limit of" not in message:
        # the TOML is valid (a value or key was changed): the error names that field, a field
        # inside it, or the table that holds it
        assert outcome.field, (kind, field, message)
        named = outcome.field  # that field, one inside it, the table holding it, or a field it must agree with
        related = named.startswith(field) or field.startswith(named) or _owner(named) == _owner(field)
        assert related, (kind, field, message)
    return outcome, elapsed


def _owner(field: str) -> str:
    """The object or table a field belongs to: ``objects[2]``, ``fluid.inflows[0]``, ``camera``."""
    m = re.match(r"objects\[\d+\]|fluid\.\w+\[\d+\]|[^.\[]*", field)
    return m.group()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")




def _run(fuzz_dir, example):
    kind, data, field = example
    outcome, _ = check_file(fuzz_dir / "scene.toml", data, field, kind)
    STATS[kind] = STATS.get(kind, 0) + 1
    STATS["errors" if isinstance(outcome, SceneError) else "loaded"] = \
        STATS.get("errors" if isinstance(outcome, SceneError) else "loaded", 0) + 1


FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@FAST
@given(example=hostile_files(array_size=5_000, string_len=50_000))
def test_hostile_scene_files_fast_sample(fuzz_dir, example):
    _run(fuzz_dir, example)


@pytest.mark.slow
@settings(max_examples=int(os.environ.get("HYBRIDSIM_FUZZ_EXAMPLES", "10000")), deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(example=hostile_files())
def test_hostile_scene_files_thousands(fuzz_dir, example):
    _run(fuzz_dir, example)


WRONG_VALUES = ["text", True, dt.datetime(1979, 5, 27, 7, 32), {"a": 1}, ["x", "y"], [], Raw("nan"), 1]


def _every_field_cases():
    """(scene index, path, wrong value) for every field, table and array of the base scenes."""
    for index, data in enumerate(BASE_DATA):
        for path, value in _slots(data):
            if path:
                for wrong in WRONG_VALUES:
                    if type(wrong) is not type(value) and not (isinstance(wrong, Raw) and isinstance(value, float)):
                        yield index, path, wrong


@pytest.mark.parametrize("everything", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_wrong_type_in_every_field(fuzz_dir, everything):
    """Every field of every base scene, given values of other types (the fast run: one of them
    per field, in turn); each file loads or names that field."""
    cases = list(_every_field_cases())
    if not everything:  # field number k gets the k-th of its wrong values (cyclically)
        fields: dict[tuple, list] = {}
        for case in cases:
            fields.setdefault(case[:2], []).append(case)
        cases = [options[k % len(options)] for k, options in enumerate(fields.values())]
    errors = 0
    for index, path, wrong in cases:
        data = _replace(BASE_DATA[index], path, wrong)
        outcome, _ = check_file(fuzz_dir / "every.toml", to_toml(data, len(path) % 2 == 0).encode(),
                                format_field(path), "every field")
        errors += isinstance(outcome, SceneError)
    STATS["every field" + (" (all values)" if everything else "")] = len(cases)
    print(f"\nwrong types in every field: {len(cases)} files, {errors} errors")
    assert errors > 0.9 * len(cases)


# --------------------------------------------------------------------------------------------
# Regression corpus: each of these once escaped as another exception, hung, or printed badly
# --------------------------------------------------------------------------------------------

BOUNCE = BASE_TEXTS[0]
CORPUS = {
    "int_past_python_digit_limit": ("x = " + "9" * 5000, None),
    "radius_past_digit_limit": (BOUNCE.replace("radius = 0.2", "radius = " + "9" * 4301, 1), None),
    "dotted_key_50000_parts": (".".join(["a"] * 50000) + " = 1", None),  # 10 GB and 36 s before
    "table_header_50000_parts": ("[" + ".".join(["a"] * 50000) + "]", None),
    "quoted_dotted_key": ('"\\u0061".' * 20000 + "a = 1", None),
    "inline_dotted_key": ("x = {" + "a." * 50000 + "a = 1}", None),
    "array_nesting_100000": ("x = " + "[" * 100000 + "]" * 100000, None),
    "newline_in_key": ('"a\\nb" = 1\n' + BOUNCE, "a\\nb"),
    "terminal_escape_in_key": ('"\\u001b[31mred" = 1\n' + BOUNCE, "\\x1b[31mred"),
    "right_to_left_override_key": ('"\\u202e" = 1\n' + BOUNCE, "\\u202e"),
    "key_of_100000_chars": ('"' + "k" * 100000 + '" = 1\n' + BOUNCE, None),
    "identifier_of_1m_chars": ("x" * 1_000_000, None),
    "string_of_200000_chars": ('name = "' + "y" * 200_000 + '"', None),
    "array_of_30000": ("gravity = [" + ",".join(["1"] * 30000) + "]\n" + BOUNCE.replace("gravity", "#"), "gravity"),
    "null_byte": (BOUNCE.replace('name = "red"', 'name = "\x00"'), None),
    "bom_and_crlf": ("\ufeff" + BOUNCE.replace("\n", "\r\n"), None),
    "lone_cr": (BOUNCE.replace("\n", "\r"), None),
    "datetime_radius": (BOUNCE.replace("radius = 0.2", "radius = 1979-05-27T07:32:00Z", 1), "objects[0].radius"),
    "nan_frames": (BOUNCE.replace("frames = 60", "frames = nan"), "time.frames"),
    "inf_gravity": (BOUNCE.replace("gravity = [0.0, 0.0, -9.81]", "gravity = [0.0, 0.0, -inf]"), "gravity[2]"),
    "learnable_table": ("learnable = 1\n" + BOUNCE, "learnable"),
    "source_table": ("source = '/etc/passwd'\n" + BOUNCE, "source"),
    "objects_not_array": ("objects = 5\n" + BOUNCE.split("[[objects]]")[0], "objects"),
}


# The largest files the size limit lets through (about 1 MiB), at their slowest to parse
LARGEST = {
    "array_of_500000": ("gravity = [" + ",".join(["1"] * 500000) + "]\n" + BOUNCE.replace("gravity", "#"), "gravity"),
    "floats_of_200000": ("x = [" + ", ".join(["1.5"] * 200000) + "]\n" + BOUNCE, "x"),
    "tables_of_90000": ("\n".join(f"[t{i}]" for i in range(90000)) + "\n" + BOUNCE, "t0"),
    "key_of_1m_chars": ('"' + "k" * 1_000_000 + '" = 1\n' + BOUNCE[:40000], None),
    "string_of_1m_chars": ('name = "' + "y" * 1_000_000 + '"', None),
    "objects_of_15000": (BOUNCE + '[[objects]]\ntype="sphere"\nposition=[0,0,1]\nradius=0.1\n' * 15000, None),
}


@pytest.mark.parametrize("name", sorted(CORPUS) + [pytest.param(n, marks=pytest.mark.slow) for n in sorted(LARGEST)])
def test_regression_corpus(fuzz_dir, name):
    text, field = CORPUS[name] if name in CORPUS else LARGEST[name]
    assert len(text.encode()) <= 2**20
    outcome, elapsed = check_file(fuzz_dir / f"{name}.toml", text.encode("utf-8", "surrogatepass"), None, name)
    if field is not None:
        assert isinstance(outcome, SceneError) and outcome.field == field, str(outcome)
    assert elapsed < TIME_LIMIT_S


# --------------------------------------------------------------------------------------------
# The command line: exit 2, one line, no traceback
# --------------------------------------------------------------------------------------------

CLI_SAMPLE = {
    "garbage.toml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
    "truncated.toml": BOUNCE.encode()[: BOUNCE.index("radius = 0.2") + 5],  # ends in "radiu"
    "deep.toml": ("x = " + "[" * 5000 + "]" * 5000).encode(),
    "dotted.toml": (".".join(["a"] * 5000) + " = 1").encode(),
    "bigint.toml": BOUNCE.replace("frames = 60", "frames = " + "9" * 5000).encode(),
    "wrongtype.toml": BOUNCE.replace("radius = 0.2", 'radius = "big"', 1).encode(),
    "unknown.toml": ('"\\u001b[2J\\nboom" = 1\n' + BOUNCE).encode(),
    "empty.toml": b"",
    "scene.py": b"import os\nos.system('echo should never run')\n",
}


def test_cli_bad_scene_files_exit_2_with_one_line(tmp_path, capsys):
    from hybridsim.cli import main

    for name, data in CLI_SAMPLE.items():
        path = tmp_path / name
        path.write_bytes(data)
        for argv in (["render", str(path), "-o", str(tmp_path / "out.mp4"), "--quiet"], ["gradcheck", str(path)]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 2, (name, argv, err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), (name, err)
            assert "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists()


def test_cli_in_a_real_process(tmp_path):
    """The console entry point itself: exit status 2, one line, no traceback; ``info`` takes no
    scene, so argparse refuses one (exit 2, usage and the offending argument, no traceback)."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(CLI_SAMPLE["dotted.toml"])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "hybridsim.cli", "render", str(bad), "-o", str(tmp_path / "o.mp4")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [f"error: {bad}:1: invalid TOML: a dotted key with more than 64 parts"]
    info = subprocess.run([sys.executable, "-m", "hybridsim.cli", "info", str(bad)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert info.returncode == 2 and "Traceback" not in info.stderr
    assert info.stderr.strip().splitlines()[-1].endswith(f"unrecognized arguments: {bad}")


@pytest.mark.slow
def test_report_fuzz_counts():
    """Prints the counts, slowest load and largest memory peak of the run so far (use -s)."""
    print("\nfuzz counts:", dict(sorted(STATS.items())), "worst:", WORST)
