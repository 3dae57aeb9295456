"""Fits to targets with a deliberately different look: other object, ground, sky and wall colours,
another light direction (so other shading and shadows), 1.5x the resolution, additive noise and an
H.264 round trip. The physics must come back within 5%.

What makes them work (``hybridsim.fit``): the rgb term switches itself off; the background for
subtraction is the target's own first frame wherever the scene's frame 0 shows no moving object
(the temporal median would take a box that slows to a stop for background); cast shadows are left
out of the target's mask and of the rendered coverage (the target's light casts them elsewhere).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridsim.fit import fit
from hybridsim.render import read_video, to_uint8, write_video
from hybridsim.render.camera import Camera
from hybridsim.render.fluid import render_fluid_frames
from hybridsim.scene import parse_scene
from hybridsim.sim.fluid import fluid_rollout
from hybridsim.sim.world import World

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fit_fluid import PLUME  # noqa: E402
from test_fit_rigid import SLIDE, _friction_only  # noqa: E402

FRICTION = "objects[0].friction"


def _degrade(frames: np.ndarray, path: Path, sigma: float = 4.0) -> Path:
    """Additive Gaussian noise (sigma in grey levels), then an H.264 mp4."""
    noise = np.random.default_rng(0).normal(0.0, sigma, frames.shape)
    write_video(path, np.clip(frames.astype(np.float64) + noise, 0, 255).astype(np.uint8), fps=30)
    decoded, _ = read_video(path)
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() > 1.0  # really degraded
    return path


@pytest.mark.slow
def test_box_friction_from_a_differently_lit_coloured_noisy_compressed_video(tmp_path):
    from hybridsim.render.rigid import render_rigid
    from hybridsim.sim.rigid import rigid_rollout

    spec = _friction_only(SLIDE, 14)  # the box slides to a stop by frame 14: friction 0.55, scene starts at 0.3
    look = spec.with_values({FRICTION: 0.55, "objects[0].color": [0.2, 0.5, 0.95], "objects[1].color": [0.8, 0.75, 0.3],
                             "ground.colors": [[0.6, 0.75, 0.6], [0.25, 0.3, 0.25]], "ground.checker_size": 0.3,
                             "light.direction": [0.5, -0.2, -1.0], "light.sky_color": [0.9, 0.85, 0.7],
                             "camera.width": 144, "camera.height": 108})
    world = World(look)
    with torch.no_grad():
        frames = to_uint8(render_rigid(world, rigid_rollout(world, frames=14))["rgb"].numpy())
    video = _degrade(frames, tmp_path / "box.mp4")
    result = fit(spec, video, iterations=20, lr=0.1, progress=False, max_render_height=None, threads=1,
                 uncertainty=False)
    assert result.details["background"] == "first_frame" and result.details["shadows_dropped"]
    assert set(result.losses_used) == {"silhouette", "centroid"}
    assert abs(result.values[FRICTION] / 0.55 - 1.0) < 0.05, result.values


def test_plume_buoyancy_from_a_recoloured_resized_noisy_compressed_video(tmp_path):
    spec = parse_scene(PLUME)  # buoyancy starts at 1.0
    look = spec.with_values({"fluid.buoyancy": 2.0, "fluid.smoke_color": [0.95, 0.8, 0.5],
                             "fluid.background": [0.2, 0.25, 0.4], "camera.width": 48, "camera.height": 60})
    world = World(look)
    with torch.no_grad():
        layers = render_fluid_frames(Camera.from_spec(look.camera), look.fluid, fluid_rollout(world, frames=20), 1 / 30)
    video = _degrade(to_uint8(layers["rgb"].numpy()), tmp_path / "plume.mp4")
    result = fit(spec, video, iterations=20, progress=False, max_render_height=None, threads=1, uncertainty=False)
    assert result.details["background"] == "first_frame"  # the box before any smoke
    assert abs(result.values["fluid.buoyancy"] / 2.0 - 1.0) < 0.05, result.values


def test_first_frame_background_keeps_a_box_that_stops_out_of_the_background():
    """A box that starts at the left and rests at the right for most of the clip: the median takes
    the resting box for background; the first frame (with the scene's frame 0 coverage) does not."""
    from hybridsim.fit.target import first_frame_background, foreground_mask

    ground = torch.tensor([0.3, 0.5, 0.3])
    frames = ground.expand(9, 12, 20, 3).clone()
    frames[0, 4:8, 2:6] = torch.tensor([0.1, 0.2, 0.9])  # frame 0: box at the left
    frames[1, 4:8, 7:11] = torch.tensor([0.1, 0.2, 0.9])
    frames[2:, 4:8, 12:16] = torch.tensor([0.1, 0.2, 0.9])  # then at rest at the right
    occupied = torch.zeros(12, 20)
    occupied[4:8, 2:6] = 1.0  # the scene's frame 0
    median = frames.median(dim=0).values
    assert not torch.allclose(median[5, 13], ground)  # the resting box is "background" to the median
    background = first_frame_background(frames, median, occupied, 0.08)
    assert torch.allclose(background, ground.expand(12, 20, 3))
    mask, *_ = foreground_mask(frames, background)
    assert float(mask[5].sum()) == pytest.approx(16.0, abs=2.0)
    # a target whose objects start elsewhere than the scene's keeps the median
    assert first_frame_background(frames, median, torch.roll(occupied, 6, dims=0), 0.08) is None


def test_first_frame_background_of_an_object_that_comes_back():
    """A weight that starts at the top, swings down and comes back: where it starts, the background
    is the colour shown while it is away (the last frame shows the weight again); just below, where
    the scene's blurred frame-0 coverage reaches but the first frame shows ground, the first frame
    (the weight passes there often, and would otherwise be taken for background)."""
    from hybridsim.fit.target import first_frame_background

    ground = torch.tensor([0.7, 0.7, 0.65])
    red = torch.tensor([0.85, 0.3, 0.3])
    frames = ground.expand(12, 24, 20, 3).clone()
    rows = [4, 6, 9, 12, 14, 12, 9, 6, 4, 6, 9, 4]  # top row of the 4 px weight in each frame
    for k, r in enumerate(rows):
        frames[k, r:r + 4, 8:12] = red
    occupied = torch.zeros(24, 20)
    occupied[4:8, 8:12] = 1.0
    occupied[8:10, 8:12] = 0.05  # a soft edge reaching below the weight
    background = first_frame_background(frames, frames.median(dim=0).values, occupied, 0.08)
    assert torch.allclose(background, ground.expand(24, 20, 3))


def test_cast_shadows_are_dropped_from_the_mask_but_dark_objects_are_not():
    from hybridsim.fit.target import foreground_mask

    ground = torch.tensor([0.6, 0.7, 0.5])
    frames = ground.expand(5, 16, 16, 3).clone()
    for t in range(5):
        frames[t, 2:6, 2 + 2 * t:6 + 2 * t] = ground * 0.5  # a moving shadow: the ground, darker
        frames[t, 9:13, 2 + 2 * t:6 + 2 * t] = torch.tensor([0.1, 0.1, 0.3])  # a moving dark-blue object
    kept, *_ = foreground_mask(frames, ground.expand(16, 16, 3))
    dropped, *_ = foreground_mask(frames, ground.expand(16, 16, 3), drop_shadows=True)
    assert float(kept[2, 2:6].sum()) > 12 and float(dropped[2, 2:6].sum()) == 0.0
    assert float(dropped[2, 9:13].sum()) == pytest.approx(float(kept[2, 9:13].sum()))
