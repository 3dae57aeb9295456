"""Fit physics to a target video that looks different from the scene: a box's friction and a smoke
plume's buoyancy, each from a video rendered with other colours (and, for the box, another light
direction and checker size), 1.5x the resolution, added noise and H.264 compression.

    python examples/fit_other_look.py box      # friction 0.55, the scene starts at 0.3 (about 30 s)
    python examples/fit_other_look.py plume    # buoyancy 2.0, the scene starts at 1.0 (about 10 s)

Each writes OUT/target.mp4 and the fit's run directory OUT/fit (report.html, side_by_side.mp4).
The same fits run as ``pytest -m slow tests/test_fit_looks.py``.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from hybridsim.fit import fit
from hybridsim.render import to_uint8, write_video
from hybridsim.render.camera import Camera
from hybridsim.scene import parse_scene
from hybridsim.sim.world import World
from hybridsim.testing.fit_scenes import PLUME_SMALL

BOX = """
name = "slide"
precision = "float64"
[time]
fps = 30
frames = 14
substeps = 8
[camera]
position = [0.0, -3.5, 1.6]
look_at = [0.0, 0.0, 0.2]
fovy_deg = 40.0
width = 96
height = 72
[ground]
friction = 0.5
restitution = 0.0
[[objects]]
type = "box"
name = "slider"
position = [-1.0, 0.0, 0.1]
half_extents = [0.15, 0.15, 0.1]
velocity = [2.6, 0.0, 0.0]
friction = { value = 0.3, learn = true, range = [0.05, 1.5] }
restitution = 0.0
mass = 1.0
color = [0.9, 0.35, 0.2]
[[objects]]
type = "static_box"
name = "wall"
position = [0.9, 0.4, 0.2]
half_extents = [0.1, 0.3, 0.2]
color = [0.5, 0.55, 0.6]
"""

PLUME = PLUME_SMALL


def box_target(spec) -> np.ndarray:
    from hybridsim.render.rigid import render_rigid
    from hybridsim.sim.rigid import rigid_rollout

    look = spec.with_values({"objects[0].friction": 0.55, "objects[0].color": [0.2, 0.5, 0.95],
                             "objects[1].color": [0.8, 0.75, 0.3], "ground.colors": [[0.6, 0.75, 0.6], [0.25, 0.3, 0.25]],
                             "ground.checker_size": 0.3, "light.direction": [0.5, -0.2, -1.0],
                             "light.sky_color": [0.9, 0.85, 0.7], "camera.width": 144, "camera.height": 108})
    world = World(look)
    with torch.no_grad():
        return to_uint8(render_rigid(world, rigid_rollout(world))["rgb"].numpy())


def plume_target(spec) -> np.ndarray:
    from hybridsim.render.fluid import render_fluid_frames
    from hybridsim.sim.fluid import fluid_rollout

    look = spec.with_values({"fluid.buoyancy": 2.0, "fluid.smoke_color": [0.95, 0.8, 0.5],
                             "fluid.background": [0.2, 0.25, 0.4], "camera.width": 48, "camera.height": 60})
    world = World(look)
    with torch.no_grad():
        layers = render_fluid_frames(Camera.from_spec(look.camera), look.fluid, fluid_rollout(world), 1 / 30)
    return to_uint8(layers["rgb"].numpy())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("example", choices=["box", "plume"])
    parser.add_argument("-o", "--output", default="out/fit_other_look")
    args = parser.parse_args()
    out = Path(args.output) / args.example
    out.mkdir(parents=True, exist_ok=True)
    if args.example == "box":
        spec, path, truth, lr = parse_scene(BOX), "objects[0].friction", 0.55, 0.1
        frames = box_target(spec)
    else:
        spec, path, truth, lr = parse_scene(PLUME), "fluid.buoyancy", 2.0, 0.05
        frames = plume_target(spec)
    noisy = np.clip(frames + np.random.default_rng(0).normal(0.0, 4.0, frames.shape), 0, 255).astype(np.uint8)
    write_video(out / "target.mp4", noisy, fps=30)
    result = fit(spec, out / "target.mp4", iterations=20, lr=lr, max_render_height=None, threads=1,
                 uncertainty=False, run_dir=out / "fit", resume=False)
    value = result.values[path]
    print(f"{path}: {value:.4f} (true {truth}, error {100 * (value / truth - 1):+.1f}%); background "
          f"{result.details['background']}, losses {', '.join(result.losses_used)}, {result.wall_time_s:.1f} s")


if __name__ == "__main__":
    main()
