"""Scene files, the builder, round trips, and one-line errors naming file, field and line."""

from __future__ import annotations

import copy
import math
import pickle
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridsim.errors import SceneError
from hybridsim.scene import (
    CameraSpec,
    Learnable,
    SceneBuilder,
    SceneSpec,
    SphereSpec,
    learn,
    load_scene,
    parse_scene,
    scene_from_dict,
)
from hybridsim.scene.schema import dumps_toml

ROOT = Path(__file__).resolve().parent.parent
BOUNCE = ROOT / "scenes" / "bounce.toml"
BOUNCE_FIT = ROOT / "scenes" / "bounce_fit.toml"
BOUNCE_TEXT = BOUNCE.read_text()

MINIMAL = """
[camera]
position = [0.0, -4.0, 1.0]
look_at = [0.0, 0.0, 0.5]
"""


def line_of(text: str, fragment: str) -> int:
    """1-based line number of the first line containing ``fragment``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} not in text")


# --------------------------------------------------------------------------------------------
# Shipped scenes
# --------------------------------------------------------------------------------------------


def test_bounce_scene_loads_with_its_values():
    spec = load_scene(BOUNCE)
    assert spec.source == str(BOUNCE)
    assert (spec.name, spec.backend, spec.device, spec.precision) == ("bounce", "warp", "auto", "float32")
    assert spec.gravity == (0.0, 0.0, -9.81)
    assert spec.frame_count == 60 and spec.time.fps == 30.0 and spec.time.substeps == 8
    assert spec.dt == pytest.approx(1.0 / 240.0)
    assert spec.total_steps == 480
    assert (spec.camera.width, spec.camera.height) == (320, 240)
    assert spec.camera.position == (2.2, -3.6, 1.4)
    assert spec.object_names == ("red", "green", "blue")
    red, green, blue = spec.objects
    assert len({o.radius for o in spec.objects}) == 3
    assert len({o.color for o in spec.objects}) == 3
    assert len({o.restitution for o in spec.objects}) == 3
    assert len({o.position[2] for o in spec.objects}) == 3  # dropped from different heights
    assert red.velocity[0] != 0.0 and red.velocity[2] == 0.0  # thrown horizontally
    assert red.restitution == 0.8 and green.mass == 2.0
    assert blue.mass is None and blue.density == 400.0
    assert blue.mass_kg == pytest.approx(400.0 * 4.0 / 3.0 * math.pi * 0.15**3)
    assert set(spec.learnable) == {"objects[0].restitution", "objects[0].velocity"}
    assert spec.learnable["objects[0].restitution"] == Learnable(path="objects[0].restitution", value=0.8, range=(0.05, 1.0))
    assert spec.learnable["objects[0].velocity"].value == (0.6, 0.0, 0.0)
    assert spec.learnable["objects[0].velocity"].range == (-5.0, 5.0)
    assert spec.learnable["objects[0].velocity"].is_vector


def test_bounce_fit_scene_loads_with_its_values():
    spec = load_scene(BOUNCE_FIT)
    assert spec.name == "bounce_fit"
    assert len(spec.objects) == 1 and isinstance(spec.objects[0], SphereSpec)
    assert (spec.camera.width, spec.camera.height) == (128, 96)
    assert spec.frame_count == 45
    assert spec.dt == pytest.approx(1.0 / (30 * 8))
    assert set(spec.learnable) == {"objects[0].restitution", "objects[0].velocity"}
    assert all(item.range is not None for item in spec.learnable.values())
    assert spec.get("objects[0].restitution") == spec.learnable["objects[0].restitution"].value == 0.7


def test_defaults_fill_everything_not_written():
    spec = parse_scene(MINIMAL + '\n[[objects]]\ntype = "sphere"\nposition = [0, 0, 1]\nradius = 0.1\n'
                       '\n[[objects]]\ntype = "sphere"\nposition = [1, 0, 1]\nradius = 0.1\n')
    assert spec.name == "scene" and spec.source is None
    assert spec.gravity == (0.0, 0.0, -9.81)
    assert spec.frame_count == 60 and spec.time.substeps == 8 and spec.time.fps == 30.0
    assert spec.camera.up == (0.0, 0.0, 1.0) and spec.camera.fovy_deg == 40.0
    assert spec.ground.checker_size == 0.5 and spec.ground.enabled is True
    assert spec.light.intensity == 0.8 and spec.light.ambient == 0.35
    assert spec.object_names == ("sphere_0", "sphere_1")
    assert spec.objects[0].mass == 1.0 and spec.objects[0].restitution == 0.5
    assert spec.objects[0].position == (0.0, 0.0, 1.0) and isinstance(spec.objects[0].position[0], float)
    assert spec.learnable == {}


def test_name_defaults_to_the_file_stem(tmp_path):
    path = tmp_path / "my_drop.toml"
    path.write_text(MINIMAL)
    assert load_scene(path).name == "my_drop"


def test_duration_gives_the_frame_count():
    spec = parse_scene(MINIMAL + "\n[time]\nfps = 24\nduration = 2.0\n")
    assert spec.time.frames is None and spec.frame_count == 48
    assert parse_scene(MINIMAL + "\n[time]\nfps = 30\nduration = 1.01\n").frame_count == 30
    assert spec.duration_s == pytest.approx(2.0)


def test_learn_false_marker_is_a_plain_value():
    text = MINIMAL + "\n[light]\nintensity = { value = 0.5, learn = false, range = [0.0, 1.0] }\n"
    spec = parse_scene(text)
    assert spec.light.intensity == 0.5 and spec.learnable == {}


def test_learnable_markers_at_any_depth():
    text = (
        "gravity = { value = [0.0, 0.0, -9.0], range = [-20.0, 20.0] }\n" + MINIMAL
        + "\n[light]\nintensity = { value = 0.5 }\n"
        + "\n[ground]\ncolors = [{ value = [0.9, 0.9, 0.9], range = [0.0, 1.0] }, [0.1, 0.1, 0.1]]\n"
    )
    spec = parse_scene(text)
    assert spec.gravity == (0.0, 0.0, -9.0)
    assert spec.learnable["gravity"].range == (-20.0, 20.0)
    assert spec.learnable["light.intensity"].range is None  # unbounded by default
    assert spec.learnable["ground.colors[0]"].value == (0.9, 0.9, 0.9)
    assert parse_scene(spec.to_toml()) == spec


def test_scene_package_imports_nothing_heavy():
    code = "import sys, hybridsim.scene; print(sorted(m for m in ('torch', 'warp', 'taichi') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Builder, equality, round trips, with_values
# --------------------------------------------------------------------------------------------


def build_bounce() -> SceneSpec:
    b = SceneBuilder(name="bounce", backend="warp", device="auto", precision="float32", deterministic=False,
                     seed=0, gravity=(0, 0, -9.81), fps=30, frames=60, substeps=8)
    b.camera(position=(2.2, -3.6, 1.4), look_at=(0, 0, 0.5), up=(0, 0, 1), fovy_deg=40, width=320, height=240,
             projection="perspective")
    b.ground(height=0.0, checker_size=0.5, colors=[(0.85, 0.85, 0.85), (0.35, 0.35, 0.35)], enabled=True)
    b.light(direction=(-0.4, 0.3, -1.0), intensity=0.8, ambient=0.35, sky_color=(0.55, 0.7, 0.9))
    b.add_sphere(position=(-0.8, 0, 1.0), velocity=learn((0.6, 0, 0), range=(-5, 5)), radius=0.2, mass=1.0,
                 restitution=learn(0.8, range=(0.05, 1.0)), color=(0.9, 0.2, 0.2), name="red")
    b.add_sphere(position=(0.2, 0.4, 1.6), radius=0.25, mass=2.0, restitution=0.6, color=(0.2, 0.75, 0.3), name="green")
    b.add_sphere(position=(0.7, -0.3, 0.7), radius=0.15, density=400.0, restitution=0.9, color=(0.2, 0.35, 0.9),
                 name="blue")
    return b.build()


def test_builder_spec_equals_the_toml_spec():
    from_toml = load_scene(BOUNCE)
    built = build_bounce()
    assert built == from_toml and hash(built) == hash(from_toml)
    assert built.source is None and from_toml.source is not None  # source is not compared


def test_equality_sees_values_and_learnable_markers():
    base = load_scene(BOUNCE)
    other = base.with_values({"objects[1].restitution": 0.61})
    assert other != base
    plain = parse_scene(BOUNCE_TEXT.replace("{ value = 0.8, learn = true, range = [0.05, 1.0] }", "0.8"))
    assert plain.objects == base.objects and plain != base  # same values, fewer learnables
    ranged = parse_scene(BOUNCE_TEXT.replace("range = [0.05, 1.0]", "range = [0.05, 0.99]"))
    assert ranged != base


def test_builder_minimal_and_chaining():
    spec = (SceneBuilder().camera(position=(0, -4, 1), look_at=(0, 0, 0.5))
            .add_sphere((0, 0, 1), 0.1).add_sphere((1, 0, 1), 0.1).build())
    assert spec == parse_scene(MINIMAL + '\n[[objects]]\ntype = "sphere"\nposition = [0, 0, 1]\nradius = 0.1\n'
                               '\n[[objects]]\ntype = "sphere"\nposition = [1, 0, 1]\nradius = 0.1\n')


def test_builder_errors_are_scene_errors_naming_the_field():
    b = SceneBuilder(name="x").camera(position=(0, -4, 1), look_at=(0, 0, 0.5))
    b.add_sphere(position=(0, 0, 1), radius=-0.5)
    with pytest.raises(SceneError) as info:
        b.build()
    assert str(info.value) == "<builder>: objects[0].radius: must be > 0 (got -0.5)"
    with pytest.raises(SceneError, match=r"^<builder>: camera: required table is missing$"):
        SceneBuilder().build()


@pytest.mark.parametrize("path", [BOUNCE, BOUNCE_FIT])
def test_to_toml_round_trip(path, tmp_path):
    spec = load_scene(path)
    text = spec.to_toml()
    again = parse_scene(text)
    assert again == spec and again.learnable == spec.learnable
    out = tmp_path / "copy.toml"
    spec.write_toml(out)
    assert load_scene(out) == spec


def test_to_toml_round_trip_of_unusual_values():
    b = SceneBuilder(name='odd "name" \\ ünïcode #1', precision="float64", deterministic=True, seed=7,
                     gravity=learn((0.0, 0.0, -1e-7)), fps=23.976, duration=1.5, substeps=3)
    b.camera(position=(1e6, -0.1, 2), look_at=(0, 0, 0), projection="orthographic", ortho_height=3.25,
             width=8192, height=1)
    b.ground(enabled=False, colors=[learn([1.0, 0.0, 0.5], range=(0.0, 1.0)), [0, 0, 0]])
    b.light(intensity=learn(0.0, range=(0.0, 2.0)), direction=(0, 0, -1))
    b.add_sphere(position=(0, 0, 1), radius=1e-3, density=1e6, velocity=(-0.0, 1 / 3, 2.5e-300),
                 name="s p a c e")
    spec = b.build()
    assert parse_scene(spec.to_toml()) == spec
    assert spec.frame_count == round(1.5 * 23.976)


def test_with_values_replaces_and_revalidates():
    spec = load_scene(BOUNCE)
    fitted = spec.with_values({"objects[0].restitution": 0.55, "objects[0].velocity": [1.0, 0.5, 0.0],
                               "light.intensity": 1.2})
    assert fitted.objects[0].restitution == 0.55
    assert fitted.objects[0].velocity == (1.0, 0.5, 0.0)
    assert fitted.light.intensity == 1.2
    assert fitted.learnable["objects[0].restitution"].value == 0.55
    assert fitted.learnable["objects[0].restitution"].range == (0.05, 1.0)
    assert fitted.learnable["objects[0].velocity"].value == (1.0, 0.5, 0.0)
    assert spec.objects[0].restitution == 0.8  # the original is untouched
    assert fitted.objects[1:] == spec.objects[1:] and fitted.source == spec.source
    assert parse_scene(fitted.to_toml()) == fitted


def test_with_values_accepts_array_like_values():
    class FakeTensor:  # numpy arrays and torch tensors expose tolist()
        def __init__(self, values):
            self.values = values

        def tolist(self):
            return self.values

    fitted = load_scene(BOUNCE).with_values({"objects[0].velocity": FakeTensor([0.1, 0.2, 0.3]),
                                             "objects[0].restitution": FakeTensor(0.25)})
    assert fitted.objects[0].velocity == (0.1, 0.2, 0.3) and fitted.objects[0].restitution == 0.25


def test_with_values_rejects_out_of_range_invalid_and_unknown():
    spec = load_scene(BOUNCE)
    with pytest.raises(SceneError) as info:
        spec.with_values({"objects[0].restitution": 0.01})
    assert info.value.field == "objects[0].restitution"
    assert "outside its learnable range [0.05, 1]" in str(info.value)
    with pytest.raises(SceneError, match=r"objects\[0\]\.velocity: value \[6, 0, 0\] is outside"):
        spec.with_values({"objects[0].velocity": (6.0, 0.0, 0.0)})
    with pytest.raises(SceneError, match=r"objects\[1\]\.radius: must be > 0 \(got -1"):
        spec.with_values({"objects[1].radius": -1.0})
    with pytest.raises(SceneError, match=r"objects\[7\]\.radius: no such field"):
        spec.with_values({"objects[7].radius": 1.0})
    with pytest.raises(SceneError, match=r"objects\[1\]: give mass or density, not both"):
        spec.with_values({"objects[1].density": 100.0})


def test_get_reads_paths_and_rejects_unknown_ones():
    spec = load_scene(BOUNCE)
    assert spec.get("gravity") == (0.0, 0.0, -9.81)
    assert spec.get("objects[2].radius") == 0.15
    assert spec.get("ground.colors[1]") == (0.35, 0.35, 0.35)
    assert spec.get("objects[0].velocity[0]") == 0.6
    for bad in ("objects[3].radius", "camera.zoom", "learnable", "objects.0", "", "gravity[3]"):
        with pytest.raises(SceneError):
            spec.get(bad)


def test_specs_are_frozen():
    spec = load_scene(BOUNCE)
    with pytest.raises(Exception):
        spec.name = "other"  # type: ignore[misc]
    with pytest.raises(Exception):
        spec.objects[0].radius = 1.0  # type: ignore[misc]


def test_direct_construction_validates_learnables():
    camera = CameraSpec(position=(0, -4, 1), look_at=(0, 0, 0))
    ok = SceneSpec(camera=camera, learnable={"gravity": Learnable(path="gravity", value=(0, 0, -9.81))})
    assert ok.learnable["gravity"].value == (0.0, 0.0, -9.81)
    with pytest.raises(Exception):  # value differs from the field
        SceneSpec(camera=camera, learnable={"gravity": Learnable(path="gravity", value=(0, 0, -1))})
    with pytest.raises(Exception):  # no such field
        SceneSpec(camera=camera, learnable={"nope": Learnable(path="nope", value=1.0)})


# --------------------------------------------------------------------------------------------
# Bad files: one-line SceneError naming file, field and line
# --------------------------------------------------------------------------------------------


def _edit(old: str, new: str, count: int = 1):
    def apply(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, count)

    return apply


# (id, edit of bounce.toml, field path, message fragment, fragment of the offending line or None)
BAD = [
    ("unknown_field", _edit("color = [0.9, 0.2, 0.2]", "colour = [0.9, 0.2, 0.2]"),
     "objects[0].colour", "unknown field (did you mean 'color'?)", "colour ="),
    ("unknown_top_level", _edit('seed = 0', 'seed = 0\ngravty = 1.0'),
     "gravty", "unknown field (did you mean 'gravity'?)", "gravty"),
    ("wrong_type", _edit("radius = 0.25", 'radius = "big"'),
     "objects[1].radius", "must be a number (got 'big')", 'radius = "big"'),
    ("negative_radius", _edit("radius = 0.15", "radius = -0.2"),
     "objects[2].radius", "must be > 0 (got -0.2)", "radius = -0.2"),
    ("missing_camera", lambda t: t[: t.index("[camera]")] + t[t.index("[ground]"):],
     "camera", "required table is missing", None),
    ("missing_radius", _edit("radius = 0.15", ""),
     "objects[2].radius", "required field is missing", '[[objects]]\ntype = "sphere"\nname = "blue"'),  # its header
    ("frames_and_duration", _edit("frames = 60", "frames = 60\nduration = 2.0"),
     "time", "give frames or duration, not both", "[time]"),
    ("bad_backend", _edit('backend = "warp"', 'backend = "jax"'),
     "backend", "must be one of 'warp', 'taichi' (got 'jax'", 'backend = "jax"'),
    ("outside_learnable_range", _edit("{ value = 0.8, learn = true, range = [0.05, 1.0] }",
                                      "{ value = 0.01, learn = true, range = [0.05, 1.0] }"),
     "objects[0].restitution", "value 0.01 is outside its learnable range [0.05, 1]", "value = 0.01"),
    ("range_lo_ge_hi", _edit("range = [-5.0, 5.0]", "range = [5.0, 5.0]"),
     "objects[0].velocity.range", "range needs lo < hi (got [5, 5])", "range = [5.0, 5.0]"),
    ("duplicate_names", _edit('name = "blue"', 'name = "red"'),
     "objects[2].name", "duplicate object name 'red' (also objects[0])", 'name = "red"\nposition = [0.7'),
    ("unknown_object_type", _edit('type = "sphere"\nname = "green"', 'type = "cube"\nname = "green"'),
     "objects[1].type", "unknown object type 'cube' (expected 'sphere', 'box', 'capsule', 'mesh', 'static_box', 'static_mesh')", 'type = "cube"'),
    ("bad_vector_component", _edit("gravity = [0.0, 0.0, -9.81]", 'gravity = [0.0, 0.0, "down"]'),
     "gravity[2]", "must be a number (got 'down')", "gravity ="),
    ("colour_out_of_range", _edit("color = [0.2, 0.35, 0.9]", "color = [0.2, 1.35, 0.9]"),
     "objects[2].color[1]", "colour components must be in [0, 1] (got 1.35)", "1.35"),
    ("integer_field_learnable", _edit("substeps = 8", "substeps = { value = 8, learn = true }"),
     "time.substeps", "integer field", "substeps ="),
    ("mass_and_density", _edit("density = 400.0", "density = 400.0\nmass = 3.0"),
     "objects[2]", "give mass or density, not both", '[[objects]]\ntype = "sphere"\nname = "blue"'),
    ("camera_looks_at_itself", _edit("look_at = [0.0, 0.0, 0.5]", "look_at = [2.2, -3.6, 1.4]"),
     "camera.look_at", "must differ from the camera position", "look_at ="),
    ("zero_frames", _edit("frames = 60", "frames = 0"),
     "time.frames", "must be in [1, 1000000] (got 0)", "frames = 0"),
    ("not_a_table", lambda t: t[: t.index("[light]")].replace("seed = 0", "seed = 0\nlight = 3") + t[t.index("# The red"):],
     "light", "must be a table (got 3)", "light = 3"),
]


@pytest.mark.parametrize("name,edit,field,fragment,line_fragment", BAD, ids=[case[0] for case in BAD])
def test_bad_scene_files_raise_one_line_errors(tmp_path, name, edit, field, fragment, line_fragment):
    text = edit(BOUNCE_TEXT)
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SceneError) as info:
        load_scene(path)
    err = info.value
    message = str(err)
    assert "\n" not in message
    assert err.file == str(path) and message.startswith(str(path))
    assert err.field == field, message
    assert f": {field}: " in message
    assert fragment in message, message
    if line_fragment is None:
        assert err.line is None and message.startswith(f"{path}: {field}:")
    else:
        # the first line containing the fragment (fragments spanning lines: where it starts)
        expected = text[: text.index(line_fragment)].count("\n") + 1
        assert err.line == expected, message
        assert message.startswith(f"{path}:{expected}: {field}: ")


def test_malformed_toml_names_the_line(tmp_path):
    text = BOUNCE_TEXT.replace("substeps = 8", "substeps = = 8")
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(SceneError) as info:
        load_scene(path)
    expected = line_of(text, "substeps = = 8")
    assert info.value.line == expected
    assert str(info.value).startswith(f"{path}:{expected}: invalid TOML: ")
    assert f"line {expected}, column" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_is_a_scene_error(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(SceneError) as info:
        load_scene(missing)
    assert str(info.value) == f"{missing}: scene file not found"
    with pytest.raises(SceneError, match="is a directory"):
        load_scene(tmp_path)


def test_lines_are_found_for_inline_and_dotted_keys():
    text = 'camera.position = [0.0, -4.0, 1.0]\ncamera.look_at = [0.0, 0.0, 0.5]\ncamera.width = 0\n'
    with pytest.raises(SceneError) as info:
        parse_scene(text, source="dotted.toml")
    assert str(info.value) == "dotted.toml:3: camera.width: must be in [1, 8192] (got 0)"
    text = 'objects = [\n  { type = "sphere", position = [0, 0, 1], radius = 0.1 },\n' \
           '  { type = "sphere", position = [1, 0, 1], radius = -1.0 },\n]\n' + MINIMAL
    with pytest.raises(SceneError) as info:
        parse_scene(text, source="inline.toml")
    assert info.value.field == "objects[1].radius"
    assert info.value.line == line_of(text, "radius = -1.0")
    text = MINIMAL + "\n[ground]\ncolors = [\n  [0.5, 0.5, 0.5],\n  [0.5, 2.0, 0.5],\n]\n"
    with pytest.raises(SceneError) as info:
        parse_scene(text)
    assert info.value.field == "ground.colors[1][1]" and info.value.line == line_of(text, "2.0")


def test_scene_errors_survive_pickling():
    with pytest.raises(SceneError) as info:
        parse_scene(BOUNCE_TEXT.replace("radius = 0.25", "radius = 0"), source="x.toml")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.field == "objects[1].radius"


def test_reserved_fields_cannot_be_written():
    with pytest.raises(SceneError, match=r"^<string>:1: learnable: unknown field"):
        parse_scene("learnable = {}\n" + MINIMAL)
    with pytest.raises(SceneError, match=r"source: unknown field"):
        scene_from_dict({"source": "x", **tomllib.loads(MINIMAL)})


# --------------------------------------------------------------------------------------------
# Property tests: anything in, SceneSpec or SceneError out
# --------------------------------------------------------------------------------------------

BASE_DATA = tomllib.loads(BOUNCE_TEXT)
_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8)
_scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), _text,
                     st.sampled_from([0, 1, -1, 0.5, 2.0, 1e-9, 1e300, "sphere", "warp", "float64"]))
_keys = st.one_of(st.sampled_from(["value", "learn", "range", "type", "name", "radius", "frames", "duration",
                                   "mass", "density", "position", "camera", "x"]), _text)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
                       max_leaves=10)
_markers = st.fixed_dictionaries({"value": _values}, optional={"learn": _values, "range": _values})
_floats3 = st.lists(st.floats(), min_size=3, max_size=3)


def _slots(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _slots(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _slots(value, path + (index,))


def _at(node, path):
    for part in path:
        node = node[part]
    return node


@st.composite
def mutated_data(draw):
    data = copy.deepcopy(BASE_DATA)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_slots(data))))
        op = draw(st.sampled_from(["replace", "number", "vector", "marker", "delete", "add"]))
        target = _at(data, path)
        if op == "add" or not path:
            if isinstance(target, dict):
                target[draw(_keys)] = draw(_values)
            elif isinstance(target, list):
                target.append(draw(_values))
            continue
        parent, key = _at(data, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "number":
            parent[key] = draw(st.floats() | st.integers(-3, 3))
        elif op == "vector":
            parent[key] = draw(_floats3)
        elif op == "marker":
            marker = draw(_markers)
            if draw(st.booleans()):
                marker["value"] = target
            parent[key] = marker
        else:
            parent[key] = draw(_values)
    return data


def _check_outcome(call):
    try:
        spec = call()
    except SceneError as err:
        message = str(err)
        assert message and "\n" not in message
        return None
    assert isinstance(spec, SceneSpec)
    assert parse_scene(spec.to_toml()) == spec  # whatever validates also round-trips
    return spec


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(mutated_data())
def test_mutated_scene_data_gives_spec_or_scene_error(data):
    _check_outcome(lambda: scene_from_dict(copy.deepcopy(data), source="mutated"))
    text = dumps_toml(data)
    assert tomllib.loads(text) is not None  # the writer always writes valid TOML
    _check_outcome(lambda: parse_scene(text, source="mutated.toml"))


_toml_chars = st.sampled_from(list('[]{}=",.#\'\n -+0123456789abcdefxyz_') + ["true", "inf", "nan", "\\", "\t"])


@st.composite
def mutated_text(draw):
    lines = BOUNCE_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "edit", "insert"]))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "edit":
            line = lines[i]
            a = draw(st.integers(0, len(line)))
            b = draw(st.integers(a, len(line)))
            lines[i] = line[:a] + "".join(draw(st.lists(_toml_chars, max_size=4))) + line[b:]
        else:
            lines.insert(i, draw(st.text(max_size=30)))
    return "\n".join(lines)


@PROPERTY
@given(st.one_of(mutated_text(), st.text(max_size=200)))
def test_random_scene_text_gives_spec_or_scene_error(text):
    _check_outcome(lambda: parse_scene(text, source="fuzz.toml"))
