"""Taichi kernels for the 3D Eulerian smoke solver: the numerics of kernels/warp/grid_fluid3d.py.

Same layout, boundary ``flags`` bits, kernel names and arithmetic order as the Warp module (read
its docstring first). Arrays are torch tensors passed as external ndarrays; every literal is
written ``real(...)``, which Taichi turns into an exact constant of the kernel's precision.
"""

import functools
from types import SimpleNamespace


@functools.cache
def grid_fluid3d_kernels(real):
    """Return the 3D grid-fluid kernels for scalar type ``real`` (ti.f32/ti.f64)."""
    import taichi as ti

    array3 = ti.types.ndarray(dtype=real, ndim=3)
    array1 = ti.types.ndarray(dtype=real, ndim=1)

    @ti.func
    def clamp(x, lo, hi):
        return ti.min(ti.max(x, lo), hi)

    @ti.func
    def bit(flags, index):
        return (flags >> index) & 1

    @ti.func
    def pick(axis, a, b, c):
        return ti.select(axis == 0, a, ti.select(axis == 1, b, c))

    @ti.func
    def axis_stencil(g, n, periodic, antisym_lo, antisym_hi):
        # linear interpolation along one axis at sample coordinate g: lower/upper indices, the
        # upper weight t and the signs of the two samples (-1 for a no-slip ghost)
        nr = real(n)
        wrapped = g - nr * ti.floor(g / nr)
        lo = ti.select(antisym_lo == 1, real(-0.5), real(0.0))
        hi = ti.select(antisym_hi == 1, nr - real(0.5), nr - real(1.0))
        g_used = ti.select(periodic == 1, wrapped, clamp(g, lo, hi))
        base = ti.floor(g_used)
        t = g_used - base
        i0 = ti.cast(base, ti.i32)
        i1 = i0 + 1
        s0 = real(1.0)
        s1 = real(1.0)
        if periodic == 1:
            i0 = i0 % n  # round-off can put ``wrapped`` at exactly n
            i1 = (i0 + 1) % n
        else:
            if i0 < 0:
                i0 = 0
                s0 = -real(1.0)
            if i1 > n - 1:
                i1 = n - 1
                s1 = ti.select(antisym_hi == 1, -real(1.0), real(1.0))
        return i0, i1, t, s0, s1

    @ti.func
    def ghost_mode(kind, axis, side, flags):
        # 1 where samples of a velocity component tangential to ``axis`` mirror with a minus sign
        tangential = ti.select(kind != 0 and kind != axis + 1, 1, 0)
        return tangential * bit(flags, 3 + 2 * axis + side)

    @ti.func
    def field_size(kind, axis, flags, n):
        # samples along ``axis`` of a field kind with n cells along it
        return ti.select(kind == axis + 1, n + 1 - bit(flags, axis), n)

    @ti.func
    def axis_sample(kind, axis, x, dx, flags, n):
        g = x / dx - ti.select(kind == axis + 1, real(0.0), real(0.5))
        return axis_stencil(g, field_size(kind, axis, flags, n), bit(flags, axis), ghost_mode(kind, axis, 0, flags),
                            ghost_mode(kind, axis, 1, flags))

    @ti.func
    def sample_field(f: ti.template(), kind, x, y, z, dx, flags, nx, ny,
                     nz):
        # trilinear sample of a cell (kind 0) or face (1, 2, 3) field at point (x, y, z) [m]
        i0, i1, tx, sx0, sx1 = axis_sample(kind, 0, x, dx, flags, nx)
        j0, j1, ty, sy0, sy1 = axis_sample(kind, 1, y, dx, flags, ny)
        k0, k1, tz, sz0, sz1 = axis_sample(kind, 2, z, dx, flags, nz)
        c00 = sz0 * f[i0, j0, k0] * (real(1.0) - tz) + sz1 * f[i0, j0, k1] * tz
        c01 = sz0 * f[i0, j1, k0] * (real(1.0) - tz) + sz1 * f[i0, j1, k1] * tz
        c10 = sz0 * f[i1, j0, k0] * (real(1.0) - tz) + sz1 * f[i1, j0, k1] * tz
        c11 = sz0 * f[i1, j1, k0] * (real(1.0) - tz) + sz1 * f[i1, j1, k1] * tz
        low = sy0 * c00 * (real(1.0) - ty) + sy1 * c01 * ty
        high = sy0 * c10 * (real(1.0) - ty) + sy1 * c11 * ty
        return sx0 * low * (real(1.0) - tx) + sx1 * high * tx

    @ti.func
    def sample_range(f: ti.template(), kind, x, y, z, dx, flags, nx, ny,
                     nz):
        # min and max of the eight (signed) samples the trilinear stencil at (x, y, z) reads
        i0, i1, tx, sx0, sx1 = axis_sample(kind, 0, x, dx, flags, nx)
        j0, j1, ty, sy0, sy1 = axis_sample(kind, 1, y, dx, flags, ny)
        k0, k1, tz, sz0, sz1 = axis_sample(kind, 2, z, dx, flags, nz)
        lo = sx0 * sy0 * sz0 * f[i0, j0, k0]
        hi = lo
        for corner in ti.static(range(1, 8)):
            a = corner & 1
            b = (corner >> 1) & 1
            c = (corner >> 2) & 1
            value = (ti.select(a == 1, sx1, sx0) * ti.select(b == 1, sy1, sy0) * ti.select(c == 1, sz1, sz0)
                     * f[ti.select(a == 1, i1, i0), ti.select(b == 1, j1, j0), ti.select(c == 1, k1, k0)])
            lo = ti.min(lo, value)
            hi = ti.max(hi, value)
        return lo, hi

    @ti.func
    def departure_point(u: ti.template(), v: ti.template(), w: ti.template(), x, y, z, dx, dt,
                        flags, nx, ny, nz):
        # trace (x, y, z) back over dt with the midpoint rule (RK2)
        u0 = sample_field(u, 1, x, y, z, dx, flags, nx, ny, nz)
        v0 = sample_field(v, 2, x, y, z, dx, flags, nx, ny, nz)
        w0 = sample_field(w, 3, x, y, z, dx, flags, nx, ny, nz)
        xm = x - real(0.5) * dt * u0
        ym = y - real(0.5) * dt * v0
        zm = z - real(0.5) * dt * w0
        um = sample_field(u, 1, xm, ym, zm, dx, flags, nx, ny, nz)
        vm = sample_field(v, 2, xm, ym, zm, dx, flags, nx, ny, nz)
        wm = sample_field(w, 3, xm, ym, zm, dx, flags, nx, ny, nz)
        return x - dt * um, y - dt * vm, z - dt * wm

    @ti.func
    def has_face(kind, i, j, k, flags, nx, ny, nz):
        # whether thread (i, j, k) of a (nx + 1, ny + 1, nz + 1) launch owns a face of this kind
        ok = i < field_size(kind, 0, flags, nx) and j < field_size(kind, 1, flags, ny)
        return ok and k < field_size(kind, 2, flags, nz)

    @ti.func
    def sample_position(kind, i, j, k, dx):
        # position of sample (i, j, k) of a field kind [m]
        x = (real(i) + ti.select(kind == 1, real(0.0), real(0.5))) * dx
        y = (real(j) + ti.select(kind == 2, real(0.0), real(0.5))) * dx
        z = (real(k) + ti.select(kind == 3, real(0.0), real(0.5))) * dx
        return x, y, z

    @ti.func
    def face_cells(i, n, periodic):
        # the two cells on either side of face i along an axis with n cells (clamped at edges)
        left = ti.select(periodic == 1, (i - 1 + n) % n, ti.max(i - 1, 0))
        right = ti.select(periodic == 1, i % n, ti.min(i, n - 1))
        return left, right

    @ti.func
    def cell_neighbours(i, n, periodic):
        # neighbours of cell i for a central difference and their distance in cells
        lo = ti.select(periodic == 1, (i - 1 + n) % n, ti.max(i - 1, 0))
        hi = ti.select(periodic == 1, (i + 1) % n, ti.min(i + 1, n - 1))
        span = ti.select(periodic == 1, real(2.0), real(hi - lo))
        return lo, hi, span

    @ti.func
    def face_average(q: ti.template(), axis, i, j, k, flags, n):
        # mean of the cell field q over the two cells beside face (i, j, k) normal to ``axis``
        left, right = face_cells(pick(axis, i, j, k), n, bit(flags, axis))
        a = q[pick(axis, left, i, i), pick(axis, j, left, j), pick(axis, k, k, left)]
        b = q[pick(axis, right, i, i), pick(axis, j, right, j), pick(axis, k, k, right)]
        return real(0.5) * (a + b)

    @ti.kernel
    def advect_scalar(q: array3, u: array3, v: array3, w: array3, dx: real, dt: real, flags: ti.i32, nx: ti.i32,
                      ny: ti.i32, nz: ti.i32, q_out: array3):
        # semi-Lagrangian: the new value is the old field at the departure point
        for i, j, k in ti.ndrange(nx, ny, nz):
            x, y, z = sample_position(0, i, j, k, dx)
            xd, yd, zd = departure_point(u, v, w, x, y, z, dx, dt, flags, nx, ny, nz)
            q_out[i, j, k] = sample_field(q, 0, xd, yd, zd, dx, flags, nx, ny, nz)

    @ti.func
    def advected_face(q: ti.template(), kind, u: ti.template(), v: ti.template(), w: ti.template(), i, j, k, dx,
                      dt, flags, nx, ny, nz):
        x, y, z = sample_position(kind, i, j, k, dx)
        xd, yd, zd = departure_point(u, v, w, x, y, z, dx, dt, flags, nx, ny, nz)
        return sample_field(q, kind, xd, yd, zd, dx, flags, nx, ny, nz)

    @ti.kernel
    def advect_velocity(qu: array3, qv: array3, qw: array3, u: array3, v: array3, w: array3, mask_u: array3,
                        mask_v: array3, mask_w: array3, dx: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, nz: ti.i32,
                        qu_out: array3, qv_out: array3, qw_out: array3):
        # semi-Lagrangian transport of the face fields (qu, qv, qw) by (u, v, w); solid faces get 0
        for i, j, k in ti.ndrange(nx + 1, ny + 1, nz + 1):
            if has_face(1, i, j, k, flags, nx, ny, nz):
                qu_out[i, j, k] = mask_u[i, j, k] * advected_face(qu, 1, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)
            if has_face(2, i, j, k, flags, nx, ny, nz):
                qv_out[i, j, k] = mask_v[i, j, k] * advected_face(qv, 2, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)
            if has_face(3, i, j, k, flags, nx, ny, nz):
                qw_out[i, j, k] = mask_w[i, j, k] * advected_face(qw, 3, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)

    @ti.func
    def corrected(q: ti.template(), forward: ti.template(), backward: ti.template(), kind, u: ti.template(),
                  v: ti.template(), w: ti.template(), i, j, k, dx, dt, flags, nx, ny, nz):
        # MacCormack: add half the round-trip error, clamped to the departure stencil's range
        x, y, z = sample_position(kind, i, j, k, dx)
        xd, yd, zd = departure_point(u, v, w, x, y, z, dx, dt, flags, nx, ny, nz)
        lo, hi = sample_range(q, kind, xd, yd, zd, dx, flags, nx, ny, nz)
        return clamp(forward[i, j, k] + real(0.5) * (q[i, j, k] - backward[i, j, k]), lo, hi)

    @ti.kernel
    def correct_scalar(q: array3, q_forward: array3, q_backward: array3, u: array3, v: array3, w: array3, dx: real,
                       dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, nz: ti.i32, q_out: array3):
        for i, j, k in ti.ndrange(nx, ny, nz):
            q_out[i, j, k] = corrected(q, q_forward, q_backward, 0, u, v, w, i, j, k, dx, dt, flags, nx, ny, nz)

    @ti.kernel
    def correct_velocity(u: array3, v: array3, w: array3, u_forward: array3, v_forward: array3, w_forward: array3,
                         u_backward: array3, v_backward: array3, w_backward: array3, mask_u: array3, mask_v: array3,
                         mask_w: array3, dx: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, nz: ti.i32, u_out: array3,
                         v_out: array3, w_out: array3):
        # MacCormack correction of the three face fields, each clamped to its departure stencil's range
        for i, j, k in ti.ndrange(nx + 1, ny + 1, nz + 1):
            if has_face(1, i, j, k, flags, nx, ny, nz):
                u_out[i, j, k] = mask_u[i, j, k] * corrected(u, u_forward, u_backward, 1, u, v, w, i, j, k, dx, dt, flags,
                                                             nx, ny, nz)
            if has_face(2, i, j, k, flags, nx, ny, nz):
                v_out[i, j, k] = mask_v[i, j, k] * corrected(v, v_forward, v_backward, 2, u, v, w, i, j, k, dx, dt, flags,
                                                             nx, ny, nz)
            if has_face(3, i, j, k, flags, nx, ny, nz):
                w_out[i, j, k] = mask_w[i, j, k] * corrected(w, w_forward, w_backward, 3, u, v, w, i, j, k, dx, dt, flags,
                                                             nx, ny, nz)

    @ti.func
    def minmod(a, b):
        return ti.select(a * b <= real(0.0), real(0.0), ti.select(ti.abs(a) < ti.abs(b), a, b))

    @ti.func
    def limited_slope(q: ti.template(), axis, i, j, k, periodic, n):
        lo, hi, span = cell_neighbours(pick(axis, i, j, k), n, periodic)
        c = q[i, j, k]
        below = q[pick(axis, lo, i, i), pick(axis, j, lo, j), pick(axis, k, k, lo)]
        above = q[pick(axis, hi, i, i), pick(axis, j, hi, j), pick(axis, k, k, hi)]
        return minmod(c - below, above - c)

    @ti.func
    def flux(q: ti.template(), velocity_field: ti.template(), area: ti.template(), axis, i, j, k, dx, dt,
             flags, n):
        # flux through face (i, j, k) normal to ``axis``: upwind cell value plus a minmod-limited,
        # Lax-Wendroff-weighted slope
        periodic = bit(flags, axis)
        index = pick(axis, i, j, k)
        face = ti.select(periodic == 1, index % n, index)
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
        lag = real(0.5) * (real(1.0) - ti.abs(velocity * dt / dx))
        from_left = q[li, lj, lk] + lag * limited_slope(q, axis, li, lj, lk, periodic, n)
        from_right = q[ri, rj, rk] - lag * limited_slope(q, axis, ri, rj, rk, periodic, n)
        return area[fi, fj, fk] * velocity * ti.select(velocity > real(0.0), from_left, from_right)

    @ti.kernel
    def advect_conservative(q: array3, u: array3, v: array3, w: array3, area_u: array3, area_v: array3,
                            area_w: array3, dx: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, nz: ti.i32,
                            q_out: array3):
        # flux form: each face flux is computed identically by both its cells, so mass is conserved
        for i, j, k in ti.ndrange(nx, ny, nz):
            net = (flux(q, u, area_u, 0, i, j, k, dx, dt, flags, nx) - flux(q, u, area_u, 0, i + 1, j, k, dx, dt, flags, nx)
                   + flux(q, v, area_v, 1, i, j, k, dx, dt, flags, ny) - flux(q, v, area_v, 1, i, j + 1, k, dx, dt, flags, ny)
                   + flux(q, w, area_w, 2, i, j, k, dx, dt, flags, nz) - flux(q, w, area_w, 2, i, j, k + 1, dx, dt, flags, nz))
            q_out[i, j, k] = q[i, j, k] + dt / dx * net

    @ti.kernel
    def add_buoyancy(u: array3, v: array3, w: array3, density: array3, acceleration_u: array3, acceleration_v: array3,
                     acceleration_w: array3, buoyancy: array1, up_x: real, up_y: real, up_z: real, dt: real,
                     flags: ti.i32, nx: ti.i32, ny: ti.i32, nz: ti.i32, u_out: array3, v_out: array3, w_out: array3):
        # buoyancy pushes density against gravity; external accelerations add on top
        for i, j, k in ti.ndrange(nx + 1, ny + 1, nz + 1):
            if has_face(1, i, j, k, flags, nx, ny, nz):
                rho = face_average(density, 0, i, j, k, flags, nx)
                u_out[i, j, k] = u[i, j, k] + dt * (buoyancy[0] * rho * up_x + acceleration_u[i, j, k])
            if has_face(2, i, j, k, flags, nx, ny, nz):
                rho = face_average(density, 1, i, j, k, flags, ny)
                v_out[i, j, k] = v[i, j, k] + dt * (buoyancy[0] * rho * up_y + acceleration_v[i, j, k])
            if has_face(3, i, j, k, flags, nx, ny, nz):
                rho = face_average(density, 2, i, j, k, flags, nz)
                w_out[i, j, k] = w[i, j, k] + dt * (buoyancy[0] * rho * up_z + acceleration_w[i, j, k])

    @ti.kernel
    def add_temperature_buoyancy(u: array3, v: array3, w: array3, temperature: array3, coefficient: array1,
                                 ambient: array1, up_x: real, up_y: real, up_z: real, dt: real, flags: ti.i32,
                                 nx: ti.i32, ny: ti.i32, nz: ti.i32, u_out: array3, v_out: array3, w_out: array3):
        # Boussinesq lift: coefficient * (T - T_ambient) against gravity, T averaged onto each face
        for i, j, k in ti.ndrange(nx + 1, ny + 1, nz + 1):
            if has_face(1, i, j, k, flags, nx, ny, nz):
                excess = face_average(temperature, 0, i, j, k, flags, nx) - ambient[0]
                u_out[i, j, k] = u[i, j, k] + dt * coefficient[0] * excess * up_x
            if has_face(2, i, j, k, flags, nx, ny, nz):
                excess = face_average(temperature, 1, i, j, k, flags, ny) - ambient[0]
                v_out[i, j, k] = v[i, j, k] + dt * coefficient[0] * excess * up_y
            if has_face(3, i, j, k, flags, nx, ny, nz):
                excess = face_average(temperature, 2, i, j, k, flags, nz) - ambient[0]
                w_out[i, j, k] = w[i, j, k] + dt * coefficient[0] * excess * up_z

    @ti.kernel
    def cool_temperature(temperature: array3, ambient: array1, rate: array1, dt: real, temperature_out: array3):
        # exact exponential relaxation towards the ambient temperature over dt
        for i, j, k in ti.ndrange(temperature.shape[0], temperature.shape[1], temperature.shape[2]):
            decay = ti.exp(-rate[0] * dt)
            temperature_out[i, j, k] = ambient[0] + (temperature[i, j, k] - ambient[0]) * decay

    @ti.func
    def cell_velocity(u: ti.template(), v: ti.template(), w: ti.template(), i, j, k, flags, nx, ny, nz):
        ip = ti.select(bit(flags, 0) == 1, (i + 1) % nx, i + 1)
        jp = ti.select(bit(flags, 1) == 1, (j + 1) % ny, j + 1)
        kp = ti.select(bit(flags, 2) == 1, (k + 1) % nz, k + 1)
        return real(0.5) * (u[i, j, k] + u[ip, j, k]), real(0.5) * (v[i, j, k] + v[i, jp, k]), real(0.5) * (w[i, j, k] + w[i, j, kp])

    @ti.kernel
    def curl(u: array3, v: array3, w: array3, dx: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, nz: ti.i32,
             vorticity_x: array3, vorticity_y: array3, vorticity_z: array3):
        # vorticity (dw/dy - dv/dz, du/dz - dw/dx, dv/dx - du/dy) at cell centres from cell-averaged velocities
        for i, j, k in ti.ndrange(nx, ny, nz):
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

    @ti.func
    def vorticity_norm(ox: ti.template(), oy: ti.template(), oz: ti.template(), i, j, k):
        a = ox[i, j, k]
        b = oy[i, j, k]
        c = oz[i, j, k]
        return ti.sqrt(a * a + b * b + c * c + real(1.0e-20))

    @ti.func
    def confinement_force(ox: ti.template(), oy: ti.template(), oz: ti.template(), i, j, k, dx, flags, nx,
                          ny, nz):
        # eps dx (N x omega) with N the unit gradient of |omega|
        il, ih, span_x = cell_neighbours(i, nx, bit(flags, 0))
        jl, jh, span_y = cell_neighbours(j, ny, bit(flags, 1))
        kl, kh, span_z = cell_neighbours(k, nz, bit(flags, 2))
        eta_x = (vorticity_norm(ox, oy, oz, ih, j, k) - vorticity_norm(ox, oy, oz, il, j, k)) / (span_x * dx)
        eta_y = (vorticity_norm(ox, oy, oz, i, jh, k) - vorticity_norm(ox, oy, oz, i, jl, k)) / (span_y * dx)
        eta_z = (vorticity_norm(ox, oy, oz, i, j, kh) - vorticity_norm(ox, oy, oz, i, j, kl)) / (span_z * dx)
        scale = dx / ti.sqrt(eta_x * eta_x + eta_y * eta_y + eta_z * eta_z + real(1.0e-20))
        a = ox[i, j, k]
        b = oy[i, j, k]
        c = oz[i, j, k]
        return (eta_y * c - eta_z * b) * scale, (eta_z * a - eta_x * c) * scale, (eta_x * b - eta_y * a) * scale

    @ti.func
    def face_confinement(ox: ti.template(), oy: ti.template(), oz: ti.template(), axis, i, j, k, dx, flags,
                         nx, ny, nz):
        # the ``axis`` component of the confinement force averaged from the two cells beside a face
        left, right = face_cells(pick(axis, i, j, k), pick(axis, nx, ny, nz), bit(flags, axis))
        ax, ay, az = confinement_force(ox, oy, oz, pick(axis, left, i, i), pick(axis, j, left, j),
                                       pick(axis, k, k, left), dx, flags, nx, ny, nz)
        bx, by, bz = confinement_force(ox, oy, oz, pick(axis, right, i, i), pick(axis, j, right, j),
                                       pick(axis, k, k, right), dx, flags, nx, ny, nz)
        return real(0.5) * ti.select(axis == 0, ax + bx, ti.select(axis == 1, ay + by, az + bz))

    @ti.kernel
    def confine_vorticity(u: array3, v: array3, w: array3, vorticity_x: array3, vorticity_y: array3,
                          vorticity_z: array3, strength: array1, dx: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32,
                          nz: ti.i32, u_out: array3, v_out: array3, w_out: array3):
        # vorticity confinement on every face
        for i, j, k in ti.ndrange(nx + 1, ny + 1, nz + 1):
            if has_face(1, i, j, k, flags, nx, ny, nz):
                force = face_confinement(vorticity_x, vorticity_y, vorticity_z, 0, i, j, k, dx, flags, nx, ny, nz)
                u_out[i, j, k] = u[i, j, k] + dt * strength[0] * force
            if has_face(2, i, j, k, flags, nx, ny, nz):
                force = face_confinement(vorticity_x, vorticity_y, vorticity_z, 1, i, j, k, dx, flags, nx, ny, nz)
                v_out[i, j, k] = v[i, j, k] + dt * strength[0] * force
            if has_face(3, i, j, k, flags, nx, ny, nz):
                force = face_confinement(vorticity_x, vorticity_y, vorticity_z, 2, i, j, k, dx, flags, nx, ny, nz)
                w_out[i, j, k] = w[i, j, k] + dt * strength[0] * force

    @ti.func
    def next_index(i, faces, periodic):
        # the far face of cell i along an axis with ``faces`` faces
        return ti.select(periodic == 1, (i + 1) % faces, i + 1)

    @ti.kernel
    def divergence(u: array3, v: array3, w: array3, weight_u: array3, weight_v: array3, weight_w: array3, dx: real,
                   flags: ti.i32, div: array3):
        # net outflow of the weighted face velocities per cell, divided by dx
        for i, j, k in ti.ndrange(div.shape[0], div.shape[1], div.shape[2]):
            ip = next_index(i, u.shape[0], bit(flags, 0))
            jp = next_index(j, v.shape[1], bit(flags, 1))
            kp = next_index(k, w.shape[2], bit(flags, 2))
            div[i, j, k] = (weight_u[ip, j, k] * u[ip, j, k] - weight_u[i, j, k] * u[i, j, k]
                            + weight_v[i, jp, k] * v[i, jp, k] - weight_v[i, j, k] * v[i, j, k]
                            + weight_w[i, j, kp] * w[i, j, kp] - weight_w[i, j, k] * w[i, j, k]) / dx

    @ti.func
    def neighbour_cell(p: ti.template(), i, j, k, di, dj, dk, flags):
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
        value = real(0.0)
        if ni >= 0 and ni < nx and nj >= 0 and nj < ny and nk >= 0 and nk < nz:
            value = p[ni, nj, nk]
        return value

    @ti.kernel
    def apply_pressure_operator(p: array3, area_u: array3, area_v: array3, area_w: array3, dx: real, flags: ti.i32,
                                out: array3):
        # matrix-free G^T A G p: area-weighted Laplacian (negated), Dirichlet 0 past open edges
        for i, j, k in ti.ndrange(out.shape[0], out.shape[1], out.shape[2]):
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

    @ti.kernel
    def pressure_diagonal(area_u: array3, area_v: array3, area_w: array3, dx: real, flags: ti.i32, out: array3):
        for i, j, k in ti.ndrange(out.shape[0], out.shape[1], out.shape[2]):
            ip = next_index(i, area_u.shape[0], bit(flags, 0))
            jp = next_index(j, area_v.shape[1], bit(flags, 1))
            kp = next_index(k, area_w.shape[2], bit(flags, 2))
            out[i, j, k] = (area_u[i, j, k] + area_u[ip, j, k] + area_v[i, j, k] + area_v[i, jp, k]
                            + area_w[i, j, k] + area_w[i, j, kp]) / (dx * dx)

    @ti.kernel
    def subtract_pressure_gradient(u: array3, v: array3, w: array3, p: array3, mask_u: array3, mask_v: array3,
                                   mask_w: array3, weight_u: array3, weight_v: array3, weight_w: array3, dx: real,
                                   flags: ti.i32, u_out: array3, v_out: array3, w_out: array3):
        # u_out = mask u - weight grad p (forward: weight = mask; adjoint: weight = face area)
        for i, j, k in ti.ndrange(v.shape[0] + 1, w.shape[1] + 1, u.shape[2] + 1):
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

    @ti.func
    def coupling(area: ti.template(), axis, i, j, k, scale, n):
        # matrix entry between cell (i, j, k) and its upper neighbour along ``axis``; wrap-around
        # couplings are left out of the factorisation
        index = pick(axis, i, j, k)
        value = real(0.0)
        if index >= 0 and index + 1 < n:
            value = -area[pick(axis, i + 1, i, i), pick(axis, j, j + 1, j), pick(axis, k, k, k + 1)] * scale
        return value

    @ti.kernel
    def factor_incomplete_cholesky(area_u: array3, area_v: array3, area_w: array3, dx: real, flags: ti.i32,
                                   precon: array3):
        # modified incomplete Cholesky MIC(0) of the pressure matrix, real(1.0) serial sweep (launch dim 1)
        nx = precon.shape[0]
        ny = precon.shape[1]
        nz = precon.shape[2]
        scale = real(1.0) / (dx * dx)
        tau = real(0.97)
        sigma = real(0.25)
        ti.loop_config(serialize=True)
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
                    value = real(0.0)
                    if diag > real(0.0):
                        value = real(1.0) / ti.sqrt(e)
                    precon[i, j, k] = value

    @ti.kernel
    def apply_incomplete_cholesky(r: array3, area_u: array3, area_v: array3, area_w: array3, precon: array3,
                                  dx: real, q: array3, z: array3):
        # z = (L L^T)^-1 r by a forward and a backward triangular sweep (serial)
        nx = r.shape[0]
        ny = r.shape[1]
        nz = r.shape[2]
        scale = real(1.0) / (dx * dx)
        ti.loop_config(serialize=True)
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
        ti.loop_config(serialize=True)
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

    @ti.func
    def face_neighbour(x: ti.template(), mask: ti.template(), i, j, k, axis, step, periodic,
                       no_slip):
        # one Laplacian term (self - neighbour) and its diagonal weight; a missing neighbour is a
        # no-slip ghost (-self, weight 2) when no_slip, else no term (zero gradient)
        n = pick(axis, x.shape[0], x.shape[1], x.shape[2])
        m = pick(axis, i, j, k) + step
        if periodic == 1:
            m = (m + n) % n
        value = real(0.0)
        weight = real(0.0)
        if m >= 0 and m < n:
            ni = pick(axis, m, i, i)
            nj = pick(axis, j, m, j)
            nk = pick(axis, k, k, m)
            value = x[i, j, k] - mask[ni, nj, nk] * x[ni, nj, nk]
            weight = real(1.0)
        elif no_slip == 1:
            value = real(2.0) * x[i, j, k]
            weight = real(2.0)
        return value, weight

    @ti.func
    def face_laplacian(x: ti.template(), mask: ti.template(), i, j, k, kind, flags):
        # sum over the six neighbours of (self - neighbour) for the viscous operator, and its diagonal
        total = real(0.0)
        diagonal = real(0.0)
        for axis in ti.static(range(3)):
            for side in ti.static(range(2)):
                value, weight = face_neighbour(x, mask, i, j, k, axis, 2 * side - 1, bit(flags, axis),
                                               ghost_mode(kind, axis, side, flags))
                total = total + value
                diagonal = diagonal + weight
        return total, diagonal

    @ti.func
    def owns(x: ti.template(), i, j, k):
        return i < x.shape[0] and j < x.shape[1] and k < x.shape[2]

    @ti.kernel
    def apply_diffusion_operator(xu: array3, xv: array3, xw: array3, mask_u: array3, mask_v: array3, mask_w: array3,
                                 alpha: real, beta: real, dx: real, flags: ti.i32, out_u: array3, out_v: array3,
                                 out_w: array3):
        # alpha x + beta K x on free faces (K: negated face Laplacian), alpha x on solid faces
        for i, j, k in ti.ndrange(xv.shape[0] + 1, xw.shape[1] + 1, xu.shape[2] + 1):
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

    @ti.kernel
    def diffusion_diagonal(xu: array3, xv: array3, xw: array3, mask_u: array3, mask_v: array3, mask_w: array3,
                           alpha: real, beta: real, dx: real, flags: ti.i32, out_u: array3, out_v: array3,
                           out_w: array3):
        for i, j, k in ti.ndrange(xv.shape[0] + 1, xw.shape[1] + 1, xu.shape[2] + 1):
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
    import taichi as ti

    array3 = ti.types.ndarray(dtype=real, ndim=3)
    array2 = ti.types.ndarray(dtype=real, ndim=2)
    array1 = ti.types.ndarray(dtype=real, ndim=1)

    @ti.func
    def smooth_coverage(e):
        # C1 ramp from 0 to 1 over one cell across the shape's edge
        s = ti.min(ti.max(e + real(0.5), real(0.0)), real(1.0))
        return s * s * (real(3.0) - real(2.0) * s)

    @ti.func
    def coverage(x, y, z, center: ti.template(), size: ti.template(), is_box: ti.template(), s, dx):
        ox = x - center[s, 0]
        oy = y - center[s, 1]
        oz = z - center[s, 2]
        distance = ti.sqrt(ox * ox + oy * oy + oz * oz + real(1.0e-20))
        sphere = smooth_coverage((size[s, 0] - distance) / dx)
        box = (smooth_coverage((size[s, 0] - ti.abs(ox)) / dx) * smooth_coverage((size[s, 1] - ti.abs(oy)) / dx)
               * smooth_coverage((size[s, 2] - ti.abs(oz)) / dx))
        return is_box[s] * box + (real(1.0) - is_box[s]) * sphere

    @ti.kernel
    def add_inflow(density: array3, center: array2, size: array2, rate: array1, is_box: array1, dx: real, dt: real,
                   density_out: array3):
        # sources add rate * coverage * dt; soft coverage makes the amount smooth in the centre
        for i, j, k in ti.ndrange(density.shape[0], density.shape[1], density.shape[2]):
            x = (real(i) + real(0.5)) * dx
            y = (real(j) + real(0.5)) * dx
            z = (real(k) + real(0.5)) * dx
            total = real(0.0)
            for s in ti.static(range(source_count)):
                total = total + rate[s] * coverage(x, y, z, center, size, is_box, s, dx)
            density_out[i, j, k] = density[i, j, k] + dt * total

    @ti.kernel
    def heat_inflow(temperature: array3, center: array2, size: array2, source_temperature: array1, heats: array1,
                    is_box: array1, dx: real, temperature_out: array3):
        # each heating source (heats = 1) holds its temperature inside its shape, blended by the soft coverage
        for i, j, k in ti.ndrange(temperature.shape[0], temperature.shape[1], temperature.shape[2]):
            x = (real(i) + real(0.5)) * dx
            y = (real(j) + real(0.5)) * dx
            z = (real(k) + real(0.5)) * dx
            value = temperature[i, j, k]
            for s in ti.static(range(source_count)):
                weight = heats[s] * coverage(x, y, z, center, size, is_box, s, dx)
                value = value + weight * (source_temperature[s] - value)
            temperature_out[i, j, k] = value

    return SimpleNamespace(add_inflow=add_inflow, heat_inflow=heat_inflow)
