"""Scenes with an [mpm] table: loading and one-line errors, the model built from the scene with
learnable material and body values (gradients through a rollout), substeps, the particle
renderer (gradcheck, exact flow, bounded chunks), the CLI render and gradcheck."""

import math

import numpy as np
import pytest
import torch

from hybridsim.cli import main
from hybridsim.errors import SceneError
from hybridsim.render import Camera
from hybridsim.render.particles import _plan, render_mpm, render_particle_frames, render_particles
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.mpm import mpm_model, mpm_rollout, mpm_substeps
from hybridsim.sim.world import World

SCENE = """
name = "tiny_mpm"
backend = "{backend}"
precision = "{precision}"
[time]
fps = 30
frames = {frames}
[camera]
position = [0.5, -3.0, 0.3]
look_at = [0.5, 0.0, 0.3]
projection = "orthographic"
ortho_height = 0.6
width = 40
height = 24
[mpm]
dim = 2
resolution = [21, 13]
size = 1.0
[[mpm.materials]]
name = "jelly"
kind = "elastic"
youngs_modulus = {{ value = 5e3, learn = true, range = [1e3, 2e4] }}
poisson_ratio = 0.3
viscosity = 0.5
[[mpm.materials]]
name = "water"
kind = "liquid"
bulk_modulus = {{ value = 2e3, learn = true, range = [5e2, 1e4] }}
[[mpm.bodies]]
material = "jelly"
center = {{ value = [0.3, 0.22], learn = true, range = [0.0, 1.0] }}
half_size = [0.08, 0.06]
velocity = {{ value = [0.5, -1.5], learn = true, range = [-5.0, 5.0] }}
color = {{ value = [0.9, 0.3, 0.2], learn = true, range = [0.0, 1.0] }}
[[mpm.bodies]]
shape = "sphere"
material = "water"
center = [0.7, 0.25]
radius = 0.08
"""


def _text(backend="warp", precision="float64", frames=4):
    return SCENE.format(backend=backend, precision=precision, frames=frames)


def _world(frames=4, **kwargs):
    return World(parse_scene(_text(frames=frames, **kwargs), source="tiny.toml"), device="cpu")


# -- scene files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,dim,learnable", [
    ("dam_break.toml", 2, {"mpm.materials[0].viscosity"}),
    ("elastic_drop.toml", 3, {"mpm.materials[0].youngs_modulus", "mpm.bodies[0].velocity"}),
])
def test_shipped_mpm_scenes_load_and_round_trip(name, dim, learnable):
    from importlib.resources import files

    spec = load_scene(str(files("hybridsim.scenes") / name))
    assert spec.mpm.dim == dim and set(spec.learnable) == learnable
    assert parse_scene(spec.to_toml()) == spec
    world = World(spec, device="cpu")
    assert set(world.parameters()) == learnable


def test_tiny_scene_parses_with_learnable_vectors_of_two():
    spec = parse_scene(_text(), source="tiny.toml")
    assert spec.mpm.resolution_tuple == (21, 13) and spec.mpm.dx == pytest.approx(0.05)
    assert spec.learnable["mpm.bodies[0].velocity"].value == (0.5, -1.5)
    assert spec.mpm.materials[1].poisson == 0.0  # a liquid given by its bulk modulus
    assert spec.mpm.body_spacing(spec.mpm.bodies[0]) == pytest.approx(0.025)  # dx / 2 by default


@pytest.mark.parametrize("old,new,field,message", [
    ('material = "water"\ncenter', 'material = "watr"\ncenter', "mpm.bodies[1].material", "did you mean 'water'"),
    ("youngs_modulus = { value = 5e3, learn = true, range = [1e3, 2e4] }", "", "mpm.materials[0].youngs_modulus",
     "required field is missing"),
    ("poisson_ratio = 0.3", "poisson_ratio = 0.3\nbulk_modulus = 1e3", "mpm.materials[0].bulk_modulus",
     "is for liquids"),
    ("viscosity = 0.5", "viscosity = 0.5\nhardening = 3.0", "mpm.materials[0].hardening", "snow parameter"),
    ("half_size = [0.08, 0.06]", "half_size = [0.08, 0.06, 0.1]", "mpm.bodies[0].half_size", "needs 2 components"),
    ("radius = 0.08", "radius = 0.4", "mpm.bodies[1].center", "outside the MPM grid interior"),
    ('shape = "sphere"\nmaterial = "water"\ncenter = [0.7, 0.25]\nradius = 0.08',
     'shape = "mesh"\nmaterial = "water"\nfile = "bunny.obj"', "mpm.bodies[1].shape", "need a 3D [mpm]"),
    ('name = "water"', 'name = "jelly"', "mpm.materials[1].name", "duplicate material name"),
    ("resolution = [21, 13]", "resolution = [21, 8]", "mpm.resolution", "at least 9 nodes"),
    ('kind = "liquid"', 'kind = "slime"', "mpm.materials[1].kind", "must be one of"),
    ("radius = 0.08", "radius = 0.08\nspacing = 0.01\nparticles_per_cell = 4", "mpm.bodies[1].spacing",
     "not both"),
])
def test_bad_mpm_fields_name_file_line_and_field(old, new, field, message):
    text = _text()
    assert text.count(old) == 1
    text = text.replace(old, new)
    with pytest.raises(SceneError) as info:
        parse_scene(text, source="bad.toml")
    shown = str(info.value)
    assert shown.startswith("bad.toml:") and f": {field}: " in shown and message in shown, shown


def test_mpm_with_fluid_is_refused_clearly_and_with_objects_is_coupled():
    objects = _text() + '\n[[objects]]\ntype = "box"\nposition = [0, 0, 1]\nhalf_extents = [0.1, 0.1, 0.1]\n'
    assert World(parse_scene(objects, source="mix.toml")).coupled  # tests/test_coupling.py
    fluid = _text() + "\n[fluid]\ncells = [8, 8]\ncell_size = 0.1\n"
    with pytest.raises(SceneError, match=r"\[mpm\] and \[fluid\]"):
        World(parse_scene(fluid, source="mix.toml"))


def test_fields_that_cannot_be_learned_are_named():
    text = _text().replace("half_size = [0.08, 0.06]", "half_size = { value = [0.08, 0.06], learn = true }")
    world = World(parse_scene(text, source="geo.toml"), device="cpu")
    with pytest.raises(SceneError, match=r"geo.toml: mpm.bodies\[0\].half_size: cannot be learned"):
        mpm_model(world, world.parameters())


# -- model, substeps, gradients -------------------------------------------------------------------

def test_model_takes_values_from_the_scene_and_parameters():
    world = _world()
    params = world.parameters()
    model = mpm_model(world, params)
    assert model.dim == 2 and model.material_names == ("jelly", "water")
    assert model.youngs_modulus.tolist() == pytest.approx([5e3, 2 * 2e3])  # liquid: E = d K, nu = 0
    assert model.poisson_ratio.tolist() == pytest.approx([0.3, 0.0])
    assert model.gravity == (0.0, -9.81)
    jelly = model.particle_body == 0
    assert int(jelly.sum()) == 6 * 4 and torch.allclose(model.particle_velocity[jelly][0],
                                                        torch.tensor([0.5, -1.5], dtype=torch.float64))
    assert torch.allclose(model.particle_position[jelly].mean(0), torch.tensor([0.3, 0.22], dtype=torch.float64),
                          atol=0.01)
    with torch.no_grad():
        params["mpm.bodies[0].center"] += torch.tensor([0.1, 0.05], dtype=torch.float64)
    moved = mpm_model(world, params).particle_position[jelly]
    assert torch.allclose(moved - model.particle_position[jelly].detach(),
                          torch.tensor([0.1, 0.05], dtype=torch.float64).expand_as(moved))


def test_substeps_cover_the_stiff_end_of_learnable_ranges_and_warn_when_forced():
    world = _world()
    model = mpm_model(world)
    from hybridsim.solvers.mpm import substep_count

    substeps, dt = mpm_substeps(world, model)
    assert substeps > substep_count(model, 1 / 30)  # the range reaches E = 2e4 and K = 1e4
    assert dt == pytest.approx(1 / 30 / substeps)
    text = _text().replace("size = 1.0", "size = 1.0\nsubsteps = 2")
    forced = World(parse_scene(text, source="few.toml"), device="cpu")
    with pytest.warns(UserWarning, match="few.toml: mpm.substeps = 2"):
        assert mpm_substeps(forced)[0] == 2


def test_gradients_reach_youngs_modulus_bulk_modulus_velocity_and_centre():
    world = _world(frames=4)
    params = world.parameters()
    trajectory = mpm_rollout(world, params)
    assert trajectory.positions.shape[0] == 5 and trajectory.substeps >= 1
    jelly = trajectory.particle_body == 0
    loss = trajectory.positions[-1][jelly][:, 1].mean() + trajectory.positions[-1][~jelly][:, 0].std()
    loss.backward()
    for path in ("mpm.materials[0].youngs_modulus", "mpm.materials[1].bulk_modulus", "mpm.bodies[0].velocity",
                 "mpm.bodies[0].center"):
        grad = params[path].grad
        assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().max()) > 0, path

    # the Young's modulus gradient matches central finite differences (float64)
    def loss_at(youngs):
        values = {k: v.detach().clone() for k, v in params.items()}
        values["mpm.materials[0].youngs_modulus"] = torch.tensor(youngs, dtype=torch.float64)
        with torch.no_grad():
            traj = mpm_rollout(world, values)
        return float(traj.positions[-1][jelly][:, 1].mean() + traj.positions[-1][~jelly][:, 0].std())

    h = 1e-2
    fd = (loss_at(5e3 + h) - loss_at(5e3 - h)) / (2 * h)
    assert float(params["mpm.materials[0].youngs_modulus"].grad) == pytest.approx(fd, rel=1e-5)


# -- renderer -------------------------------------------------------------------------------------

def _camera(projection="perspective", width=12, height=9):
    return Camera(position=(0.0, -3.0, 0.5), look_at=(0.0, 0.0, 0.5), up=(0.0, 0.0, 1.0), fovy_deg=30.0,
                  width=width, height=height, projection=projection, ortho_height=1.2)


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
@pytest.mark.parametrize("with_liquid", [False, True])
def test_particle_renderer_gradcheck(projection, with_liquid):
    generator = torch.Generator().manual_seed(1)
    count = 5
    positions = (torch.rand(count, 3, generator=generator, dtype=torch.float64) - 0.5) * torch.tensor(
        [0.6, 0.4, 0.5], dtype=torch.float64) + torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    colors = torch.rand(count, 3, generator=generator, dtype=torch.float64)
    sigmas = torch.full((count,), 0.08, dtype=torch.float64)
    liquid = torch.tensor([False, False, True, True, True]) if with_liquid else None
    camera = _camera(projection, width=10, height=8)

    def render(x, c):  # a tiny chunk budget: several chunks, recomputed one by one in backward
        out = render_particles(camera, x, c, sigmas, liquid=liquid, budget_bytes=4096)
        return out["rgb"], out["alpha"]

    rgb, alpha = render(positions, colors)
    assert float(alpha.max()) > 0.5 and float(alpha.min()) < 0.05  # particles and background both in view
    assert torch.autograd.gradcheck(render, (positions.clone().requires_grad_(), colors.clone().requires_grad_()),
                                    eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("projection", ["perspective", "orthographic"])
def test_flow_of_a_translating_particle_set_is_its_exact_displacement(projection):
    camera = _camera(projection, width=48, height=40)
    xs, zs = torch.meshgrid(torch.linspace(-0.4, 0.4, 13, dtype=torch.float64),
                            torch.linspace(0.1, 0.9, 13, dtype=torch.float64), indexing="ij")
    base = torch.stack([xs.reshape(-1), torch.zeros(169, dtype=torch.float64), zs.reshape(-1)], dim=-1)
    shift = torch.tensor([0.03, 0.0, -0.02], dtype=torch.float64)
    positions = torch.stack([base, base + shift, base + 2 * shift])  # the plane y = 0, at one camera depth
    layers = render_particle_frames(camera, positions, torch.tensor([0.8, 0.3, 0.2], dtype=torch.float64),
                                    torch.full((169,), 0.04, dtype=torch.float64))
    pixels_per_m = camera.focal() if projection == "orthographic" else camera.focal() / 3.0
    exact = torch.tensor([0.03, 0.02], dtype=torch.float64) * pixels_per_m  # image y points down
    covered = layers["alpha"][1] >= 0.5
    assert covered.sum() > 200
    assert torch.allclose(layers["flow_forward"][1][covered], exact.expand(int(covered.sum()), 2), atol=1e-9)
    assert torch.allclose(layers["flow_backward"][1][covered], -exact.expand(int(covered.sum()), 2), atol=1e-9)
    assert (layers["flow_forward"][1][~covered] == 0).all()  # the static background does not move
    assert layers["occlusion_forward"][-1].all() and layers["occlusion_backward"][0].all()
    inner = covered.clone()
    for shift_px, axis in ((3, 0), (-3, 0), (3, 1), (-3, 1)):
        inner &= torch.roll(covered, shift_px, axis)
    assert (~layers["occlusion_forward"][1][inner]).all()  # interior points stay visible
    assert (layers["segmentation"][1][covered] == 1).all() and (layers["segmentation"][1][~covered] == 0).all()


def test_rendering_is_chunked_and_chunks_do_not_change_the_image():
    generator = torch.Generator().manual_seed(2)
    count = 3000
    positions = torch.rand(count, 3, generator=generator, dtype=torch.float64) * torch.tensor(
        [1.0, 0.5, 1.0], dtype=torch.float64) - torch.tensor([0.5, 0.25, 0.0], dtype=torch.float64)
    colors = torch.rand(count, 3, generator=generator, dtype=torch.float64)
    sigmas = torch.full((count,), 0.02, dtype=torch.float64)
    camera = _camera("perspective", width=64, height=64)
    whole = render_particles(camera, positions, colors, sigmas)
    xy, z = camera.project(positions)
    budget = 2000
    plan = _plan(xy, 3.0 * sigmas * camera.focal() / z, z > 0, 64, 64, budget)
    assert len(plan) > 10 and max(len(chunk[2]) for chunk in plan) <= budget  # pairs per chunk, never dense
    pixels = torch.cat([chunk[0] for chunk in plan])
    assert len(pixels) == len(pixels.unique())  # a pixel's pairs all sit in one chunk
    chunked = render_particles(camera, positions, colors, sigmas, budget_bytes=budget * 40 * 8)
    for key in ("rgb", "alpha", "depth", "normal"):
        assert torch.allclose(whole[key], chunked[key], atol=1e-12, equal_nan=True), key
    assert torch.equal(whole["segmentation"], chunked["segmentation"])


def test_pixel_loss_gradients_reach_colour_and_physics_parameters():
    world = _world(frames=3)
    params = world.parameters()
    trajectory = mpm_rollout(world, params)
    layers = render_mpm(world, trajectory, params)
    assert layers["rgb"].shape == (4, 24, 40, 3)
    assert set(torch.unique(layers["segmentation"]).tolist()) == {0, 1, 2}  # background, jelly, water
    weights = torch.rand(layers["rgb"].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (layers["rgb"] * weights).sum().backward()
    for path in ("mpm.bodies[0].color", "mpm.bodies[0].velocity", "mpm.materials[0].youngs_modulus"):
        grad = params[path].grad
        assert grad is not None and torch.isfinite(grad).all() and float(grad.abs().max()) > 0, path


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_bodies_show_their_own_colours(precision):
    world = _world(frames=1, precision=precision)
    with torch.no_grad():
        layers = render_mpm(world, mpm_rollout(world))
    jelly = layers["rgb"][layers["segmentation"] == 1].mean(0)  # red jelly, blue water (surface), not black
    water = layers["rgb"][layers["segmentation"] == 2].mean(0)
    assert jelly[0] > 0.4 and jelly[0] > 2 * jelly[2] and water[2] > 0.4 and water[2] > 2 * water[0], (jelly, water)
    assert layers["depth"][layers["segmentation"] > 0].sub(3.0).abs().max() < 1e-4  # the plane y = 0, 3 m away


# -- command line ---------------------------------------------------------------------------------

def test_cli_renders_an_mpm_scene_with_layers_and_states(tmp_path, capsys):
    scene = tmp_path / "tiny.toml"
    scene.write_text(_text(precision="float32", frames=3))
    out = tmp_path / "tiny.mp4"
    assert main(["render", str(scene), "-o", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "MPM 2D" in captured.out and "simulate" not in captured.err  # --quiet: no progress bars
    from hybridsim.render import read_video

    frames, fps = read_video(out)
    assert frames.shape == (4, 24, 40, 3) and fps == 30
    layers = np.load(out.with_suffix(".layers.npz"))
    for key, shape in (("depth", (4, 24, 40)), ("segmentation", (4, 24, 40)), ("normal", (4, 24, 40, 3)),
                       ("alpha", (4, 24, 40)), ("flow_forward", (4, 24, 40, 2)), ("flow_backward", (4, 24, 40, 2)),
                       ("occlusion_forward", (4, 24, 40)), ("occlusion_backward", (4, 24, 40)),
                       ("intrinsics", (4, 3, 3)), ("extrinsics", (4, 4, 4))):
        assert layers[key].shape == shape, key
    assert set(np.unique(layers["segmentation"])) == {0, 1, 2}
    states = np.load(out.with_suffix(".states.npz"))
    count = states["particle_material"].shape[0]
    assert states["positions"].shape == (4, count, 2) and states["velocities"].shape == (4, count, 2)
    assert out.with_suffix(".flow.mp4").is_file()


def test_gradcheck_command_runs_on_an_mpm_scene(tmp_path, capsys):
    scene = tmp_path / "tiny.toml"
    scene.write_text(_text(precision="float32", frames=3))
    assert main(["gradcheck", str(scene), "--frames", "2", "--pixel"]) == 0
    out = capsys.readouterr().out
    assert "mpm.materials[0].youngs_modulus" in out and "mpm.bodies[0].velocity[1]" in out and "PASS" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dam_break.toml", "elastic_drop.toml"])
def test_shipped_mpm_scenes_render(tmp_path, name):
    from importlib.resources import files

    out = tmp_path / "scene.mp4"
    assert main(["render", str(files("hybridsim.scenes") / name), "-o", str(out), "--quiet"]) == 0
    layers = np.load(out.with_suffix(".layers.npz"))
    assert np.isfinite(layers["flow_forward"]).all() and layers["alpha"].max() > 0.9
    assert main(["gradcheck", str(files("hybridsim.scenes") / name), "--frames", "6"]) == 0


def test_mesh_body_fills_a_watertight_mesh_relative_to_the_scene_file(tmp_path):
    import trimesh

    trimesh.creation.icosphere(subdivisions=2, radius=0.15).export(tmp_path / "ball.obj")
    text = """
[camera]
position = [1.5, -1.5, 1.0]
look_at = [0.0, 0.0, 0.3]
[mpm]
dim = 3
resolution = 13
size = 1.2
origin = [-0.6, -0.6, -0.25]
[[mpm.materials]]
name = "rubber"
kind = "elastic"
youngs_modulus = 1e4
[[mpm.bodies]]
shape = "mesh"
material = "rubber"
file = "{file}"
position = {{ value = [0.0, 0.0, 0.35], learn = true }}
"""
    scene = tmp_path / "mesh.toml"
    scene.write_text(text.format(file="ball.obj"))
    world = World(load_scene(scene), device="cpu", precision="float64")
    params = world.parameters()
    model = mpm_model(world, params)
    spacing = 0.05  # dx / 2
    assert model.particle_count == pytest.approx(4 / 3 * math.pi * 0.15 ** 3 / spacing ** 3, rel=0.3)
    assert torch.allclose(model.particle_position.mean(0), torch.tensor([0.0, 0.0, 0.35], dtype=torch.float64),
                          atol=0.02)
    model.particle_position[:, 2].sum().backward()
    assert float(params["mpm.bodies[0].position"].grad[2]) == model.particle_count
    (tmp_path / "inner").mkdir()
    scene.write_text(text.format(file="../ball.obj"))
    with pytest.raises(SceneError, match="must stay inside the scene file's folder"):
        load_scene(scene)
