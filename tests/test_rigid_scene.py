"""Scenes with rigid objects (box, capsule, mesh, static_box): loading and field errors, simulation
from the scene (a sliding box stops where v0^2 / (2 mu g) says; a mesh's centre of mass), gradients
of a pixel loss through render + rigid rollout, and ``hybridsim render``."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsim.cli import main
from hybridsim.errors import SceneError
from hybridsim.render import read_frames
from hybridsim.render.rigid import render_rigid
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.rigid import rigid_rollout
from hybridsim.sim.world import World

ROOT = Path(__file__).resolve().parents[1]
BOXES = ROOT / "scenes" / "boxes.toml"

HEAD = """
name = "tiny_rigid"
precision = "float64"
device = "cpu"
[time]
fps = 30
frames = {frames}
substeps = {substeps}
[camera]
position = [0.0, -1.6, 0.9]
look_at = [0.0, 0.0, 0.05]
width = {width}
height = {height}
[ground]
friction = {mu}
restitution = 0.0
"""

SLIDER = """
[[objects]]
type = "box"
name = "slider"
position = [{x0}, 0.0, 0.1]
half_extents = [0.1, 0.1, 0.1]
velocity = {{ value = [{v0}, 0.0, 0.0], learn = true }}
friction = {{ value = {mu}, learn = true, range = [0.0, 2.0] }}
restitution = 0.0
mass = 1.0
color = [0.9, 0.3, 0.2]
"""


def _slider_scene(*, v0=2.0, mu=0.4, x0=-0.5, frames=45, substeps=8, width=32, height=24):
    text = HEAD.format(frames=frames, substeps=substeps, width=width, height=height, mu=mu)
    return parse_scene(text + SLIDER.format(v0=v0, mu=mu, x0=x0), source="slider.toml")


def test_shipped_boxes_scene_loads_with_learnable_rigid_fields():
    spec = load_scene(BOXES)
    assert [obj.type for obj in spec.objects] == ["box", "static_box", "box", "sphere"]
    assert {"objects[0].friction", "objects[0].velocity", "objects[2].orientation"} <= set(spec.learnable)
    assert spec.object("tumbler").orientation == (0.0, 0.3, 0.0) and spec.object("tumbler").density == 500.0
    assert spec.object("step").half_extents == (0.4, 0.3, 0.15)
    assert spec.ground.friction == 0.5 and spec.ground.restitution == 0.0
    assert spec.camera.width == 160 and spec.camera.height == 120
    assert parse_scene(spec.to_toml()) == spec
    world = World(spec)
    assert world.rigid and set(world.parameters()) == set(spec.learnable)
    with pytest.raises(SceneError, match="rigid objects"):
        world.model()  # the sphere solver refuses a rigid scene instead of ignoring its boxes
    assert not World(load_scene(ROOT / "scenes" / "bounce.toml")).rigid


def test_bad_rigid_fields_name_the_field(tmp_path):
    base = HEAD.format(frames=2, substeps=2, width=8, height=8, mu=0.5)
    bad_box = base + '[[objects]]\ntype = "box"\nposition = [0, 0, 1]\nhalf_extents = [0.1, -0.2, 0.1]\n'
    with pytest.raises(SceneError) as info:
        parse_scene(bad_box, source="bad.toml")
    assert info.value.field == "objects[0].half_extents[1]" and "must be > 0 (got -0.2)" in str(info.value)

    for escape in ("../outside.obj", "meshes/../../outside.obj", "/etc/cube.obj"):
        text = base + f'[[objects]]\ntype = "mesh"\nposition = [0, 0, 1]\nfile = "{escape}"\n'
        with pytest.raises(SceneError) as info:
            parse_scene(text, source="bad.toml")
        assert info.value.field == "objects[0].file", str(info.value)

    capsule = base + '[[objects]]\ntype = "capsule"\nposition = [0, 0, 1]\nradius = 0.1\nhalf_height = 0\n'
    with pytest.raises(SceneError) as info:
        parse_scene(capsule, source="bad.toml")
    assert info.value.field == "objects[0].half_height"

    both = base + '[[objects]]\ntype = "box"\nposition = [0, 0, 1]\nhalf_extents = [1, 1, 1]\nmass = 1\ndensity = 2\n'
    with pytest.raises(SceneError, match="give mass or density, not both"):
        parse_scene(both, source="bad.toml")

    # geometry cannot be learned (contact slots are built from it once)
    learned = base + ('[[objects]]\ntype = "box"\nposition = [0, 0, 1]\n'
                      'half_extents = { value = [0.1, 0.1, 0.1], learn = true }\n')
    with pytest.raises(SceneError) as info:
        rigid_rollout(World(parse_scene(learned, source="bad.toml")), frames=1)
    assert info.value.field == "objects[0].half_extents"

    # a symbolic link out of the scene's folder is refused when the mesh is loaded
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "link.obj").symlink_to(tmp_path / "outside.obj")
    path = folder / "linked.toml"
    path.write_text(base + '[[objects]]\ntype = "mesh"\nposition = [0, 0, 1]\nfile = "link.obj"\n')
    with pytest.raises(SceneError) as info:
        rigid_rollout(World(load_scene(path)), frames=1)
    assert info.value.field == "objects[0].file" and "inside the scene file's folder" in str(info.value)


def test_sliding_box_from_a_scene_stops_where_friction_says():
    v0, mu, g, x0 = 2.0, 0.4, 9.81, -0.5
    world = World(_slider_scene(v0=v0, mu=mu, x0=x0, frames=45))
    with torch.no_grad():
        trajectory = rigid_rollout(world)
    stop_time = v0 / (mu * g)
    assert trajectory.frame_count == 46 and stop_time < 45 / 30
    travelled = float(trajectory.positions[-1, 0, 0]) - x0
    expected = v0 * v0 / (2.0 * mu * g)
    assert travelled == pytest.approx(expected, rel=0.02)
    assert float(trajectory.velocities[-1].abs().max()) < 1e-6  # at rest, not creeping
    assert float(trajectory.positions[-1, 0, 2]) == pytest.approx(0.1, abs=1e-3)  # on the ground, upright
    assert torch.allclose(trajectory.orientations[-1, 0], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64), atol=1e-6)


def test_mesh_object_uses_its_centre_of_mass_and_rests_on_the_ground(tmp_path):
    import trimesh

    cube = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    cube.apply_translation((0.1, 0.0, 0.0))  # the file's origin is not the centre of mass
    (tmp_path / "meshes").mkdir()
    cube.export(tmp_path / "meshes" / "cube.obj")
    text = HEAD.format(frames=20, substeps=8, width=8, height=8, mu=0.5)
    text += '[[objects]]\ntype = "mesh"\nfile = "meshes/cube.obj"\nposition = [0.0, 0.0, 0.3]\nmass = 2.0\n'
    path = tmp_path / "mesh.toml"
    path.write_text(text)
    world = World(load_scene(path))
    with torch.no_grad():
        trajectory = rigid_rollout(world)
    assert torch.allclose(trajectory.positions[0, 0], torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64))
    assert float(trajectory.positions[-1, 0, 2]) == pytest.approx(0.1, abs=2e-3)
    assert float(trajectory.model.body_mass[0]) == pytest.approx(2.0)
    layers = render_rigid(world, trajectory, frames=slice(-1, None))
    assert int(layers["segmentation"].max()) == 1  # the mesh is drawn as object 0


@pytest.mark.parametrize("path,index", [("objects[0].velocity", 0), ("objects[0].friction", None),
                                        ("objects[0].orientation", 2)])
def test_pixel_loss_gradient_through_render_and_rigid_rollout_matches_finite_differences(path, index):
    world = World(_slider_scene(v0=1.5, mu=0.4, x0=-0.15, frames=4, substeps=4, width=24, height=16))
    generator = torch.Generator().manual_seed(0)
    weights = torch.rand((1, 16, 24, 3), generator=generator, dtype=torch.float64)

    def loss(params):
        trajectory = rigid_rollout(world, params)
        rgb = render_rigid(world, trajectory, params, frames=slice(1, None), softness=1.0)["rgb"]
        return (rgb * weights).sum()

    params = world.parameters()
    # any field may be handed in as a parameter: a yaw of the sliding box (rotation vector)
    params["objects[0].orientation"] = torch.tensor([0.0, 0.0, 0.3], dtype=torch.float64, requires_grad=True)
    value = loss(params)
    value.backward()
    grad = params[path].grad if index is None else params[path].grad[index]
    eps = 1e-5
    with torch.no_grad():
        shifted = []
        for sign in (1.0, -1.0):
            moved = {k: v.detach().clone() for k, v in params.items()}
            if index is None:
                moved[path] += sign * eps
            else:
                moved[path][index] += sign * eps
            shifted.append(float(loss(moved)))
    fd = (shifted[0] - shifted[1]) / (2 * eps)
    assert abs(fd) > 1e-2, fd  # the loss does depend on it (the box moves across pixels)
    assert float(grad) == pytest.approx(fd, rel=1e-4, abs=1e-7), (float(grad), fd)


def test_cli_render_writes_rigid_outputs_with_the_right_shapes(tmp_path, capsys):
    out = tmp_path / "boxes.mp4"
    assert main(["render", str(BOXES), "--frames", "5", "-o", str(out), "-q"]) == 0
    assert "rigid bodies 3" in capsys.readouterr().out
    frames, _ = read_frames(out)
    assert frames.shape == (6, 120, 160, 3)
    flow_frames, _ = read_frames(out.with_suffix(".flow.mp4"))
    assert flow_frames.shape == (6, 120, 160, 3)
    layers = np.load(out.with_suffix(".layers.npz"))
    assert layers["depth"].shape == (6, 120, 160) and layers["alpha"].shape == (6, 120, 160)
    assert layers["normal"].shape == (6, 120, 160, 3) and layers["segmentation"].dtype == np.int32
    assert set(np.unique(layers["segmentation"])) == {0, 1, 2, 3, 4}  # ground + all four objects visible
    for key in ("flow_forward", "flow_backward"):
        assert layers[key].shape == (6, 120, 160, 2)
    for key in ("occlusion_forward", "occlusion_backward"):
        assert layers[key].shape == (6, 120, 160) and layers[key].dtype == bool
    assert layers["occlusion_forward"][-1].all() and layers["occlusion_backward"][0].all()
    assert layers["object_poses"].shape == (6, 4, 7)
    assert layers["intrinsics"].shape == (6, 3, 3) and layers["extrinsics"].shape == (6, 4, 4)
    # the slider moves right: its visible pixels flow towards +x in frame 0
    slider = (layers["segmentation"][0] == 1) & ~layers["occlusion_forward"][0]
    assert slider.sum() > 10 and layers["flow_forward"][0][slider][:, 0].mean() > 0.5
    states = np.load(out.with_suffix(".states.npz"))
    assert states["positions"].shape == (6, 3, 3) and states["orientations"].shape == (6, 3, 4)
    assert states["velocities"].shape == (6, 3, 3) and states["angular_velocities"].shape == (6, 3, 3)
    assert states["body_objects"].tolist() == [0, 2, 3]
    assert np.allclose(states["times"], np.arange(6) / 30.0)
