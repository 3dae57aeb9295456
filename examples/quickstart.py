"""Quickstart: build a scene in Python, simulate it, render it, and differentiate a pixel loss.

    python examples/quickstart.py            # 96x72, 30 frames
    python examples/quickstart.py --small    # 48x36, 16 frames (a few seconds)
"""

import argparse

import torch

import hybridsim
from hybridsim import SceneBuilder, learn
from hybridsim.render import to_uint8, write_video


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true", help="tiny frames for a quick run")
    parser.add_argument("--backend", default="warp", choices=["warp", "taichi"])
    parser.add_argument("-o", "--output", default="quickstart.mp4")
    args = parser.parse_args()
    width, height, frames = (48, 36, 16) if args.small else (96, 72, 30)

    builder = SceneBuilder(name="quickstart", backend=args.backend, fps=30, frames=frames, substeps=8)
    builder.camera(position=(0.0, -3.5, 1.2), look_at=(0.0, 0.0, 0.5), width=width, height=height)
    builder.add_sphere(position=(-0.4, 0.0, 1.0), velocity=learn((0.8, 0.0, 0.0), range=(-3.0, 3.0)),
                       radius=0.2, restitution=learn(0.8, range=(0.1, 1.0)), color=(0.9, 0.3, 0.2))
    world = hybridsim.build_world(builder.build())

    params = world.parameters()
    trajectory = hybridsim.rollout(world, params)
    layers = hybridsim.render_trajectory(world, trajectory, params)
    write_video(args.output, to_uint8(layers["rgb"].detach()), fps=30)

    # a pixel loss reaches the physical parameters through the renderer and the bounces
    target_gray = torch.full_like(layers["rgb"], 0.5)
    loss = (layers["rgb"] - target_gray).pow(2).mean()
    loss.backward()
    for path, value in params.items():
        print(f"d loss / d {path} = {value.grad.tolist()}")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
