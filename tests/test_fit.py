"""`hybridsim fit`: recovering physical parameters from video through simulation and rendering.

Targets are rendered by the project's own renderer from ``scenes/bounce_fit.toml`` with known
true values (restitution 0.6, initial velocity (1.0, 0.0, 0.5) m/s); fits start from the scene's
own, different values (0.7 and (0.5, 0.0, 1.0)).

Tolerances: restitution within 0.03 and every velocity component within 0.05 m/s. With this
target the optimiser converges (loss flat for the last ~5 iterations) to a point whose remaining
error comes from the background-subtraction mask, which is a slightly grown, soft-edge estimate
of coverage rather than the renderer's own alpha: measured errors are about 0.001 in restitution
and 0.002 / 0.013 / 0.007 m/s in velocity x / y / z (y points roughly away from the camera, so it
is seen only through the ball's apparent size and is the least constrained). The tolerances sit
a few times above that bias, yet well below the distance of the starting values (0.1 and 0.5 m/s)
and below what a broken gradient, a wrong reparameterisation, or a loss ignoring later frames
produces, so they separate "recovered" from "moved somewhere".
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from hybridsim.cli import main
from hybridsim.errors import AssetError, HybridsimError
from hybridsim.fit import FitSettings, fit, foreground_mask, prepare_target
from hybridsim.fit.losses import centroid_loss, rendered_centroids, silhouette_loss
from hybridsim.fit.params import ParamSpec
from hybridsim.fit.target import mask_moments, resample_frames
from hybridsim.render import Camera, read_video, render_spheres, to_uint8, write_video
from hybridsim.render.scene import render_trajectory
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.rollout import rollout
from hybridsim.sim.world import World

ROOT = Path(__file__).resolve().parent.parent
SCENE = ROOT / "scenes" / "bounce_fit.toml"
VEL, REST = "objects[0].velocity", "objects[0].restitution"
TRUE = {REST: 0.6, VEL: [1.0, 0.0, 0.5]}
TOL_REST, TOL_VEL = 0.03, 0.05
ITERATIONS = 30  # converged: the loss is flat from about iteration 25 (see loss_history checks below)
SAME_TOL_REST, SAME_TOL_VEL = 0.012, 0.02  # 2 % of the restitution and of the speed (1.12 m/s)
SAME_ITERATIONS = 35
"""A target with the scene's look: the rendered comparison plateaus after about 27 iterations (0.087
with errors up to 0.013 m/s), then Adam goes on with observed coverages (``FitSettings.coverage``),
whose minimum is the truth: measured errors 3e-5 in restitution and 0.0009 / 0.0007 / 0.0013 m/s."""


def render_target(spec, values=TRUE, **overrides) -> np.ndarray:
    """uint8 frames (F+1, H, W, 3) of ``spec`` with ``values`` and any other field overrides."""
    truth = spec.with_values({**values, **overrides})
    world = World(truth, device="cpu")
    with torch.no_grad():
        return to_uint8(render_trajectory(world, rollout(world))["rgb"])


def errors(values: dict) -> tuple[float, list[float]]:
    return abs(values[REST] - TRUE[REST]), [abs(a - b) for a, b in zip(values[VEL], TRUE[VEL])]


@pytest.fixture(scope="module")
def spec():
    return load_scene(SCENE)


@pytest.fixture(scope="module")
def target(spec):
    return render_target(spec)


@pytest.fixture(scope="module")
def fitted(spec, target, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fit") / "run"
    result = fit(spec, target, iterations=SAME_ITERATIONS, restarts=1, run_dir=run_dir, progress=False, threads=1)
    return result, run_dir


# ------------------------------------------------------------------------------------------ recovery


def test_recovers_restitution_and_velocity(spec, fitted):
    result, _ = fitted
    # the fit really starts away from the truth
    assert spec.get(REST) == pytest.approx(0.7) and list(spec.get(VEL)) == pytest.approx([0.5, 0.0, 1.0])
    assert result.initial[REST] == pytest.approx(0.7) and result.initial[VEL] == pytest.approx([0.5, 0.0, 1.0])
    rest_err, vel_err = errors(result.values)
    assert rest_err < SAME_TOL_REST, result.values
    assert max(vel_err) < SAME_TOL_VEL, result.values
    assert result.details["coverage"] == "observed" and 20 <= result.details["observed_from"] < SAME_ITERATIONS
    # converged: a large drop, and the last iterations no longer move the loss
    losses = result.losses
    assert len(losses) == SAME_ITERATIONS
    assert result.final_loss < 0.05 * losses[0]
    assert max(losses[-5:]) - min(losses[-5:]) < 0.01 * losses[0]
    # the target shares the scene's appearance, so the minor rgb term is on
    assert set(result.losses_used) == {"silhouette", "centroid", "rgb"}
    # Laplace uncertainties: finite, positive and small for well-observed parameters
    assert result.identifiable == {VEL: [True, True, True], REST: True}
    assert 0 < result.uncertainties[REST] < 0.02
    assert all(0 < s < 0.05 for s in result.uncertainties[VEL])


def test_values_stay_inside_ranges_through_reparameterisation():
    bounded = ParamSpec(path="x", size=1, lo=0.05, hi=1.0, initial=(0.7,))
    for u in (-1e3, -30.0, 0.0, 30.0, 1e3):
        v = float(bounded.to_value(torch.tensor(u, dtype=torch.float64)))
        assert 0.05 <= v <= 1.0
    assert float(bounded.to_value(bounded.to_u(0.7))) == pytest.approx(0.7, abs=1e-12)
    # a value on the range end starts just inside (finite u)
    assert math.isfinite(float(bounded.to_u(1.0))) and float(bounded.to_value(bounded.to_u(1.0))) < 1.0
    vector = ParamSpec(path="v", size=3, lo=-5.0, hi=5.0, initial=(0.5, 0.0, 1.0))
    assert vector.to_value(vector.to_u([0.5, 0.0, 1.0])).tolist() == pytest.approx([0.5, 0.0, 1.0], abs=1e-12)
    free = ParamSpec(path="m", size=1, lo=None, hi=None, initial=(2.0,))
    assert float(free.to_value(free.to_u(123.0))) == 123.0  # identity when unbounded
    draws = vector.sample(torch.Generator().manual_seed(0), 500)
    assert draws.shape == (500, 3) and float(draws.min()) >= -5.0 and float(draws.max()) <= 5.0
    assert float(draws.std()) > 2.0  # spread over the range, not stuck at the initial value


def test_recovers_from_another_renderer_look_resolution_and_compression(spec, tmp_path):
    """Different ball colour, sky, ground colours and checker size, light, 1.5x the resolution, and
    an H.264 round trip: the mask-based terms still recover the values; the rgb term is off."""
    frames = render_target(spec, **{
        "objects[0].color": [0.2, 0.4, 0.95], "light.sky_color": [0.9, 0.85, 0.7],
        "ground.checker_size": 0.3, "ground.colors": [[0.6, 0.75, 0.6], [0.25, 0.3, 0.25]],
        "light.intensity": 0.6, "light.ambient": 0.5, "camera.width": 192, "camera.height": 144})
    video = tmp_path / "other.mp4"
    write_video(video, frames, fps=30)
    decoded, _ = read_video(video)
    assert decoded.shape == (46, 144, 192, 3)
    assert np.abs(decoded.astype(int) - frames.astype(int)).max() > 0  # really lossy
    result = fit(spec, video, iterations=ITERATIONS, progress=False, threads=1, uncertainty=False)
    rest_err, vel_err = errors(result.values)
    assert rest_err < TOL_REST, result.values
    assert max(vel_err) < TOL_VEL, result.values
    assert set(result.losses_used) == {"silhouette", "centroid"}
    assert result.details["appearance_gap"] > 0.05
    assert result.details["coverage"] == "rendered" and result.details["observed_from"] is None  # another look
    assert result.target.source_size == (144, 192) and result.target.rgb.shape[1:3] == (96, 128)


# ------------------------------------------------------------------------------------------ outputs


def test_outputs_exist_and_are_valid(fitted):
    result, run_dir = fitted
    fitted_spec = load_scene(run_dir / "fitted.toml")
    assert fitted_spec.get(REST) == pytest.approx(result.values[REST], abs=1e-12)
    assert list(fitted_spec.get(VEL)) == pytest.approx(result.values[VEL], abs=1e-12)
    assert fitted_spec.learnable[REST].range == (0.05, 1.0)  # still learnable, range kept
    assert fitted_spec.get("objects[0].radius") == 0.2

    info = json.loads((run_dir / "fit.json").read_text())
    params = {p["path"]: p for p in info["parameters"]}
    assert set(params) == {VEL, REST}
    assert params[REST]["value"] == pytest.approx(result.values[REST])
    assert params[REST]["initial"] == pytest.approx(0.7)
    assert params[REST]["uncertainty"] == pytest.approx(result.uncertainties[REST])
    assert params[REST]["identifiable"] is True and "warning" not in params[REST]
    assert params[VEL]["value"] == pytest.approx(result.values[VEL]) and len(params[VEL]["uncertainty"]) == 3
    assert info["final_loss"] == pytest.approx(result.final_loss)
    assert info["iterations"] == SAME_ITERATIONS and info["restarts"] == 1
    assert info["coverage"] == "observed" and info["observed_from_iteration"] == result.details["observed_from"]
    assert set(info["losses_used"]) == {"silhouette", "centroid", "rgb"}
    assert info["wall_time_s"] > 0 and info["frames"] == 46
    assert len(info["loss_history"]) == SAME_ITERATIONS

    png = (run_dir / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and iio.imread(png).ndim == 3

    video, fps = read_video(run_dir / "side_by_side.mp4")
    assert video.shape == (46, 96, 3 * 128, 3) and fps == 30
    # target | fit | difference: the fit panel matches the target panel closely after fitting
    target_panel, fit_panel = video[..., :128, :].astype(int), video[..., 128:256, :].astype(int)
    assert np.abs(target_panel - fit_panel).mean() < 3.0

    report = (run_dir / "report.html").read_text()
    assert '<table id="parameters">' in report and REST in report and VEL in report
    assert f"{result.values[REST]:.5g}" in report
    embedded_png = re.search(r'src="data:image/png;base64,([^"]+)"', report).group(1)
    assert base64.b64decode(embedded_png) == png
    embedded_mp4 = re.search(r'src="data:video/mp4;base64,([^"]+)"', report).group(1)
    assert base64.b64decode(embedded_mp4) == (run_dir / "side_by_side.mp4").read_bytes()
    # nothing half-written is left behind
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_unidentifiable_parameter_is_flagged(tmp_path):
    """Mass does not change a bounce on a fixed ground: zero curvature, no uncertainty, a warning."""
    text = SCENE.read_text().replace("mass = 1.0", "mass = { value = 1.0, learn = true, range = [0.5, 2.0] }")
    spec = parse_scene(text)
    assert "objects[0].mass" in spec.learnable
    frames = render_target(spec)
    # 25 frames: the first bounce (restitution's only effect) is inside, at about frame 14
    result = fit(spec, frames, iterations=2, frames=24, progress=False, threads=1, run_dir=tmp_path / "run")
    assert result.identifiable["objects[0].mass"] is False
    assert result.uncertainties["objects[0].mass"] is None
    assert result.identifiable[REST] is True and all(result.identifiable[VEL])
    entry = {p["path"]: p for p in json.loads((tmp_path / "run" / "fit.json").read_text())["parameters"]}
    assert entry["objects[0].mass"]["identifiable"] is False and "warning" in entry["objects[0].mass"]
    assert entry["objects[0].mass"]["uncertainty"] is None


# ------------------------------------------------------------------------------------------ resume


def test_resume_continues_from_checkpoint_and_matches_uninterrupted_run(spec, target, tmp_path):
    """Interrupt a 2-restart fit in restart 0, rerun the same call: it continues there and ends
    bit-identical to an uninterrupted run; then extending the iterations continues again."""
    kw = dict(restarts=2, frames=12, progress=False, threads=1, uncertainty=False, outputs=False)
    full = fit(spec, target, iterations=6, run_dir=tmp_path / "full", **kw)
    assert full.resumed_from == 0 and [len(h) for h in full.loss_history] == [6, 6]

    run_dir = tmp_path / "interrupted"
    seen = []

    def stop_after_four(info):
        seen.append((info["restart"], info["iteration"]))
        if len(seen) == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(spec, target, iterations=6, run_dir=run_dir, callback=stop_after_four, **kw)
    state = json.loads((run_dir / "checkpoint.json").read_text())
    assert state["tensors"].endswith(".safetensors") and (run_dir / state["tensors"]).is_file()
    assert len(list(run_dir.glob("checkpoint-*.safetensors"))) == 1
    assert [r["iteration"] for r in state["restarts"]] == [4]

    resumed_seen = []
    resumed = fit(spec, target, iterations=6, run_dir=run_dir,
                  callback=lambda info: resumed_seen.append((info["restart"], info["iteration"])), **kw)
    assert resumed.resumed_from == 4
    assert resumed_seen[0] == (0, 5)  # continues, does not start over
    assert len(resumed_seen) == 2 * 6 - 4
    assert resumed.loss_history == full.loss_history  # history continuous and identical
    assert resumed.values == full.values and resumed.final_losses == full.final_losses
    assert resumed.best_restart == full.best_restart

    # more iterations in the same run directory: each restart continues from its 6th iteration
    extended = fit(spec, target, iterations=8, run_dir=run_dir, **kw)
    assert extended.resumed_from == 12
    assert [h[:6] for h in extended.loss_history] == full.loss_history
    longer = fit(spec, target, iterations=8, run_dir=tmp_path / "longer", **kw)
    assert extended.loss_history == longer.loss_history and extended.values == longer.values

    # a completed run reruns without new iterations and gives the same answer
    again = fit(spec, target, iterations=8, run_dir=run_dir, **kw)
    assert again.resumed_from == 16 and again.values == extended.values


def test_checkpoint_for_another_target_is_refused_unless_fresh(spec, target, tmp_path):
    kw = dict(frames=8, progress=False, threads=1, uncertainty=False, outputs=False, run_dir=tmp_path / "run")
    fit(spec, target, iterations=1, **kw)
    other = target[:, :, ::-1].copy()  # mirrored video: another target
    with pytest.raises(HybridsimError, match="different target"):
        fit(spec, other, iterations=1, **kw)
    with pytest.raises(HybridsimError, match="lr"):
        fit(spec, target, iterations=1, lr=0.2, **kw)
    fresh = fit(spec, other, iterations=1, resume=False, **kw)
    assert fresh.resumed_from == 0


# ------------------------------------------------------------------------------------------ pieces


def test_foreground_mask_recovers_disc_centroid_and_area():
    """A soft-edged disc moving over a textured, noisy background: background subtraction gives the
    disc's centroid to a small fraction of a pixel and its area to a few percent, with no specks."""
    rng = np.random.default_rng(0)
    frames_n, height, width, radius = 20, 48, 64, 5.0
    background = rng.uniform(0.2, 0.8, size=(height, width, 3))
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    centres = [(10.0 + 2.1 * k, 20.0 + 0.7 * k) for k in range(frames_n)]
    frames = []
    for cx, cy in centres:
        coverage = 1.0 / (1.0 + np.exp(-(radius - np.hypot(xs - cx, ys - cy)) / 0.5))
        image = coverage[..., None] * np.array([0.9, 0.2, 0.1]) + (1 - coverage[..., None]) * background
        frames.append(image + rng.normal(0, 0.01, size=image.shape))
    frames = torch.tensor(np.clip(np.stack(frames), 0, 1), dtype=torch.float32)
    mask, bg, threshold, noise = foreground_mask(frames)
    assert 0.005 < noise < 0.03 and threshold >= 0.08
    assert torch.allclose(bg, torch.tensor(background, dtype=torch.float32), atol=0.03)
    area, centroid = mask_moments(mask.double())
    truth = torch.tensor(centres, dtype=torch.float64)
    assert float((centroid - truth).norm(dim=-1).max()) < 0.15
    assert float(((area - math.pi * radius ** 2) / (math.pi * radius ** 2)).abs().max()) < 0.08
    # nothing far from the disc
    far = torch.tensor(np.hypot(xs[None] - truth[:, 0, None, None].numpy(), ys[None] - truth[:, 1, None, None].numpy()))
    assert float(mask[far > radius + 4].max()) == 0.0


def test_resample_uses_area_averaging_and_checks_aspect():
    frames = torch.rand(2, 8, 12, 3)
    half = resample_frames(frames, 4, 6)
    assert torch.allclose(half, frames.reshape(2, 4, 2, 6, 2, 3).mean(dim=(2, 4)), atol=1e-6)
    with pytest.raises(AssetError, match="aspect"):
        prepare_target((np.random.rand(3, 50, 50, 3) * 255).astype(np.uint8), height=96, width=128, scene_fps=30)


def test_resample_by_four_thirds_keeps_centroids_and_area():
    """128x96 -> 96x72 weighs each source pixel by its exact overlap: a square's area comes through
    exactly and its centroid within 0.03 px wherever it sits (torch's whole-pixel pooling windows
    moved it by up to 0.125 px and changed its area by 7%, with the phase of its position)."""
    for x0 in range(10, 16):
        frames = torch.zeros(1, 96, 128, 3)
        frames[0, 40:46, x0:x0 + 5] = 1.0
        area, centroid = mask_moments(resample_frames(frames, 72, 96)[..., 0].double())
        assert float(area[0]) == pytest.approx(30 * 0.75 ** 2, rel=1e-6)
        assert float(centroid[0, 0]) == pytest.approx((x0 + 2.5) * 0.75, abs=0.03)
        assert float(centroid[0, 1]) == pytest.approx(43.0 * 0.75, abs=0.03)


def test_fit_samples_the_scene_at_the_targets_frame_times():
    from hybridsim.fit.optimize import retimed_for_target

    spec = load_scene(SCENE)  # 30 fps, 45 frames, 8 substeps
    at24, rate = retimed_for_target(spec, 24.0)
    assert (at24.time.fps, at24.time.substeps, at24.frame_count, rate) == (24.0, 10, 36, 0.8)
    at60, rate = retimed_for_target(spec, 59.94)  # every other frame of a 59.94 fps video
    assert at60.time.fps == pytest.approx(29.97) and at60.time.substeps == 8 and at60.frame_count == 44
    assert retimed_for_target(spec, 30.0)[0] is spec and retimed_for_target(spec, None)[0] is spec


def test_target_is_aligned_in_time_by_frame_rate():
    frames = np.zeros((31, 24, 32, 3), np.uint8)
    frames[:, 10:14, 10:14] = np.arange(31, dtype=np.uint8)[:, None, None, None] * 8
    frames[:, :2, :2] = 255  # keeps the background well defined
    prepared = prepare_target(frames, height=24, width=32, scene_fps=30, target_fps=60)
    assert prepared.frame_index == list(range(0, 31, 2))  # 60 fps target: every second frame
    assert prepared.frame_count == 16
    capped = prepare_target(frames, height=24, width=32, scene_fps=30, max_frames=5)
    assert capped.frame_index == [0, 1, 2, 3, 4]


def test_centroid_term_pulls_where_silhouettes_do_not_overlap():
    """With the render 30 px left of the target, soft IoU has (almost) no gradient, while the
    centroid term pulls the sphere right, towards the target."""
    camera = Camera(position=(0.0, -5.0, 1.0), look_at=(0.0, 0.0, 1.0), up=(0.0, 0.0, 1.0), fovy_deg=40.0,
                    width=64, height=48)
    target_centre = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    with torch.no_grad():
        target_alpha = render_spheres(camera, target_centre, [0.2], [[1.0, 0.0, 0.0]])["alpha"][None]
    target_area, target_centroid = mask_moments(target_alpha)
    centre = torch.tensor([[-1.0, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    alpha = render_spheres(camera, centre, [0.2], [[1.0, 0.0, 0.0]])["alpha"][None]
    assert float((alpha.detach() * target_alpha).sum()) < 1e-6  # no overlap at all
    projected = camera.project(centre.detach())[0]
    sil = silhouette_loss(alpha, target_alpha)
    (g_sil,) = torch.autograd.grad(sil, centre, retain_graph=True)
    loss = centroid_loss(rendered_centroids(alpha, projected), target_centroid, target_area > 4)
    (g_cen,) = torch.autograd.grad(loss, centre)
    assert float(g_cen[0, 0]) < -1e-2  # moving right (+x) lowers the loss
    assert abs(float(g_sil[0, 0])) < 1e-3 * abs(float(g_cen[0, 0]))


def test_fit_refuses_scene_without_learnable_fields(spec, target):
    plain = parse_scene(SCENE.read_text().replace("learn = true", "learn = false"))
    with pytest.raises(HybridsimError, match="no learnable"):
        fit(plain, target, iterations=1, progress=False)


# ------------------------------------------------------------------------------------------ CLI


def test_cli_fit_with_frame_folder_and_camera_json(spec, target, tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(target[:13]):
        iio.imwrite(folder / f"frame_{i}.png", frame)
    camera = tmp_path / "camera.json"
    cam = spec.camera
    camera.write_text(json.dumps({"position": list(cam.position), "look_at": list(cam.look_at), "up": [0, 0, 1],
                                  "fovy_deg": cam.fovy_deg, "width": 64, "height": 48, "fps": 30}))
    run_dir = tmp_path / "run"
    code = main(["fit", str(SCENE), "--target", str(folder), "--camera", str(camera), "-o", str(run_dir),
                 "--iterations", "3", "--frames", "12", "--threads", "1", "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert REST in out and "final loss" in out
    for name in ("fitted.toml", "fit.json", "loss.png", "side_by_side.mp4", "report.html"):
        assert (run_dir / name).is_file(), name
    fitted_spec = load_scene(run_dir / "fitted.toml")
    assert (fitted_spec.camera.width, fitted_spec.camera.height) == (64, 48)  # camera.json applied
    info = json.loads((run_dir / "fit.json").read_text())
    assert info["frames"] == 13 and info["iterations"] == 3 and info["render_size"] == [64, 48]
    video, _ = read_video(run_dir / "side_by_side.mp4")
    assert video.shape == (13, 48, 3 * 64, 3)


def test_cli_fit_garbage_video_fails_with_one_line_naming_the_file(tmp_path, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    run_dir = tmp_path / "run"
    code = main(["fit", str(SCENE), "--target", str(garbage), "-o", str(run_dir), "--quiet"])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(garbage) in err and "Traceback" not in err
    assert not run_dir.exists()  # nothing written for a target that cannot be read


@pytest.mark.slow
def test_cli_recovers_from_another_camera_with_camera_json_and_restarts(spec, tmp_path, capsys):
    """Thorough end-to-end run: the target is filmed from another viewpoint, field of view and size,
    with another palette, as an mp4; camera.json tells the fit where that camera was."""
    view = {"position": [-1.0, -5.0, 1.6], "look_at": [0.5, 0.0, 0.4], "up": [0.0, 0.0, 1.0],
            "fovy_deg": 50.0, "width": 160, "height": 120}
    frames = render_target(spec, **{f"camera.{k}": v for k, v in view.items()},
                           **{"objects[0].color": [0.95, 0.8, 0.1], "light.sky_color": [0.3, 0.3, 0.35],
                              "ground.checker_size": 0.25})
    video = tmp_path / "other_camera.mp4"
    write_video(video, frames, fps=30)
    camera = tmp_path / "camera.json"
    camera.write_text(json.dumps({**view, "fps": 30}))
    run_dir = tmp_path / "run"
    code = main(["fit", str(SCENE), "--target", str(video), "--camera", str(camera), "-o", str(run_dir),
                 "--iterations", "40", "--restarts", "2", "--threads", "1", "--quiet"])
    assert code == 0
    info = json.loads((run_dir / "fit.json").read_text())
    values = {p["path"]: p["value"] for p in info["parameters"]}
    rest_err, vel_err = errors(values)
    assert rest_err < TOL_REST, values
    assert max(vel_err) < TOL_VEL, values
    assert info["restarts"] == 2 and len(info["final_losses_per_restart"]) == 2
    assert info["final_loss"] == min(info["final_losses_per_restart"])
    assert info["render_size"] == [160, 120]


# ------------------------------------------------------------------------------------------ coverage phases


def test_auto_coverage_goes_observed_only_for_targets_with_the_scenes_look():
    """"auto" adds the observed-coverage phase for every scene kind when the target's background is
    the scene's own (a same-look target), never for another look (median / first-frame background),
    nor with networks or finite-difference gradients; "observed" forces it, "rendered" never."""
    from hybridsim.fit.optimize import _observed

    auto = FitSettings()
    for kind in ("spheres", "rigid", "fluid", "mpm"):
        assert _observed(auto, kind, None, "scene")
        assert _observed(FitSettings(coverage="observed"), kind, None, "median")
        for background in ("median", "first_frame"):
            assert not _observed(auto, kind, None, background)
        assert not _observed(FitSettings(coverage="rendered"), kind, None, "scene")
        assert not _observed(FitSettings(gradients="finite_difference"), kind, None, "scene")  # Adam
        assert _observed(FitSettings(gradients="finite_difference"), kind, None, "scene", lm=True)
        assert not _observed(auto, kind, object(), "scene")  # a refiner or motion prior
    with pytest.raises(HybridsimError, match="coverage"):
        _observed(FitSettings(coverage="both"), "spheres", None, "scene")


def test_adam_switches_to_observed_coverage_on_a_plateau_and_resumes_across_the_switch(spec, target, tmp_path):
    """Adam goes on with observed coverages once the window is full and the loss has plateaued (here
    forced early: with 9 images the window is full from the second iteration, any 2 full-window
    losses count as a plateau, so the switch comes after 3 iterations); the switch is recorded, and a run interrupted after it resumes
    bit-identical (the restarted moments and the phase are in the checkpoint)."""
    settings = FitSettings(window_iterations=2, observed_patience=2, observed_plateau=1e6)
    kw = dict(frames=8, progress=False, threads=1, uncertainty=False, outputs=False, settings=settings)
    full = fit(spec, target, iterations=6, run_dir=tmp_path / "full", **kw)
    assert full.details["coverage"] == "observed" and full.details["observed_from"] == 3
    saved = json.loads((tmp_path / "full" / "checkpoint.json").read_text())
    assert saved["restarts"][0]["observed_from"] == 3 and saved["config"]["coverage"] == "observed"

    run_dir = tmp_path / "interrupted"
    seen = []

    def stop_after_five(info):
        seen.append(info["iteration"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(spec, target, iterations=6, run_dir=run_dir, callback=stop_after_five, **kw)
    resumed = fit(spec, target, iterations=6, run_dir=run_dir, **kw)
    assert resumed.resumed_from == 5
    assert resumed.losses == full.losses and resumed.values == full.values
    assert resumed.details["observed_from"] == 3

    rendered = fit(spec, target, iterations=6, **{**kw, "settings": FitSettings(window_iterations=2,
                                                                                coverage="rendered")})
    assert rendered.details["coverage"] == "rendered" and rendered.details["observed_from"] is None
    assert rendered.losses[:3] == full.losses[:3]  # the same path up to the switch
    assert rendered.losses[3:] != full.losses[3:]


def test_checkpoint_from_before_the_coverage_setting_resumes(spec, target, tmp_path):
    """A checkpoint written before ``coverage`` (and the observed phase's settings) existed lacks
    those keys: it resumes when everything else matches (those versions ran the rendered phase,
    with which every fit starts), and a real difference is still refused."""
    kw = dict(frames=8, progress=False, threads=1, uncertainty=False, outputs=False, run_dir=tmp_path / "run")
    first = fit(spec, target, iterations=2, **kw)
    path = tmp_path / "run" / "checkpoint.json"
    saved = json.loads(path.read_text())
    for key in ("coverage", "observed_patience", "observed_plateau", "observed_lr"):
        del saved["config"]["settings"][key]
    del saved["config"]["coverage"]
    for entry in saved["restarts"]:
        del entry["observed_from"]
    path.write_text(json.dumps(saved))
    resumed = fit(spec, target, iterations=3, **kw)
    assert resumed.resumed_from == 2 and resumed.losses[:2] == first.losses and len(resumed.losses) == 3

    saved = json.loads(path.read_text())  # rewritten with the keys: resumes as a current checkpoint
    assert saved["config"]["settings"]["coverage"] == "auto" and saved["config"]["coverage"] == "observed"
    del saved["config"]["settings"]["coverage"]
    del saved["config"]["coverage"]
    saved["config"]["settings"]["lr_hold"] = 3  # another setting differs: refused, naming it
    path.write_text(json.dumps(saved))
    with pytest.raises(HybridsimError, match="lr_hold"):
        fit(spec, target, iterations=4, **kw)
    saved["config"]["settings"]["lr_hold"] = FitSettings().lr_hold
    saved["config"]["settings"]["coverage"] = "rendered"  # present and different: refused
    path.write_text(json.dumps(saved))
    with pytest.raises(HybridsimError, match="coverage"):
        fit(spec, target, iterations=4, **kw)


def test_observed_coverage_scores_zero_at_the_truth_of_a_self_rendered_sphere_target(spec, target):
    """At the true values the target's mask against the renderer's soft coverage still scores 0.0926
    (the rgb term is 0 there); observed coverages of target and render agree (5e-6), so the final
    losses (and the Laplace fit) of an Adam fit use them."""
    kw = dict(iterations=0, progress=False, threads=1, uncertainty=False, outputs=False)
    at_truth = spec.with_values(TRUE)
    observed = fit(at_truth, target, **kw)
    assert observed.details["coverage"] == "observed" and observed.final_loss < 1e-4, observed.final_loss
    rendered = fit(at_truth, target, settings=FitSettings(coverage="rendered"), **kw)
    assert rendered.details["coverage"] == "rendered" and rendered.final_loss > 0.05, rendered.final_loss
