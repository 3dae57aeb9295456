"""Fitting MPM scenes: Young's modulus of a 2D jelly block and the viscosity of a collapsing 2D
liquid column, each from its own render."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hybridsim.fit import fit
from hybridsim.render.camera import Camera
from hybridsim.render.particles import render_mpm
from hybridsim.render.spheres import to_uint8
from hybridsim.scene import load_scene
from hybridsim.sim.mpm import mpm_rollout
from hybridsim.sim.world import World

SCENES = Path(__file__).resolve().parent.parent / "scenes"
YOUNGS = "mpm.materials[0].youngs_modulus"


def _render(spec) -> torch.Tensor:
    world = World(spec)
    with torch.no_grad():
        return to_uint8(render_mpm(world, mpm_rollout(world), None)["rgb"].numpy())


def test_fit_recovers_youngs_modulus_of_a_bouncing_jelly_block(tmp_path):
    spec = load_scene(SCENES / "jelly_bounce2d.toml")  # starts at E = 4000 Pa
    target = _render(spec.with_values({YOUNGS: 6000.0}))
    # the rendered comparison plateaus after ~25 iterations (loss 0.0388, as at the truth), then Adam
    # goes on with observed coverages (loss 8e-6 at the truth): E = 5998 measured
    result = fit(spec, target, iterations=35, lr=0.08, progress=False, max_render_height=None, threads=1,
                 uncertainty=False, run_dir=tmp_path / "run")
    assert result.details["background"] == "scene"
    assert result.details["coverage"] == "observed" and result.details["observed_from"] is not None
    assert abs(result.values[YOUNGS] / 6000.0 - 1.0) < 0.005, result.values
    assert result.final_loss < 0.5 * result.losses[0]  # full clip at the end vs the first 8 frames at the start
    assert (tmp_path / "run" / "fit.json").exists() and (tmp_path / "run" / "side_by_side.mp4").exists()


def test_fit_recovers_the_viscosity_of_a_collapsing_liquid_column():
    spec = load_scene(SCENES / "syrup_collapse2d.toml")  # starts at 5 Pa s
    path = "mpm.materials[0].viscosity"
    # rendered comparison to a plateau (~26 iterations; loss 0.0167 at the truth), then observed
    # coverages (7.5e-6 at the truth): 14.995 Pa s measured
    result = fit(spec, _render(spec.with_values({path: 15.0})), iterations=35, lr=0.1, progress=False,
                 max_render_height=None, threads=1, uncertainty=False)
    assert result.details["observed_from"] is not None
    assert abs(result.values[path] / 15.0 - 1.0) < 0.005, result.values


def test_mpm_fit_centres_are_per_body_means_of_particles():
    from hybridsim.fit.scenes import MPMFitScene, fit_scene

    world = World(load_scene(SCENES / "dam_break.toml").with_values({"time.frames": 1}))
    scene = fit_scene(world)
    assert isinstance(scene, MPMFitScene)
    with torch.no_grad():
        trajectory = mpm_rollout(world, frames=1)
    centres = scene.centres(trajectory)
    assert centres.shape == (2, 2, 3)
    column = trajectory.positions[0][trajectory.particle_body == 0].mean(0)  # (x, z)
    assert centres[0, 0, 0] == pytest.approx(float(column[0])) and centres[0, 0, 2] == pytest.approx(float(column[1]))
    assert float(centres[0, 0, 1]) == 0.0
    background = scene.background(Camera.from_spec(world.spec.camera))  # the tank's colour, no particles
    assert background.shape == (world.spec.camera.height, world.spec.camera.width, 3)
    assert torch.allclose(background, torch.tensor(world.spec.mpm.background, dtype=torch.float32).expand_as(background))

