"""Pair planning of the particle splatter (hybridsim.render.particles._plan) against brute force:
every (pixel, particle) pair with the pixel centre strictly within reach, sorted by pixel then
particle, cut into chunks of whole pixels."""

import pytest
import torch

from hybridsim.render.particles import _plan


@pytest.mark.parametrize("seed", range(6))
def test_plan_pairs_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    height, width, count = 23 + seed, 31 - seed, 60 + 20 * seed
    xy = (torch.rand(count, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2) * torch.tensor([width, height])
    reach = torch.rand(count, generator=g, dtype=torch.float64) * (12.0 if seed % 2 else 4.0)
    reach[:5] = 0.3  # boxes that may hold no pixel centre
    valid = torch.rand(count, generator=g) > 0.15
    xy[0, 0] = float("nan")
    plan = _plan(xy, reach, valid, height, width, budget_pairs=40)
    got_pixel = torch.cat([pixels[slot] for pixels, slot, _ in plan])
    got_particle = torch.cat([particle for _, _, particle in plan])
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([cols.reshape(-1), rows.reshape(-1)], -1).double() + 0.5
    d2 = ((centres[:, None, :] - xy[None]) ** 2).sum(-1)
    hit = (d2 < reach[None] ** 2) & valid[None] & torch.isfinite(xy).all(-1)[None]
    pixel, particle = torch.nonzero(hit, as_tuple=True)  # row-major: by pixel, then particle
    assert torch.equal(got_pixel, pixel) and torch.equal(got_particle, particle)
    for pixels, slot, chunk_particle in plan:  # chunks hold whole pixels, slots index them
        assert len(torch.unique(pixels)) == len(pixels) and int(slot.max()) == len(pixels) - 1
    assert len({int(p) for pixels, _, _ in plan for p in pixels}) == sum(len(p) for p, _, _ in plan)
