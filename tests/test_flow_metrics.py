"""Exact optical flow from simulated motion, occlusion masks, .flo files and the metrics."""

import numpy as np
import pytest
import torch

from hybridsim.errors import AssetError
from hybridsim.metrics import flicker, flow_consistency, sphere_physics_metrics, warping_error
from hybridsim.render import Camera, render_frames
from hybridsim.render.flow import flow_to_color, optical_flow, read_flo, write_flo
from hybridsim.sim.rollout import rollout
from hybridsim.sim.world import World

D64 = torch.float64


def _layers(camera, centers, radii, colors):
    out = render_frames(camera, centers, radii, colors, edge_softness=0.3)
    return out, optical_flow(camera, out["depth"], out["segmentation"], centers)


def test_orthographic_translation_gives_exact_pixel_flow():
    camera = Camera(position=(0.0, -5.0, 1.0), look_at=(0.0, 0.0, 1.0), up=(0, 0, 1), fovy_deg=40, width=64, height=48,
                    projection="orthographic", ortho_height=3.0)
    centers = torch.tensor([[[0.0, 0.0, 1.0]], [[0.3, 0.0, 1.2]]], dtype=D64)
    out, flow = _layers(camera, centers, torch.tensor([0.5], dtype=D64), torch.tensor([[0.9, 0.2, 0.2]], dtype=D64))
    on_sphere = (out["segmentation"][0] == 1) & ~flow["occlusion_forward"][0]
    assert on_sphere.sum() > 50
    scale = 48 / 3.0  # pixels per metre
    expected = torch.tensor([0.3 * scale, -0.2 * scale], dtype=D64)  # image y points down
    assert torch.allclose(flow["flow_forward"][0][on_sphere], expected.expand(int(on_sphere.sum()), 2), atol=1e-9)
    ground = out["segmentation"][0] == 0
    assert flow["flow_forward"][0][ground].abs().max() == 0
    # backward flow of frame 1 undoes it
    back = (out["segmentation"][1] == 1) & ~flow["occlusion_backward"][1]
    assert torch.allclose(flow["flow_backward"][1][back], -expected.expand(int(back.sum()), 2), atol=1e-9)
    assert flow["occlusion_forward"][-1].all() and flow["occlusion_backward"][0].all()


def test_perspective_flow_warps_the_next_frame_onto_this_one():
    camera = Camera(position=(0.0, -4.0, 1.2), look_at=(0.0, 0.0, 0.6), up=(0, 0, 1), fovy_deg=45, width=80, height=60)
    steps = torch.linspace(0, 1, 6, dtype=D64)[:, None]
    centers = torch.stack([torch.cat([-0.5 + 0.6 * steps, 0.1 * steps, 0.5 + 0.3 * steps], 1),
                           torch.cat([0.6 - 0.4 * steps, 0.5 + 0 * steps, 0.4 + 0 * steps], 1)], dim=1)
    radii = torch.tensor([0.3, 0.25], dtype=D64)
    out, flow = _layers(camera, centers, radii, torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.3, 0.9]], dtype=D64))
    assert warping_error(out["rgb"], flow["flow_forward"], flow["occlusion_forward"]) < 0.01
    moving_only = flow["occlusion_forward"] | (out["segmentation"] == 0)  # judge the spheres' pixels
    error = warping_error(out["rgb"], flow["flow_forward"], moving_only)
    zero_flow = warping_error(out["rgb"], torch.zeros_like(flow["flow_forward"]), moving_only)
    assert error < 0.2 * zero_flow, (error, zero_flow)
    assert flow_consistency(flow["flow_forward"], flow["flow_backward"], flow["occlusion_forward"]) < 0.05


def test_occlusion_marks_points_hidden_in_the_next_frame():
    camera = Camera(position=(0.0, -5.0, 1.0), look_at=(0.0, 0.0, 1.0), up=(0, 0, 1), fovy_deg=40, width=64, height=48)
    # the back sphere slides behind a fixed front sphere
    centers = torch.tensor([[[-0.8, 1.0, 1.0], [0.0, -1.0, 1.0]], [[0.0, 1.0, 1.0], [0.0, -1.0, 1.0]]], dtype=D64)
    out, flow = _layers(camera, centers, torch.tensor([0.4, 0.6], dtype=D64), torch.ones(2, 3, dtype=D64) * 0.5)
    back_visible = out["segmentation"][0] == 1
    occluded = flow["occlusion_forward"][0] & back_visible
    assert occluded.sum() > 0.3 * back_visible.sum()
    front = out["segmentation"][0] == 2
    assert not flow["occlusion_forward"][0][front].any()


def test_flo_roundtrip_and_corrupt_file(tmp_path):
    flow = np.random.default_rng(0).normal(size=(7, 9, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", flow)
    assert np.array_equal(read_flo(tmp_path / "a.flo"), flow)
    data = (tmp_path / "a.flo").read_bytes()
    (tmp_path / "cut.flo").write_bytes(data[:40])
    with pytest.raises(AssetError, match="cut.flo"):
        read_flo(tmp_path / "cut.flo")
    colors = flow_to_color(flow)
    assert colors.shape == (7, 9, 3) and colors.dtype == np.uint8
    assert (flow_to_color(np.zeros((2, 2, 2))) == 255).all()  # no motion is white


def test_flicker_sees_brightness_jumps():
    steady = torch.full((5, 4, 4, 3), 0.5, dtype=D64)
    jumpy = steady.clone()
    jumpy[::2] += 0.2
    assert flicker(steady) == 0 and flicker(jumpy) == pytest.approx(0.2)


def test_physics_metrics_of_a_bounce(sphere_scene):
    world = World(sphere_scene(height=1.0, velocity=(0.5, 0.0, 0.0), restitution=1.0, frames=60))
    with torch.no_grad():
        trajectory = rollout(world)
    model = trajectory.model
    metrics = sphere_physics_metrics(trajectory.positions, trajectory.velocities, model.mass, model.radius)
    assert metrics["energy_gain"] < 1e-9 and metrics["energy_drift"] < 1e-9  # elastic bounce conserves energy
    assert metrics["penetration"] < 1e-12 and metrics["momentum_change"] < 1e-12
    world = World(sphere_scene(height=1.0, restitution=0.5, frames=60))
    with torch.no_grad():
        trajectory = rollout(world)
    lossy = sphere_physics_metrics(trajectory.positions, trajectory.velocities, trajectory.model.mass, trajectory.model.radius)
    assert lossy["energy_drift"] > 0.3 and lossy["energy_gain"] < 1e-9
