"""Scenes with a [fluid] table: loading, simulation from the scene, rendering (one pixel per cell),
exact flow, gradients of a pixel loss through render and fluid, and the CLI."""

import math

import numpy as np
import pytest
import torch

from hybridsim.cli import main
from hybridsim.errors import SceneError
from hybridsim.render import Camera
from hybridsim.render.fluid import render_fluid_frames
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.fluid import fluid_rollout
from hybridsim.sim.world import World

SCENE = """
name = "tiny_plume"
backend = "{backend}"
precision = "{precision}"
[time]
fps = 30
frames = {frames}
substeps = 2
[camera]
position = [0.12, -2.0, 0.16]
look_at = [0.12, 0.0, 0.16]
projection = "orthographic"
ortho_height = 0.32
width = 12
height = 16
[fluid]
cells = [12, 16]
cell_size = 0.02
buoyancy = {{ value = 2.0, learn = true, range = [0.0, 10.0] }}
advection = "semi_lagrangian"
density_advection = "conservative"
[[fluid.inflows]]
center = {{ value = [0.12, 0.06], learn = true, range = [0.0, 1.0] }}
radius = 0.04
rate = {{ value = 3.0, learn = true, range = [0.0, 10.0] }}
"""


def _scene(backend="warp", precision="float64", frames=6):
    return parse_scene(SCENE.format(backend=backend, precision=precision, frames=frames), source="tiny.toml")


def test_shipped_plume_scene_loads_with_learnable_fluid_fields():
    from importlib.resources import files

    spec = load_scene(str(files("hybridsim.scenes") / "plume2d.toml"))
    assert spec.fluid.cells == (80, 96) and spec.fluid.boundary == ("wall",) * 4
    assert {"fluid.buoyancy", "fluid.inflows[0].center", "fluid.inflows[0].rate"} <= set(spec.learnable)
    assert spec.learnable["fluid.inflows[0].center"].size == 2
    assert parse_scene(spec.to_toml()) == spec
    with pytest.raises(SceneError, match="fluid.inflows\\[0\\].rate"):
        spec.with_values({"fluid.inflows[0].rate": 50.0})  # outside its learnable range


@pytest.mark.parametrize("bad,field", [
    ("cells = [12, 16]", "fluid.cells"),
    ('boundary = "wall"', "fluid.boundary"),
])
def test_bad_fluid_tables_name_the_field(bad, field):
    text = SCENE.format(backend="warp", precision="float64", frames=2)
    replacement = {"cells = [12, 16]": "cells = [12, 1]", 'boundary = "wall"': 'boundary = ["periodic", "wall", "wall", "wall"]'}[bad]
    if bad not in text:
        text = text.replace("cell_size = 0.02", f"cell_size = 0.02\n{replacement}")
    else:
        text = text.replace(bad, replacement)
    with pytest.raises(SceneError) as info:
        parse_scene(text, source="bad.toml")
    assert field in str(info.value)


def test_fluid_with_objects_other_than_boxes_and_spheres_is_refused():
    # boxes and spheres couple with the fluid (tests/test_fluid_rigid_coupling.py); others are refused
    text = (SCENE.format(backend="warp", precision="float64", frames=2)
            + '\n[[objects]]\ntype = "capsule"\nposition = [0, 0, 1]\nradius = 0.1\nhalf_height = 0.1\n')
    with pytest.raises(SceneError, match="objects") as error:
        World(parse_scene(text, source="mix.toml"))
    assert error.value.field == "objects[0].type"


def test_inflow_adds_density_at_its_rate_and_buoyancy_lifts_it():
    world = World(_scene(frames=9))
    with torch.no_grad():
        trajectory = fluid_rollout(world)
    spec = world.spec.fluid
    cell_area = spec.cell_size**2
    added = float(trajectory.density[-1].sum()) * cell_area
    expected = 3.0 * math.pi * 0.04**2 * float(trajectory.times[-1])  # rate x disc area x time
    assert added == pytest.approx(expected, rel=0.1)
    _, y = world.fluid_model().cell_centers()
    heights = [(d * y).sum() / d.sum() for d in trajectory.density[2:]]
    assert heights[-1] > heights[0]


def test_orthographic_render_shows_one_cell_per_pixel():
    world = World(_scene(frames=3))
    with torch.no_grad():
        trajectory = fluid_rollout(world)
    layers = render_fluid_frames(Camera.from_spec(world.spec.camera), world.spec.fluid, trajectory, 1 / 30)
    image = layers["density"][-1]  # (H, W): row 0 is the top of the domain
    grid = trajectory.density[-1].T.flip(0)  # (ny, nx) with y up -> rows top-down
    assert torch.allclose(image, grid, atol=1e-12)
    assert layers["rgb"].shape == (4, 16, 12, 3)


def test_fluid_flow_is_velocity_times_frame_time_in_pixels():
    world = World(_scene(frames=4))
    with torch.no_grad():
        trajectory = fluid_rollout(world)
    camera = Camera.from_spec(world.spec.camera)
    layers = render_fluid_frames(camera, world.spec.fluid, trajectory, 1 / 30)
    from hybridsim.render.fluid import cell_velocity

    velocity = cell_velocity(trajectory.velocity_x[2], trajectory.velocity_y[2], (12, 16))  # (nx, ny, 2)
    pixels_per_m = 16 / 0.32
    expected = torch.stack([velocity[..., 0], -velocity[..., 1]], -1) * pixels_per_m / 30  # image y is down
    got = layers["flow_forward"][2].permute(1, 0, 2).flip(1)  # back to (nx, ny, 2) with y up
    interior = ~layers["occlusion_forward"][2].permute(1, 0).flip(1)
    assert interior.sum() > 100
    assert torch.allclose(got[interior], expected[interior], atol=1e-10)


@pytest.mark.parametrize("backend", ["warp", "taichi"])
def test_pixel_loss_gradients_reach_fluid_parameters(backend):
    world = World(_scene(backend=backend, frames=3))
    camera = Camera.from_spec(world.spec.camera)
    weights = torch.rand((4, 16, 12), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss_of(values):
        trajectory = fluid_rollout(world, values)
        return (render_fluid_frames(camera, world.spec.fluid, trajectory, 1 / 30)["alpha"] * weights).sum()

    params = world.parameters()
    loss_of(params).backward()
    for path, component in (("fluid.buoyancy", None), ("fluid.inflows[0].rate", None), ("fluid.inflows[0].center", 0)):
        base = {k: v.detach().clone() for k, v in params.items()}
        h = 1e-6
        plus, minus = ({k: v.clone() for k, v in base.items()} for _ in range(2))
        (plus[path].reshape(-1))[component or 0] += h
        (minus[path].reshape(-1))[component or 0] -= h
        with torch.no_grad():
            fd = (float(loss_of(plus)) - float(loss_of(minus))) / (2 * h)
        ad = float(params[path].grad.reshape(-1)[component or 0])
        assert ad == pytest.approx(fd, rel=1e-4, abs=1e-8), (path, ad, fd)
    assert abs(float(params["fluid.inflows[0].rate"].grad)) > 1e-3


def test_pixel_loss_gradients_reach_a_learned_obstacle_centre():
    """``fluid.obstacles[i].center`` is learnable in 2D: the faces it cuts are exact lengths in
    torch, so a pixel loss through render and fluid has its gradient (against central differences;
    the box's sides stay clear of face ends for +-h)."""
    text = SCENE.format(backend="warp", precision="float64", frames=3) + """
[[fluid.obstacles]]
shape = "box"
center = { value = [0.1313, 0.1747], learn = true, range = [0.0, 1.0] }
half_size = [0.0305, 0.0211]
"""
    world = World(parse_scene(text, source="tiny.toml"))
    camera = Camera.from_spec(world.spec.camera)
    weights = torch.rand((4, 16, 12), generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss_of(values):
        trajectory = fluid_rollout(world, values)
        return (render_fluid_frames(camera, world.spec.fluid, trajectory, 1 / 30)["alpha"] * weights).sum()

    params = world.parameters()
    loss_of(params).backward()
    grad = params["fluid.obstacles[0].center"].grad
    for component in (0, 1):
        h = 1e-6
        plus, minus = ({k: v.detach().clone() for k, v in params.items()} for _ in range(2))
        plus["fluid.obstacles[0].center"][component] += h
        minus["fluid.obstacles[0].center"][component] -= h
        with torch.no_grad():
            fd = (float(loss_of(plus)) - float(loss_of(minus))) / (2 * h)
        assert float(grad[component]) == pytest.approx(fd, rel=1e-4, abs=1e-9), (component, float(grad[component]), fd)
    assert float(grad.abs().max()) > 1e-4


def test_cli_renders_a_fluid_scene(tmp_path, capsys):
    scene = tmp_path / "tiny.toml"
    scene.write_text(SCENE.format(backend="warp", precision="float32", frames=4))
    out = tmp_path / "plume.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 0
    from hybridsim.render import read_video

    frames, fps = read_video(out)
    assert frames.shape == (5, 16, 12, 3) and fps == 30
    layers = np.load(out.with_suffix(".layers.npz"))
    assert layers["density"].shape == (5, 16, 12) and layers["flow_forward"].shape == (5, 16, 12, 2)
    states = np.load(out.with_suffix(".states.npz"))
    assert states["density"].shape == (5, 12, 16)
    assert "grid fluid 12x16" in capsys.readouterr().out


def test_gradcheck_command_runs_on_a_fluid_scene(tmp_path, capsys):
    scene = tmp_path / "tiny.toml"
    scene.write_text(SCENE.format(backend="warp", precision="float32", frames=3))
    assert main(["gradcheck", str(scene), "--frames", "2"]) == 0
    out = capsys.readouterr().out
    assert "fluid.buoyancy" in out and "fluid.inflows[0].center[0]" in out and "PASS" in out
