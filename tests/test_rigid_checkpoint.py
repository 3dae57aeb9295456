"""Checkpointed rigid rollouts: the same gradients, with autograd memory that grows with
sqrt(steps) instead of steps."""

from __future__ import annotations

from pathlib import Path

import torch

from hybridsim.scene import load_scene
from hybridsim.sim.rigid import rigid_rollout
from hybridsim.sim.world import World

BOXES = Path(__file__).resolve().parent.parent / "scenes" / "boxes.toml"


def _saved_bytes_and_grads(world, frames: int, checkpoint: bool):
    params = world.parameters()
    saved = [0]

    def pack(tensor):
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        trajectory = rigid_rollout(world, params, frames=frames, checkpoint=checkpoint)
        loss = trajectory.positions[-1].pow(2).sum() + trajectory.orientations[-1, :, 0].sum()
    loss.backward()
    return saved[0], {k: v.grad for k, v in params.items()}


def test_checkpointed_rigid_rollout_gives_the_same_gradients_with_less_tape():
    world = World(load_scene(BOXES), precision="float64")
    plain_bytes, plain = _saved_bytes_and_grads(world, 16, checkpoint=False)
    ckpt_bytes, ckpt = _saved_bytes_and_grads(world, 16, checkpoint=True)
    for key in plain:
        assert torch.equal(plain[key], ckpt[key]), key
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
