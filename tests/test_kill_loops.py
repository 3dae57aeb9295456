"""``kill -9`` at random moments during ``hybridsim fit`` and ``hybridsim train-refiner``, then
resume: the final results equal an uninterrupted run's, and no output is ever half-written.

The default run kills each command once (a fast sample); ``-m slow`` kills each 20 times.
(``generate``'s kill loops are in ``tests/test_generate.py``.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridsim.cli import main
from hybridsim.scene import load_scene

ROOT = Path(__file__).resolve().parent.parent
BOUNCE_FIT = ROOT / "scenes" / "bounce_fit.toml"
FIT_ARGS = ["--frames", "12", "--iterations", "14", "--threads", "1", "-q"]


def _process(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hybridsim.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def _kill_loop(args: list[str], kills: int, progressed, check_outputs, window=(0.2, 2.5)) -> int:
    """Start ``args`` repeatedly and SIGKILL it at a random moment after ``progressed()`` first
    holds (so every kill lands somewhere different in the job); returns the kills made."""
    rng = random.Random()
    made = 0
    for _ in range(kills):
        process = _process(args)
        deadline = time.monotonic() + 120
        while not progressed() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(*window))
        if process.poll() is not None:  # finished before the kill: the job is done
            assert process.returncode == 0, process.stderr.read().decode()
            break
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        made += 1
        check_outputs()
    return made


def _visible(folder: Path, pattern: str) -> list[Path]:
    """Files the program reads: not the hidden temporaries of atomic writes a kill interrupted."""
    return [p for p in folder.glob(pattern) if not p.name.startswith(".")]


def _json_files_parse(folder: Path) -> None:
    for path in _visible(folder, "*.json"):
        json.loads(path.read_text())  # never half-written (atomic writes)


@pytest.fixture(scope="module")
def fit_target(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fit_target")
    target = folder / "target.mp4"
    assert main(["render", str(BOUNCE_FIT), "-o", str(target), "--quiet", "--frames", "12"]) == 0
    clean = folder / "clean"
    assert main(["fit", str(BOUNCE_FIT), "--target", str(target), "-o", str(clean), *FIT_ARGS]) == 0
    return target, json.loads((clean / "fit.json").read_text())


def _fit_kill_loop(fit_target, tmp_path, kills: int):
    target, clean = fit_target
    run = tmp_path / "run"
    args = ["fit", str(BOUNCE_FIT), "--target", str(target), "-o", str(run), *FIT_ARGS]

    def checkpoints():
        return run.is_dir() and any(run.glob("checkpoint-*.safetensors"))

    def check():
        _json_files_parse(run)
        for path in _visible(run, "checkpoint-*.safetensors"):
            load_file(path)  # complete safetensors files only

    made = _kill_loop(args, kills, checkpoints, check, window=(0.0, 1.5))
    assert main(args) == 0
    assert not list(run.glob(".checkpoint*"))  # no temporaries of killed writes left behind
    result = json.loads((run / "fit.json").read_text())
    assert made >= min(kills, 1)
    assert result["parameters"] == clean["parameters"]
    assert result["loss_history"] == clean["loss_history"]
    assert result["final_loss"] == clean["final_loss"]
    fitted = load_scene(run / "fitted.toml")  # a complete, valid scene file
    assert fitted.learnable
    return made


def test_fit_killed_once_resumes_to_the_uninterrupted_result(fit_target, tmp_path):
    _fit_kill_loop(fit_target, tmp_path, kills=1)


@pytest.mark.slow
def test_fit_killed_20_times_resumes_to_the_uninterrupted_result(fit_target, tmp_path):
    made = _fit_kill_loop(fit_target, tmp_path, kills=20)
    print(f"fit: {made} kills, results identical")


REFINER_SCENE = """
name = "small"
precision = "float32"
[time]
fps = 12
frames = 5
substeps = 4
[camera]
position = [0.0, -3.0, 1.0]
look_at = [0.0, 0.0, 0.4]
width = 32
height = 24
[[objects]]
type = "sphere"
position = [0.0, 0.0, 0.8]
velocity = [0.6, 0.0, 0.0]
radius = 0.2
color = [0.9, 0.3, 0.2]
"""


@pytest.fixture(scope="module")
def refiner_pair(tmp_path_factory):
    import numpy as np

    from hybridsim.render import read_frames, write_video

    folder = tmp_path_factory.mktemp("refiner_pair")
    scene = folder / "small.toml"
    scene.write_text(REFINER_SCENE)
    plain = folder / "plain.mp4"
    assert main(["render", str(scene), "-o", str(plain), "--quiet"]) == 0
    rgb, _ = read_frames(plain)
    graded = np.clip(rgb.astype(np.float32) * [1.1, 0.9, 0.7] + 12, 0, 255).astype(np.uint8)  # a colour grade
    target = folder / "target.mp4"
    write_video(target, graded, fps=12)
    return scene, target


def _refiner_args(scene, target, out: Path) -> list[str]:
    return ["train-refiner", "--scenes", str(scene), "--targets", str(target), "-o", str(out), "--iterations", "30",
            "--checkpoint-every", "3", "--clip-length", "3", "--threads", "1", "--seed", "2", "-q"]


def _refiner_kill_loop(refiner_pair, tmp_path, kills: int) -> int:
    scene, target = refiner_pair
    clean = tmp_path / "clean.safetensors"
    assert main(_refiner_args(scene, target, clean)) == 0
    out = tmp_path / "killed.safetensors"
    folder = Path(str(out) + ".checkpoint")

    def checkpoints():
        return (folder / "checkpoint.json").is_file()

    def check():
        if folder.is_dir():
            _json_files_parse(folder)
            for path in _visible(folder, "*.safetensors"):
                load_file(path)
        if out.exists():  # the final weights appear only complete
            load_file(out)

    made = _kill_loop(_refiner_args(scene, target, out), kills, checkpoints, check, window=(0.0, 1.0))
    assert main(_refiner_args(scene, target, out)) == 0
    assert made >= min(kills, 1)
    a, b = load_file(clean), load_file(out)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    history = lambda p: json.loads((Path(str(p) + ".checkpoint") / "checkpoint.json").read_text())["history"]  # noqa: E731
    assert history(clean) == history(out)
    return made


def test_train_refiner_killed_once_resumes_to_the_uninterrupted_weights(refiner_pair, tmp_path):
    _refiner_kill_loop(refiner_pair, tmp_path, kills=1)


@pytest.mark.slow
def test_train_refiner_killed_20_times_resumes_to_the_uninterrupted_weights(refiner_pair, tmp_path):
    made = _refiner_kill_loop(refiner_pair, tmp_path, kills=20)
    print(f"train-refiner: {made} kills, weights identical")
