"""Fresh-process probe: peak RSS of one differentiable rollout + backward (see bench_memory.py)."""

import argparse
import json
import resource

import torch

from hybridsim.scene import SceneBuilder, learn
from hybridsim.sim.rollout import rollout
from hybridsim.sim.world import World


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--spheres", type=int, default=4096)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--substeps", type=int, default=10)
    parser.add_argument("--backend", default="warp")
    parser.add_argument("--checkpoint", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    builder = SceneBuilder(name="memory", backend=args.backend, fps=30, frames=args.frames, substeps=args.substeps)
    builder.camera(position=(0, -5, 2), look_at=(0, 0, 0), width=16, height=16)
    builder.add_sphere(position=(0.0, 0.0, 1.0), radius=0.1, restitution=learn(0.7, range=(0.0, 1.0)))
    world = World(builder.build(), world_count=args.spheres)  # thousands of independent spheres
    params = world.parameters()
    # warm up kernels so compilation is not part of the measured growth
    with torch.no_grad():
        rollout(world, params, frames=1)
    baseline = current_rss_mb()
    trajectory = rollout(world, params, checkpoint=args.checkpoint)
    trajectory.positions[..., 2].sum().backward()
    print(json.dumps({"checkpoint": args.checkpoint, "spheres": args.spheres, "steps": args.frames * args.substeps,
                      "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb(),
                      "grad": float(params["objects[0].restitution"].grad)}))


if __name__ == "__main__":
    main()
