"""Obstacles driven from outside (rigid bodies) and the pressure loads the fluid puts on them.

A ``GridFluidBody`` is one body's cross-section with the fluid plane for one step: a disc or a
(rotated) box at a pose given by the caller, moving with a velocity and angular velocity that are
torch tensors (they carry gradients into the fluid). ``body_face_geometry`` cuts the faces with
the model's own (prescribed) obstacles at ``time`` and with the bodies, and returns the open
fractions, the solid face velocities and which body covers each face. The open fractions are the
exact covered lengths of the faces, computed in torch from the body's pose, and the solid face
velocities are the rigid velocity at the covered part's midpoint: both are differentiable in the
pose (centre and angle, when given as tensors) and the velocities. Which body owns a face is
piecewise constant; the fractions are piecewise smooth in the pose (kinks where the outline passes
a face's end; for a box side parallel to a face, a jump where it crosses the face's line, whose
delta the gradient does not see).

Loads. The projection turns u into u' = m (u - G p) + (1 - m) u_s; with the fluid momentum per
metre of depth ``rho dx^2 sum_f A_f u_f`` (A the open fractions) it changes that momentum by
``-rho dx^2 sum_f A_f (G p)_f``. Summation by parts gives, exactly, that this equals minus
``sum_f rho dx (1 - A_f) (p_L - p_R)`` over the faces covered by bodies (plus the faces of the
domain's walls and prescribed obstacles, which take their share as an external impulse): the
impulse on a body is the pressure jump across the covered part of each face it covers, times that
part's length. ``body_impulses`` returns it per body [kg m/s per metre of depth] and its moment
about the body's centre [kg m^2/s per metre], counter-clockwise in grid axes. ``p`` here is the
projection's pressure [m^2/s] (physical pressure times dt / rho). Viscous stresses on the bodies
are not included.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch

from .autograd import area_gradient
from .model import (GridFluidModel, GridFluidObstacle, _as_float64, _covered_interval_at, _face_lines,
                    _obstacle_cuts, _open_fractions)

__all__ = ["GridFluidBody", "body_face_geometry", "body_impulses", "project_with_pressure"]


@dataclass(frozen=True)
class GridFluidBody:
    """One body's cut with the fluid plane during one step, in grid axes."""

    center: tuple[float, float] | torch.Tensor
    """Centre [m], grid coordinates; a tensor (2,) carries gradients into the face fractions, the
    solid face velocities and the loads' moment arms."""
    size: tuple[float, float]
    """Disc radius (in both) or box half extents [m]."""
    is_box: bool
    angle: float | torch.Tensor
    """Rotation of a box [rad], counter-clockwise in grid axes; a tensor () is differentiated."""
    velocity: torch.Tensor
    """Velocity of the centre [m/s], shape (2,); differentiable."""
    angular_velocity: torch.Tensor
    """Angular velocity [rad/s], counter-clockwise in grid axes, shape (); differentiable."""

    def pose(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre (2,), angle ()) as float64 CPU tensors, keeping their graph."""
        return _as_float64(self.center, (2,)), _as_float64(self.angle, ())

    def obstacle(self) -> GridFluidObstacle:
        return GridFluidObstacle(tuple(map(float, self.center)), tuple(map(float, self.size)), self.is_box,
                                 angle=float(self.angle))


def body_face_geometry(model: GridFluidModel, time: float, bodies) -> SimpleNamespace:
    """Faces cut by the model's obstacles at ``time`` [s] and by ``bodies`` (GridFluidBody list).

    Returns area_x, area_y (open fractions), solid_x, solid_y (solid normal velocity per face
    [m/s]; all four differentiable in the bodies' velocities and poses and in the model's
    ``obstacle_center`` / ``obstacle_angle``), owner_x, owner_y (index of the body covering
    each face, -1 for none or a prescribed obstacle or a domain side) and middle_x, middle_y (grid
    coordinates (x, y) of the covered part's midpoint, each a pair of tensors)."""
    dx = model.cell_size
    faces = _face_lines(model)  # (across, start, along) of x- and y-faces
    shapes = [start.shape for _, start, _ in faces]
    blocked = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    prescribed = [torch.zeros(shape, dtype=torch.float64) for shape in shapes]
    owner = [torch.full(shape, -1, dtype=torch.int64) for shape in shapes]
    middle = [[torch.zeros(shape, dtype=torch.float64)] * 2 for shape in shapes]
    time = float(time)
    for axis, length, speed in _obstacle_cuts(model, faces, dx, time):
        closer = length > blocked[axis]
        blocked[axis] = torch.where(closer, length, blocked[axis])
        prescribed[axis] = torch.where(closer, speed, prescribed[axis])
        owner[axis] = torch.where(closer, torch.full_like(owner[axis], -1), owner[axis])
    for index, body in enumerate(bodies):
        center, angle = body.pose()
        for axis, (across, start, along) in enumerate(faces):
            length, mx, my = _covered_interval_at(center, angle, body.size, body.is_box, across, start, dx, along)
            closer = length > blocked[axis]
            blocked[axis] = torch.where(closer, length, blocked[axis])
            owner[axis] = torch.where(closer, torch.full_like(owner[axis], index), owner[axis])
            middle[axis] = [torch.where(closer, mx, middle[axis][0]), torch.where(closer, my, middle[axis][1])]
    dtype, device = model.dtype, model.device
    area_x, area_y = _open_fractions(model, blocked[0], blocked[1], dtype, device)
    # domain sides are neither bodies nor moving: their faces carry no solid velocity
    edge = [torch.zeros(shape, dtype=torch.bool) for shape in shapes]
    x_lo, x_hi, y_lo, y_hi = model.boundary
    if x_lo != "periodic":
        edge[0][0] = edge[0][-1] = True
    if y_lo != "periodic":
        edge[1][:, 0] = edge[1][:, -1] = True
    solids = []
    for axis in range(2):
        covered = (blocked[axis] > 0) & ~edge[axis]
        owner[axis] = torch.where(covered, owner[axis], torch.full_like(owner[axis], -1))
        solid = torch.where(covered & (owner[axis] < 0), prescribed[axis], torch.zeros_like(prescribed[axis]))
        solid = solid.to(dtype=dtype, device=device)
        mx, my = (m.to(dtype=dtype, device=device) for m in middle[axis])
        for index, body in enumerate(bodies):
            mine = (owner[axis] == index).to(device)
            if not bool(mine.any()):
                continue
            velocity = body.velocity.to(dtype=dtype, device=device)
            omega = body.angular_velocity.to(dtype=dtype, device=device).reshape(())
            cx, cy = body.pose()[0].to(dtype=dtype, device=device)
            # rigid velocity v + omega x (p - c) at the covered part's midpoint, normal to the face
            speed = velocity[0] - omega * (my - cy) if axis == 0 else velocity[1] + omega * (mx - cx)
            solid = torch.where(mine, speed, solid)
        solids.append(solid)
    return SimpleNamespace(area_x=area_x, area_y=area_y, solid_x=solids[0], solid_y=solids[1],
                           owner_x=owner[0].to(device), owner_y=owner[1].to(device),
                           middle_x=tuple(m.to(dtype=dtype, device=device) for m in middle[0]),
                           middle_y=tuple(m.to(dtype=dtype, device=device) for m in middle[1]))


def _pressure_jumps(model: GridFluidModel, pressure: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p_L - p_R across every x-face and p_below - p_above across every y-face (zero beyond
    non-periodic sides; those faces never belong to a body)."""
    periodic_x, periodic_y = model.periodic
    if periodic_x:
        jump_x = torch.roll(pressure, 1, 0) - pressure
    else:
        padded = torch.nn.functional.pad(pressure, (0, 0, 1, 1))
        jump_x = padded[:-1] - padded[1:]
    if periodic_y:
        jump_y = torch.roll(pressure, 1, 1) - pressure
    else:
        padded = torch.nn.functional.pad(pressure, (1, 1))
        jump_y = padded[:, :-1] - padded[:, 1:]
    return jump_x, jump_y


def body_impulses(model: GridFluidModel, geometry: SimpleNamespace, pressure: torch.Tensor, bodies,
                  density: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pressure impulse of one projection on each body: (linear (B, 2) [kg m/s per metre of depth],
    angular (B,) [kg m^2/s per metre], counter-clockwise in grid axes, about the body's centre).

    ``pressure`` is the projection's [m^2/s]; ``density`` the fluid's [kg/m^3]. Differentiable in
    the pressure (and so in everything upstream of the projection)."""
    dx = model.cell_size
    jump_x, jump_y = _pressure_jumps(model, pressure)
    face_x = density * dx * (1.0 - geometry.area_x) * jump_x
    face_y = density * dx * (1.0 - geometry.area_y) * jump_y
    linear, angular = [], []
    for index, body in enumerate(bodies):
        cx, cy = body.pose()[0].to(dtype=face_x.dtype, device=face_x.device)
        mine_x = (geometry.owner_x == index).to(face_x.dtype)
        mine_y = (geometry.owner_y == index).to(face_y.dtype)
        jx, jy = (face_x * mine_x), (face_y * mine_y)
        linear.append(torch.stack([jx.sum(), jy.sum()]))
        mx_y = geometry.middle_x[1]
        mx_x = geometry.middle_y[0]
        angular.append((-(mx_y - cy) * jx).sum() + ((mx_x - cx) * jy).sum())
    if not linear:
        empty = pressure.new_zeros(0)
        return empty.reshape(0, 2), empty
    return torch.stack(linear), torch.stack(angular)


class _ProjectWithPressure(torch.autograd.Function):
    """(u, v, u_s, v_s, A_x, A_y) -> (u', v', p): the projection against moving solids, with its pressure.

    p = S G^T (A u + (1 - A) u_s) on fluid cells (S the pseudo-inverse of M = G^T A G), u' = m (u -
    G p) + (1 - m) u_s. Backward, with h = g_p + div_m(g_u') and z = S h: grad_u = m g_u + A G z,
    grad_us = (1 - m) g_u + (1 - A) G z (one solve, as in PressureProjection.project_adjoint) and,
    through both the right-hand side and M, grad_A = m (G z) (u' - u_s) (autograd.area_gradient).
    The areas are those the projection was built from, passed as differentiable tensors."""

    @staticmethod
    def forward(ctx, projection, u, v, solid_x, solid_y, area_x=None, area_y=None):
        u, v, sx, sy = (t.detach().contiguous() for t in (u, v, solid_x, solid_y))
        rhs = -(projection.divergence(u, v) + projection.solid_divergence(sx, sy)) * projection.fluid_cells
        pressure = projection.solve(rhs) * projection.fluid_cells
        outs = projection._subtract_gradient((u, v), pressure.contiguous(), projection.masks)
        outs = tuple(out + (1.0 - m) * s for out, m, s in zip(outs, projection.masks, (sx, sy)))
        ctx.projection = projection
        ctx.save_for_backward(*outs, sx, sy)
        return (*outs, pressure)

    @staticmethod
    def backward(ctx, grad_u, grad_v, grad_p):
        projection = ctx.projection
        grad_u = torch.zeros_like(projection.mask_x) if grad_u is None else grad_u.contiguous()
        grad_v = torch.zeros_like(projection.mask_y) if grad_v is None else grad_v.contiguous()
        h = projection.divergence(grad_u, grad_v, weighted=False)
        if grad_p is not None:
            h = h + grad_p
        h = h * projection.fluid_cells
        z = (projection.solve(h) * projection.fluid_cells).contiguous()
        needs = ctx.needs_input_grad
        gu, gv = projection._subtract_gradient((grad_u, grad_v), -z, projection.areas)
        zeros = (torch.zeros_like(grad_u), torch.zeros_like(grad_v))
        su, sv = projection._subtract_gradient(zeros, -z, tuple(1.0 - a for a in projection.areas))
        su = su + (1.0 - projection.mask_x) * grad_u
        sv = sv + (1.0 - projection.mask_y) * grad_v
        grad_area = (None, None)
        if any(needs[5:7]):
            u_out, v_out, sx, sy = ctx.saved_tensors
            grad_area = area_gradient(projection, z, (u_out, v_out), (sx, sy))
        return (None, gu if needs[1] else None, gv if needs[2] else None, su if needs[3] else None,
                sv if needs[4] else None, *grad_area)


def project_with_pressure(projection, u: torch.Tensor, v: torch.Tensor, solid_x: torch.Tensor,
                          solid_y: torch.Tensor, areas: tuple[torch.Tensor, torch.Tensor] | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Divergence-free (u', v') against solids moving with face velocities (solid_x, solid_y) and
    the pressure p [m^2/s] (cells); differentiable in all four inputs (one adjoint solve) and in
    ``areas``, the open fractions the projection was built from as differentiable tensors (their
    gradient reaches the bodies' poses; the open mask [A > 0] is piecewise constant)."""
    area_x, area_y = areas if areas is not None else (None, None)
    return _ProjectWithPressure.apply(projection, u, v, solid_x, solid_y, area_x, area_y)
