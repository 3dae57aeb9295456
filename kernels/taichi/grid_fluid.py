"""Taichi kernels for the 2D Eulerian smoke solver: the numerics of kernels/warp/grid_fluid.py.

Same layout, boundary ``flags`` bits, kernel names and arithmetic order as the Warp module (read
its docstring first). Arrays are torch tensors passed as external ndarrays; every literal is
written ``real(...)``, which Taichi turns into an exact constant of the kernel's precision.
"""

import functools
from types import SimpleNamespace


@functools.cache
def grid_fluid_kernels(real):
    """Return the grid-fluid kernels for scalar type ``real`` (ti.f32/ti.f64)."""
    import taichi as ti

    array2 = ti.types.ndarray(dtype=real, ndim=2)
    array1 = ti.types.ndarray(dtype=real, ndim=1)

    @ti.func
    def bit(flags, index):
        return (flags >> index) & 1

    @ti.func
    def axis_stencil(g, n, periodic, antisym_lo, antisym_hi):
        # linear interpolation along one axis at sample coordinate g: lower/upper indices, the
        # upper weight t and the signs of the two samples (-1 for a no-slip ghost)
        nr = real(n)
        g_used = g
        if periodic == 1:  # a branch, not a select: the wrap's division only where it is needed
            g_used = g - nr * ti.floor(g / nr)
        else:
            lo = ti.select(antisym_lo == 1, real(-0.5), real(0.0))
            hi = ti.select(antisym_hi == 1, nr - real(0.5), nr - real(1.0))
            g_used = ti.min(ti.max(g, lo), hi)
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
    def field_modes(kind, flags):
        # (ghost sign lo/hi along x, along y) of a field kind: tangential velocity at no-slip walls
        ax_lo = ti.select(kind == 2, bit(flags, 4), 0)
        ax_hi = ti.select(kind == 2, bit(flags, 5), 0)
        ay_lo = ti.select(kind == 1, bit(flags, 2), 0)
        ay_hi = ti.select(kind == 1, bit(flags, 3), 0)
        return ax_lo, ax_hi, ay_lo, ay_hi

    @ti.func
    def field_size(kind, flags, nx, ny):
        # samples along x and y of a field kind (from the cell counts, as in the Warp module)
        sx = ti.select(kind == 1, nx + 1 - bit(flags, 0), nx)
        sy = ti.select(kind == 2, ny + 1 - bit(flags, 1), ny)
        return sx, sy

    @ti.func
    def sample_coords(kind, x, y):
        # stencil coordinates of a field kind at (x, y) in cell units (position / dx)
        gx = x - ti.select(kind == 1, real(0.0), real(0.5))
        gy = y - ti.select(kind == 2, real(0.0), real(0.5))
        return gx, gy

    @ti.func
    def stencil(kind, x, y, flags, nx, ny):
        # the bilinear stencil of a cell (kind 0), x-face (1) or y-face (2) field at (x, y) in cell
        # units: per axis the two indices, the upper weight and the samples' signs
        gx, gy = sample_coords(kind, x, y)
        ax_lo, ax_hi, ay_lo, ay_hi = field_modes(kind, flags)
        size_x, size_y = field_size(kind, flags, nx, ny)
        i0, i1, tx, sx0, sx1 = axis_stencil(gx, size_x, bit(flags, 0), ax_lo, ax_hi)
        j0, j1, ty, sy0, sy1 = axis_stencil(gy, size_y, bit(flags, 1), ay_lo, ay_hi)
        return i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1

    @ti.func
    def interpolate(f: ti.template(), i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1):
        one = real(1.0)
        low = sy0 * f[i0, j0] * (one - ty) + sy1 * f[i0, j1] * ty
        high = sy0 * f[i1, j0] * (one - ty) + sy1 * f[i1, j1] * ty
        return sx0 * low * (one - tx) + sx1 * high * tx

    @ti.func
    def stencil_range(f: ti.template(), i0, i1, sx0, sx1, j0, j1, sy0, sy1):
        # min and max of the four (signed) samples a stencil reads
        a = sx0 * sy0 * f[i0, j0]
        b = sx0 * sy1 * f[i0, j1]
        c = sx1 * sy0 * f[i1, j0]
        d = sx1 * sy1 * f[i1, j1]
        return ti.min(ti.min(a, b), ti.min(c, d)), ti.max(ti.max(a, b), ti.max(c, d))

    @ti.func
    def sample_field(f: ti.template(), kind, x, y, flags, nx, ny):
        # bilinear sample of field f of a kind at (x, y) in cell units
        i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(kind, x, y, flags, nx, ny)
        return interpolate(f, i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1)

    @ti.func
    def sample_range(f: ti.template(), kind, x, y, flags, nx, ny):
        # min and max of the four (signed) samples the bilinear stencil at (x, y) reads
        i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(kind, x, y, flags, nx, ny)
        return stencil_range(f, i0, i1, sx0, sx1, j0, j1, sy0, sy1)

    @ti.func
    def cell_departure_point(u: ti.template(), v: ti.template(), i, j, c, flags, nx, ny):
        # trace the centre of cell (i, j) [cells] back over dt with the midpoint rule (RK2); c = dt / dx.
        # The first velocity sample sits on the grid (weights 1/2 between the faces beside the cell)
        ip = ti.select(bit(flags, 0) == 1, (i + 1) % nx, i + 1)
        jp = ti.select(bit(flags, 1) == 1, (j + 1) % ny, j + 1)
        x = real(i) + real(0.5)
        y = real(j) + real(0.5)
        xm = x - real(0.5) * c * (u[i, j] * real(0.5) + u[ip, j] * real(0.5))
        ym = y - real(0.5) * c * (v[i, j] * real(0.5) + v[i, jp] * real(0.5))
        um = sample_field(u, 1, xm, ym, flags, nx, ny)
        vm = sample_field(v, 2, xm, ym, flags, nx, ny)
        return x - c * um, y - c * vm

    @ti.func
    def face_position(axis, i, j):
        # an x-face (axis 1) or y-face (axis 2) centre in cell units
        return real(i) + ti.select(axis == 1, real(0.0), real(0.5)), real(j) + ti.select(axis == 2, real(0.0),
                                                                                             real(0.5))

    @ti.func
    def face_departure_point(u: ti.template(), v: ti.template(), axis, i, j, c, flags, nx, ny):
        # the same from x-face (axis 1) or y-face (axis 2) (i, j): the face's own velocity component
        # is its value there, read directly; the other one is interpolated
        x, y = face_position(axis, i, j)
        u0 = real(0.0)
        v0 = real(0.0)
        if axis == 1:
            u0 = u[i, j]
            v0 = sample_field(v, 2, x, y, flags, nx, ny)
        else:
            u0 = sample_field(u, 1, x, y, flags, nx, ny)
            v0 = v[i, j]
        xm = x - real(0.5) * c * u0
        ym = y - real(0.5) * c * v0
        um = sample_field(u, 1, xm, ym, flags, nx, ny)
        vm = sample_field(v, 2, xm, ym, flags, nx, ny)
        return x - c * um, y - c * vm

    @ti.func
    def advected_face(q: ti.template(), u: ti.template(), v: ti.template(), mask: ti.template(), axis, i, j, c,
                      flags, nx, ny):
        # semi-Lagrangian value of face field q (kind ``axis``) at face (i, j); 0 on solid faces
        xd, yd = face_departure_point(u, v, axis, i, j, c, flags, nx, ny)
        return mask[i, j] * sample_field(q, axis, xd, yd, flags, nx, ny)

    @ti.func
    def corrected_face(q: ti.template(), q_forward: ti.template(), q_backward: ti.template(), u: ti.template(),
                       v: ti.template(), mask: ti.template(), axis, i, j, c, flags, nx, ny):
        # MacCormack correction of face field q at face (i, j), clamped to the departure stencil's range
        xd, yd = face_departure_point(u, v, axis, i, j, c, flags, nx, ny)
        lo, hi = sample_range(q, axis, xd, yd, flags, nx, ny)
        corrected = q_forward[i, j] + real(0.5) * (q[i, j] - q_backward[i, j])
        return mask[i, j] * ti.min(ti.max(corrected, lo), hi)

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

    @ti.kernel
    def advect_scalar(q: array2, u: array2, v: array2, dx: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32,
                      q_out: array2):
        # semi-Lagrangian: the new value is the old field at the departure point
        for i, j in ti.ndrange(nx, ny):
            xd, yd = cell_departure_point(u, v, i, j, dt / dx, flags, nx, ny)
            q_out[i, j] = sample_field(q, 0, xd, yd, flags, nx, ny)

    @ti.kernel
    def advect_velocity(qu: array2, qv: array2, u: array2, v: array2, mask_u: array2, mask_v: array2, dx: real,
                        dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32,
                        qu_out: array2, qv_out: array2):
        # semi-Lagrangian transport of the face fields (qu, qv) by the velocity (u, v); solid faces get 0
        for i, j in ti.ndrange(nx + 1, ny + 1):
            c = dt / dx
            if i < nx + 1 - bit(flags, 0) and j < ny:
                qu_out[i, j] = advected_face(qu, u, v, mask_u, 1, i, j, c, flags, nx, ny)
            if i < nx and j < ny + 1 - bit(flags, 1):
                qv_out[i, j] = advected_face(qv, u, v, mask_v, 2, i, j, c, flags, nx, ny)

    @ti.kernel
    def correct_scalar(q: array2, q_forward: array2, q_backward: array2, u: array2, v: array2, dx: real,
                       dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, q_out: array2):
        # MacCormack: add half the round-trip error, clamped to the departure stencil's range
        for i, j in ti.ndrange(nx, ny):
            xd, yd = cell_departure_point(u, v, i, j, dt / dx, flags, nx, ny)
            lo, hi = sample_range(q, 0, xd, yd, flags, nx, ny)
            corrected = q_forward[i, j] + real(0.5) * (q[i, j] - q_backward[i, j])
            q_out[i, j] = ti.min(ti.max(corrected, lo), hi)

    @ti.kernel
    def correct_velocity(u: array2, v: array2, u_forward: array2, v_forward: array2, u_backward: array2,
                         v_backward: array2, mask_u: array2, mask_v: array2, dx: real, dt: real, flags: ti.i32,
                         nx: ti.i32, ny: ti.i32, u_out: array2, v_out: array2):
        # MacCormack correction of both face fields, clamped to each departure stencil's range
        for i, j in ti.ndrange(nx + 1, ny + 1):
            c = dt / dx
            if i < nx + 1 - bit(flags, 0) and j < ny:
                u_out[i, j] = corrected_face(u, u_forward, u_backward, u, v, mask_u, 1, i, j, c, flags, nx, ny)
            if i < nx and j < ny + 1 - bit(flags, 1):
                v_out[i, j] = corrected_face(v, v_forward, v_backward, u, v, mask_v, 2, i, j, c, flags, nx, ny)

    # -- forward-only fusions (the no-grad step uses them; results bit for bit those of the kernels
    # -- above): MacCormack in two launches instead of three, velocity transport + buoyancy in one

    @ti.kernel
    def maccormack_scalar_forward(q: array2, u: array2, v: array2, dx: real, dt: real, flags: ti.i32, nx: ti.i32,
                                  ny: ti.i32, q_forward: array2, q_lo: array2, q_hi: array2):
        # the forward semi-Lagrangian pass and the limiter's range from one departure point
        for i, j in ti.ndrange(nx, ny):
            xd, yd = cell_departure_point(u, v, i, j, dt / dx, flags, nx, ny)
            i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(0, xd, yd, flags, nx, ny)
            q_forward[i, j] = interpolate(q, i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1)
            lo, hi = stencil_range(q, i0, i1, sx0, sx1, j0, j1, sy0, sy1)
            q_lo[i, j] = lo
            q_hi[i, j] = hi

    @ti.kernel
    def maccormack_scalar_correct(q: array2, q_forward: array2, q_lo: array2, q_hi: array2, u: array2, v: array2,
                                  dx: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, q_out: array2):
        # the backward pass (by -dt) and the clamped correction
        for i, j in ti.ndrange(nx, ny):
            xd, yd = cell_departure_point(u, v, i, j, -dt / dx, flags, nx, ny)
            q_backward = sample_field(q_forward, 0, xd, yd, flags, nx, ny)
            corrected = q_forward[i, j] + real(0.5) * (q[i, j] - q_backward)
            q_out[i, j] = ti.min(ti.max(corrected, q_lo[i, j]), q_hi[i, j])

    @ti.func
    def advected_face_range(q: ti.template(), u: ti.template(), v: ti.template(), mask: ti.template(), axis, i, j,
                            c, flags, nx, ny):
        # advected_face and the limiter's range (sample_range of q) from one departure point and stencil
        xd, yd = face_departure_point(u, v, axis, i, j, c, flags, nx, ny)
        i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(axis, xd, yd, flags, nx, ny)
        lo, hi = stencil_range(q, i0, i1, sx0, sx1, j0, j1, sy0, sy1)
        return mask[i, j] * interpolate(q, i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1), lo, hi

    @ti.func
    def maccormack_face(q: ti.template(), q_forward: ti.template(), q_lo: ti.template(), q_hi: ti.template(),
                        u: ti.template(), v: ti.template(), mask: ti.template(), axis, i, j, c, flags, nx, ny):
        # the backward pass (by -dt) and the clamped correction of face (i, j)
        q_backward = advected_face(q_forward, u, v, mask, axis, i, j, -c, flags, nx, ny)
        corrected = q_forward[i, j] + real(0.5) * (q[i, j] - q_backward)
        return mask[i, j] * ti.min(ti.max(corrected, q_lo[i, j]), q_hi[i, j])

    @ti.kernel
    def maccormack_velocity_forward(u: array2, v: array2, mask_u: array2, mask_v: array2, dx: real, dt: real,
                                    flags: ti.i32, nx: ti.i32, ny: ti.i32, u_forward: array2, v_forward: array2,
                                    u_lo: array2, u_hi: array2, v_lo: array2, v_hi: array2):
        # the forward pass of both face fields and the limiter's ranges (advect_velocity + correct_velocity's)
        for i, j in ti.ndrange(nx + 1, ny + 1):
            c = dt / dx
            if i < nx + 1 - bit(flags, 0) and j < ny:
                value, lo, hi = advected_face_range(u, u, v, mask_u, 1, i, j, c, flags, nx, ny)
                u_forward[i, j] = value
                u_lo[i, j] = lo
                u_hi[i, j] = hi
            if i < nx and j < ny + 1 - bit(flags, 1):
                value, lo, hi = advected_face_range(v, u, v, mask_v, 2, i, j, c, flags, nx, ny)
                v_forward[i, j] = value
                v_lo[i, j] = lo
                v_hi[i, j] = hi

    @ti.kernel
    def maccormack_velocity_correct(u: array2, v: array2, u_forward: array2, v_forward: array2, u_lo: array2,
                                    u_hi: array2, v_lo: array2, v_hi: array2, mask_u: array2, mask_v: array2,
                                    dx: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, u_out: array2,
                                    v_out: array2):
        # the backward pass and the clamped correction of both face fields
        for i, j in ti.ndrange(nx + 1, ny + 1):
            c = dt / dx
            if i < nx + 1 - bit(flags, 0) and j < ny:
                u_out[i, j] = maccormack_face(u, u_forward, u_lo, u_hi, u, v, mask_u, 1, i, j, c, flags, nx, ny)
            if i < nx and j < ny + 1 - bit(flags, 1):
                v_out[i, j] = maccormack_face(v, v_forward, v_lo, v_hi, u, v, mask_v, 2, i, j, c, flags, nx, ny)

    @ti.func
    def minmod(a, b):
        return ti.select(a * b <= real(0.0), real(0.0), ti.select(ti.abs(a) < ti.abs(b), a, b))

    @ti.func
    def limited_slope_x(q: ti.template(), i, j, periodic, nx):
        lo, hi, span = cell_neighbours(i, nx, periodic)
        return minmod(q[i, j] - q[lo, j], q[hi, j] - q[i, j])

    @ti.func
    def limited_slope_y(q: ti.template(), i, j, periodic, ny):
        lo, hi, span = cell_neighbours(j, ny, periodic)
        return minmod(q[i, j] - q[i, lo], q[i, hi] - q[i, j])

    @ti.func
    def flux_x(q: ti.template(), u: ti.template(), area_u: ti.template(), i, j, dx, dt, flags, nx):
        # flux through x-face i: upwind cell value plus a minmod-limited, Lax-Wendroff-weighted slope
        periodic = bit(flags, 0)
        face = ti.select(periodic == 1, i % nx, i)
        left, right = face_cells(i, nx, periodic)
        velocity = u[face, j]
        lag = real(0.5) * (real(1.0) - ti.abs(velocity * dt / dx))
        from_left = q[left, j] + lag * limited_slope_x(q, left, j, periodic, nx)
        from_right = q[right, j] - lag * limited_slope_x(q, right, j, periodic, nx)
        return area_u[face, j] * velocity * ti.select(velocity > real(0.0), from_left, from_right)

    @ti.func
    def flux_y(q: ti.template(), v: ti.template(), area_v: ti.template(), i, j, dx, dt, flags, ny):
        periodic = bit(flags, 1)
        face = ti.select(periodic == 1, j % ny, j)
        below, above = face_cells(j, ny, periodic)
        velocity = v[i, face]
        lag = real(0.5) * (real(1.0) - ti.abs(velocity * dt / dx))
        from_below = q[i, below] + lag * limited_slope_y(q, i, below, periodic, ny)
        from_above = q[i, above] - lag * limited_slope_y(q, i, above, periodic, ny)
        return area_v[i, face] * velocity * ti.select(velocity > real(0.0), from_below, from_above)

    @ti.kernel
    def advect_conservative(q: array2, u: array2, v: array2, area_u: array2, area_v: array2, dx: real,
                            dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, q_out: array2):
        # flux form: each face flux is computed identically by both its cells, so mass is conserved
        for i, j in ti.ndrange(nx, ny):
            net = (flux_x(q, u, area_u, i, j, dx, dt, flags, nx) - flux_x(q, u, area_u, i + 1, j, dx, dt, flags, nx)
                   + flux_y(q, v, area_v, i, j, dx, dt, flags, ny) - flux_y(q, v, area_v, i, j + 1, dx, dt, flags, ny))
            q_out[i, j] = q[i, j] + dt / dx * net

    @ti.func
    def lift_x(density: ti.template(), acceleration_u: ti.template(), buoyancy: ti.template(), i, j, up_x, dt,
               flags, nx):
        # velocity change of x-face (i, j) over dt: buoyancy of the face's density plus the acceleration
        left, right = face_cells(i, nx, bit(flags, 0))
        rho = real(0.5) * (density[left, j] + density[right, j])
        return dt * (buoyancy[0] * rho * up_x + acceleration_u[i, j])

    @ti.func
    def lift_y(density: ti.template(), acceleration_v: ti.template(), buoyancy: ti.template(), i, j, up_y, dt,
               flags, ny):
        below, above = face_cells(j, ny, bit(flags, 1))
        rho = real(0.5) * (density[i, below] + density[i, above])
        return dt * (buoyancy[0] * rho * up_y + acceleration_v[i, j])

    @ti.kernel
    def add_buoyancy(u: array2, v: array2, density: array2, acceleration_u: array2, acceleration_v: array2,
                     buoyancy: array1, up_x: real, up_y: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32,
                     u_out: array2, v_out: array2):
        # buoyancy pushes density against gravity; external accelerations add on top
        for i, j in ti.ndrange(nx + 1, ny + 1):
            if i < nx + 1 - bit(flags, 0) and j < ny:
                u_out[i, j] = u[i, j] + lift_x(density, acceleration_u, buoyancy, i, j, up_x, dt, flags, nx)
            if i < nx and j < ny + 1 - bit(flags, 1):
                v_out[i, j] = v[i, j] + lift_y(density, acceleration_v, buoyancy, i, j, up_y, dt, flags, ny)

    @ti.kernel
    def advect_velocity_buoyancy(u: array2, v: array2, mask_u: array2, mask_v: array2, density: array2,
                                 acceleration_u: array2, acceleration_v: array2, buoyancy: array1, dx: real,
                                 dt: real, up_x: real, up_y: real, flags: ti.i32, nx: ti.i32, ny: ti.i32,
                                 u_out: array2, v_out: array2):
        # forward-only fusion of advect_velocity (u, v by themselves) and add_buoyancy (of the advected density)
        for i, j in ti.ndrange(nx + 1, ny + 1):
            c = dt / dx
            if i < nx + 1 - bit(flags, 0) and j < ny:
                u_out[i, j] = (advected_face(u, u, v, mask_u, 1, i, j, c, flags, nx, ny)
                               + lift_x(density, acceleration_u, buoyancy, i, j, up_x, dt, flags, nx))
            if i < nx and j < ny + 1 - bit(flags, 1):
                v_out[i, j] = (advected_face(v, u, v, mask_v, 2, i, j, c, flags, nx, ny)
                               + lift_y(density, acceleration_v, buoyancy, i, j, up_y, dt, flags, ny))

    @ti.kernel
    def add_temperature_buoyancy(u: array2, v: array2, temperature: array2, coefficient: array1, ambient: array1,
                                 up_x: real, up_y: real, dt: real, flags: ti.i32, nx: ti.i32, ny: ti.i32,
                                 u_out: array2, v_out: array2):
        # Boussinesq lift: coefficient * (T - T_ambient) against gravity, T averaged onto each face
        for i, j in ti.ndrange(nx + 1, ny + 1):
            if i < nx + 1 - bit(flags, 0) and j < ny:
                left, right = face_cells(i, nx, bit(flags, 0))
                excess = real(0.5) * (temperature[left, j] + temperature[right, j]) - ambient[0]
                u_out[i, j] = u[i, j] + dt * coefficient[0] * excess * up_x
            if i < nx and j < ny + 1 - bit(flags, 1):
                below, above = face_cells(j, ny, bit(flags, 1))
                excess = real(0.5) * (temperature[i, below] + temperature[i, above]) - ambient[0]
                v_out[i, j] = v[i, j] + dt * coefficient[0] * excess * up_y

    @ti.kernel
    def cool_temperature(temperature: array2, ambient: array1, rate: array1, dt: real, temperature_out: array2):
        # exact exponential relaxation towards the ambient temperature over dt
        for i, j in ti.ndrange(temperature.shape[0], temperature.shape[1]):
            decay = ti.exp(-rate[0] * dt)
            temperature_out[i, j] = ambient[0] + (temperature[i, j] - ambient[0]) * decay

    @ti.func
    def cell_velocity(u: ti.template(), v: ti.template(), i, j, flags, nx, ny):
        ip = ti.select(bit(flags, 0) == 1, (i + 1) % nx, i + 1)
        jp = ti.select(bit(flags, 1) == 1, (j + 1) % ny, j + 1)
        return real(0.5) * (u[i, j] + u[ip, j]), real(0.5) * (v[i, j] + v[i, jp])

    @ti.kernel
    def curl(u: array2, v: array2, dx: real, flags: ti.i32, nx: ti.i32, ny: ti.i32, vorticity: array2):
        # vorticity dv/dx - du/dy at cell centres from cell-averaged velocities
        for i, j in ti.ndrange(nx, ny):
            il, ih, span_x = cell_neighbours(i, nx, bit(flags, 0))
            jl, jh, span_y = cell_neighbours(j, ny, bit(flags, 1))
            ul, vl = cell_velocity(u, v, il, j, flags, nx, ny)
            uh, vh = cell_velocity(u, v, ih, j, flags, nx, ny)
            ub, vb = cell_velocity(u, v, i, jl, flags, nx, ny)
            ut, vt = cell_velocity(u, v, i, jh, flags, nx, ny)
            vorticity[i, j] = (vh - vl) / (span_x * dx) - (ut - ub) / (span_y * dx)

    @ti.func
    def confinement_force(vorticity: ti.template(), i, j, dx, flags, nx, ny):
        # eps dx (N x omega) with N the unit gradient of |omega|
        il, ih, span_x = cell_neighbours(i, nx, bit(flags, 0))
        jl, jh, span_y = cell_neighbours(j, ny, bit(flags, 1))
        eta_x = (ti.abs(vorticity[ih, j]) - ti.abs(vorticity[il, j])) / (span_x * dx)
        eta_y = (ti.abs(vorticity[i, jh]) - ti.abs(vorticity[i, jl])) / (span_y * dx)
        norm = ti.sqrt(eta_x * eta_x + eta_y * eta_y + real(1.0e-20))
        w = vorticity[i, j] * dx / norm
        return eta_y * w, -eta_x * w

    @ti.kernel
    def confine_vorticity(u: array2, v: array2, vorticity: array2, strength: array1, dx: real, dt: real,
                          flags: ti.i32, nx: ti.i32, ny: ti.i32, u_out: array2, v_out: array2):
        # vorticity confinement, averaged from the two cells beside each face
        for i, j in ti.ndrange(nx + 1, ny + 1):
            if i < nx + 1 - bit(flags, 0) and j < ny:
                left, right = face_cells(i, nx, bit(flags, 0))
                fl_x, fl_y = confinement_force(vorticity, left, j, dx, flags, nx, ny)
                fr_x, fr_y = confinement_force(vorticity, right, j, dx, flags, nx, ny)
                u_out[i, j] = u[i, j] + dt * strength[0] * real(0.5) * (fl_x + fr_x)
            if i < nx and j < ny + 1 - bit(flags, 1):
                below, above = face_cells(j, ny, bit(flags, 1))
                fb_x, fb_y = confinement_force(vorticity, i, below, dx, flags, nx, ny)
                fa_x, fa_y = confinement_force(vorticity, i, above, dx, flags, nx, ny)
                v_out[i, j] = v[i, j] + dt * strength[0] * real(0.5) * (fb_y + fa_y)

    @ti.kernel
    def divergence(u: array2, v: array2, weight_u: array2, weight_v: array2, dx: real, flags: ti.i32,
                   div: array2):
        # net outflow of the weighted face velocities per cell, divided by dx
        for i, j in ti.ndrange(div.shape[0], div.shape[1]):
            ip = ti.select(bit(flags, 0) == 1, (i + 1) % u.shape[0], i + 1)
            jp = ti.select(bit(flags, 1) == 1, (j + 1) % v.shape[1], j + 1)
            div[i, j] = (weight_u[ip, j] * u[ip, j] - weight_u[i, j] * u[i, j]
                         + weight_v[i, jp] * v[i, jp] - weight_v[i, j] * v[i, j]) / dx

    @ti.func
    def neighbour_cell(p: ti.template(), i, j, di, dj, flags):
        # pressure of the cell beyond a face: wrapped if periodic, 0 past an open edge
        ni = i + di
        nj = j + dj
        nx = p.shape[0]
        ny = p.shape[1]
        if bit(flags, 0) == 1:
            ni = (ni + nx) % nx
        if bit(flags, 1) == 1:
            nj = (nj + ny) % ny
        value = real(0.0)
        if ni >= 0 and ni < nx and nj >= 0 and nj < ny:
            value = p[ni, nj]
        return value

    @ti.kernel
    def apply_pressure_operator(p: array2, area_u: array2, area_v: array2, dx: real, flags: ti.i32,
                                out: array2):
        # matrix-free G^T A G p: area-weighted Laplacian (negated), Dirichlet 0 past open edges
        for i, j in ti.ndrange(out.shape[0], out.shape[1]):
            ip = ti.select(bit(flags, 0) == 1, (i + 1) % area_u.shape[0], i + 1)
            jp = ti.select(bit(flags, 1) == 1, (j + 1) % area_v.shape[1], j + 1)
            c = p[i, j]
            total = (area_u[i, j] * (c - neighbour_cell(p, i, j, -1, 0, flags))
                     + area_u[ip, j] * (c - neighbour_cell(p, i, j, 1, 0, flags))
                     + area_v[i, j] * (c - neighbour_cell(p, i, j, 0, -1, flags))
                     + area_v[i, jp] * (c - neighbour_cell(p, i, j, 0, 1, flags)))
            out[i, j] = total / (dx * dx)

    @ti.kernel
    def pressure_diagonal(area_u: array2, area_v: array2, dx: real, flags: ti.i32, out: array2):
        for i, j in ti.ndrange(out.shape[0], out.shape[1]):
            ip = ti.select(bit(flags, 0) == 1, (i + 1) % area_u.shape[0], i + 1)
            jp = ti.select(bit(flags, 1) == 1, (j + 1) % area_v.shape[1], j + 1)
            out[i, j] = (area_u[i, j] + area_u[ip, j] + area_v[i, j] + area_v[i, jp]) / (dx * dx)

    @ti.kernel
    def subtract_pressure_gradient(u: array2, v: array2, p: array2, mask_u: array2, mask_v: array2,
                                   weight_u: array2, weight_v: array2, dx: real, flags: ti.i32, u_out: array2,
                                   v_out: array2):
        # u_out = mask u - weight grad p (forward: weight = mask; adjoint: weight = face area)
        for i, j in ti.ndrange(v.shape[0] + 1, u.shape[1] + 1):
            if i < u.shape[0] and j < u.shape[1]:
                grad = (neighbour_cell(p, i, j, 0, 0, flags) - neighbour_cell(p, i, j, -1, 0, flags)) / dx
                u_out[i, j] = mask_u[i, j] * u[i, j] - weight_u[i, j] * grad
            if i < v.shape[0] and j < v.shape[1]:
                grad = (neighbour_cell(p, i, j, 0, 0, flags) - neighbour_cell(p, i, j, 0, -1, flags)) / dx
                v_out[i, j] = mask_v[i, j] * v[i, j] - weight_v[i, j] * grad

    @ti.func
    def coupling_x(area_u: ti.template(), i, j, scale, nx):
        # matrix entry between cells (i, j) and (i + 1, j); wrap-around couplings are left out
        value = real(0.0)
        if i >= 0 and i + 1 < nx:
            value = -area_u[i + 1, j] * scale
        return value

    @ti.func
    def coupling_y(area_v: ti.template(), i, j, scale, ny):
        value = real(0.0)
        if j >= 0 and j + 1 < ny:
            value = -area_v[i, j + 1] * scale
        return value

    @ti.kernel
    def factor_incomplete_cholesky(area_u: array2, area_v: array2, dx: real, flags: ti.i32, precon: array2):
        # modified incomplete Cholesky MIC(0) of the pressure matrix, one serial sweep
        nx = precon.shape[0]
        ny = precon.shape[1]
        scale = real(1.0) / (dx * dx)
        tau = real(0.97)
        sigma = real(0.25)
        ti.loop_config(serialize=True)
        for i in range(nx):
            for j in range(ny):
                ip = ti.select(bit(flags, 0) == 1, (i + 1) % area_u.shape[0], i + 1)
                jp = ti.select(bit(flags, 1) == 1, (j + 1) % area_v.shape[1], j + 1)
                diag = (area_u[i, j] + area_u[ip, j] + area_v[i, j] + area_v[i, jp]) * scale
                e = diag
                if i > 0:
                    a = coupling_x(area_u, i - 1, j, scale, nx) * precon[i - 1, j]
                    b = coupling_y(area_v, i - 1, j, scale, ny) * precon[i - 1, j]
                    e = e - a * a - tau * a * b
                if j > 0:
                    a = coupling_y(area_v, i, j - 1, scale, ny) * precon[i, j - 1]
                    b = coupling_x(area_u, i, j - 1, scale, nx) * precon[i, j - 1]
                    e = e - a * a - tau * a * b
                if e < sigma * diag:
                    e = diag
                value = real(0.0)
                if diag > real(0.0):
                    value = real(1.0) / ti.sqrt(e)
                precon[i, j] = value

    @ti.kernel
    def apply_incomplete_cholesky(r: array2, area_u: array2, area_v: array2, precon: array2, dx: real,
                                  q: array2, z: array2):
        # z = (L L^T)^-1 r by a forward and a backward triangular sweep (serial)
        nx = r.shape[0]
        ny = r.shape[1]
        scale = real(1.0) / (dx * dx)
        ti.loop_config(serialize=True)
        for i in range(nx):
            for j in range(ny):
                t = r[i, j]
                if i > 0:
                    t = t - coupling_x(area_u, i - 1, j, scale, nx) * precon[i - 1, j] * q[i - 1, j]
                if j > 0:
                    t = t - coupling_y(area_v, i, j - 1, scale, ny) * precon[i, j - 1] * q[i, j - 1]
                q[i, j] = t * precon[i, j]
        ti.loop_config(serialize=True)
        for k in range(nx):
            i = nx - 1 - k
            for m in range(ny):
                j = ny - 1 - m
                t = q[i, j]
                if i + 1 < nx:
                    t = t - coupling_x(area_u, i, j, scale, nx) * precon[i, j] * z[i + 1, j]
                if j + 1 < ny:
                    t = t - coupling_y(area_v, i, j, scale, ny) * precon[i, j] * z[i, j + 1]
                z[i, j] = t * precon[i, j]

    @ti.func
    def face_neighbour(x: ti.template(), mask: ti.template(), i, j, di, dj, periodic, ghost_sign):
        # one Laplacian term (self - neighbour) and its diagonal weight; a missing neighbour is a
        # no-slip ghost (-self, weight 2) when ghost_sign < 0, else no term (zero gradient)
        n = ti.select(di != 0, x.shape[0], x.shape[1])
        k = ti.select(di != 0, i + di, j + dj)
        if periodic == 1:
            k = (k + n) % n
        value = real(0.0)
        weight = real(0.0)
        if k >= 0 and k < n:
            ni = ti.select(di != 0, k, i)
            nj = ti.select(di != 0, j, k)
            value = x[i, j] - mask[ni, nj] * x[ni, nj]
            weight = real(1.0)
        elif ghost_sign < real(0.0):
            value = real(2.0) * x[i, j]
            weight = real(2.0)
        return value, weight

    @ti.func
    def face_laplacian(x: ti.template(), mask: ti.template(), i, j, kind, flags):
        # sum over the four neighbours of (self - neighbour) for the viscous operator, and its diagonal
        ax_lo, ax_hi, ay_lo, ay_hi = field_modes(kind, flags)
        one = real(1.0)
        a, wa = face_neighbour(x, mask, i, j, -1, 0, bit(flags, 0), ti.select(ax_lo == 1, -one, one))
        b, wb = face_neighbour(x, mask, i, j, 1, 0, bit(flags, 0), ti.select(ax_hi == 1, -one, one))
        c, wc = face_neighbour(x, mask, i, j, 0, -1, bit(flags, 1), ti.select(ay_lo == 1, -one, one))
        d, wd = face_neighbour(x, mask, i, j, 0, 1, bit(flags, 1), ti.select(ay_hi == 1, -one, one))
        return a + b + c + d, wa + wb + wc + wd

    @ti.kernel
    def apply_diffusion_operator(xu: array2, xv: array2, mask_u: array2, mask_v: array2, alpha: real,
                                 beta: real, dx: real, flags: ti.i32, out_u: array2, out_v: array2):
        # alpha x + beta K x on free faces (K: negated face Laplacian), alpha x on solid faces
        for i, j in ti.ndrange(xv.shape[0] + 1, xu.shape[1] + 1):
            scale = beta / (dx * dx)
            if i < xu.shape[0] and j < xu.shape[1]:
                lap, diag = face_laplacian(xu, mask_u, i, j, 1, flags)
                out_u[i, j] = alpha * xu[i, j] + mask_u[i, j] * scale * lap
            if i < xv.shape[0] and j < xv.shape[1]:
                lap, diag = face_laplacian(xv, mask_v, i, j, 2, flags)
                out_v[i, j] = alpha * xv[i, j] + mask_v[i, j] * scale * lap

    @ti.kernel
    def diffusion_diagonal(xu: array2, xv: array2, mask_u: array2, mask_v: array2, alpha: real, beta: real,
                           dx: real, flags: ti.i32, out_u: array2, out_v: array2):
        for i, j in ti.ndrange(xv.shape[0] + 1, xu.shape[1] + 1):
            scale = beta / (dx * dx)
            if i < xu.shape[0] and j < xu.shape[1]:
                lap, diag = face_laplacian(xu, mask_u, i, j, 1, flags)
                out_u[i, j] = alpha + mask_u[i, j] * scale * diag
            if i < xv.shape[0] and j < xv.shape[1]:
                lap, diag = face_laplacian(xv, mask_v, i, j, 2, flags)
                out_v[i, j] = alpha + mask_v[i, j] * scale * diag

    return SimpleNamespace(
        advect_scalar=advect_scalar, advect_velocity=advect_velocity, correct_scalar=correct_scalar,
        correct_velocity=correct_velocity, advect_conservative=advect_conservative, add_buoyancy=add_buoyancy,
        maccormack_scalar_forward=maccormack_scalar_forward, maccormack_scalar_correct=maccormack_scalar_correct,
        advect_velocity_buoyancy=advect_velocity_buoyancy,
        maccormack_velocity_forward=maccormack_velocity_forward,
        maccormack_velocity_correct=maccormack_velocity_correct,
        add_temperature_buoyancy=add_temperature_buoyancy, cool_temperature=cool_temperature, curl=curl, confine_vorticity=confine_vorticity, divergence=divergence,
        apply_pressure_operator=apply_pressure_operator, pressure_diagonal=pressure_diagonal,
        subtract_pressure_gradient=subtract_pressure_gradient, factor_incomplete_cholesky=factor_incomplete_cholesky,
        apply_incomplete_cholesky=apply_incomplete_cholesky, apply_diffusion_operator=apply_diffusion_operator,
        diffusion_diagonal=diffusion_diagonal,
    )


@functools.cache
def add_inflow_kernel(real, source_count: int):
    """Return the ``add_inflow`` kernel for ``source_count`` sources (a compile-time loop count)."""
    return inflow_kernels(real, source_count).add_inflow


@functools.cache
def inflow_kernels(real, source_count: int):
    """The source kernels for ``source_count`` sources: ``add_inflow`` (density) and ``heat_inflow``
    (temperature)."""
    import taichi as ti

    array2 = ti.types.ndarray(dtype=real, ndim=2)
    array1 = ti.types.ndarray(dtype=real, ndim=1)

    @ti.func
    def smooth_coverage(e):
        # C1 ramp from 0 to 1 over one cell across the shape's edge
        s = ti.min(ti.max(e + real(0.5), real(0.0)), real(1.0))
        return s * s * (real(3.0) - real(2.0) * s)

    @ti.func
    def coverage(x, y, center: ti.template(), size: ti.template(), is_box: ti.template(), s, dx):
        ox = x - center[s, 0]
        oy = y - center[s, 1]
        distance = ti.sqrt(ox * ox + oy * oy + real(1.0e-20))
        disc = smooth_coverage((size[s, 0] - distance) / dx)
        box = (smooth_coverage((size[s, 0] - ti.abs(ox)) / dx)
               * smooth_coverage((size[s, 1] - ti.abs(oy)) / dx))
        return is_box[s] * box + (real(1.0) - is_box[s]) * disc

    @ti.kernel
    def add_inflow(density: array2, center: array2, size: array2, rate: array1, is_box: array1, dx: real,
                   dt: real, density_out: array2):
        # sources add rate * coverage * dt; soft coverage makes the amount smooth in the centre
        for i, j in ti.ndrange(density.shape[0], density.shape[1]):
            x = (real(i) + real(0.5)) * dx
            y = (real(j) + real(0.5)) * dx
            total = real(0.0)
            for s in ti.static(range(source_count)):
                total = total + rate[s] * coverage(x, y, center, size, is_box, s, dx)
            density_out[i, j] = density[i, j] + dt * total

    @ti.kernel
    def heat_inflow(temperature: array2, center: array2, size: array2, source_temperature: array1,
                    heats: array1, is_box: array1, dx: real, temperature_out: array2):
        # each heating source (heats = 1) holds its temperature inside its shape, blended by the soft coverage
        for i, j in ti.ndrange(temperature.shape[0], temperature.shape[1]):
            x = (real(i) + real(0.5)) * dx
            y = (real(j) + real(0.5)) * dx
            value = temperature[i, j]
            for s in ti.static(range(source_count)):
                weight = heats[s] * coverage(x, y, center, size, is_box, s, dx)
                value = value + weight * (source_temperature[s] - value)
            temperature_out[i, j] = value

    return SimpleNamespace(add_inflow=add_inflow, heat_inflow=heat_inflow)
