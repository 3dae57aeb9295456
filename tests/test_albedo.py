"""The unlit albedo layer of sphere renders: sphere colours and the checker ground without light."""

from __future__ import annotations

import numpy as np
import torch

from hybridsim.render.camera import Camera
from hybridsim.render.spheres import render_spheres

D64 = torch.float64


def test_sphere_albedo_is_the_unlit_colour_and_differentiable():
    cam = Camera(position=(0.0, -3.0, 1.0), look_at=(0.0, 0.0, 0.6), up=(0, 0, 1), fovy_deg=40, width=64, height=48)
    centers = torch.tensor([[0.0, 0.0, 0.6]], dtype=D64)
    colors = torch.tensor([[0.8, 0.3, 0.1]], dtype=D64, requires_grad=True)
    checker = ((0.9, 0.9, 0.9), (0.2, 0.2, 0.2))
    out = render_spheres(cam, centers, torch.tensor([0.5], dtype=D64), colors, albedo=True, checker_colors=checker,
                         light_intensity=0.8, ambient=0.3)
    inside = out["alpha"] > 0.99  # the sphere's inside, away from its soft edge
    assert inside.sum() > 50
    assert torch.allclose(out["albedo"][inside], colors.detach().expand(int(inside.sum()), 3), atol=1e-2)
    assert not torch.allclose(out["rgb"][inside], out["albedo"][inside], atol=0.05)  # rgb is lit, albedo is not
    ground = (out["segmentation"] == 0) & torch.isfinite(out["depth"]) & (out["alpha"] < 1e-6)
    values = out["albedo"].detach()[ground][:, 0]
    assert float(values.max()) <= 0.9 + 1e-6 and float(values.min()) >= 0.2 - 1e-6  # between the checker colours
    out["albedo"].sum().backward()
    assert float(colors.grad.abs().sum()) > 0


def test_render_layers_carry_albedo(tmp_path):
    from hybridsim.cli import main

    out = tmp_path / "b.mp4"
    assert main(["render", "-o", str(out), "--quiet", "--frames", "2"]) == 0
    with np.load(out.with_suffix(".layers.npz")) as layers:
        assert layers["albedo"].dtype == np.uint8 and layers["albedo"].shape == (3, 240, 320, 3)
