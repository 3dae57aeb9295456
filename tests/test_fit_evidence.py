"""User evidence in a fit: per-frame mask PNGs (--masks) and pixel tracks (--tracks).

The fit uses a target whose own look carries nothing: every frame is the same grey image, so
background subtraction finds no object and only the user's masks or tracks tell where the ball
is. Masks and tracks come from the true render (restitution 0.6) of ``scenes/bounce_fit.toml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hybridsim.cli import main
from hybridsim.errors import AssetError
from hybridsim.fit import fit
from hybridsim.fit.evidence import load_masks, load_tracks
from hybridsim.render import Camera
from hybridsim.render.scene import render_trajectory
from hybridsim.scene import load_scene, parse_scene
from hybridsim.sim.rollout import rollout
from hybridsim.sim.world import World

ROOT = Path(__file__).resolve().parent.parent
REST = "objects[0].restitution"
FRAMES = 30


@pytest.fixture(scope="module")
def spec():
    scene = load_scene(ROOT / "scenes" / "bounce_fit.toml").with_values({"objects[0].velocity": [1.0, 0.0, 0.5],
                                                                         "time.frames": FRAMES})
    return parse_scene(scene.to_toml().replace("learn = true, range = [-5.0, 5.0]", "learn = false"))


@pytest.fixture(scope="module")
def truth(spec):
    world = World(spec.with_values({REST: 0.6}))
    with torch.no_grad():
        trajectory = rollout(world)
        alpha = render_trajectory(world, trajectory)["alpha"].numpy()
    pixels = Camera.from_spec(spec.camera).project(trajectory.positions[:, 0, 0].double())[0].numpy()
    return alpha, pixels  # (F+1, H, W), (F+1, 2)


def _write_masks(folder: Path, alpha: np.ndarray) -> Path:
    folder.mkdir()
    for k, frame in enumerate(alpha):
        Image.fromarray(((frame > 0.5) * 255).astype(np.uint8)).save(folder / f"{k:04d}.png")
    return folder


def _write_tracks(path: Path, pixels: np.ndarray, every: int = 1) -> Path:
    lines = ["frame,object,x,y"] + [f"{k},ball,{x:.3f},{y:.3f}" for k, (x, y) in enumerate(pixels) if k % every == 0]
    path.write_text("\n".join(lines) + "\n")
    return path


def _blank(spec) -> np.ndarray:
    return np.full((FRAMES + 1, spec.camera.height, spec.camera.width, 3), 128, dtype=np.uint8)


def test_masks_alone_recover_restitution(spec, truth, tmp_path):
    masks = _write_masks(tmp_path / "masks", truth[0])
    result = fit(spec, _blank(spec), iterations=20, lr=0.2, progress=False, threads=1, uncertainty=False,
                 masks=masks)
    assert "masks" in result.losses_used
    assert abs(result.values[REST] - 0.6) < 0.01, result.values


def test_cli_tracks_alone_recover_restitution(spec, truth, tmp_path, capsys):
    scene = tmp_path / "scene.toml"
    scene.write_text(spec.to_toml())
    frames = tmp_path / "frames"
    frames.mkdir()
    for k, frame in enumerate(_blank(spec)):
        Image.fromarray(frame).save(frames / f"{k:04d}.png")
    tracks = _write_tracks(tmp_path / "tracks.csv", truth[1], every=2)  # every other frame is enough
    assert main(["fit", str(scene), "--target", str(frames), "--tracks", str(tracks), "-o", str(tmp_path / "run"),
                 "--iterations", "20", "--lr", "0.2", "--threads", "1", "-q"]) == 0
    summary = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert "tracks" in summary["losses_used"]
    assert abs(summary["parameters"][0]["value"] - 0.6) < 0.01, summary["parameters"]


ARGS = dict(frame_index=[0, 1, 2], source_frames=3, source_size=(8, 10), height=4, width=5)


def test_masks_are_validated_with_file_and_frame(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(AssetError, match="0 mask PNG"):
        load_masks(folder, **ARGS)
    for k in range(3):
        Image.fromarray(np.zeros((8, 10), dtype=np.uint8)).save(folder / f"{k}.png")
    (folder / "1.png").write_bytes(b"not a png")
    with pytest.raises(AssetError, match="target frame 1") as error:
        load_masks(folder, **ARGS)
    assert "1.png" in str(error.value)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "1.png")
    with pytest.raises(AssetError, match="frame 1 is 8x8 but the target is 10x8"):
        load_masks(folder, **ARGS)
    square = np.zeros((8, 10), dtype=np.uint8)
    square[:4, :6] = 255
    Image.fromarray(square).save(folder / "1.png")
    masks, _ = load_masks(folder, **ARGS)
    assert masks.shape == (3, 4, 5) and float(masks[1].sum()) == pytest.approx(6.0)  # 24 px / 4 (2x2 areas)


@pytest.mark.parametrize("text, message", [
    ("frame,who,x,y\n0,0,1,1\n", "must name frame, object, x, y"),
    ("frame,object,x,y\n0,0,1,1\n7,0,1,1\n", "line 3: frame 7 is outside"),
    ("frame,object,x,y\n0,kite,1,1\n", "line 2 \\(frame 0\\): object 'kite' is not a moving object"),
    ("frame,object,x,y\n0,0,one,1\n", "line 2: frame must be an integer"),
])
def test_tracks_are_validated_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(AssetError, match=message) as error:
        load_tracks(path, **ARGS, object_names=["ball"])
    assert "t.csv" in str(error.value)


def test_tracks_from_json_are_scaled_to_the_render_size(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"tracks": [{"frame": 2, "object": "ball", "x": 5.0, "y": 4.0}]}))
    points, present, _ = load_tracks(path, **ARGS, object_names=["ball"])
    assert present.tolist() == [[False], [False], [True]]
    assert points[2, 0].tolist() == [2.5, 2.0]
