"""Warp kernels for the 3D Eulerian smoke solver on a staggered (MAC) grid.

Layout (i, j, k along x, y, z; ``dx`` the cell size; positions relative to the grid corner):
- ``density`` (nx, ny, nz): cell centres at ((i + 1/2) dx, (j + 1/2) dx, (k + 1/2) dx);
- ``u`` (Fx, ny, nz) on x-faces at (i dx, (j + 1/2) dx, (k + 1/2) dx), Fx = nx + 1, or nx on a
  periodic x axis (no duplicated face); ``v`` (nx, Fy, nz) and ``w`` (nx, ny, Fz) likewise.

``flags`` packs the boundary into bits: 0/1/2 periodic x/y/z; 3/4 no-slip wall at x_lo/x_hi,
5/6 at y_lo/y_hi, 7/8 at z_lo/z_hi (the tangential velocity's ghost sample is mirrored with a
minus sign there). Elsewhere samples are clamped (zero gradient); closed walls and obstacles
enter as face fluid fractions (0 = solid), and advected velocities are multiplied by the mask.

Field kinds: 0 cell-centred, 1 x-faces, 2 y-faces, 3 z-faces. Kernels that write the three
velocity arrays launch over (nx + 1, ny + 1, nz + 1): thread (i, j, k) writes u, v and w at
(i, j, k) where those faces exist. Differentiable kernels take the cell counts as scalars
rather than reading ``arr.shape`` (see kernels/warp/grid_fluid.py). The Taichi twin
(kernels/taichi/grid_fluid3d.py) does the same arithmetic in the same order.
"""

import functools
from types import SimpleNamespace


@functools.cache
def grid_fluid3d_kernels(real):
    """Return the 3D grid-fluid kernels for scalar type ``real`` (wp.float32/wp.float64)."""
    import warp as wp

    module = f"hybridsim_grid_fluid3d_{real.__name__}"
    array3 = wp.array3d[real]
    array1 = wp.array[real]
    zero, half, one = real(0.0), real(0.5), real(1.0)

    @wp.func(module=module)
    def bit(flags: int, index: int):
        return (flags >> index) & 1

    @wp.func(module=module)
    def pick(axis: int, a: int, b: int, c: int):
        return wp.where(axis == 0, a, wp.where(axis == 1, b, c))

    @wp.func(module=module)
    def axis_stencil(g: real, n: int, periodic: int, antisym_lo: int, antisym_hi: int):
        # linear interpolation along one axis at sample coordinate g: lower/upper indices, the
        # upper weight t and the signs of the two samples (-1 for a no-slip ghost)
        nr = real(n)
        wrapped = g - nr * wp.floor(g / nr)
        lo = wp.where(antisym_lo == 1, real(-0.5), zero)
        hi = wp.where(antisym_hi == 1, nr - half, nr - one)
        g_used = wp.where(periodic == 1, wrapped, wp.clamp(g, lo, hi))
        base = wp.floor(g_used)
        t = g_used - base
        i0 = int(base)
        i1 = i0 + 1
        s0 = one
        s1 = one
        if periodic == 1:
            i0 = i0 % n  # round-off can put ``wrapped`` at exactly n
            i1 = (i0 + 1) % n
        else:
            if i0 < 0:
                i0 = 0
                s0 = -one
            if i1 > n - 1:
                i1 = n - 1
                s1 = wp.where(antisym_hi == 1, -one, one)
        return i0, i1, t, s0, s1

    @wp.func(module=module)
    def ghost_mode(kind: int, axis: int, side: int, flags: int):
        # 1 where samples of a velocity component tangential to ``axis`` mirror with a minus sign
        tangential = wp.where(kind != 0 and kind != axis + 1, 1, 0)
        return tangential * bit(flags, 3 + 2 * axis + side)

    @wp.func(module=module)
    def field_size(kind: int, axis: int, flags: int, n: int):
        # samples along ``axis`` of a field kind with n cells along it
        return wp.where(kind == axis + 1, n + 1 - bit(flags, axis), n)

    @wp.func(module=module)
    def axis_sample(kind: int, axis: int, x: real, dx: real, flags: int, n: int):
        g = x / dx - wp.where(kind == axis + 1, zero, half)
        return axis_stencil(g, field_size(kind, axis, flags, n), bit(flags, axis), ghost_mode(kind, axis, 0, flags),
                            ghost_mode(kind, axis, 1, flags))

    @wp.func(module=module)
    def sample_field(f: array3, kind: int, x: real, y: real, z: real, dx: real, flags: int, nx: int, ny: int,
                     nz: int):
        # trilinear sample of a cell (kind 0) or face (1, 2, 3) field at point (x, y, z) [m]
        i0, i1, tx, sx0, sx1 = axis_sample(kind, 0, x, dx, flags, nx)
        j0, j1, ty, sy0, sy1 = axis_sample(kind, 1, y, dx, flags, ny)
        k0, k1, tz, sz0, sz1 = axis_sample(kind, 2, z, dx, flags, nz)
        c00 = sz0 * f[i0, j0, k0] * (one - tz) + sz1 * f[i0, j0, k1] * tz
        c01 = sz0 * f[i0, j1, k0] * (one - tz) + sz1 * f[i0, j1, k1] * tz
        c10 = sz0 * f[i1, j0, k0] * (one - tz) + sz1 * f[i1, j0, k1] * tz
        c11 = sz0 * f[i1, j1, k0] * (one - tz) + sz1 * f[i1, j1, k1] * tz
        low = sy0 * c00 * (one - ty) + sy1 * c01 * ty
        high = sy0 * c10 * (one - ty) + sy1 * c11 * ty
        return sx0 * low * (one - tx) + sx1 * high * tx

    @wp.func(module=module)
    def sample_range(f: array3, kind: int, x: real, y: real, z: real, dx: real, flags: int, nx: int, ny: int,
                     nz: int):
        # min and max of the eight (signed) samples the trilinear stencil at (x, y, z) reads
        i0, i1, tx, sx0, sx1 = axis_sample(kind, 0, x, dx, flags, nx)
        j0, j1, ty, sy0, sy1 = axis_sample(kind, 1, y, dx, flags, ny)
        k0, k1, tz, sz0, sz1 = axis_sample(kind, 2, z, dx, flags, nz)
        lo = sx0 * sy0 * sz0 * f[i0, j0, k0]
        hi = lo
        for corner in range(1, 8):
            a = corner & 1
            b = (corner >> 1) & 1
            c = (corner >> 2) & 1
            value = (wp.where(a == 1, sx1, sx0) * wp.where(b == 1, sy1, sy0) * wp.where(c == 1, sz1, sz0)
                     * f[wp.where(a == 1, i1, i0), wp.where(b == 1, j1, j0), wp.where(c == 1, k1, k0)])
            lo = wp.min(lo, value)
            hi = wp.max(hi, value)
        return lo, hi

    @wp.func(module=module)
    def departure_point(u: array3, v: array3, w: array3, x: real, y: real, z: real, dx: real, dt: real,
                        flags: int, nx: int, ny: int, nz: int):
        # trace (x, y, z) back over dt with the midpoint rule (RK2)
        u0 = sample_field(u, 1, x, y, z, dx, flags, nx, ny, nz)
        v0 = sample_field(v, 2, x, y, z, dx, flags, nx, ny, nz)
        w0 = sample_field(w, 3, x, y, z, dx, flags, nx, ny, nz)
        xm = x - half * dt * u0
        ym = y - half * dt * v0
        zm = z - half * dt * w0
        um = sample_field(u, 1, xm, ym, zm, dx, flags, nx, ny, nz)
        vm = sample_field(v, 2, xm, ym, zm, dx, flags, nx, ny, nz)
        wm = sample_field(w, 3, xm, ym, zm, dx, flags, nx, ny, nz)
        return x - dt * um, y - dt * vm, z - dt * wm

    @wp.func(module=module)
    def has_face(kind: int, i: int, j: int, k: int, flags: int, nx: int, ny: int, nz: int):
        # whether thread (i, j, k) of a (nx + 1, ny + 1, nz + 1) launch owns a face of this kind
        ok = i < field_size(kind, 0, flags, nx) and j < field_size(kind, 1, flags, ny)
        return ok and k < field_size(kind, 2, flags, nz)

    @wp.func(module=module)
    def sample_position(kind: int, i: int, j: int, k: int, dx: real):
        # position of sample (i, j, k) of a field kind [m]
        x = (real(i) + wp.where(kind == 1, zero, half)) * dx
        y = (real(j) + wp.where(kind == 2, zero, half)) * dx
        z = (real(k) + wp.where(kind == 3, zero, half)) * dx
        return x, y, z

    @wp.func(module=module)
    def face_cells(i: int, n: int, periodic: int):
        # the two cells on either side of face i along an axis with n cells (clamped at edges)
        left = wp.where(periodic == 1, (i - 1 + n) % n, wp.max(i - 1, 0))
        right = wp.where(periodic == 1, i % n, wp.min(i, n - 1))
        return left, right

    @wp.func(module=module)
    def cell_neighbours(i: int, n: int, periodic: int):
        # neighbours of cell i for a central difference and their distance in cells
        lo = wp.where(periodic == 1, (i - 1 + n) % n, wp.max(i - 1, 0))
        hi = wp.where(periodic == 1, (i + 1) % n, wp.min(i + 1, n - 1))
        span = wp.where(periodic == 1, real(2.0), real(hi - lo))
        return lo, hi, span

    @wp.func(module=module)
    def face_average(q: array3, axis: int, i: int, j: int, k: int, flags: int, n: int):
        # mean of the cell field q over the two cells beside face (i, j, k) normal to ``axis``
        left, right = face_cells(pick(axis, i, j, k), n, bit(flags, axis))
        a = q[pick(axis, left, i, i), pick(axis, j, left, j), pick(axis, k, k, left)]
        b = q[pick(axis, right, i, i), pick(axis, j, right, j), pick(axis, k, k, right)]
        return half * (a + b)

    @wp.kernel(module=module)
    def advect_scalar(q: array3, u: array3, v: array3, w: array3, dx: real, dt: real, flags: int, nx: int,
                      ny: int, nz: int, q_out: array3):
        # semi-Lagrangian: the new value is the old field at the departure point
        i, j, k = wp.tid()
        x, y, z = sample_position(0, i, j, k, dx)
        xd, yd, zd = departure_point(u, v, w, x, y, z, dx, dt, flags, nx, ny, nz)
        q_out[i, j, k] = sample_field(q, 0, xd, yd, zd, dx, flags, nx, ny, nz)

    @wp.func(module=module)
    def advected_face(q: array3, kind: int, u: array3, v: array3, w: array3, i: int, j: int, k: int, dx: real,
                      dt: real, flags: int, nx: int, ny: int, nz: int):
        x, y, z = sample_position(kind, i, j, k, dx)
        xd, yd, zd = departure_point(u, v, w, x, y, z, dx, dt, flags, nx, ny, nz)
        return sample_field(q, kind, xd, yd, zd, dx, flags, nx, ny, nz)

    @wp.kernel(module=module)
    def advect_velocity(qu: array3, qv: array3, qw: array3, u: array3, v: array3, w: array3, mask_u: array3,
                        mask_v: array3, mask_w: array3, dx: real, dt: real, flags: int, nx: int, ny: int, nz: int,
                        qu_out: array3, qv_out: array3, qw_out: array3):
        # semi-Lagrangian transport of the face fields (qu, qv, qw) by (u, v, w); solid faces get 0
        i, j, k = wp.tid()
        if has_face(1, i, j, k, flags, nx, ny, nz):
            qu_out[i, j, k] = mask_u[i, j, k] * advected_face(qu, 1, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)
        if has_face(2, i, j, k, flags, nx, ny, nz):
            qv_out[i, j, k] = mask_v[i, j, k] * advected_face(qv, 2, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)
        if has_face(3, i, j, k, flags, nx, ny, nz):
            qw_out[i, j, k] = mask_w[i, j, k] * advected_face(qw, 3, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)

    @wp.func(module=module)
    def corrected(q: array3, forward: array3, backward: array3, kind: int, u: array3, v: array3, w: array3, i: int,
                  j: int, k: int, dx: real, dt: real, flags: int, nx: int, ny: int, nz: int):
        # MacCormack: add half the round-trip error, clamped to the departure stencil's range
        x, y, z = sample_position(kind, i, j, k, dx)
        xd, yd, zd = departure_point(u, v, w, x, y, z, dx, dt, flags, nx, ny, nz)
        lo, hi = sample_range(q, kind, xd, yd, zd, dx, flags, nx, ny, nz)
        return wp.clamp(forward[i, j, k] + half * (q[i, j, k] - backward[i, j, k]), lo, hi)

    @wp.kernel(module=module)
    def correct_scalar(q: array3, q_forward: array3, q_backward: array3, u: array3, v: array3, w: array3, dx: real,
                       dt: real, flags: int, nx: int, ny: int, nz: int, q_out: array3):
        i, j, k = wp.tid()
        q_out[i, j, k] = corrected(q, q_forward, q_backward, 0, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)

    @wp.kernel(module=module)
    def correct_velocity(u: array3, v: array3, w: array3, u_forward: array3, v_forward: array3, w_forward: array3,
                         u_backward: array3, v_backward: array3, w_backward: array3, mask_u: array3, mask_v: array3,
                         mask_w: array3, dx: real, dt: real, flags: int, nx: int, ny: int, nz: int, u_out: array3,
                         v_out: array3, w_out: array3):
        # MacCormack correction of the three face fields, each clamped to its departure stencil's range
        i, j, k = wp.tid()
        if has_face(1, i, j, k, flags, nx, ny, nz):
            u_out[i, j, k] = mask_u[i, j, k] * corrected(u, u_forward, u_backward, 1, u, v, w, i, j, k, dx, dt, flags,
                                                         nx, ny, nz)
        if has_face(2, i, j, k, flags, nx, ny, nz):
            v_out[i, j, k] = mask_v[i, j, k] * corrected(v, v_forward, v_backward, 2, u, v, w, i, j, k, dx, dt, flags,
                                                         nx, ny, nz)
        if has_face(3, i, j, k, flags, nx, ny, nz):
            w_out[i, j, k] = mask_w[i, j, k] * corrected(w, w_forward, w_backward, 3, u, v, w, i, j, k, dx, dt, flags,
                                                         nx, ny, nz)

    @wp.func(module=module)
    def minmod(a: real, b: real):
        return wp.where(a * b <= zero, zero, wp.where(wp.abs(a) < wp.abs(b), a, b))

    @wp.func(module=module)
    def limited_slope(q: array3, axis: int, i: int, j: int, k: int, periodic: int, n: int):
        lo, hi, span = cell_neighbours(pick(axis, i, j, k), n, periodic)
        c = q[i, j, k]
        below = q[pick(axis, lo, i, i), pick(axis, j, lo, j), pick(axis, k, k, lo)]
        above = q[pick(axis, hi, i, i), pick(axis, j, hi, j), pick(axis, k, k, hi)]
        return minmod(c - below, above - c)

    @wp.func(module=module)
    def flux(q: array3, velocity_field: array3, area: array3, axis: int, i: int, j: int, k: int, dx: real, dt: real,
             flags: int, n: int):
        # flux through face (i, j, k) normal to ``axis``: upwind cell value plus a minmod-limited,
        # Lax-Wendroff-weighted slope
        periodic = bit(flags, axis)
        index = pick(axis, i, j, k)
        face = wp.where(periodic == 1, index % n, index)
        left, right = face_cells(index, n, periodic)
        fi = pick(axis, face, i, i)
        fj = pick(axis, j, face, j)
        fk = pick(axis, k, k, face)
        li = pick(axis, left, i, i)
        lj = pick(axis, j, left, j)
        lk = pick(axis, k, k, left)
        ri = pick(axis, right, i, i)
        rj = pick(axis, j, right, j)
        rk = pick(axis, k, k, right)
        velocity = velocity_field[fi, fj, fk]
        lag = half * (one - wp.abs(velocity * dt / dx))
        from_left = q[li, lj, lk] + lag * limited_slope(q, axis, li, lj, lk, periodic, n)
        from_right = q[ri, rj, rk] - lag * limited_slope(q, axis, ri, rj, rk, periodic, n)
        return area[fi, fj, fk] * velocity * wp.where(velocity > zero, from_left, from_right)

    @wp.kernel(module=module)
    def advect_conservative(q: array3, u: array3, v: array3, w: array3, area_u: array3, area_v: array3,
                            area_w: array3, dx: real, dt: real, flags: int, nx: int, ny: int, nz: int,
                            q_out: array3):
        # flux form: each face flux is computed identically by both its cells, so mass is conserved
        i, j, k = wp.tid()
        net = (flux(q, u, area_u, 0, i, j, k, dx, dt, flags, nx) - flux(q, u, area_u, 0, i + 1, j, k, dx, dt, flags, nx)
               + flux(q, v, area_v, 1, i, j, k, dx, dt, flags, ny) - flux(q, v, area_v, 1, i, j + 1, k, dx, dt, flags, ny)
               + flux(q, w, area_w, 2, i, j, k, dx, dt, flags, nz) - flux(q, w, area_w, 2, i, j, k + 1, dx, dt, flags, nz))
        q_out[i, j, k] = q[i, j, k] + dt / dx * net

    @wp.kernel(module=module)
    def add_buoyancy(u: array3, v: array3, w: array3, density: array3, acceleration_u: array3, acceleration_v: array3,
                     acceleration_w: array3, buoyancy: array1, up_x: real, up_y: real, up_z: real, dt: real,
                     flags: int, nx: int, ny: int, nz: int, u_out: array3, v_out: array3, w_out: array3):
        # buoyancy pushes density against gravity; external accelerations add on top
        i, j, k = wp.tid()
        if has_face(1, i, j, k, flags, nx, ny, nz):
            rho = face_average(density, 0, i, j, k, flags, nx)
            u_out[i, j, k] = u[i, j, k] + dt * (buoyancy[0] * rho * up_x + acceleration_u[i, j, k])
        if has_face(2, i, j, k, flags, nx, ny, nz):
            rho = face_average(density, 1, i, j, k, flags, ny)
            v_out[i, j, k] = v[i, j, k] + dt * (buoyancy[0] * rho * up_y + acceleration_v[i, j, k])
        if has_face(3, i, j, k, flags, nx, ny, nz):
            rho = face_average(density, 2, i, j, k, flags, nz)
            w_out[i, j, k] = w[i, j, k] + dt * (buoyancy[0] * rho * up_z + acceleration_w[i, j, k])

    @wp.kernel(module=module)
    def add_temperature_buoyancy(u: array3, v: array3, w: array3, temperature: array3, coefficient: array1,
                                 ambient: array1, up_x: real, up_y: real, up_z: real, dt: real, flags: int, nx: int,
                                 ny: int, nz: int, u_out: array3, v_out: array3, w_out: array3):
        # Boussinesq lift: coefficient * (T - T_ambient) against gravity, T averaged onto each face
        i, j, k = wp.tid()
        if has_face(1, i, j, k, flags, nx, ny, nz):
            excess = face_average(temperature, 0, i, j, k, flags, nx) - ambient[0]
            u_out[i, j, k] = u[i, j, k] + dt * coefficient[0] * excess * up_x
        if has_face(2, i, j, k, flags, nx, ny, nz):
            excess = face_average(temperature, 1, i, j, k, flags, ny) - ambient[0]
            v_out[i, j, k] = v[i, j, k] + dt * coefficient[0] * excess * up_y
        if has_face(3, i, j, k, flags, nx, ny, nz):
            excess = face_average(temperature, 2, i, j, k, flags, nz) - ambient[0]
            w_out[i, j, k] = w[i, j, k] + dt * coefficient[0] * excess * up_z

    @wp.kernel(module=module)
    def cool_temperature(temperature: array3, ambient: array1, rate: array1, dt: real, temperature_out: array3):
        # exact exponential relaxation towards the ambient temperature over dt
        i, j, k = wp.tid()
        decay = wp.exp(-rate[0] * dt)
        temperature_out[i, j, k] = ambient[0] + (temperature[i, j, k] - ambient[0]) * decay

    @wp.func(module=module)
    def cell_velocity(u: array3, v: array3, w: array3, i: int, j: int, k: int, flags: int, nx: int, ny: int, nz: int):
        ip = wp.where(bit(flags, 0) == 1, (i + 1) % nx, i + 1)
        jp = wp.where(bit(flags, 1) == 1, (j + 1) % ny, j + 1)
        kp = wp.where(bit(flags, 2) == 1, (k + 1) % nz, k + 1)
        return half * (u[i, j, k] + u[ip, j, k]), half * (v[i, j, k] + v[i, jp, k]), half * (w[i, j, k] + w[i, j, kp])

    @wp.kernel(module=module)
    def curl(u: array3, v: array3, w: array3, dx: real, flags: int, nx: int, ny: int, nz: int,
             vorticity_x: array3, vorticity_y: array3, vorticity_z: array3):
        # vorticity (dw/dy - dv/dz, du/dz - dw/dx, dv/dx - du/dy) at cell centres from cell-averaged velocities
        i, j, k = wp.tid()
        il, ih, span_x = cell_neighbours(i, nx, bit(flags, 0))
        jl, jh, span_y = cell_neighbours(j, ny, bit(flags, 1))
        kl, kh, span_z = cell_neighbours(k, nz, bit(flags, 2))
        u_xl, v_xl, w_xl = cell_velocity(u, v, w, il, j, k, flags, nx, ny, nz)
        u_xh, v_xh, w_xh = cell_velocity(u, v, w, ih, j, k, flags, nx, ny, nz)
        u_yl, v_yl, w_yl = cell_velocity(u, v, w, i, jl, k, flags, nx, ny, nz)
        u_yh, v_yh, w_yh = cell_velocity(u, v, w, i, jh, k, flags, nx, ny, nz)
        u_zl, v_zl, w_zl = cell_velocity(u, v, w, i, j, kl, flags, nx, ny, nz)
        u_zh, v_zh, w_zh = cell_velocity(u, v, w, i, j, kh, flags, nx, ny, nz)
        hx = span_x * dx
        hy = span_y * dx
        hz = span_z * dx
        vorticity_x[i, j, k] = (w_yh - w_yl) / hy - (v_zh - v_zl) / hz
        vorticity_y[i, j, k] = (u_zh - u_zl) / hz - (w_xh - w_xl) / hx
        vorticity_z[i, j, k] = (v_xh - v_xl) / hx - (u_yh - u_yl) / hy

    @wp.func(module=module)
    def vorticity_norm(ox: array3, oy: array3, oz: array3, i: int, j: int, k: int):
        a = ox[i, j, k]
        b = oy[i, j, k]
        c = oz[i, j, k]
        return wp.sqrt(a * a + b * b + c * c + real(1.0e-20))

    @wp.func(module=module)
    def confinement_force(ox: array3, oy: array3, oz: array3, i: int, j: int, k: int, dx: real, flags: int, nx: int,
                          ny: int, nz: int):
        # eps dx (N x omega) with N the unit gradient of |omega|
        il, ih, span_x = cell_neighbours(i, nx, bit(flags, 0))
        jl, jh, span_y = cell_neighbours(j, ny, bit(flags, 1))
        kl, kh, span_z = cell_neighbours(k, nz, bit(flags, 2))
        eta_x = (vorticity_norm(ox, oy, oz, ih, j, k) - vorticity_norm(ox, oy, oz, il, j, k)) / (span_x * dx)
        eta_y = (vorticity_norm(ox, oy, oz, i, jh, k) - vorticity_norm(ox, oy, oz, i, jl, k)) / (span_y * dx)
        eta_z = (vorticity_norm(ox, oy, oz, i, j, kh) - vorticity_norm(ox, oy, oz, i, j, kl)) / (span_z * dx)
        scale = dx / wp.sqrt(eta_x * eta_x + eta_y * eta_y + eta_z * eta_z + real(1.0e-20))
        a = ox[i, j, k]
        b = oy[i, j, k]
        c = oz[i, j, k]
        return (eta_y * c - eta_z * b) * scale, (eta_z * a - eta_x * c) * scale, (eta_x * b - eta_y * a) * scale

    @wp.func(module=module)
    def face_confinement(ox: array3, oy: array3, oz: array3, axis: int, i: int, j: int, k: int, dx: real, flags: int,
                         nx: int, ny: int, nz: int):
        # the ``axis`` component of the confinement force averaged from the two cells beside a face
        left, right = face_cells(pick(axis, i, j, k), pick(axis, nx, ny, nz), bit(flags, axis))
        ax, ay, az = confinement_force(ox, oy, oz, pick(axis, left, i, i), pick(axis, j, left, j),
                                       pick(axis, k, k, left), dx, flags, nx, ny, nz)
        bx, by, bz = confinement_force(ox, oy, oz, pick(axis, right, i, i), pick(axis, j, right, j),
                                       pick(axis, k, k, right), dx, flags, nx, ny, nz)
        return half * wp.where(axis == 0, ax + bx, wp.where(axis == 1, ay + by, az + bz))

    @wp.kernel(module=module)
    def confine_vorticity(u: array3, v: array3, w: array3, vorticity_x: array3, vorticity_y: array3,
                          vorticity_z: array3, strength: array1, dx: real, dt: real, flags: int, nx: int, ny: int,
                          nz: int, u_out: array3, v_out: array3, w_out: array3):
        # vorticity confinement on every face
        i, j, k = wp.tid()
        if has_face(1, i, j, k, flags, nx, ny, nz):
            force = face_confinement(vorticity_x, vorticity_y, vorticity_z, 0, i, j, k, dx, flags, nx, ny, nz)
            u_out[i, j, k] = u[i, j, k] + dt * strength[0] * force
        if has_face(2, i, j, k, flags, nx, ny, nz):
            force = face_confinement(vorticity_x, vorticity_y, vorticity_z, 1, i, j, k, dx, flags, nx, ny, nz)
            v_out[i, j, k] = v[i, j, k] + dt * strength[0] * force
        if has_face(3, i, j, k, flags, nx, ny, nz):
            force = face_confinement(vorticity_x, vorticity_y, vorticity_z, 2, i, j, k, dx, flags, nx, ny, nz)
            w_out[i, j, k] = w[i, j, k] + dt * strength[0] * force

    @wp.func(module=module)
    def next_index(i: int, faces: int, periodic: int):
        # the far face of cell i along an axis with ``faces`` faces
        return wp.where(periodic == 1, (i + 1) % faces, i + 1)

    @wp.kernel(module=module, enable_backward=False)
    def divergence(u: array3, v: array3, w: array3, weight_u: array3, weight_v: array3, weight_w: array3, dx: real,
                   flags: int, div: array3):
        # net outflow of the weighted face velocities per cell, divided by dx
        i, j, k = wp.tid()
        ip = next_index(i, u.shape[0], bit(flags, 0))
        jp = next_index(j, v.shape[1], bit(flags, 1))
        kp = next_index(k, w.shape[2], bit(flags, 2))
        div[i, j, k] = (weight_u[ip, j, k] * u[ip, j, k] - weight_u[i, j, k] * u[i, j, k]
                        + weight_v[i, jp, k] * v[i, jp, k] - weight_v[i, j, k] * v[i, j, k]
                        + weight_w[i, j, kp] * w[i, j, kp] - weight_w[i, j, k] * w[i, j, k]) / dx

    @wp.func(module=module)
    def neighbour_cell(p: array3, i: int, j: int, k: int, di: int, dj: int, dk: int, flags: int):
        # pressure of the cell beyond a face: wrapped if periodic, 0 past an open edge
        ni = i + di
        nj = j + dj
        nk = k + dk
        nx = p.shape[0]
        ny = p.shape[1]
        nz = p.shape[2]
        if bit(flags, 0) == 1:
            ni = (ni + nx) % nx
        if bit(flags, 1) == 1:
            nj = (nj + ny) % ny
        if bit(flags, 2) == 1:
            nk = (nk + nz) % nz
        value = zero
        if ni >= 0 and ni < nx and nj >= 0 and nj < ny and nk >= 0 and nk < nz:
            value = p[ni, nj, nk]
        return value

    @wp.kernel(module=module, enable_backward=False)
    def apply_pressure_operator(p: array3, area_u: array3, area_v: array3, area_w: array3, dx: real, flags: int,
                                out: array3):
        # matrix-free G^T A G p: area-weighted Laplacian (negated), Dirichlet 0 past open edges
        i, j, k = wp.tid()
        ip = next_index(i, area_u.shape[0], bit(flags, 0))
        jp = next_index(j, area_v.shape[1], bit(flags, 1))
        kp = next_index(k, area_w.shape[2], bit(flags, 2))
        c = p[i, j, k]
        total = (area_u[i, j, k] * (c - neighbour_cell(p, i, j, k, -1, 0, 0, flags))
                 + area_u[ip, j, k] * (c - neighbour_cell(p, i, j, k, 1, 0, 0, flags))
                 + area_v[i, j, k] * (c - neighbour_cell(p, i, j, k, 0, -1, 0, flags))
                 + area_v[i, jp, k] * (c - neighbour_cell(p, i, j, k, 0, 1, 0, flags))
                 + area_w[i, j, k] * (c - neighbour_cell(p, i, j, k, 0, 0, -1, flags))
                 + area_w[i, j, kp] * (c - neighbour_cell(p, i, j, k, 0, 0, 1, flags)))
        out[i, j, k] = total / (dx * dx)

    @wp.kernel(module=module, enable_backward=False)
    def pressure_diagonal(area_u: array3, area_v: array3, area_w: array3, dx: real, flags: int, out: array3):
        i, j, k = wp.tid()
        ip = next_index(i, area_u.shape[0], bit(flags, 0))
        jp = next_index(j, area_v.shape[1], bit(flags, 1))
        kp = next_index(k, area_w.shape[2], bit(flags, 2))
        out[i, j, k] = (area_u[i, j, k] + area_u[ip, j, k] + area_v[i, j, k] + area_v[i, jp, k]
                        + area_w[i, j, k] + area_w[i, j, kp]) / (dx * dx)

    @wp.kernel(module=module, enable_backward=False)
    def subtract_pressure_gradient(u: array3, v: array3, w: array3, p: array3, mask_u: array3, mask_v: array3,
                                   mask_w: array3, weight_u: array3, weight_v: array3, weight_w: array3, dx: real,
                                   flags: int, u_out: array3, v_out: array3, w_out: array3):
        # u_out = mask u - weight grad p (forward: weight = mask; adjoint: weight = face area)
        i, j, k = wp.tid()
        c = neighbour_cell(p, i, j, k, 0, 0, 0, flags)
        if i < u.shape[0] and j < u.shape[1] and k < u.shape[2]:
            grad = (c - neighbour_cell(p, i, j, k, -1, 0, 0, flags)) / dx
            u_out[i, j, k] = mask_u[i, j, k] * u[i, j, k] - weight_u[i, j, k] * grad
        if i < v.shape[0] and j < v.shape[1] and k < v.shape[2]:
            grad = (c - neighbour_cell(p, i, j, k, 0, -1, 0, flags)) / dx
            v_out[i, j, k] = mask_v[i, j, k] * v[i, j, k] - weight_v[i, j, k] * grad
        if i < w.shape[0] and j < w.shape[1] and k < w.shape[2]:
            grad = (c - neighbour_cell(p, i, j, k, 0, 0, -1, flags)) / dx
            w_out[i, j, k] = mask_w[i, j, k] * w[i, j, k] - weight_w[i, j, k] * grad

    @wp.func(module=module)
    def coupling(area: array3, axis: int, i: int, j: int, k: int, scale: real, n: int):
        # matrix entry between cell (i, j, k) and its upper neighbour along ``axis``; wrap-around
        # couplings are left out of the factorisation
        index = pick(axis, i, j, k)
        value = zero
        if index >= 0 and index + 1 < n:
            value = -area[pick(axis, i + 1, i, i), pick(axis, j, j + 1, j), pick(axis, k, k, k + 1)] * scale
        return value

    @wp.kernel(module=module, enable_backward=False)
    def factor_incomplete_cholesky(area_u: array3, area_v: array3, area_w: array3, dx: real, flags: int,
                                   precon: array3):
        # modified incomplete Cholesky MIC(0) of the pressure matrix, one serial sweep (launch dim 1)
        nx = precon.shape[0]
        ny = precon.shape[1]
        nz = precon.shape[2]
        scale = one / (dx * dx)
        tau = real(0.97)
        sigma = real(0.25)
        for i in range(nx):
            for j in range(ny):
                for k in range(nz):
                    ip = next_index(i, area_u.shape[0], bit(flags, 0))
                    jp = next_index(j, area_v.shape[1], bit(flags, 1))
                    kp = next_index(k, area_w.shape[2], bit(flags, 2))
                    diag = (area_u[i, j, k] + area_u[ip, j, k] + area_v[i, j, k] + area_v[i, jp, k]
                            + area_w[i, j, k] + area_w[i, j, kp]) * scale
                    e = diag
                    if i > 0:
                        p = precon[i - 1, j, k]
                        a = coupling(area_u, 0, i - 1, j, k, scale, nx) * p
                        b = (coupling(area_v, 1, i - 1, j, k, scale, ny) + coupling(area_w, 2, i - 1, j, k, scale, nz)) * p
                        e = e - a * a - tau * a * b
                    if j > 0:
                        p = precon[i, j - 1, k]
                        a = coupling(area_v, 1, i, j - 1, k, scale, ny) * p
                        b = (coupling(area_u, 0, i, j - 1, k, scale, nx) + coupling(area_w, 2, i, j - 1, k, scale, nz)) * p
                        e = e - a * a - tau * a * b
                    if k > 0:
                        p = precon[i, j, k - 1]
                        a = coupling(area_w, 2, i, j, k - 1, scale, nz) * p
                        b = (coupling(area_u, 0, i, j, k - 1, scale, nx) + coupling(area_v, 1, i, j, k - 1, scale, ny)) * p
                        e = e - a * a - tau * a * b
                    if e < sigma * diag:
                        e = diag
                    value = zero
                    if diag > zero:
                        value = one / wp.sqrt(e)
                    precon[i, j, k] = value

    @wp.kernel(module=module, enable_backward=False)
    def apply_incomplete_cholesky(r: array3, area_u: array3, area_v: array3, area_w: array3, precon: array3,
                                  dx: real, q: array3, z: array3):
        # z = (L L^T)^-1 r by a forward and a backward triangular sweep (serial, launch dim 1)
        nx = r.shape[0]
        ny = r.shape[1]
        nz = r.shape[2]
        scale = one / (dx * dx)
        for i in range(nx):
            for j in range(ny):
                for k in range(nz):
                    t = r[i, j, k]
                    if i > 0:
                        t = t - coupling(area_u, 0, i - 1, j, k, scale, nx) * precon[i - 1, j, k] * q[i - 1, j, k]
                    if j > 0:
                        t = t - coupling(area_v, 1, i, j - 1, k, scale, ny) * precon[i, j - 1, k] * q[i, j - 1, k]
                    if k > 0:
                        t = t - coupling(area_w, 2, i, j, k - 1, scale, nz) * precon[i, j, k - 1] * q[i, j, k - 1]
                    q[i, j, k] = t * precon[i, j, k]
        for a in range(nx):
            i = nx - 1 - a
            for b in range(ny):
                j = ny - 1 - b
                for c in range(nz):
                    k = nz - 1 - c
                    t = q[i, j, k]
                    p = precon[i, j, k]
                    if i + 1 < nx:
                        t = t - coupling(area_u, 0, i, j, k, scale, nx) * p * z[i + 1, j, k]
                    if j + 1 < ny:
                        t = t - coupling(area_v, 1, i, j, k, scale, ny) * p * z[i, j + 1, k]
                    if k + 1 < nz:
                        t = t - coupling(area_w, 2, i, j, k, scale, nz) * p * z[i, j, k + 1]
                    z[i, j, k] = t * p

    @wp.func(module=module)
    def face_neighbour(x: array3, mask: array3, i: int, j: int, k: int, axis: int, step: int, periodic: int,
                       no_slip: int):
        # one Laplacian term (self - neighbour) and its diagonal weight; a missing neighbour is a
        # no-slip ghost (-self, weight 2) when no_slip, else no term (zero gradient)
        n = pick(axis, x.shape[0], x.shape[1], x.shape[2])
        m = pick(axis, i, j, k) + step
        if periodic == 1:
            m = (m + n) % n
        value = zero
        weight = zero
        if m >= 0 and m < n:
            ni = pick(axis, m, i, i)
            nj = pick(axis, j, m, j)
            nk = pick(axis, k, k, m)
            value = x[i, j, k] - mask[ni, nj, nk] * x[ni, nj, nk]
            weight = one
        elif no_slip == 1:
            value = real(2.0) * x[i, j, k]
            weight = real(2.0)
        return value, weight

    @wp.func(module=module)
    def face_laplacian(x: array3, mask: array3, i: int, j: int, k: int, kind: int, flags: int):
        # sum over the six neighbours of (self - neighbour) for the viscous operator, and its diagonal
        total = zero
        diagonal = zero
        for axis in range(3):
            for side in range(2):
                value, weight = face_neighbour(x, mask, i, j, k, axis, 2 * side - 1, bit(flags, axis),
                                               ghost_mode(kind, axis, side, flags))
                total = total + value
                diagonal = diagonal + weight
        return total, diagonal

    @wp.func(module=module)
    def owns(x: array3, i: int, j: int, k: int):
        return i < x.shape[0] and j < x.shape[1] and k < x.shape[2]

    @wp.kernel(module=module, enable_backward=False)
    def apply_diffusion_operator(xu: array3, xv: array3, xw: array3, mask_u: array3, mask_v: array3, mask_w: array3,
                                 alpha: real, beta: real, dx: real, flags: int, out_u: array3, out_v: array3,
                                 out_w: array3):
        # alpha x + beta K x on free faces (K: negated face Laplacian), alpha x on solid faces
        i, j, k = wp.tid()
        scale = beta / (dx * dx)
        if owns(xu, i, j, k):
            lap, diag = face_laplacian(xu, mask_u, i, j, k, 1, flags)
            out_u[i, j, k] = alpha * xu[i, j, k] + mask_u[i, j, k] * scale * lap
        if owns(xv, i, j, k):
            lap, diag = face_laplacian(xv, mask_v, i, j, k, 2, flags)
            out_v[i, j, k] = alpha * xv[i, j, k] + mask_v[i, j, k] * scale * lap
        if owns(xw, i, j, k):
            lap, diag = face_laplacian(xw, mask_w, i, j, k, 3, flags)
            out_w[i, j, k] = alpha * xw[i, j, k] + mask_w[i, j, k] * scale * lap

    @wp.kernel(module=module, enable_backward=False)
    def diffusion_diagonal(xu: array3, xv: array3, xw: array3, mask_u: array3, mask_v: array3, mask_w: array3,
                           alpha: real, beta: real, dx: real, flags: int, out_u: array3, out_v: array3,
                           out_w: array3):
        i, j, k = wp.tid()
        scale = beta / (dx * dx)
        if owns(xu, i, j, k):
            lap, diag = face_laplacian(xu, mask_u, i, j, k, 1, flags)
            out_u[i, j, k] = alpha + mask_u[i, j, k] * scale * diag
        if owns(xv, i, j, k):
            lap, diag = face_laplacian(xv, mask_v, i, j, k, 2, flags)
            out_v[i, j, k] = alpha + mask_v[i, j, k] * scale * diag
        if owns(xw, i, j, k):
            lap, diag = face_laplacian(xw, mask_w, i, j, k, 3, flags)
            out_w[i, j, k] = alpha + mask_w[i, j, k] * scale * diag

    return SimpleNamespace(
        advect_scalar=advect_scalar, advect_velocity=advect_velocity, correct_scalar=correct_scalar,
        correct_velocity=correct_velocity, advect_conservative=advect_conservative, add_buoyancy=add_buoyancy,
        add_temperature_buoyancy=add_temperature_buoyancy, cool_temperature=cool_temperature, curl=curl,
        confine_vorticity=confine_vorticity, divergence=divergence,
        apply_pressure_operator=apply_pressure_operator, pressure_diagonal=pressure_diagonal,
        subtract_pressure_gradient=subtract_pressure_gradient, factor_incomplete_cholesky=factor_incomplete_cholesky,
        apply_incomplete_cholesky=apply_incomplete_cholesky, apply_diffusion_operator=apply_diffusion_operator,
        diffusion_diagonal=diffusion_diagonal,
    )


@functools.cache
def inflow3d_kernels(real, source_count: int):
    """The 3D source kernels for ``source_count`` sources (a compile-time loop count): ``add_inflow``
    (density) and ``heat_inflow`` (temperature)."""
    import warp as wp

    module = f"hybridsim_grid_fluid3d_inflow{source_count}_{real.__name__}"
    array3 = wp.array3d[real]
    array2 = wp.array2d[real]
    array1 = wp.array[real]
    zero, half, one = real(0.0), real(0.5), real(1.0)

    @wp.func(module=module)
    def smooth_coverage(e: real):
        # C1 ramp from 0 to 1 over one cell across the shape's edge
        s = wp.clamp(e + half, zero, one)
        return s * s * (real(3.0) - real(2.0) * s)

    @wp.func(module=module)
    def coverage(x: real, y: real, z: real, center: array2, size: array2, is_box: array1, s: int, dx: real):
        ox = x - center[s, 0]
        oy = y - center[s, 1]
        oz = z - center[s, 2]
        distance = wp.sqrt(ox * ox + oy * oy + oz * oz + real(1.0e-20))
        sphere = smooth_coverage((size[s, 0] - distance) / dx)
        box = (smooth_coverage((size[s, 0] - wp.abs(ox)) / dx) * smooth_coverage((size[s, 1] - wp.abs(oy)) / dx)
               * smooth_coverage((size[s, 2] - wp.abs(oz)) / dx))
        return is_box[s] * box + (one - is_box[s]) * sphere

    @wp.kernel(module=module)
    def add_inflow(density: array3, center: array2, size: array2, rate: array1, is_box: array1, dx: real, dt: real,
                   density_out: array3):
        # sources add rate * coverage * dt; soft coverage makes the amount smooth in the centre
        i, j, k = wp.tid()
        x = (real(i) + half) * dx
        y = (real(j) + half) * dx
        z = (real(k) + half) * dx
        total = zero
        for s in range(source_count):
            total = total + rate[s] * coverage(x, y, z, center, size, is_box, s, dx)
        density_out[i, j, k] = density[i, j, k] + dt * total

    @wp.kernel(module=module)
    def heat_inflow(temperature: array3, center: array2, size: array2, source_temperature: array1, heats: array1,
                    is_box: array1, dx: real, temperature_out: array3):
        # each heating source (heats = 1) holds its temperature inside its shape, blended by the soft coverage
        i, j, k = wp.tid()
        x = (real(i) + half) * dx
        y = (real(j) + half) * dx
        z = (real(k) + half) * dx
        value = temperature[i, j, k]
        for s in range(source_count):
            weight = heats[s] * coverage(x, y, z, center, size, is_box, s, dx)
            value = value + weight * (source_temperature[s] - value)
        temperature_out[i, j, k] = value

    return SimpleNamespace(add_inflow=add_inflow, heat_inflow=heat_inflow)
