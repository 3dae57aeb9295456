"""Fits to videos another engine made: closed-form motion drawn by an independent numpy ray caster
(``tests/foreign_engine.py``: its own camera maths, gamma-encoded shading with highlights, sky
gradient, checkered floor of another size and palette, hard shadows from another light, 3x3
supersampling), at another frame rate and resolution, with sensor noise and H.264 compression.
Only the scene file (camera, sizes, masses, known quantities) is shared, as with a user's footage.
The issue's tolerance for targets that look different is 5%.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hybridsim.fit import fit
from hybridsim.render import write_video
from hybridsim.scene import load_scene, parse_scene
from hybridsim.testing.fit_scenes import SLIDE

sys.path.insert(0, str(Path(__file__).resolve().parent))
import foreign_engine as fe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
G = 9.81


def _camera(spec, width: int, height: int) -> dict:
    cam = spec.camera
    return {"position": list(cam.position), "look_at": list(cam.look_at), "fovy_deg": cam.fovy_deg,
            "width": width, "height": height}


def _video(path: Path, frames: np.ndarray, fps: float) -> Path:
    write_video(path, fe.degrade(frames, sigma=3.0), fps=fps)
    return path


def _fit_thrown_ball(tmp_path, look: fe.Look) -> dict:
    spec = load_scene(ROOT / "scenes" / "bounce_fit.toml")
    times = np.arange(37) / 24.0
    centres = fe.ball_on_frictionless_floor([0.0, 0.0, 1.0], [1.0, 0.0, 0.5], 0.2, 0.6, G, times)
    frames = fe.render_video(_camera(spec, 160, 120), [[fe.Sphere(c, 0.2, (0.3, 0.75, 0.25))] for c in centres], look)
    video = _video(tmp_path / "ball.mp4", frames, fps=24)
    result = fit(spec, video, iterations=40, progress=False, max_render_height=None, threads=1, uncertainty=False,
                 outputs=False)
    assert result.details["background"] == "first_frame" and result.details["shadows_dropped"]
    return result.values


def test_ball_restitution_and_throw_from_another_engine_at_24_fps(tmp_path):
    """bounce_fit.toml (30 fps, 128x96; starts at e 0.7, v (0.5, 0, 1.0)) against a ball the other
    engine threw with v (1.0, 0, 0.5) m/s and e 0.6 (ratio of normal speeds), filmed at 24 fps and
    160x120 for 1.5 s, lit from behind the camera. Measured: e 0.6008, v (0.9998, -0.003, 0.492)."""
    values = _fit_thrown_ball(tmp_path, fe.Look(light=(-0.3, 0.5, -1.0)))
    v = np.asarray(values["objects[0].velocity"])
    assert abs(values["objects[0].restitution"] / 0.6 - 1.0) < 0.05, values
    assert np.linalg.norm(v - [1.0, 0.0, 0.5]) < 0.05 * np.linalg.norm([1.0, 0.0, 0.5]), values


@pytest.mark.slow
def test_ball_from_another_engine_lit_from_behind(tmp_path):
    """The same throw lit from behind the ball: the ball's face is in its own shadow and its lit top
    is nearly the colour of the floor behind it, so background subtraction misses the top rows
    while the ball is high (10% of its area) but not once it is low. The apparent growth is what
    shows motion in depth (y), so y is the loosest component: measured e 0.597, v (1.014, -0.055,
    0.477)."""
    values = _fit_thrown_ball(tmp_path, fe.Look())
    v = np.asarray(values["objects[0].velocity"])
    assert abs(values["objects[0].restitution"] / 0.6 - 1.0) < 0.05, values
    assert np.abs(v[[0, 2]] - [1.0, 0.5]).max() < 0.05 * np.linalg.norm([1.0, 0.0, 0.5]), values
    assert abs(v[1]) < 0.1, values


def test_box_friction_from_another_engine_at_25_fps(tmp_path):
    """The sliding-box scene (30 fps, 96x72, push 2.6 m/s, box friction learned from 0.3, ground
    friction 0.5; a contact uses the mean of both sides) against a block the other engine slid at
    2.6 m/s with Coulomb friction 0.525, filmed at 25 fps and 128x96 as a folder of PNG frames."""
    import imageio.v3 as iio

    text = SLIDE.replace("velocity = { value = [2.0, 0.0, 0.0], learn = true, range = [-6.0, 6.0] }",
                         "velocity = [2.6, 0.0, 0.0]").replace("frames = 20", "frames = 18")
    spec = parse_scene(text)
    times = np.arange(16) / 25.0
    centres = fe.block_sliding_to_rest([-1.0, 0.0, 0.1], 2.6, 0.525, G, times)
    look = fe.Look(floor=((0.55, 0.6, 0.5), (0.3, 0.33, 0.28)), checker=0.3, light=(-0.4, 0.2, -1.0))
    half = np.array([0.15, 0.15, 0.1])
    frames = fe.degrade(fe.render_video(_camera(spec, 128, 96), [[fe.Block(c, half, (0.2, 0.4, 0.85))] for c in centres],
                                       look), sigma=3.0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        iio.imwrite(folder / f"{i:04d}.png", frame)
    result = fit(spec, folder, target_fps=25.0, iterations=20, lr=0.1, progress=False, max_render_height=None,
                 threads=1, uncertainty=False, outputs=False)
    mu = 0.5 * (result.values["objects[0].friction"] + 0.5)  # the contact's friction, what a video shows
    assert abs(mu / 0.525 - 1.0) < 0.05, result.values


@pytest.mark.slow
def test_spring_stiffness_and_damping_from_another_engine(tmp_path):
    """spring_mass.toml at 96x72 (stiffness learned from 30, damping from 0.2) against a weight the
    other engine hung on a 40 N/m spring with damping 0.5 N s/m, filmed at 24 fps and 128x96 for 3 s.
    Measured 39.85 and 0.479 (0.4990 from a 96x72 target). The damping shows only in how the swing
    shrinks (4 mm a period, a tenth of a pixel at 64x48, where the fit gave 0.475)."""
    text = (ROOT / "scenes" / "spring_mass.toml").read_text()
    text = text.replace("mass = { value = 1.0, learn = true, range = [0.1, 10.0] }", "mass = 1.0")
    text = text.replace("stiffness = 40.0 ", "stiffness = { value = 30.0, learn = true, range = [5.0, 100.0] } ")
    text = text.replace("damping = 0.05 ", "damping = { value = 0.2, learn = true, range = [0.0, 2.0] } ")
    text = text.replace("width = 160", "width = 96").replace("height = 120", "height = 72")
    spec = parse_scene(text)
    times = np.arange(73) / 24.0
    centres = fe.weight_on_a_spring([0.0, 0.0, 1.5], 1.0, 40.0, 0.5, G, times)
    mount = fe.Block(np.array([0.0, 0.0, 2.15]), np.array([0.3, 0.15, 0.05]), (0.6, 0.6, 0.62))
    weight = np.array([0.1, 0.1, 0.1])
    frames = fe.render_video(_camera(spec, 128, 96), [[mount, fe.Block(c, weight, (0.85, 0.3, 0.3))] for c in centres],
                             fe.Look(light=(0.2, 0.4, -1.0)))
    video = _video(tmp_path / "spring.mp4", frames, fps=24)
    result = fit(spec, video, iterations=30, progress=False, max_render_height=None, threads=1, uncertainty=False,
                 outputs=False)
    assert abs(result.values["springs[0].stiffness"] / 40.0 - 1.0) < 0.05, result.values
    assert abs(result.values["springs[0].damping"] / 0.5 - 1.0) < 0.05, result.values
