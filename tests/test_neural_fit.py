"""Fitting with networks: scene values, the video refiner and the motion prior trained together
(gradients reach all three, checked against finite differences in float64), checkpoints that hold
the networks and resume exactly, trained weights in the run directory, the CLI, the refusal of
rigid scenes; the divergence-free fluid prior; and the two measurements of issue 8 (motion prior
on a ball with quadratic air drag; refiner on held-out scenes with another look), each as a fast
sample in the default run and in full under ``-m slow``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hybridsim.errors import HybridsimError
from hybridsim.fit import fit
from hybridsim.fit.networks import NetworkSettings, RestartNetworks
from hybridsim.fit.optimize import _Problem, render_camera
from hybridsim.fit.target import prepare_target
from hybridsim.neural import DivergenceFreeFluidPrior, ResidualForcePrior, VideoRefiner
from hybridsim.render import to_uint8
from hybridsim.render.scene import render_trajectory
from hybridsim.scene import parse_scene
from hybridsim.sim.rollout import rollout
from hybridsim.sim.world import World

VEL, REST = "objects[0].velocity", "objects[0].restitution"


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TINY = """
name = "tiny"
backend = "warp"
precision = "{precision}"
[time]
fps = 30
frames = {frames}
substeps = 4
[camera]
position = [0.0, -3.0, 0.8]
look_at = [0.0, 0.0, 0.6]
width = {width}
height = {height}
[[objects]]
type = "sphere"
position = [0.0, 0.0, 0.8]
radius = 0.25
velocity = {{ value = [0.6, 0.0, 0.5], learn = true, range = [-3.0, 3.0] }}
restitution = {{ value = 0.7, learn = true, range = [0.1, 1.0] }}
color = [0.9, 0.3, 0.2]
"""


def tiny_scene(precision="float64", frames=5, width=24, height=18):
    return parse_scene(TINY.format(precision=precision, frames=frames, width=width, height=height))


def render_target(spec, values) -> np.ndarray:
    world = World(spec.with_values(values))
    with torch.no_grad():
        return to_uint8(render_trajectory(world, rollout(world))["rgb"])


def graded(frames: np.ndarray) -> np.ndarray:
    """Another 'look' of the same frames: a warm colour grade (what a refiner can learn)."""
    x = frames.astype(np.float64) / 255.0
    x = np.clip(x @ np.array([[0.9, 0.1, 0.0], [0.05, 0.8, 0.1], [0.0, 0.2, 0.6]]).T, 0, 1) ** 0.8
    return (x * 255 + 0.5).astype(np.uint8)


def perturbed(module, seed=0, scale=0.05):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


# ------------------------------------------------------------------------------ gradients

def test_gradients_reach_values_refiner_and_prior_and_match_finite_differences():
    """One loss (silhouette + centroid + rgb of the refined frames + prior regulariser) in float64:
    its gradient w.r.t. the initial velocity, a random direction of the refiner's weights and one of
    the prior's weights equals central finite differences."""
    spec = tiny_scene()
    target = render_target(spec, {VEL: [0.8, 0.0, 0.3]})
    world = World(spec)
    camera = render_camera(spec, 160)
    prepared = prepare_target(target, height=camera.height, width=camera.width, scene_fps=30, max_frames=6)
    problem = _Problem(world, camera, prepared, {"silhouette": 1.0, "centroid": 1.0, "rgb": 0.1})
    refiner = perturbed(VideoRefiner("tiny").double(), 0)
    prior = perturbed(ResidualForcePrior(hidden=8, dtype=torch.float64), 1, scale=0.3)
    problem.networks = RestartNetworks(refiner, prior, NetworkSettings(prior_magnitude=1e-3))
    velocity = torch.tensor([0.6, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    rest = torch.tensor(0.7, dtype=torch.float64)

    def loss_at(v=velocity):
        loss, _ = problem.loss({VEL: v, REST: rest}, 6)
        return loss

    loss = loss_at()
    loss.backward()
    assert velocity.grad.abs().max() > 0
    ref_params, prior_params = list(refiner.parameters()), list(prior.parameters())
    assert all(p.grad is not None for p in prior_params) and sum(float(p.grad.abs().sum()) for p in prior_params) > 0
    assert sum(float(p.grad.abs().sum()) for p in ref_params if p.grad is not None) > 0
    assert problem.networks.prior_loss() is not None

    generator = torch.Generator().manual_seed(3)
    for params in (ref_params, prior_params):
        direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64) for p in params]
        analytic = sum(float((p.grad * d).sum()) for p, d in zip(params, direction))
        eps = 1e-5
        values = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                for p, d in zip(params, direction):
                    p.add_(sign * eps * d)
                values.append(float(loss_at()))
                for p, d in zip(params, direction):
                    p.sub_(sign * eps * d)
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(analytic - numeric) <= 1e-4 * abs(numeric) + 1e-8, (analytic, numeric)
    for k in (0, 2):  # velocity x and z
        eps = 1e-5
        with torch.no_grad():
            up = float(loss_at(velocity.detach() + eps * torch.eye(3, dtype=torch.float64)[k]))
            down = float(loss_at(velocity.detach() - eps * torch.eye(3, dtype=torch.float64)[k]))
        numeric = (up - down) / (2 * eps)
        # the render/simulation backward varies by ~1e-4 (relative) from run to run, so 1e-3 here
        assert abs(float(velocity.grad[k]) - numeric) <= 1e-3 * abs(numeric) + 1e-8, (k, velocity.grad, numeric)


# ------------------------------------------------------------------------------ fit end to end

def _fit_kwargs(**extra):
    return {"progress": False, "threads": 1, "uncertainty": False, **extra}


def test_fit_trains_values_refiner_and_prior_and_writes_their_weights(tmp_path):
    spec = tiny_scene("float32", frames=8, width=32, height=24)
    target = graded(render_target(spec, {VEL: [0.9, 0.0, 0.3]}))
    run_dir = tmp_path / "run"
    refiner = VideoRefiner("tiny")
    before = {k: v.clone() for k, v in refiner.state_dict().items()}
    result = fit(spec, target, iterations=4, run_dir=run_dir, refiner=refiner, motion_prior="new",
                 network_settings=NetworkSettings(lr=3e-3), **_fit_kwargs(uncertainty=True))
    assert result.details["rgb_used"]  # with a refiner the rgb term is on despite the other look
    assert all("prior" in terms for terms in result.details["terms"])
    assert result.values[VEL] != [0.6, 0.0, 0.5]
    # the caller's refiner is a starting point, never trained in place
    assert all(torch.equal(v, refiner.state_dict()[k]) for k, v in before.items())
    trained = result.refiner.state_dict()
    assert any(not torch.equal(trained[k], before[k]) for k in before)
    assert any(float(p.detach().abs().max()) > 0 for p in result.motion_prior.head.parameters())
    for name in ("refiner.safetensors", "refiner.json", "motion_prior.safetensors", "motion_prior.json",
                 "fitted.toml", "fit.json", "side_by_side.mp4", "report.html"):
        assert (run_dir / name).is_file(), name
    loaded = VideoRefiner.load(run_dir / "refiner.safetensors")
    assert all(torch.equal(v, trained[k]) for k, v in loaded.state_dict().items())
    prior = ResidualForcePrior.load(run_dir / "motion_prior.safetensors")
    assert all(torch.equal(v, result.motion_prior.state_dict()[k]) for k, v in prior.state_dict().items())
    info = json.loads((run_dir / "fit.json").read_text())
    assert info["networks"]["files"] == {"refiner": "refiner.safetensors", "motion_prior": "motion_prior.safetensors"}
    assert info["networks"]["settings"]["lr"] == 3e-3
    assert all(p["uncertainty"] is not None or p["identifiable"] is False for p in info["parameters"])
    state = json.loads((run_dir / "checkpoint.json").read_text())
    assert "networks" in state["config"]
    raw = (run_dir / state["tensors"]).read_bytes()
    assert b"\x80\x04\x95" not in raw  # safetensors, no pickle
    from safetensors.torch import load_file

    names = load_file(str(run_dir / state["tensors"]))
    assert any(k.startswith("r0.refiner.") for k in names) and any(k.startswith("r0.prior.") for k in names)
    assert any(k.startswith("r0.netopt.") for k in names)


def test_frozen_refiner_keeps_its_weights_and_still_passes_gradients(tmp_path):
    spec = tiny_scene("float32", frames=6, width=24, height=18)
    target = graded(render_target(spec, {VEL: [0.9, 0.0, 0.3]}))
    refiner = perturbed(VideoRefiner("tiny"), 2)
    result = fit(spec, target, iterations=3, refiner=refiner, network_settings=NetworkSettings(freeze_refiner=True),
                 **_fit_kwargs())
    assert all(torch.equal(v, refiner.state_dict()[k]) for k, v in result.refiner.state_dict().items())
    assert result.values[VEL] != [0.6, 0.0, 0.5] and result.motion_prior is None


def test_resume_with_networks_equals_uninterrupted_run(tmp_path):
    spec = tiny_scene("float32", frames=6, width=24, height=18)
    target = graded(render_target(spec, {VEL: [0.9, 0.0, 0.3]}))
    kw = _fit_kwargs(restarts=2, iterations=3, outputs=False, refiner=VideoRefiner("tiny"), motion_prior="new",
                     network_settings=NetworkSettings(lr=3e-3))
    full = fit(spec, target, run_dir=tmp_path / "full", **kw)
    seen = []

    def stop(info):
        seen.append(info)
        if len(seen) == 4:  # inside restart 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(spec, target, run_dir=tmp_path / "cut", callback=stop, **kw)
    resumed = fit(spec, target, run_dir=tmp_path / "cut", **kw)
    assert resumed.resumed_from == 4
    assert resumed.loss_history == full.loss_history and resumed.values == full.values
    for a, b in ((full.refiner, resumed.refiner), (full.motion_prior, resumed.motion_prior)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name
    # other network settings: the checkpoint is refused
    with pytest.raises(HybridsimError, match="different fit settings"):
        fit(spec, target, run_dir=tmp_path / "cut", **dict(kw, network_settings=NetworkSettings(lr=1e-2)))


def test_rigid_scenes_refuse_networks_with_a_clear_error():
    from hybridsim.scene import load_scene

    from conftest import ROOT

    rigid = [p for p in sorted((ROOT / "scenes").glob("*.toml")) if "rigid" in p.name or "box" in p.name]
    spec = next((s for s in map(load_scene, rigid) if s.learnable and World(s).rigid), None)
    if spec is None:
        pytest.skip("no rigid scene with learnable fields shipped")
    frames = np.zeros((4, spec.camera.height, spec.camera.width, 3), np.uint8)
    with pytest.raises(HybridsimError, match="rigid-body and fluid scenes are not supported yet"):
        fit(spec, frames, iterations=1, motion_prior="new", **_fit_kwargs())


def test_cli_fit_with_refiner_and_new_motion_prior(tmp_path, capsys):
    from hybridsim.cli import main
    from hybridsim.render import write_video

    spec = tiny_scene("float32", frames=6, width=32, height=24)
    scene = tmp_path / "tiny.toml"
    spec.write_toml(scene)
    video = tmp_path / "target.mp4"
    write_video(video, graded(render_target(spec, {VEL: [0.9, 0.0, 0.3]})), fps=30)
    weights = tmp_path / "start.safetensors"
    VideoRefiner("tiny").save(weights)
    run_dir = tmp_path / "run"
    code = main(["fit", str(scene), "--target", str(video), "--refiner", str(weights), "--motion-prior", "new",
                 "--network-lr", "2e-3", "-o", str(run_dir), "--iterations", "2", "--threads", "1", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "refiner.safetensors" in out and "motion_prior.safetensors" in out
    assert ResidualForcePrior.load(run_dir / "motion_prior.safetensors").config["hidden"] == 32
    # continue with the trained prior as the start of another fit
    code = main(["fit", str(scene), "--target", str(video), "--motion-prior", str(run_dir / "motion_prior.safetensors"),
                 "-o", str(tmp_path / "run2"), "--iterations", "1", "--threads", "1", "--quiet"])
    assert code == 0 and (tmp_path / "run2" / "motion_prior.safetensors").is_file()
    assert main(["fit", str(scene), "--target", str(video), "--refiner", str(tmp_path / "missing.safetensors"),
                 "-o", str(tmp_path / "run3"), "--quiet"]) != 0


# ------------------------------------------------------------------------------ fluid prior

FLUID = """
name = "tiny_plume"
backend = "warp"
precision = "float64"
[time]
fps = 30
frames = 3
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
boundary = {boundary}
buoyancy = {{ value = 2.0, learn = true, range = [0.0, 10.0] }}
advection = "semi_lagrangian"
density_advection = "conservative"
[[fluid.inflows]]
center = [0.12, 0.06]
radius = 0.04
rate = 3.0
"""


@pytest.mark.parametrize("boundary", ['"wall"', '["periodic", "periodic", "wall", "open"]'])
def test_fluid_prior_is_divergence_free_and_trains_through_the_rollout(boundary):
    from hybridsim.neural.fluid_prior import face_divergence
    from hybridsim.sim.fluid import fluid_model, fluid_rollout

    world = World(parse_scene(FLUID.format(boundary=boundary)))
    model = fluid_model(world)
    prior = DivergenceFreeFluidPrior.for_model(model, hidden=8)
    with torch.no_grad():
        plain = fluid_rollout(world)
        untouched = fluid_rollout(world, motion_prior=prior)
    assert torch.equal(plain.density, untouched.density)  # untrained: no change
    perturbed(prior, 4, scale=0.05)
    state = model.state()
    state = type(state)(*(t + 0.1 * torch.randn_like(t) for t in state.tensors()))
    a_x, a_y = prior.accelerations(state)
    assert a_x.shape == model.face_shape_x and a_y.shape == model.face_shape_y
    divergence = face_divergence(a_x, a_y, model.cell_size, model.periodic)
    scale = float(torch.cat([a_x.flatten(), a_y.flatten()]).detach().abs().max()) / model.cell_size
    assert scale > 1e-3 and float(divergence.detach().abs().max()) < 1e-12 * scale
    if boundary == '"wall"':  # no flux through walls
        assert float(a_x.detach()[0].abs().max()) == 0 and float(a_x.detach()[-1].abs().max()) == 0
        assert float(a_y.detach()[:, 0].abs().max()) == 0 and float(a_y.detach()[:, -1].abs().max()) == 0
    trajectory = fluid_rollout(world, motion_prior=prior)
    loss = (trajectory.density[-1] * torch.linspace(0, 1, 16, dtype=torch.float64)).sum()
    loss.backward()
    grads = [p.grad for p in prior.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# ------------------------------------------------------------------------------ refiner measurement

def _random_scene(seed: int, width: int, height: int, frames: int, lit: bool = False):
    """Two or three balls thrown in front of a fixed camera; ``lit`` gives the same scene under
    another light (direction, intensity, ambient, sky colour)."""
    from hybridsim.scene import SceneBuilder

    rng = np.random.default_rng([11, seed])
    builder = SceneBuilder(name=f"look{seed}", backend="warp", precision="float32", fps=24, frames=frames,
                           substeps=4)
    builder.camera(position=(0.0, -4.0, 1.2), look_at=(0.0, 0.0, 0.6), width=width, height=height, fovy_deg=45.0)
    if lit:
        builder.light(direction=(0.6, -0.5, -0.6), intensity=1.1, ambient=0.2, sky_color=(0.75, 0.62, 0.55))
    for k in range(int(rng.integers(2, 4))):
        builder.add_sphere(position=(float(rng.uniform(-1.0, 1.0)), float(rng.uniform(-0.5, 0.5)),
                                     float(rng.uniform(0.4, 1.2))),
                           radius=float(rng.uniform(0.18, 0.32)),
                           velocity=(float(rng.uniform(-1.5, 1.5)), 0.0, float(rng.uniform(-0.5, 1.5))),
                           restitution=0.7, color=tuple(float(c) for c in rng.uniform(0.15, 0.95, 3)), name=f"b{k}")
    return builder.build()


def target_look(seed: int, width: int, height: int, frames: int, noise: float = 0.06):
    """(plain layers, clean target, noisy target) of scene ``seed``: the target is the scene under
    another light, with a procedural texture (stripes in world x on the ground, bands in the
    normal's y on the balls), a colour grade (channel mix, gamma 0.8) and, for the noisy one,
    Gaussian pixel noise (sigma ``noise``, independent per frame)."""
    from hybridsim.neural.train_refiner import render_scene_layers
    from hybridsim.render import Camera
    from hybridsim.render.flow import surface_points

    layers, _ = render_scene_layers(_random_scene(seed, width, height, frames))
    lit, _ = render_scene_layers(_random_scene(seed, width, height, frames, lit=True))
    rgb = torch.as_tensor(lit["rgb"]).double() / 255.0
    depth = torch.as_tensor(lit["depth"]).double()
    seg = torch.as_tensor(lit["segmentation"])
    normal = torch.as_tensor(lit["normal"]).double()
    camera = Camera.from_spec(_random_scene(seed, width, height, frames).camera)
    world_x = torch.stack([surface_points(camera, d)[..., 0] for d in depth])
    ground = (seg == 0) & torch.isfinite(depth)
    texture = torch.ones_like(depth)
    texture = torch.where(ground, 1.0 + 0.18 * torch.sin(2 * np.pi * world_x / 1.2), texture)
    texture = torch.where(seg > 0, 1.0 + 0.2 * torch.cos(3.0 * normal[..., 1]), texture)
    mix = torch.tensor([[0.85, 0.15, 0.0], [0.05, 0.75, 0.2], [0.0, 0.25, 0.65]], dtype=torch.float64)
    clean = ((rgb * texture[..., None]).clamp(0, 1) @ mix.T).clamp(0, 1) ** 0.8
    generator = torch.Generator().manual_seed(1000 + seed)
    noisy = (clean + noise * torch.randn(clean.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return layers, clean.float(), noisy.float()


def refiner_measurement(*, width=48, height=36, frames=10, train=4, held_out=2, iterations=150, seed=0,
                        clip_length=4) -> dict:
    """Train on ``train`` scenes (noisy targets), score on ``held_out`` other scenes against the
    clean targets: per-frame L1 of the refined and the plain render, and warping errors."""
    from hybridsim.metrics.video import warping_error
    from hybridsim.neural.train_refiner import prepare_pair, train_refiner

    pairs = []
    for s in range(train):
        layers, _, noisy = target_look(s, width, height, frames)
        pairs.append(prepare_pair(None, noisy, layers=layers))
    result = train_refiner(pairs, iterations=iterations, lr=3e-3, progress=False, clip_length=clip_length, seed=seed)
    out = {"per_frame_refined": [], "per_frame_plain": [], "warp_refined": [], "warp_clean_target": [],
           "warp_noisy_target": [], "warp_plain": []}
    for s in range(100, 100 + held_out):
        layers, clean, noisy = target_look(s, width, height, frames)
        pair = prepare_pair(None, clean, layers=layers)
        with torch.no_grad():
            refined = result.model(pair.features, pair.flow_backward, pair.occlusion_backward)
        out["per_frame_refined"] += (refined - clean).abs().mean(dim=(1, 2, 3)).tolist()
        out["per_frame_plain"] += (pair.rgb - clean).abs().mean(dim=(1, 2, 3)).tolist()
        flow = torch.as_tensor(layers["flow_forward"]).double()
        occlusion = torch.as_tensor(layers["occlusion_forward"])
        for key, frames_ in (("warp_refined", refined), ("warp_clean_target", clean), ("warp_noisy_target", noisy),
                             ("warp_plain", pair.rgb)):
            out[key].append(warping_error(frames_.double(), flow, occlusion))
    refined, plain = np.array(out["per_frame_refined"]), np.array(out["per_frame_plain"])
    out["factor"] = float(plain.mean() / refined.mean())
    out["worst_frame_factor"] = float((plain / refined).min())
    for key in ("warp_refined", "warp_clean_target", "warp_noisy_target", "warp_plain"):
        out[key] = float(np.mean(out[key]))
    out["loss_first_last"] = (result.history["total"][0], result.history["total"][-1])
    out["wall_time_s"] = result.wall_time_s
    return out


# ------------------------------------------------------------------------------ motion prior measurement

DRAG = 0.15  # quadratic air drag per unit mass [1/m]: a = -DRAG |v| v, absent from the scene's physics
DRAG_TRUE = {VEL: [2.5, 0.0, 2.0], REST: 0.6}
DRAG_START = {VEL: [2.0, 0.0, 2.5], REST: 0.75}


def drag_measurement(*, train_frames=30, total_frames=60, iterations=300, prior_lr=1e-2, value_lr=0.03,
                     hidden=24, substeps=4) -> dict:
    """A ball thrown with quadratic air drag (the truth), fitted on frames 0..``train_frames``
    (one bounce included) twice from the same wrong start: physics alone (initial velocity and
    restitution) and physics + a new ResidualForcePrior trained jointly through the simulator.
    Scored on the later, unseen frames: mean distance to the true positions [m]."""
    from hybridsim.neural import PriorRegularizer
    from hybridsim.scene import SceneBuilder

    builder = SceneBuilder(name="drag", fps=30, frames=total_frames, substeps=substeps, precision="float64")
    builder.camera(position=(0, -6, 2), look_at=(0, 0, 1), width=16, height=12)
    builder.add_sphere(position=(0.0, 0.0, 1.0), velocity=tuple(DRAG_START[VEL]), radius=0.1,
                       restitution=DRAG_START[REST], name="ball")
    world = World(builder.build())
    mass = world.model().mass

    def drag(state, time):
        v = state.sphere_velocity
        return -DRAG * mass[:, None] * v.norm(dim=1, keepdim=True) * v

    def values(source, grad=False):
        return {k: torch.tensor(v, dtype=torch.float64, requires_grad=grad) for k, v in source.items()}

    with torch.no_grad():
        truth = rollout(world, values(DRAG_TRUE), frames=total_frames, motion_prior=drag).positions

    def train(params, prior=None):
        regularizer = PriorRegularizer(magnitude=1e-6, energy_injection=1.0)
        groups = [{"params": list(params.values()), "lr": value_lr}]
        if prior is not None:
            prior.mass = mass
            groups.append({"params": list(prior.parameters()), "lr": prior_lr})
        optimizer = torch.optim.Adam(groups)
        decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.03, 0.5 ** (5 * i / iterations)))
        for _ in range(iterations):
            optimizer.zero_grad()
            hook = regularizer.wrap(prior) if prior is not None else None
            positions = rollout(world, params, frames=train_frames, motion_prior=hook).positions
            loss = (positions - truth[:train_frames + 1]).pow(2).sum(-1).mean()
            (loss + (regularizer.loss() if prior is not None else 0.0)).backward()
            optimizer.step()
            decay.step()
        return float(loss.detach())

    def later_error(params, prior=None):
        with torch.no_grad():
            positions = rollout(world, params, frames=total_frames, motion_prior=prior).positions
        return float((positions - truth)[train_frames + 1:].norm(dim=-1).mean())

    def errors(params):
        return {k: float((v.detach() - torch.tensor(DRAG_TRUE[k], dtype=torch.float64)).abs().max())
                for k, v in params.items()}

    physics = values(DRAG_START, grad=True)
    physics_train = train(physics)
    torch.manual_seed(0)
    prior = ResidualForcePrior(hidden=hidden, dtype=torch.float64)
    joint = values(DRAG_START, grad=True)
    joint_train = train(joint, prior)
    out = {"later_error_physics": later_error(physics), "later_error_prior": later_error(joint, prior),
           "later_error_physics_at_truth": later_error(values(DRAG_TRUE)),
           "train_loss_physics": physics_train, "train_loss_prior": joint_train,
           "param_errors_physics": errors(physics), "param_errors_prior": errors(joint),
           "values_prior": {k: v.detach().tolist() for k, v in joint.items()}}
    out["factor"] = out["later_error_physics"] / out["later_error_prior"]
    return out


def test_motion_prior_on_drag_fast_sample():
    """Default-run sample of the drag measurement: shorter clip, fewer iterations, looser bar."""
    out = drag_measurement(train_frames=24, total_frames=36, iterations=120, prior_lr=2e-2, value_lr=0.05, substeps=2)
    assert out["factor"] >= 2.0, out  # measured 2.8
    for key in (VEL, REST):  # closer to the truth than the physics-only fit, which bends them to fake drag
        assert out["param_errors_prior"][key] < out["param_errors_physics"][key], out


@pytest.mark.slow
def test_motion_prior_cuts_later_frame_error_5x_on_drag():
    """Issue 8: trained through the simulator on a ball with quadratic air drag (which the scene's
    physics lacks), the prior cuts the error on later, unseen frames >= 5x against physics alone
    (fitted on the same frames), while initial velocity and restitution stay near the truth.

    Measured (frames 0-30 fitted, 31-60 scored, 300 iterations): mean position error 0.014 m with
    the prior vs 0.44 m physics alone (31x; 0.98 m for physics at the true values); parameter errors
    with the prior 0.10 m/s (velocity, max component) and 0.045 (restitution), physics alone 0.36 m/s
    and 0.069: the prior absorbs a little of the launch, the physics-only fit much more."""
    out = drag_measurement()
    print(json.dumps(out, indent=1))
    assert out["factor"] >= 5.0, out
    assert out["param_errors_prior"][VEL] <= 0.15, out  # m/s, truth (2.5, 0, 2.0), start 0.5 away
    assert out["param_errors_prior"][REST] <= 0.07, out  # truth 0.6, start 0.75


def test_refiner_on_held_out_scenes_fast_sample():
    """Default-run sample of the refiner measurement (32x24, 3 training scenes, 60 iterations)."""
    out = refiner_measurement(width=32, height=24, frames=8, train=3, held_out=1, iterations=60)
    assert out["factor"] >= 2.0, out
    assert out["warp_refined"] <= 1.25 * out["warp_clean_target"], out
    assert out["warp_refined"] < 0.2 * out["warp_noisy_target"], out


@pytest.mark.slow
def test_refiner_cuts_held_out_error_3x_with_target_level_warping_error():
    """Issue 8: trained to map plain renders to a differently lit, textured, noisy look of the same
    scenes; on held-out scenes, scored against the clean target, it cuts the per-frame error >= 3x
    against the unrefined render, with a warping error no worse than the target's own (the noisy
    target it is trained on; against the clean target, measured 1.02x, allowed 1.1x).

    Measured (48x36, 6 training scenes, 2 held out, 400 iterations): factor 7.1 (worst frame 6.3);
    warping error 0.0036 refined, 0.0035 clean target, 0.068 noisy target, 0.0041 plain render."""
    out = refiner_measurement(width=48, height=36, frames=10, train=6, held_out=2, iterations=400)
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("per_frame")}, indent=1))
    assert out["factor"] >= 3.0, out
    assert out["worst_frame_factor"] >= 3.0, out
    assert out["warp_refined"] <= out["warp_noisy_target"], out
    assert out["warp_refined"] <= 1.1 * out["warp_clean_target"], out
