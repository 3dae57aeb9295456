"""The neural video refiner: shapes and causality, learning a colour grade from our own renders
while staying temporally stable, the flow-warped temporal loss, safetensors round trip, exact
resume, the temporal discriminator, and the CLI (train-refiner, render --refiner)."""

import json

import numpy as np
import pytest
import torch

from hybridsim.metrics.video import warping_error
from hybridsim.neural.refiner import CONFIGS, VideoRefiner, feature_channels, layer_features
from hybridsim.neural.refiner_losses import TemporalDiscriminator, temporal_loss
from hybridsim.neural.train_refiner import evaluate_refiner, prepare_pair, render_scene_layers, train_refiner


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _scene(width=64, height=48, frames=11):
    from hybridsim.scene import SceneBuilder

    builder = SceneBuilder(name="refine", backend="warp", precision="float32", fps=24, frames=frames, substeps=4)
    builder.camera(position=(0.0, -4.0, 1.0), look_at=(0.0, 0.0, 0.6), width=width, height=height, fovy_deg=45.0)
    builder.add_sphere(position=(-0.5, 0.0, 1.0), radius=0.3, velocity=(1.5, 0.0, 0.0), restitution=0.7,
                       color=(0.9, 0.2, 0.2), name="a")
    builder.add_sphere(position=(0.6, 0.3, 0.6), radius=0.25, velocity=(-0.5, 0.0, 1.0), restitution=0.7,
                       color=(0.2, 0.4, 0.9), name="b")
    return builder.build()


def _look(rgb) -> torch.Tensor:
    """A fixed camera 'look': channel mix, gamma 0.7 and a radial vignette."""
    x = torch.as_tensor(np.asarray(rgb)).float() / 255.0
    mix = torch.tensor([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.05, 0.25, 0.7]])
    x = (x @ mix.T).clamp(0, 1) ** 0.7
    height, width = x.shape[1:3]
    ys, xs = torch.linspace(-1, 1, height)[:, None], torch.linspace(-1, 1, width)[None]
    return (x * (1.0 - 0.175 * (xs ** 2 + ys ** 2))[..., None]).clamp(0, 1)


@pytest.fixture(scope="module")
def rendered():
    torch.set_num_threads(1)
    layers, _ = render_scene_layers(_scene())
    return layers


def _perturbed(config="tiny", seed=0):
    torch.manual_seed(seed)
    model = VideoRefiner(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _random_clip(frames=5, height=24, width=32, config="tiny", seed=1):
    g = torch.Generator().manual_seed(seed)
    cfg = CONFIGS[config]
    layers = {"rgb": torch.rand(frames, height, width, 3, generator=g),
              "depth": torch.where(torch.rand(frames, height, width, generator=g) < 0.2, torch.tensor(float("inf")),
                                   1 + 5 * torch.rand(frames, height, width, generator=g)),
              "normal": torch.randn(frames, height, width, 3, generator=g),
              "segmentation": torch.randint(0, 12, (frames, height, width), generator=g),
              "alpha": torch.rand(frames, height, width, generator=g)}
    features = layer_features(layers, cfg)
    flow = 2 * torch.randn(frames, height, width, 2, generator=g)
    occlusion = torch.rand(frames, height, width, generator=g) < 0.1
    occlusion[0] = True
    return features, flow, occlusion


def test_shapes_range_and_causality():
    features, flow, occlusion = _random_clip()
    assert features.shape == (5, 24, 32, feature_channels(CONFIGS["tiny"]))
    assert torch.isfinite(features).all()
    model = _perturbed()
    with torch.no_grad():
        out = model(features, flow, occlusion)
        assert out.shape == (5, 24, 32, 3) and out.min() >= 0 and out.max() <= 1
        changed = features.clone()
        changed[2, ..., :3] = torch.rand(24, 32, 3)
        out2 = model(changed, flow, occlusion)
        assert torch.equal(out2[:2], out[:2])  # earlier frames never see a later frame
        assert (out2[2] - out[2]).abs().max() > 1e-3
        assert (out2[3:] - out[3:]).abs().max() > 1e-5  # later frames do (recurrent warp + temporal attention)
        base_features, base_flow, base_occlusion = _random_clip(frames=2, config="base")
        base = _perturbed("base")(base_features, base_flow, base_occlusion)
    assert base.shape == (2, 24, 32, 3)


def test_untrained_refiner_returns_the_render():
    features, flow, occlusion = _random_clip(frames=3)
    with torch.no_grad():
        out = VideoRefiner("tiny")(features, flow, occlusion)
    assert torch.allclose(out, features[..., :3].clamp(1e-3, 1 - 1e-3), atol=1e-5)


def test_temporal_loss_static_zero_and_flicker():
    frame = torch.rand(1, 16, 20, 3, generator=torch.Generator().manual_seed(0))
    static = frame.repeat(5, 1, 1, 1)
    flow = torch.zeros(5, 16, 20, 2)
    occlusion = torch.zeros(5, 16, 20, dtype=torch.bool)
    occlusion[0] = True
    assert float(temporal_loss(static, flow, occlusion)) < 1e-6  # float32 bilinear resampling rounding only
    assert float(temporal_loss(static.double(), flow.double(), occlusion)) < 1e-14
    gains = torch.tensor([1.0, 0.9, 1.0, 0.9, 1.0])[:, None, None, None]
    weak = float(temporal_loss(static * gains, flow, occlusion))
    strong = float(temporal_loss(static * (1 + 3 * (gains - 1)), flow, occlusion))
    assert 0.0 < weak < strong


def test_temporal_loss_uses_the_exact_flow(rendered):
    rgb = torch.as_tensor(rendered["rgb"]).float() / 255.0
    flow = torch.as_tensor(rendered["flow_backward"])
    occlusion = torch.as_tensor(rendered["occlusion_backward"])
    aligned = float(temporal_loss(rgb, flow, occlusion))
    unaligned = float(temporal_loss(rgb, torch.zeros_like(flow), occlusion))
    assert aligned < 0.7 * unaligned


def test_learns_a_colour_grade_and_stays_temporally_stable(rendered):
    target = _look(rendered["rgb"])
    train = prepare_pair(None, target[:8], layers=rendered)  # frames 0-7 for training
    full = prepare_pair(None, target, layers=rendered)  # frames 8-11 held out
    result = train_refiner([train], iterations=60, lr=3e-3, progress=False, clip_length=4, seed=0)
    held_out = evaluate_refiner(result.model, full, slice(8, None))
    assert held_out["l1_refined"] < 0.5 * held_out["l1_plain"], held_out
    with torch.no_grad():
        refined = result.model(full.features, full.flow_backward, full.occlusion_backward)
    forward = torch.as_tensor(rendered["flow_forward"]).double()
    occ_forward = torch.as_tensor(rendered["occlusion_forward"])
    refined_error = warping_error(refined, forward, occ_forward)
    target_error = warping_error(target, forward, occ_forward)
    assert refined_error <= 1.5 * target_error, (refined_error, target_error)
    assert result.history["total"][-1] < 0.5 * result.history["total"][0]


def test_safetensors_round_trip(tmp_path):
    from safetensors.torch import load_file

    model = _perturbed()
    path = tmp_path / "w.safetensors"
    model.save(path)
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8:8 + header])["__metadata__"]["format"] == "hybridsim-refiner/1"
    assert b"\x80\x04\x95" not in raw and b"\x80\x02" not in raw[:8 + header]  # no pickle protocol header
    tensors = load_file(str(path))
    assert set(tensors) == set(model.state_dict())
    assert json.loads((tmp_path / "w.json").read_text())["config"]["channels"] == [16, 32, 48]
    loaded = VideoRefiner.load(path)
    features, flow, occlusion = _random_clip(frames=3)
    with torch.no_grad():
        assert torch.equal(model(features, flow, occlusion), loaded(features, flow, occlusion))
    (tmp_path / "w.json").unlink()  # the config also travels in the safetensors metadata
    assert VideoRefiner.load(path).config == model.config


def _small_pair(adversarial=False):
    layers, _ = render_scene_layers(_scene(32, 24, 6))
    return prepare_pair(None, _look(layers["rgb"]), layers=layers)


@pytest.mark.parametrize("adversarial", [0.0, 0.05])
def test_resume_equals_straight_training(tmp_path, adversarial):
    pair = _small_pair()
    kwargs = dict(iterations=6, lr=3e-3, progress=False, clip_length=3, checkpoint_every=2, seed=3,
                  adversarial_weight=adversarial)
    straight = train_refiner([pair], out=tmp_path / "a.safetensors", **kwargs)
    stopped = train_refiner([pair], out=tmp_path / "b.safetensors", stop_after=3, **kwargs)
    assert stopped.steps == 3 and stopped.weights is None
    assert (tmp_path / "b.safetensors.checkpoint" / "checkpoint.json").is_file()
    resumed = train_refiner([pair], out=tmp_path / "b.safetensors", **kwargs)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert resumed.history == straight.history
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "b.loss.png").stat().st_size > 1000
    if adversarial:
        assert len(straight.history["discriminator"]) == 6
        assert all(np.isfinite(straight.history["discriminator"]))
    fresh = train_refiner([pair], out=tmp_path / "b.safetensors", resume=False, **dict(kwargs, iterations=2))
    assert fresh.resumed_from == 0


def test_temporal_discriminator_scales():
    disc = TemporalDiscriminator(channels=8)
    logits = disc(torch.rand(6, 24, 32, 3))
    assert len(logits) == 2 and logits[0].shape[2] == 6 and logits[1].shape[2] == 3


SMALL_SCENE = """
name = "small"
backend = "warp"
[time]
fps = 24
frames = 6
substeps = 4
[camera]
position = [0.0, -4.0, 1.0]
look_at = [0.0, 0.0, 0.5]
width = 64
height = 48
[[objects]]
type = "sphere"
position = [0.0, 0.0, 0.8]
radius = 0.3
velocity = [0.5, 0.0, 0.0]
"""


def test_cli_train_refiner_and_render(tmp_path, capsys):
    from hybridsim.cli import main
    from hybridsim.render import read_video, write_video

    scene = tmp_path / "small.toml"
    scene.write_text(SMALL_SCENE)
    plain_out = tmp_path / "plain.mp4"
    assert main(["render", str(scene), "-o", str(plain_out), "--quiet"]) == 0
    target = tmp_path / "target.mp4"
    write_video(target, _look(read_video(plain_out)[0]).numpy(), fps=24)
    weights = tmp_path / "w.safetensors"
    assert main(["train-refiner", "--scenes", str(scene), "--targets", str(target), "-o", str(weights),
                 "--iterations", "12", "--lr", "1e-2", "--threads", "1", "-q"]) == 0
    assert weights.is_file() and (tmp_path / "w.json").is_file() and (tmp_path / "w.loss.png").is_file()
    out = tmp_path / "refined" / "out.mp4"
    assert main(["render", str(scene), "--refiner", str(weights), "-o", str(out), "--quiet"]) == 0
    refined, fps = read_video(out)
    plain, _ = read_video(out.with_suffix(".plain.mp4"))
    assert refined.shape == plain.shape == (7, 48, 64, 3) and fps == 24
    wanted, _ = read_video(target)
    # the refined video moved towards the target look
    error = lambda frames: np.abs(frames.astype(float) - wanted.astype(float)).mean()  # noqa: E731
    assert error(refined) < 0.8 * error(plain)
    assert "refined with" in capsys.readouterr().out
    assert main(["train-refiner", "--scenes", str(scene), "--targets", str(target), str(target), "-o",
                 str(weights), "-q"]) == 2  # scenes and targets must pair up
