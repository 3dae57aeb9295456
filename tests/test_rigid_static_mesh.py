"""``type = "static_mesh"`` scene objects (``RigidBuilder.add_static_mesh``): parsing and field
errors naming the field and the file, a box dropped onto a static wedge rests on its slope (or
slides off it) where friction says, the shipped scenes/mesh_bowl.toml (two wedges) stepped,
gated and rendered with the static meshes in the segmentation, and ``hybridsim metrics``'
physics from such a scene."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsim.errors import AssetError, SceneError
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.rigid import rigid_body_objects, rigid_model, rigid_rollout
from hybridsim.sim.world import World

ROOT = Path(__file__).resolve().parents[1]
WEDGE = ROOT / "scenes" / "static_meshes" / "wedge.obj"
SLOPE = math.atan(0.5)  # the wedge's slope: normal (1, 0, 2) / sqrt(5), through (0.5, y, 0)
NORMAL = np.array([1.0, 0.0, 2.0]) / math.sqrt(5.0)

HEAD = """
name = "wedge"
precision = "float64"
device = "cpu"
[time]
fps = 30
frames = {frames}
substeps = 8
[camera]
position = [0.0, -2.0, 1.0]
look_at = [0.0, 0.0, 0.2]
width = 32
height = 24
[ground]
friction = 0.5
restitution = 0.0
"""

WEDGE_OBJECT = """
[[objects]]
type = "static_mesh"
name = "ramp"
file = "wedge.obj"
position = [0.0, 0.0, 0.0]
friction = {friction}
restitution = 0.0
color = [0.5, 0.5, 0.55]
"""

BOX = """
[[objects]]
type = "box"
name = "block"
position = [{x}, 0.0, {z}]
orientation = [0.0, {angle}, 0.0]
half_extents = [0.1, 0.1, 0.05]
mass = 1.0
friction = {friction}
restitution = 0.0
"""


def _scene_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "scene"
    folder.mkdir(exist_ok=True)
    (folder / "wedge.obj").write_bytes(WEDGE.read_bytes())
    return folder


def _wedge_scene(tmp_path, *, wedge_friction, box_friction, frames=30, drop=0.01):
    # the block lies turned to the slope, `drop` above it, over the slope point at x = -0.1
    surface = np.array([-0.1, 0.0, 0.5 * (0.5 + 0.1)])
    centre = surface + (0.05 + drop) * NORMAL
    text = HEAD.format(frames=frames) + WEDGE_OBJECT.format(friction=wedge_friction)
    text += BOX.format(x=centre[0], z=centre[2], angle=SLOPE, friction=box_friction)
    path = _scene_folder(tmp_path) / "wedge.toml"
    path.write_text(text)
    return load_scene(path), centre


def test_static_mesh_objects_parse_and_round_trip(tmp_path):
    spec, _ = _wedge_scene(tmp_path, wedge_friction=0.6, box_friction=1.0)
    ramp = spec.object("ramp")
    assert ramp.type == "static_mesh" and ramp.file == "wedge.obj" and ramp.scale == 1.0
    assert ramp.orientation == (0.0, 0.0, 0.0) and ramp.color == (0.5, 0.5, 0.55)
    assert parse_scene(spec.to_toml(), source=spec.source) == spec
    world = World(spec)
    assert world.rigid and rigid_body_objects(spec) == (1,)  # the static mesh is no body
    model = rigid_model(world)
    assert model.body_count == 1
    static = [s for s in model.shapes if s.body < 0]
    assert len(static) == 1 and static[0].kind == "mesh"
    # its face lying on the ground is left out of the contact planes (5 faces -> 4 planes)
    from hybridsim.solvers.rigid.builder import KIND_MESH

    on_mesh = model.contact["kind"] == KIND_MESH
    assert len(static[0].mesh_planes) == 8 and set(model.contact["b_hull"][on_mesh][:, 1].tolist()) == {4}


def test_static_mesh_field_errors_name_the_field_and_the_file(tmp_path):
    folder = _scene_folder(tmp_path)
    base = HEAD.format(frames=2)

    def scene(body: str, name="bad.toml"):
        path = folder / name
        path.write_text(base + body)
        return path

    with pytest.raises(SceneError) as info:
        load_scene(scene('[[objects]]\ntype = "static_mesh"\nposition = [0, 0, 0]\n'))
    assert info.value.field == "objects[0].file" and "required" in str(info.value)
    for escape in ("../outside.obj", "/etc/wedge.obj"):
        with pytest.raises(SceneError) as info:
            load_scene(scene(f'[[objects]]\ntype = "static_mesh"\nposition = [0, 0, 0]\nfile = "{escape}"\n'))
        assert info.value.field == "objects[0].file"
    with pytest.raises(SceneError) as info:
        load_scene(scene('[[objects]]\ntype = "static_mesh"\nposition = [0, 0, 0]\nfile = "wedge.obj"\nscale = 0\n'))
    assert info.value.field == "objects[0].scale"
    with pytest.raises(SceneError) as info:  # static meshes have no mass, velocity, density
        load_scene(scene('[[objects]]\ntype = "static_mesh"\nposition = [0, 0, 0]\nfile = "wedge.obj"\nmass = 1\n'))
    assert info.value.field == "objects[0].mass" and "unknown field" in str(info.value)

    # a corrupt file: an AssetError naming the file, from the model and from the renderer
    (folder / "junk.obj").write_text("this is not a mesh\n" * 20)
    box = BOX.format(x=0.0, z=1.0, angle=0.0, friction=0.5)
    path = scene('[[objects]]\ntype = "static_mesh"\nposition = [0, 0, 0]\nfile = "junk.obj"\n' + box)
    world = World(load_scene(path))
    for consumer in (lambda: rigid_model(world), lambda: rigid_rollout(world, frames=1)):
        with pytest.raises(AssetError) as info:
            consumer()
        assert "junk.obj" in str(info.value)
    from hybridsim.render.rigid import rigid_object_meshes

    with pytest.raises(AssetError, match="junk.obj"):
        rigid_object_meshes(world, None)
    # a missing file names it too
    path = scene('[[objects]]\ntype = "static_mesh"\nposition = [0, 0, 0]\nfile = "gone.obj"\n' + box)
    with pytest.raises(AssetError, match="gone.obj"):
        rigid_model(World(load_scene(path)))

    # its geometry and pose cannot be learned; it cannot be the moving end of a joint
    learned = ('[[objects]]\ntype = "static_mesh"\nfile = "wedge.obj"\n'
               'position = { value = [0.0, 0.0, 0.0], learn = true }\n' + box)
    with pytest.raises(SceneError) as info:
        rigid_rollout(World(load_scene(scene(learned))), frames=1)
    assert info.value.field == "objects[0].position" and "static meshes" in str(info.value)
    joint = ('[[objects]]\ntype = "static_mesh"\nname = "ramp"\nfile = "wedge.obj"\nposition = [0, 0, 0]\n'
             + box + '[[joints]]\ntype = "ball"\na = "ramp"\nb = "block"\nanchor = [0, 0, 0.5]\n')
    with pytest.raises(SceneError) as info:
        load_scene(scene(joint))
    assert info.value.field == "joints[0].a"


def test_open_static_mesh_uses_its_convex_hull(tmp_path):
    import trimesh

    folder = _scene_folder(tmp_path)
    open_box = trimesh.creation.box(extents=(1.0, 1.0, 0.2))
    open_box.update_faces(np.arange(len(open_box.faces)) != 0)  # one triangle missing: not closed
    open_box.export(folder / "open.obj")
    text = HEAD.format(frames=15) + '[[objects]]\ntype = "static_mesh"\nfile = "open.obj"\nposition = [0, 0, 0.3]\n'
    text += BOX.format(x=0.0, z=0.5, angle=0.0, friction=0.5)
    (folder / "open.toml").write_text(text)
    world = World(load_scene(folder / "open.toml"))
    with torch.no_grad():
        trajectory = rigid_rollout(world)
    assert float(trajectory.positions[-1, 0, 2]) == pytest.approx(0.4 + 0.05, abs=3e-3)  # on the slab's top


@pytest.mark.parametrize("rough", [True, False])
def test_box_dropped_on_a_static_wedge_rests_or_slides_as_friction_says(tmp_path, rough):
    # the mean friction 0.8 > tan(26.57 deg) = 0.5 holds the block; 0.1 lets it slide off the foot
    spec, start = _wedge_scene(tmp_path, wedge_friction=0.6 if rough else 0.2, box_friction=1.0 if rough else 0.0,
                               frames=30 if rough else 45)
    world = World(spec)
    with torch.no_grad():
        trajectory = rigid_rollout(world)
    x = trajectory.positions[-1, 0].numpy()
    if rough:
        height = float(x @ NORMAL - 0.5 / math.sqrt(5.0))  # the centre's height over the slope plane
        assert height == pytest.approx(0.05, abs=3e-3), height
        along = x - start - ((x - start) @ NORMAL) * NORMAL
        assert np.linalg.norm(along) < 5e-3, "static friction holds it where it landed"
        assert float(trajectory.velocities[-1].norm()) < 1e-3
        q = trajectory.orientations[-1, 0].numpy()
        assert abs(abs(q[1]) - math.sin(SLOPE / 2.0)) < 2e-3, "it lies flat on the slope"
    else:
        assert x[0] > 0.5 + 0.1 and x[2] == pytest.approx(0.05, abs=3e-3), "it slid off onto the ground"
    from hybridsim.data.gates import QualityGates, evaluate_rigid_gates

    measured, failures = evaluate_rigid_gates(world, trajectory, QualityGates(penetration_m=3e-3))
    assert not failures, failures


def test_shipped_mesh_bowl_scene_steps_renders_and_measures(tmp_path):
    from hybridsim.cli import main
    from hybridsim.data.gates import QualityGates, rigid_initial_gates
    from hybridsim.metrics import scene_physics_metrics
    from hybridsim.render.rigid import render_rigid

    path = ROOT / "scenes" / "mesh_bowl.toml"
    spec = load_scene(path)
    assert [obj.type for obj in spec.objects][:2] == ["static_mesh", "static_mesh"]
    assert parse_scene(spec.to_toml(), source=str(path)) == spec
    world = World(spec)
    assert world.rigid and world.parameters()
    assert not rigid_initial_gates(world, QualityGates())[1]
    with torch.no_grad():
        trajectory = rigid_rollout(world, frames=3)
    assert trajectory.positions.shape == (4, 3, 3)
    layers = render_rigid(world, trajectory, frames=slice(0, 1))
    ids, counts = np.unique(layers["segmentation"][0].numpy(), return_counts=True)
    assert {1, 2, 3, 4, 5} <= set(ids.tolist()), "both wedges and the three moving objects are drawn"
    assert torch.isfinite(layers["depth"]).all() and torch.isfinite(layers["normal"]).all()
    seg, normal = layers["segmentation"][0], layers["normal"][0]
    # the left wedge's slope faces +x+z: much of it is drawn with that normal (camera axes)
    from hybridsim.render.camera_io import scene_cameras

    rotation = scene_cameras(spec.camera, 1, spec.time.fps)[0].extrinsics(dtype=normal.dtype)[:3, :3]
    slope = rotation @ torch.as_tensor(NORMAL, dtype=normal.dtype)
    assert float(((normal[seg == 1] @ slope) > 0.99).float().mean()) > 0.3
    # coverage is of the moving objects only
    coverage = layers["coverage"][0]
    assert float(coverage[seg == 1].mean()) < 0.05 and float(coverage[seg == 3].mean()) > 0.5

    out = tmp_path / "bowl.mp4"
    assert main(["render", str(path), "--frames", "2", "-o", str(out), "-q"]) == 0
    states = dict(np.load(out.with_suffix(".states.npz")))
    physics = scene_physics_metrics(spec, states)
    assert physics["simulator"] == "rigid" and physics["body_count"] == 3
    assert physics["max_penetration_m"] < 1e-3


def test_static_mesh_in_an_mpm_scene_is_refused_naming_the_object():
    """The MPM material collides with static boxes only: a static mesh there would be passed
    through silently, so the scene is refused and the message names the object."""
    root = Path(__file__).resolve().parent.parent / "scenes"
    text = (root / "elastic_drop.toml").read_text() + (
        '\n[[objects]]\ntype = "static_mesh"\nfile = "static_meshes/wedge.obj"\nposition = [0.0, 0.0, 0.0]\n')
    with pytest.raises(SceneError, match=r"objects\[0\]\.type.*static meshes"):
        parse_scene(text, source=str(root / "drop_on_wedge.toml"))
