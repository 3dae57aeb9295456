"""A vectorised numpy implementation of one grid-fluid step: the same numerics as the kernels,
written with whole-array index arithmetic instead of per-cell threads.

It is an independent check of the kernels in tests and the baseline of the benchmarks (same
Jacobi-preconditioned CG, same tolerance). No autograd.
"""

from __future__ import annotations

import numpy as np

from .model import GridFluidModel

__all__ = ["GridFluidNumpy"]

CELL, FACE_X, FACE_Y = 0, 1, 2


def _axis_stencil(g, n, periodic, antisym_lo, antisym_hi):
    """Vectorised kernels' ``axis_stencil``: indices i0, i1, upper weight t, ghost signs s0, s1."""
    if periodic:
        wrapped = g - n * np.floor(g / n)
        base = np.floor(wrapped)
        t = wrapped - base
        i0 = base.astype(np.int64) % n
        return i0, (i0 + 1) % n, t, np.ones_like(g), np.ones_like(g)
    lo = -0.5 if antisym_lo else 0.0
    hi = n - 0.5 if antisym_hi else n - 1.0
    clamped = np.clip(g, lo, hi)
    base = np.floor(clamped)
    t = clamped - base
    i0 = base.astype(np.int64)
    i1 = i0 + 1
    s0 = np.where(i0 < 0, -1.0, 1.0).astype(g.dtype)
    s1 = np.where(i1 > n - 1, -1.0 if antisym_hi else 1.0, 1.0).astype(g.dtype)
    return np.maximum(i0, 0), np.minimum(i1, n - 1), t, s0, s1


def _neighbours(n, periodic):
    """Central-difference neighbours of every cell along an axis and their distance in cells."""
    i = np.arange(n)
    if periodic:
        return (i - 1) % n, (i + 1) % n, np.full(n, 2.0)
    lo, hi = np.maximum(i - 1, 0), np.minimum(i + 1, n - 1)
    return lo, hi, (hi - lo).astype(np.float64)


def _face_cells(face_count, n, periodic):
    """The two cells beside each face along an axis (clamped at edges, wrapped if periodic)."""
    i = np.arange(face_count)
    if periodic:
        return (i - 1) % n, i % n
    return np.maximum(i - 1, 0), np.minimum(i, n - 1)


def _minmod(a, b):
    return np.where(a * b <= 0.0, 0.0, np.where(np.abs(a) < np.abs(b), a, b))


class GridFluidNumpy:
    """One smoke step in numpy for a GridFluidModel (coefficients read at construction)."""

    def __init__(self, model: GridFluidModel, *, advection: str = "semi_lagrangian", density_advection: str | None = None,
                 tolerance: float = 1e-5, max_iterations: int | None = None, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        as_array = lambda t: t.detach().cpu().numpy().astype(self.dtype)  # noqa: E731
        self.nx, self.ny = model.cell_count
        self.dx = self.dtype.type(model.cell_size)
        self.periodic_x, self.periodic_y = model.periodic
        flags = model.boundary_flags
        self.antisym = {FACE_X: (0, 0, flags >> 2 & 1, flags >> 3 & 1), FACE_Y: (flags >> 4 & 1, flags >> 5 & 1, 0, 0),
                        CELL: (0, 0, 0, 0)}
        self.area_x, self.area_y = as_array(model.face_fraction_x), as_array(model.face_fraction_y)
        self.mask_x, self.mask_y = (self.area_x > 0).astype(self.dtype), (self.area_y > 0).astype(self.dtype)
        self.up = tuple(self.dtype.type(-g) for g in model.gravity_direction)
        self.buoyancy = self.dtype.type(float(model.buoyancy))
        self.vorticity_strength = self.dtype.type(float(model.vorticity_strength))
        self.viscosity = float(model.viscosity)
        self.inflow = [as_array(t) for t in (model.inflow_center, model.inflow_size, model.inflow_rate, model.inflow_is_box)]
        self.advection, self.density_advection = advection, density_advection or advection
        self.tolerance = tolerance
        self.max_iterations = max_iterations or 20 * max(self.nx, self.ny) + 200
        self.singular = model.pressure_is_singular
        half = self.dtype.type(0.5)
        i, j = np.meshgrid(np.arange(self.nx, dtype=self.dtype), np.arange(self.ny, dtype=self.dtype), indexing="ij")
        self.cell_xy = ((i + half) * self.dx, (j + half) * self.dx)
        i, j = np.meshgrid(np.arange(self.area_x.shape[0], dtype=self.dtype), np.arange(self.ny, dtype=self.dtype), indexing="ij")
        self.face_x_xy = (i * self.dx, (j + half) * self.dx)
        i, j = np.meshgrid(np.arange(self.nx, dtype=self.dtype), np.arange(self.area_y.shape[1], dtype=self.dtype), indexing="ij")
        self.face_y_xy = ((i + half) * self.dx, j * self.dx)
        self.pressure_diagonal = self._pressure_diagonal()
        self.last_iterations = 0

    # ------------------------------------------------------------------ sampling and transport
    def _stencil(self, f, kind, x, y):
        offset_x = 0.0 if kind == FACE_X else 0.5
        offset_y = 0.0 if kind == FACE_Y else 0.5
        ax_lo, ax_hi, ay_lo, ay_hi = self.antisym[kind]
        sx = _axis_stencil(x / self.dx - self.dtype.type(offset_x), f.shape[0], self.periodic_x, ax_lo, ax_hi)
        sy = _axis_stencil(y / self.dx - self.dtype.type(offset_y), f.shape[1], self.periodic_y, ay_lo, ay_hi)
        return sx, sy

    def sample(self, f, kind, x, y):
        (i0, i1, tx, sx0, sx1), (j0, j1, ty, sy0, sy1) = self._stencil(f, kind, x, y)
        low = sy0 * f[i0, j0] * (1 - ty) + sy1 * f[i0, j1] * ty
        high = sy0 * f[i1, j0] * (1 - ty) + sy1 * f[i1, j1] * ty
        return sx0 * low * (1 - tx) + sx1 * high * tx

    def _sample_range(self, f, kind, x, y):
        (i0, i1, tx, sx0, sx1), (j0, j1, ty, sy0, sy1) = self._stencil(f, kind, x, y)
        corners = np.stack([sx0 * sy0 * f[i0, j0], sx0 * sy1 * f[i0, j1], sx1 * sy0 * f[i1, j0], sx1 * sy1 * f[i1, j1]])
        return corners.min(axis=0), corners.max(axis=0)

    def _departure(self, u, v, x, y, dt):
        half = self.dtype.type(0.5)
        xm = x - half * dt * self.sample(u, FACE_X, x, y)
        ym = y - half * dt * self.sample(v, FACE_Y, x, y)
        return x - dt * self.sample(u, FACE_X, xm, ym), y - dt * self.sample(v, FACE_Y, xm, ym)

    def _semi_lagrangian(self, fields, u, v, dt):
        out = []
        for f, kind, (x, y) in fields:
            xd, yd = self._departure(u, v, x, y, dt)
            out.append(self.sample(f, kind, xd, yd) * self._solid_mask(kind))
        return out

    def _solid_mask(self, kind):
        return {CELL: 1, FACE_X: self.mask_x, FACE_Y: self.mask_y}[kind]

    def _maccormack(self, fields, u, v, dt):
        forward = self._semi_lagrangian(fields, u, v, dt)
        backward = self._semi_lagrangian([(f, k, xy) for f, (_, k, xy) in zip(forward, fields)], u, v, -dt)
        out = []
        for (f, kind, (x, y)), fw, bw in zip(fields, forward, backward):
            xd, yd = self._departure(u, v, x, y, dt)
            lo, hi = self._sample_range(f, kind, xd, yd)
            out.append(self._solid_mask(kind) * np.minimum(np.maximum(fw + self.dtype.type(0.5) * (f - bw), lo), hi))
        return out

    def _advect(self, scheme, fields, u, v, dt):
        return (self._semi_lagrangian if scheme == "semi_lagrangian" else self._maccormack)(fields, u, v, dt)

    def _conservative(self, q, u, v, dt):
        dx, half = self.dx, self.dtype.type(0.5)
        lo_x, hi_x, _ = _neighbours(self.nx, self.periodic_x)
        lo_y, hi_y, _ = _neighbours(self.ny, self.periodic_y)
        slope_x = _minmod(q - q[lo_x, :], q[hi_x, :] - q)
        slope_y = _minmod(q - q[:, lo_y], q[:, hi_y] - q)
        left, right = _face_cells(u.shape[0], self.nx, self.periodic_x)
        lag = half * (1 - np.abs(u * dt / dx))
        qf = np.where(u > 0, q[left, :] + lag * slope_x[left, :], q[right, :] - lag * slope_x[right, :])
        flux_x = self.area_x * u * qf
        below, above = _face_cells(v.shape[1], self.ny, self.periodic_y)
        lag = half * (1 - np.abs(v * dt / dx))
        qf = np.where(v > 0, q[:, below] + lag * slope_y[:, below], q[:, above] - lag * slope_y[:, above])
        flux_y = self.area_y * v * qf
        fx_hi = np.roll(flux_x, -1, axis=0) if self.periodic_x else flux_x[1:]
        fy_hi = np.roll(flux_y, -1, axis=1) if self.periodic_y else flux_y[:, 1:]
        net = flux_x[: self.nx] - fx_hi + flux_y[:, : self.ny] - fy_hi
        return q + dt / dx * net

    # ------------------------------------------------------------------ forces
    def _add_inflow(self, rho, dt):
        center, size, rate, is_box = self.inflow
        x, y = self.cell_xy
        total = np.zeros_like(rho)

        def coverage(e):
            s = np.clip(e + 0.5, 0.0, 1.0).astype(self.dtype)
            return s * s * (3 - 2 * s)

        for s in range(rate.shape[0]):
            ox, oy = x - center[s, 0], y - center[s, 1]
            disc = coverage((size[s, 0] - np.sqrt(ox * ox + oy * oy + self.dtype.type(1e-20))) / self.dx)
            box = coverage((size[s, 0] - np.abs(ox)) / self.dx) * coverage((size[s, 1] - np.abs(oy)) / self.dx)
            total = total + rate[s] * (is_box[s] * box + (1 - is_box[s]) * disc)
        return rho + dt * total

    def _add_buoyancy(self, u, v, rho, dt):
        left, right = _face_cells(u.shape[0], self.nx, self.periodic_x)
        below, above = _face_cells(v.shape[1], self.ny, self.periodic_y)
        rho_x = self.dtype.type(0.5) * (rho[left, :] + rho[right, :])
        rho_y = self.dtype.type(0.5) * (rho[:, below] + rho[:, above])
        return u + dt * (self.buoyancy * rho_x * self.up[0]), v + dt * (self.buoyancy * rho_y * self.up[1])

    def _confine_vorticity(self, u, v, dt):
        dx, half = self.dx, self.dtype.type(0.5)
        u_hi = np.roll(u, -1, axis=0) if self.periodic_x else u[1:]
        v_hi = np.roll(v, -1, axis=1) if self.periodic_y else v[:, 1:]
        uc, vc = half * (u[: self.nx] + u_hi), half * (v[:, : self.ny] + v_hi)
        lo_x, hi_x, span_x = _neighbours(self.nx, self.periodic_x)
        lo_y, hi_y, span_y = _neighbours(self.ny, self.periodic_y)
        span_x, span_y = span_x.astype(self.dtype)[:, None] * dx, span_y.astype(self.dtype)[None, :] * dx
        omega = (vc[hi_x, :] - vc[lo_x, :]) / span_x - (uc[:, hi_y] - uc[:, lo_y]) / span_y
        magnitude = np.abs(omega)
        eta_x = (magnitude[hi_x, :] - magnitude[lo_x, :]) / span_x
        eta_y = (magnitude[:, hi_y] - magnitude[:, lo_y]) / span_y
        w = omega * dx / np.sqrt(eta_x * eta_x + eta_y * eta_y + self.dtype.type(1e-20))
        force_x, force_y = eta_y * w, -eta_x * w
        left, right = _face_cells(u.shape[0], self.nx, self.periodic_x)
        below, above = _face_cells(v.shape[1], self.ny, self.periodic_y)
        eps = self.vorticity_strength
        return (u + dt * eps * half * (force_x[left, :] + force_x[right, :]),
                v + dt * eps * half * (force_y[:, below] + force_y[:, above]))

    # ------------------------------------------------------------------ linear solves
    def _cells_beyond(self, p):
        """Pressure of the cell beyond each face of each cell: (left, right, below, above)."""
        zeros_x, zeros_y = np.zeros((1, self.ny), p.dtype), np.zeros((self.nx, 1), p.dtype)
        if self.periodic_x:
            left, right = np.roll(p, 1, axis=0), np.roll(p, -1, axis=0)
        else:
            left, right = np.concatenate([zeros_x, p[:-1]]), np.concatenate([p[1:], zeros_x])
        if self.periodic_y:
            below, above = np.roll(p, 1, axis=1), np.roll(p, -1, axis=1)
        else:
            below, above = np.concatenate([zeros_y, p[:, :-1]], axis=1), np.concatenate([p[:, 1:], zeros_y], axis=1)
        return left, right, below, above

    def _cell_faces(self, fx, fy):
        hi_x = np.roll(fx, -1, axis=0) if self.periodic_x else fx[1:]
        hi_y = np.roll(fy, -1, axis=1) if self.periodic_y else fy[:, 1:]
        return fx[: self.nx], hi_x, fy[:, : self.ny], hi_y

    def _pressure_diagonal(self):
        a_l, a_r, a_b, a_t = self._cell_faces(self.area_x, self.area_y)
        return (a_l + a_r + a_b + a_t) / (self.dx * self.dx)

    def _apply_pressure(self, p):
        left, right, below, above = self._cells_beyond(p)
        a_l, a_r, a_b, a_t = self._cell_faces(self.area_x, self.area_y)
        return (a_l * (p - left) + a_r * (p - right) + a_b * (p - below) + a_t * (p - above)) / (self.dx * self.dx)

    def divergence(self, u, v):
        u_l, u_r, v_b, v_t = self._cell_faces(self.area_x * u, self.area_y * v)
        return (u_r - u_l + v_t - v_b) / self.dx

    def _conjugate_gradient(self, apply, rhs, inverse_diagonal, fluid):
        count = max(fluid.sum(), 1.0) if fluid is not None else None

        def remove_mean(x):
            return x - fluid * (np.dot(x, fluid) / count) if fluid is not None else x

        x = np.zeros_like(rhs)
        r = remove_mean(rhs.copy())
        b_norm = np.sqrt(np.dot(r, r))
        if b_norm == 0:
            return x
        z = inverse_diagonal * r
        p = z.copy()
        rz = np.dot(r, z)
        for iteration in range(self.max_iterations):
            ap = apply(p)
            p_ap = np.dot(p, ap)
            if p_ap <= 0:
                break
            alpha = rz / p_ap
            x += alpha * p
            r = remove_mean(r - alpha * ap)
            if np.sqrt(np.dot(r, r)) <= self.tolerance * b_norm:
                break
            z = inverse_diagonal * r
            rz_next = np.dot(r, z)
            p = z + (rz_next / rz) * p
            rz = rz_next
        self.last_iterations = iteration + 1
        return remove_mean(x)

    def project(self, u, v):
        shape = (self.nx, self.ny)
        diagonal = self.pressure_diagonal.reshape(-1)
        fluid = (diagonal > 0).astype(self.dtype) if self.singular else None
        inverse = np.where(diagonal > 0, 1.0 / np.where(diagonal > 0, diagonal, 1.0), 0.0).astype(self.dtype)
        p = self._conjugate_gradient(lambda x: self._apply_pressure(x.reshape(shape)).reshape(-1),
                                     -self.divergence(u, v).reshape(-1), inverse, fluid).reshape(shape)
        left, right, below, above = self._cells_beyond(p)
        # faces of cell (i, j) lead to cells i-1 / j-1: gradient at x-face i = (p[i] - p[i-1]) / dx
        p_right_x = p if self.periodic_x else np.concatenate([p, np.zeros((1, self.ny), p.dtype)])
        p_left_x = left if self.periodic_x else np.concatenate([left, p[-1:]])
        p_above_y = p if self.periodic_y else np.concatenate([p, np.zeros((self.nx, 1), p.dtype)], axis=1)
        p_below_y = below if self.periodic_y else np.concatenate([below, p[:, -1:]], axis=1)
        return (self.mask_x * u - self.mask_x * (p_right_x - p_left_x) / self.dx,
                self.mask_y * v - self.mask_y * (p_above_y - p_below_y) / self.dx)

    def _face_laplacian(self, x, mask, kind):
        """Vectorised kernels' ``face_laplacian``: sum of (self - neighbour) terms."""
        ax_lo, ax_hi, ay_lo, ay_hi = self.antisym[kind]
        total = np.zeros_like(x)
        for axis, periodic, ghost_lo, ghost_hi in ((0, self.periodic_x, ax_lo, ax_hi), (1, self.periodic_y, ay_lo, ay_hi)):
            for shift, ghost in ((1, ghost_lo), (-1, ghost_hi)):  # shift 1: the lower neighbour
                if periodic:
                    total += x - np.roll(mask * x, shift, axis=axis)
                    continue
                neighbour = np.roll(mask * x, shift, axis=axis)
                missing = np.zeros(x.shape, bool)
                index = [slice(None)] * 2
                index[axis] = 0 if shift == 1 else -1
                missing[tuple(index)] = True
                total += np.where(missing, 2.0 * x if ghost else 0.0, x - neighbour)
        return total

    def diffuse(self, u, v, dt):
        shape_x, split = u.shape, u.size
        coefficient = self.viscosity * dt / (self.dx * self.dx)
        mask = np.concatenate([self.mask_x.reshape(-1), self.mask_y.reshape(-1)])

        def apply(flat):
            xu, xv = flat[:split].reshape(shape_x), flat[split:].reshape(v.shape)
            lu = self._face_laplacian(xu, self.mask_x, FACE_X)
            lv = self._face_laplacian(xv, self.mask_y, FACE_Y)
            return flat + mask * coefficient * np.concatenate([lu.reshape(-1), lv.reshape(-1)])

        ones_x, ones_y = np.ones_like(u), np.ones_like(v)
        # the diagonal of K: apply the neighbour count with unit self and zero neighbours
        diag = 1.0 + mask * coefficient * np.concatenate([
            self._face_laplacian(ones_x, np.zeros_like(ones_x), FACE_X).reshape(-1),
            self._face_laplacian(ones_y, np.zeros_like(ones_y), FACE_Y).reshape(-1)])
        rhs = mask * np.concatenate([u.reshape(-1), v.reshape(-1)])
        x = self._conjugate_gradient(apply, rhs, (1.0 / diag).astype(self.dtype), None)
        return x[:split].reshape(shape_x), x[split:].reshape(v.shape)

    # ------------------------------------------------------------------ the step
    def step(self, u, v, rho, dt):
        """One step from numpy arrays (u, v, rho); returns the new (u, v, rho)."""
        dt = self.dtype.type(dt)
        if self.inflow[2].shape[0]:
            rho = self._add_inflow(rho, dt)
        u_new, v_new = self._advect(self.advection, [(u, FACE_X, self.face_x_xy), (v, FACE_Y, self.face_y_xy)], u, v, dt)
        if self.density_advection == "conservative":
            rho = self._conservative(rho, u, v, dt)
        else:
            (rho,) = self._advect(self.density_advection, [(rho, CELL, self.cell_xy)], u, v, dt)
        u_new, v_new = self._add_buoyancy(u_new, v_new, rho, dt)
        if self.vorticity_strength != 0:
            u_new, v_new = self._confine_vorticity(u_new, v_new, dt)
        if self.viscosity != 0:
            u_new, v_new = self.diffuse(u_new, v_new, dt)
        u_new, v_new = self.project(u_new, v_new)
        return u_new, v_new, rho
