"""Render a 2D grid fluid (smoke in the world's x-z plane) through any camera, differentiably.

Every pixel ray meets the plane y = 0; the density there is sampled bilinearly from the grid
(torch ``grid_sample``, so gradients reach the density and through it the simulation), turned into
opacity 1 - exp(-opacity * density) and composited over the background. With an orthographic
camera looking along +y whose image matches the grid, one pixel is one cell. Flow is exact:
the plane point moves with the fluid velocity over one frame and is projected again. Obstacles
are painted opaque in ``obstacle_color`` where they are at each record's time (moving ones move).
"""

from __future__ import annotations

import math

import torch

from .camera import Camera

__all__ = ["render_fluid_frames", "fluid_plane_points", "cell_velocity", "obstacle_mask"]


def fluid_plane_points(camera: Camera, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """World points (H, W, 3) where pixel rays meet the plane y = 0, and a (H, W) mask of rays that do."""
    origins, dirs = camera.rays(dtype=dtype)
    t = -origins[..., 1] / torch.where(dirs[..., 1].abs() > 1e-12, dirs[..., 1], torch.full_like(dirs[..., 1], 1e-12))
    hits = (dirs[..., 1].abs() > 1e-12) & (t > 0)
    return origins + t.clamp(min=0.0)[..., None] * dirs, hits


def cell_velocity(velocity_x: torch.Tensor, velocity_y: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """Cell-centred velocity (nx, ny, 2) [m/s] from MAC faces (x faces (nx+1 or nx, ny), y faces)."""
    nx, ny = cells
    if velocity_x.shape[0] == nx:  # periodic in x: face i is the left face of cell i
        u = 0.5 * (velocity_x + torch.roll(velocity_x, -1, dims=0))
    else:
        u = 0.5 * (velocity_x[:-1] + velocity_x[1:])
    if velocity_y.shape[1] == ny:
        v = 0.5 * (velocity_y + torch.roll(velocity_y, -1, dims=1))
    else:
        v = 0.5 * (velocity_y[:, :-1] + velocity_y[:, 1:])
    return torch.stack([u, v], dim=-1)


def _sample(field: torch.Tensor, grid_xy: torch.Tensor, cells: tuple[int, int]) -> torch.Tensor:
    """Bilinear samples of a cell field (nx, ny, C) at grid coordinates (H, W, 2) in cells; 0 outside."""
    nx, ny = cells
    # grid_sample wants (N, C, H_in, W_in) with x along W_in: our field is (x, y) -> transpose to (y, x)
    image = field.permute(2, 1, 0)[None]
    norm = torch.stack([grid_xy[..., 0] / nx * 2.0 - 1.0, grid_xy[..., 1] / ny * 2.0 - 1.0], dim=-1)
    sampled = torch.nn.functional.grid_sample(image, norm[None].to(image.dtype), mode="bilinear",
                                              padding_mode="zeros", align_corners=False)
    return sampled[0].permute(1, 2, 0)


def obstacle_mask(fluid_spec, plane_xz: torch.Tensor, time: float) -> torch.Tensor:
    """True where a point (..., 2) of the fluid plane (world x, z) [m] lies inside an obstacle at ``time``."""
    inside = torch.zeros(plane_xz.shape[:-1], dtype=torch.bool)
    for obstacle in fluid_spec.obstacles:
        cx = obstacle.center[0] + obstacle.velocity[0] * time
        cz = obstacle.center[1] + obstacle.velocity[1] * time
        rx, rz = plane_xz[..., 0] - cx, plane_xz[..., 1] - cz
        if obstacle.shape == "disc":
            inside |= rx * rx + rz * rz < obstacle.radius ** 2
            continue
        angle = obstacle.angle + obstacle.angular_velocity * time
        cos, sin = math.cos(angle), math.sin(angle)
        inside |= ((cos * rx + sin * rz).abs() < obstacle.half_size[0]) & ((-sin * rx + cos * rz).abs() < obstacle.half_size[1])
    return inside


def render_fluid_frames(camera: Camera, fluid_spec, trajectory, frame_dt: float) -> dict[str, torch.Tensor]:
    """Layers for every record of a GridFluidTrajectory: ``rgb`` (F, H, W, 3) and ``alpha``
    (differentiable w.r.t. the density), ``density`` (F, H, W) sampled in the image, ``depth`` (m,
    inf off the plane), ``segmentation`` (int32: 1 where the smoke is denser than half opacity),
    ``normal`` (camera space), exact ``flow_forward`` / ``flow_backward`` (F, H, W, 2) pixels and
    occlusion masks (True where the moved point leaves the image or the domain)."""
    dtype = trajectory.density.dtype
    cells, dx = tuple(fluid_spec.cells), float(fluid_spec.cell_size)
    points, hits = fluid_plane_points(camera, dtype)
    origin = torch.tensor(fluid_spec.origin, dtype=dtype)
    grid_xy = (torch.stack([points[..., 0], points[..., 2]], dim=-1) - origin) / dx  # in cells
    inside = hits & (grid_xy[..., 0] >= 0) & (grid_xy[..., 0] <= cells[0]) & (grid_xy[..., 1] >= 0) & (grid_xy[..., 1] <= cells[1])
    smoke = torch.tensor(fluid_spec.smoke_color, dtype=dtype)
    background = torch.tensor(fluid_spec.background, dtype=dtype)

    frames = trajectory.density.shape[0]
    density = torch.stack([_sample(trajectory.density[f][..., None], grid_xy, cells)[..., 0] for f in range(frames)])
    density = density * inside
    alpha = 1.0 - torch.exp(-float(fluid_spec.opacity) * density.clamp(min=0.0))
    rgb = background * (1.0 - alpha[..., None]) + smoke * alpha[..., None]
    if fluid_spec.obstacles:
        plane_xz = torch.stack([points[..., 0], points[..., 2]], dim=-1)
        solid = torch.stack([obstacle_mask(fluid_spec, plane_xz, float(t)) & inside for t in trajectory.times])
        rgb = torch.where(solid[..., None], torch.tensor(fluid_spec.obstacle_color, dtype=dtype), rgb)

    depth_plane = camera.project(points)[1]
    depth = torch.where(hits, depth_plane, torch.full_like(depth_plane, float("inf"))).expand(frames, -1, -1)
    normal_world = torch.tensor([0.0, -1.0, 0.0], dtype=dtype)  # the face the camera (at y < 0) sees
    normal = (camera.rotation(dtype=dtype) @ normal_world).expand(frames, *points.shape[:2], 3)

    flow = {"flow_forward": torch.zeros(frames, *points.shape[:2], 2, dtype=dtype),
            "flow_backward": torch.zeros(frames, *points.shape[:2], 2, dtype=dtype),
            "occlusion_forward": torch.ones(frames, *points.shape[:2], dtype=torch.bool),
            "occlusion_backward": torch.ones(frames, *points.shape[:2], dtype=torch.bool)}
    pixels = camera.project(points)[0]
    height, width = points.shape[:2]
    for f in range(frames):
        velocity = _sample(cell_velocity(trajectory.velocity_x[f].detach(), trajectory.velocity_y[f].detach(), cells),
                           grid_xy, cells)
        move = torch.stack([velocity[..., 0], torch.zeros_like(velocity[..., 0]), velocity[..., 1]], dim=-1) * frame_dt
        for sign, key, occlusion_key, valid_frame in ((1.0, "flow_forward", "occlusion_forward", f < frames - 1),
                                                     (-1.0, "flow_backward", "occlusion_backward", f > 0)):
            if not valid_frame:
                continue
            moved = camera.project(points + sign * move)[0]
            flow[key][f] = torch.where(inside[..., None], moved - pixels, torch.zeros_like(moved))
            in_image = (moved[..., 0] >= 0) & (moved[..., 0] < width) & (moved[..., 1] >= 0) & (moved[..., 1] < height)
            flow[occlusion_key][f] = ~(inside & in_image)
    return {"rgb": rgb, "alpha": alpha, "density": density.detach(), "depth": depth.clone(),
            "segmentation": (alpha.detach() > 0.5).to(torch.int32), "normal": normal.clone(), **flow}
