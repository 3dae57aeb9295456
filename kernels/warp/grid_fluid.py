"""Warp kernels for the 2D Eulerian smoke solver on a staggered (MAC) grid.

Layout (i along x, j along y, ``dx`` the cell size):
- ``density`` (nx, ny): cell centres at ((i + 1/2) dx, (j + 1/2) dx);
- ``u`` (Fx, ny): x-faces at (i dx, (j + 1/2) dx), Fx = nx + 1, or nx on a periodic x axis
  (the face at x = nx dx is then face 0: no duplicate);
- ``v`` (nx, Fy): y-faces at ((i + 1/2) dx, j dx), likewise.

``flags`` packs the boundary into bits: 0 periodic x, 1 periodic y, 2/3 no-slip wall at
y_lo/y_hi (ghost u = -u), 4/5 no-slip wall at x_lo/x_hi (ghost v = -v). Elsewhere samples are
clamped (zero-gradient); closed walls and obstacles enter as face fluid fractions (0 = solid), and
advected velocities are multiplied by the face mask (solid faces hold zero).

Samplers take a field kind: 0 cell-centred, 1 x-faces, 2 y-faces, and positions in cell units
(position / dx: the backtrace runs in cells, c = dt / dx, with no division per sample); a
departure point's first velocity sample sits on the grid and is read directly (the face's own
component, or the mean of the two faces beside a cell). Kernels that face both
velocity arrays launch over (nx + 1, ny + 1): thread (i, j) updates u[i, j] and v[i, j] where
they exist. ``maccormack_*`` and ``advect_velocity_buoyancy`` are forward-only fusions
of the differentiable kernels (the same values bit for bit, fewer launches and departure
points) for steps without autograd. Differentiable kernels take the cell counts (nx, ny) as
scalars instead of reading ``arr.shape``: Warp's adjoint of a shape read zeroes the adjoint array's shape, harmless in
release builds but it trips debug-mode bounds checks. The Taichi twin
(kernels/taichi/grid_fluid.py) performs the same arithmetic in the same order.
"""

import functools
from types import SimpleNamespace


@functools.cache
def grid_fluid_kernels(real):
    """Return the grid-fluid kernels for scalar type ``real`` (wp.float32/wp.float64)."""
    import warp as wp

    module = f"hybridsim_grid_fluid_{real.__name__}"
    array2 = wp.array2d[real]
    array1 = wp.array[real]
    zero, half, one = real(0.0), real(0.5), real(1.0)

    @wp.func(module=module)
    def bit(flags: int, index: int):
        return (flags >> index) & 1

    @wp.func(module=module)
    def axis_stencil(g: real, n: int, periodic: int, antisym_lo: int, antisym_hi: int):
        # linear interpolation along one axis at sample coordinate g: lower/upper indices, the
        # upper weight t and the signs of the two samples (-1 for a no-slip ghost)
        nr = real(n)
        g_used = g
        if periodic == 1:  # a branch, not a select: the wrap's division only where it is needed
            g_used = g - nr * wp.floor(g / nr)
        else:
            lo = wp.where(antisym_lo == 1, real(-0.5), zero)
            hi = wp.where(antisym_hi == 1, nr - half, nr - one)
            g_used = wp.clamp(g, lo, hi)
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
    def field_modes(kind: int, flags: int):
        # (ghost sign lo/hi along x, along y) of a field kind: tangential velocity at no-slip walls
        ax_lo = wp.where(kind == 2, bit(flags, 4), 0)
        ax_hi = wp.where(kind == 2, bit(flags, 5), 0)
        ay_lo = wp.where(kind == 1, bit(flags, 2), 0)
        ay_hi = wp.where(kind == 1, bit(flags, 3), 0)
        return ax_lo, ax_hi, ay_lo, ay_hi

    @wp.func(module=module)
    def field_size(kind: int, flags: int, nx: int, ny: int):
        # samples along x and y of a field kind (from the cell counts, see the module docstring)
        sx = wp.where(kind == 1, nx + 1 - bit(flags, 0), nx)
        sy = wp.where(kind == 2, ny + 1 - bit(flags, 1), ny)
        return sx, sy

    @wp.func(module=module)
    def sample_coords(kind: int, x: real, y: real):
        # stencil coordinates of a field kind at (x, y) in cell units (position / dx)
        gx = x - wp.where(kind == 1, zero, half)
        gy = y - wp.where(kind == 2, zero, half)
        return gx, gy

    @wp.func(module=module)
    def stencil(kind: int, x: real, y: real, flags: int, nx: int, ny: int):
        # the bilinear stencil of a cell (kind 0), x-face (1) or y-face (2) field at (x, y) in cell
        # units: per axis the two indices, the upper weight and the samples' signs
        gx, gy = sample_coords(kind, x, y)
        ax_lo, ax_hi, ay_lo, ay_hi = field_modes(kind, flags)
        size_x, size_y = field_size(kind, flags, nx, ny)
        i0, i1, tx, sx0, sx1 = axis_stencil(gx, size_x, bit(flags, 0), ax_lo, ax_hi)
        j0, j1, ty, sy0, sy1 = axis_stencil(gy, size_y, bit(flags, 1), ay_lo, ay_hi)
        return i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1

    @wp.func(module=module)
    def interpolate(f: array2, i0: int, i1: int, tx: real, sx0: real, sx1: real, j0: int, j1: int, ty: real,
                    sy0: real, sy1: real):
        low = sy0 * f[i0, j0] * (one - ty) + sy1 * f[i0, j1] * ty
        high = sy0 * f[i1, j0] * (one - ty) + sy1 * f[i1, j1] * ty
        return sx0 * low * (one - tx) + sx1 * high * tx

    @wp.func(module=module)
    def stencil_range(f: array2, i0: int, i1: int, sx0: real, sx1: real, j0: int, j1: int, sy0: real, sy1: real):
        # min and max of the four (signed) samples a stencil reads
        a = sx0 * sy0 * f[i0, j0]
        b = sx0 * sy1 * f[i0, j1]
        c = sx1 * sy0 * f[i1, j0]
        d = sx1 * sy1 * f[i1, j1]
        return wp.min(wp.min(a, b), wp.min(c, d)), wp.max(wp.max(a, b), wp.max(c, d))

    @wp.func(module=module)
    def sample_field(f: array2, kind: int, x: real, y: real, flags: int, nx: int, ny: int):
        # bilinear sample of field f of a kind at (x, y) in cell units
        i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(kind, x, y, flags, nx, ny)
        return interpolate(f, i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1)

    @wp.func(module=module)
    def sample_range(f: array2, kind: int, x: real, y: real, flags: int, nx: int, ny: int):
        # min and max of the four (signed) samples the bilinear stencil at (x, y) reads
        i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(kind, x, y, flags, nx, ny)
        return stencil_range(f, i0, i1, sx0, sx1, j0, j1, sy0, sy1)

    @wp.func(module=module)
    def cell_departure_point(u: array2, v: array2, i: int, j: int, c: real, flags: int, nx: int, ny: int):
        # trace the centre of cell (i, j) [cells] back over dt with the midpoint rule (RK2); c = dt / dx.
        # The first velocity sample sits on the grid (weights 1/2 between the faces beside the cell)
        ip = wp.where(bit(flags, 0) == 1, (i + 1) % nx, i + 1)
        jp = wp.where(bit(flags, 1) == 1, (j + 1) % ny, j + 1)
        x = real(i) + half
        y = real(j) + half
        xm = x - half * c * (u[i, j] * half + u[ip, j] * half)
        ym = y - half * c * (v[i, j] * half + v[i, jp] * half)
        um = sample_field(u, 1, xm, ym, flags, nx, ny)
        vm = sample_field(v, 2, xm, ym, flags, nx, ny)
        return x - c * um, y - c * vm

    @wp.func(module=module)
    def face_position(axis: int, i: int, j: int):
        # an x-face (axis 1) or y-face (axis 2) centre in cell units
        return real(i) + wp.where(axis == 1, zero, half), real(j) + wp.where(axis == 2, zero, half)

    @wp.func(module=module)
    def face_departure_point(u: array2, v: array2, axis: int, i: int, j: int, c: real, flags: int, nx: int,
                             ny: int):
        # the same from x-face (axis 1) or y-face (axis 2) (i, j): the face's own velocity component
        # is its value there, read directly; the other one is interpolated
        x, y = face_position(axis, i, j)
        u0 = zero
        v0 = zero
        if axis == 1:
            u0 = u[i, j]
            v0 = sample_field(v, 2, x, y, flags, nx, ny)
        else:
            u0 = sample_field(u, 1, x, y, flags, nx, ny)
            v0 = v[i, j]
        xm = x - half * c * u0
        ym = y - half * c * v0
        um = sample_field(u, 1, xm, ym, flags, nx, ny)
        vm = sample_field(v, 2, xm, ym, flags, nx, ny)
        return x - c * um, y - c * vm

    @wp.func(module=module)
    def advected_face(q: array2, u: array2, v: array2, mask: array2, axis: int, i: int, j: int, c: real,
                      flags: int, nx: int, ny: int):
        # semi-Lagrangian value of face field q (kind ``axis``) at face (i, j); 0 on solid faces
        xd, yd = face_departure_point(u, v, axis, i, j, c, flags, nx, ny)
        return mask[i, j] * sample_field(q, axis, xd, yd, flags, nx, ny)

    @wp.func(module=module)
    def corrected_face(q: array2, q_forward: array2, q_backward: array2, u: array2, v: array2, mask: array2,
                       axis: int, i: int, j: int, c: real, flags: int, nx: int, ny: int):
        # MacCormack correction of face field q at face (i, j), clamped to the departure stencil's range
        xd, yd = face_departure_point(u, v, axis, i, j, c, flags, nx, ny)
        lo, hi = sample_range(q, axis, xd, yd, flags, nx, ny)
        return mask[i, j] * wp.clamp(q_forward[i, j] + half * (q[i, j] - q_backward[i, j]), lo, hi)

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

    @wp.kernel(module=module)
    def advect_scalar(q: array2, u: array2, v: array2, dx: real, dt: real, flags: int, nx: int, ny: int,
                      q_out: array2):
        # semi-Lagrangian: the new value is the old field at the departure point
        i, j = wp.tid()
        xd, yd = cell_departure_point(u, v, i, j, dt / dx, flags, nx, ny)
        q_out[i, j] = sample_field(q, 0, xd, yd, flags, nx, ny)

    @wp.kernel(module=module)
    def advect_velocity(qu: array2, qv: array2, u: array2, v: array2, mask_u: array2, mask_v: array2, dx: real,
                        dt: real, flags: int, nx: int, ny: int, qu_out: array2, qv_out: array2):
        # semi-Lagrangian transport of the face fields (qu, qv) by the velocity (u, v); solid faces get 0
        i, j = wp.tid()
        c = dt / dx
        if i < nx + 1 - bit(flags, 0) and j < ny:
            qu_out[i, j] = advected_face(qu, u, v, mask_u, 1, i, j, c, flags, nx, ny)
        if i < nx and j < ny + 1 - bit(flags, 1):
            qv_out[i, j] = advected_face(qv, u, v, mask_v, 2, i, j, c, flags, nx, ny)

    @wp.kernel(module=module)
    def correct_scalar(q: array2, q_forward: array2, q_backward: array2, u: array2, v: array2, dx: real,
                       dt: real, flags: int, nx: int, ny: int, q_out: array2):
        # MacCormack: add half the round-trip error, clamped to the departure stencil's range
        i, j = wp.tid()
        xd, yd = cell_departure_point(u, v, i, j, dt / dx, flags, nx, ny)
        lo, hi = sample_range(q, 0, xd, yd, flags, nx, ny)
        q_out[i, j] = wp.clamp(q_forward[i, j] + half * (q[i, j] - q_backward[i, j]), lo, hi)

    @wp.kernel(module=module)
    def correct_velocity(u: array2, v: array2, u_forward: array2, v_forward: array2, u_backward: array2,
                         v_backward: array2, mask_u: array2, mask_v: array2, dx: real, dt: real, flags: int,
                         nx: int, ny: int, u_out: array2, v_out: array2):
        # MacCormack correction of both face fields, clamped to each departure stencil's range
        i, j = wp.tid()
        c = dt / dx
        if i < nx + 1 - bit(flags, 0) and j < ny:
            u_out[i, j] = corrected_face(u, u_forward, u_backward, u, v, mask_u, 1, i, j, c, flags, nx, ny)
        if i < nx and j < ny + 1 - bit(flags, 1):
            v_out[i, j] = corrected_face(v, v_forward, v_backward, u, v, mask_v, 2, i, j, c, flags, nx, ny)

    # -- forward-only fusions (no adjoint; the no-grad step uses them, results bit for bit those of the
    # -- kernels above): MacCormack in two launches instead of three, velocity transport + buoyancy in one

    @wp.kernel(module=module, enable_backward=False)
    def maccormack_scalar_forward(q: array2, u: array2, v: array2, dx: real, dt: real, flags: int, nx: int,
                                  ny: int, q_forward: array2, q_lo: array2, q_hi: array2):
        # the forward semi-Lagrangian pass and the limiter's range from one departure point
        i, j = wp.tid()
        xd, yd = cell_departure_point(u, v, i, j, dt / dx, flags, nx, ny)
        i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(0, xd, yd, flags, nx, ny)
        q_forward[i, j] = interpolate(q, i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1)
        lo, hi = stencil_range(q, i0, i1, sx0, sx1, j0, j1, sy0, sy1)
        q_lo[i, j] = lo
        q_hi[i, j] = hi

    @wp.kernel(module=module, enable_backward=False)
    def maccormack_scalar_correct(q: array2, q_forward: array2, q_lo: array2, q_hi: array2, u: array2, v: array2,
                                  dx: real, dt: real, flags: int, nx: int, ny: int, q_out: array2):
        # the backward pass (by -dt) and the clamped correction
        i, j = wp.tid()
        xd, yd = cell_departure_point(u, v, i, j, -dt / dx, flags, nx, ny)
        q_backward = sample_field(q_forward, 0, xd, yd, flags, nx, ny)
        q_out[i, j] = wp.clamp(q_forward[i, j] + half * (q[i, j] - q_backward), q_lo[i, j], q_hi[i, j])

    @wp.func(module=module)
    def advected_face_range(q: array2, u: array2, v: array2, mask: array2, axis: int, i: int, j: int, c: real,
                            flags: int, nx: int, ny: int):
        # advected_face and the limiter's range (sample_range of q) from one departure point and stencil
        xd, yd = face_departure_point(u, v, axis, i, j, c, flags, nx, ny)
        i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1 = stencil(axis, xd, yd, flags, nx, ny)
        lo, hi = stencil_range(q, i0, i1, sx0, sx1, j0, j1, sy0, sy1)
        return mask[i, j] * interpolate(q, i0, i1, tx, sx0, sx1, j0, j1, ty, sy0, sy1), lo, hi

    @wp.func(module=module)
    def maccormack_face(q: array2, q_forward: array2, q_lo: array2, q_hi: array2, u: array2, v: array2,
                        mask: array2, axis: int, i: int, j: int, c: real, flags: int, nx: int, ny: int):
        # the backward pass (by -dt) and the clamped correction of face (i, j)
        q_backward = advected_face(q_forward, u, v, mask, axis, i, j, -c, flags, nx, ny)
        return mask[i, j] * wp.clamp(q_forward[i, j] + half * (q[i, j] - q_backward), q_lo[i, j], q_hi[i, j])

    @wp.kernel(module=module, enable_backward=False)
    def maccormack_velocity_forward(u: array2, v: array2, mask_u: array2, mask_v: array2, dx: real, dt: real,
                                    flags: int, nx: int, ny: int, u_forward: array2, v_forward: array2,
                                    u_lo: array2, u_hi: array2, v_lo: array2, v_hi: array2):
        # the forward pass of both face fields and the limiter's ranges (advect_velocity + correct_velocity's)
        i, j = wp.tid()
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

    @wp.kernel(module=module, enable_backward=False)
    def maccormack_velocity_correct(u: array2, v: array2, u_forward: array2, v_forward: array2, u_lo: array2,
                                    u_hi: array2, v_lo: array2, v_hi: array2, mask_u: array2, mask_v: array2,
                                    dx: real, dt: real, flags: int, nx: int, ny: int, u_out: array2,
                                    v_out: array2):
        # the backward pass and the clamped correction of both face fields
        i, j = wp.tid()
        c = dt / dx
        if i < nx + 1 - bit(flags, 0) and j < ny:
            u_out[i, j] = maccormack_face(u, u_forward, u_lo, u_hi, u, v, mask_u, 1, i, j, c, flags, nx, ny)
        if i < nx and j < ny + 1 - bit(flags, 1):
            v_out[i, j] = maccormack_face(v, v_forward, v_lo, v_hi, u, v, mask_v, 2, i, j, c, flags, nx, ny)

    @wp.func(module=module)
    def minmod(a: real, b: real):
        return wp.where(a * b <= zero, zero, wp.where(wp.abs(a) < wp.abs(b), a, b))

    @wp.func(module=module)
    def limited_slope_x(q: array2, i: int, j: int, periodic: int, nx: int):
        lo, hi, span = cell_neighbours(i, nx, periodic)
        return minmod(q[i, j] - q[lo, j], q[hi, j] - q[i, j])

    @wp.func(module=module)
    def limited_slope_y(q: array2, i: int, j: int, periodic: int, ny: int):
        lo, hi, span = cell_neighbours(j, ny, periodic)
        return minmod(q[i, j] - q[i, lo], q[i, hi] - q[i, j])

    @wp.func(module=module)
    def flux_x(q: array2, u: array2, area_u: array2, i: int, j: int, dx: real, dt: real, flags: int, nx: int):
        # flux through x-face i: upwind cell value plus a minmod-limited, Lax-Wendroff-weighted slope
        periodic = bit(flags, 0)
        face = wp.where(periodic == 1, i % nx, i)
        left, right = face_cells(i, nx, periodic)
        velocity = u[face, j]
        lag = half * (one - wp.abs(velocity * dt / dx))
        from_left = q[left, j] + lag * limited_slope_x(q, left, j, periodic, nx)
        from_right = q[right, j] - lag * limited_slope_x(q, right, j, periodic, nx)
        return area_u[face, j] * velocity * wp.where(velocity > zero, from_left, from_right)

    @wp.func(module=module)
    def flux_y(q: array2, v: array2, area_v: array2, i: int, j: int, dx: real, dt: real, flags: int, ny: int):
        periodic = bit(flags, 1)
        face = wp.where(periodic == 1, j % ny, j)
        below, above = face_cells(j, ny, periodic)
        velocity = v[i, face]
        lag = half * (one - wp.abs(velocity * dt / dx))
        from_below = q[i, below] + lag * limited_slope_y(q, i, below, periodic, ny)
        from_above = q[i, above] - lag * limited_slope_y(q, i, above, periodic, ny)
        return area_v[i, face] * velocity * wp.where(velocity > zero, from_below, from_above)

    @wp.kernel(module=module)
    def advect_conservative(q: array2, u: array2, v: array2, area_u: array2, area_v: array2, dx: real,
                            dt: real, flags: int, nx: int, ny: int, q_out: array2):
        # flux form: each face flux is computed identically by both its cells, so mass is conserved
        i, j = wp.tid()
        net = (flux_x(q, u, area_u, i, j, dx, dt, flags, nx) - flux_x(q, u, area_u, i + 1, j, dx, dt, flags, nx)
               + flux_y(q, v, area_v, i, j, dx, dt, flags, ny) - flux_y(q, v, area_v, i, j + 1, dx, dt, flags, ny))
        q_out[i, j] = q[i, j] + dt / dx * net

    @wp.func(module=module)
    def lift_x(density: array2, acceleration_u: array2, buoyancy: array1, i: int, j: int, up_x: real, dt: real,
               flags: int, nx: int):
        # velocity change of x-face (i, j) over dt: buoyancy of the face's density plus the acceleration
        left, right = face_cells(i, nx, bit(flags, 0))
        rho = half * (density[left, j] + density[right, j])
        return dt * (buoyancy[0] * rho * up_x + acceleration_u[i, j])

    @wp.func(module=module)
    def lift_y(density: array2, acceleration_v: array2, buoyancy: array1, i: int, j: int, up_y: real, dt: real,
               flags: int, ny: int):
        below, above = face_cells(j, ny, bit(flags, 1))
        rho = half * (density[i, below] + density[i, above])
        return dt * (buoyancy[0] * rho * up_y + acceleration_v[i, j])

    @wp.kernel(module=module)
    def add_buoyancy(u: array2, v: array2, density: array2, acceleration_u: array2, acceleration_v: array2,
                     buoyancy: array1, up_x: real, up_y: real, dt: real, flags: int, nx: int, ny: int,
                     u_out: array2, v_out: array2):
        # buoyancy pushes density against gravity; external accelerations add on top
        i, j = wp.tid()
        if i < nx + 1 - bit(flags, 0) and j < ny:
            u_out[i, j] = u[i, j] + lift_x(density, acceleration_u, buoyancy, i, j, up_x, dt, flags, nx)
        if i < nx and j < ny + 1 - bit(flags, 1):
            v_out[i, j] = v[i, j] + lift_y(density, acceleration_v, buoyancy, i, j, up_y, dt, flags, ny)

    @wp.kernel(module=module, enable_backward=False)
    def advect_velocity_buoyancy(u: array2, v: array2, mask_u: array2, mask_v: array2, density: array2,
                                 acceleration_u: array2, acceleration_v: array2, buoyancy: array1, dx: real,
                                 dt: real, up_x: real, up_y: real, flags: int, nx: int, ny: int, u_out: array2,
                                 v_out: array2):
        # forward-only fusion of advect_velocity (u, v by themselves) and add_buoyancy (of the advected density)
        i, j = wp.tid()
        c = dt / dx
        if i < nx + 1 - bit(flags, 0) and j < ny:
            u_out[i, j] = (advected_face(u, u, v, mask_u, 1, i, j, c, flags, nx, ny)
                           + lift_x(density, acceleration_u, buoyancy, i, j, up_x, dt, flags, nx))
        if i < nx and j < ny + 1 - bit(flags, 1):
            v_out[i, j] = (advected_face(v, u, v, mask_v, 2, i, j, c, flags, nx, ny)
                           + lift_y(density, acceleration_v, buoyancy, i, j, up_y, dt, flags, ny))

    @wp.kernel(module=module)
    def add_temperature_buoyancy(u: array2, v: array2, temperature: array2, coefficient: array1, ambient: array1,
                                 up_x: real, up_y: real, dt: real, flags: int, nx: int, ny: int, u_out: array2,
                                 v_out: array2):
        # Boussinesq lift: coefficient * (T - T_ambient) against gravity, T averaged onto each face
        i, j = wp.tid()
        if i < nx + 1 - bit(flags, 0) and j < ny:
            left, right = face_cells(i, nx, bit(flags, 0))
            excess = half * (temperature[left, j] + temperature[right, j]) - ambient[0]
            u_out[i, j] = u[i, j] + dt * coefficient[0] * excess * up_x
        if i < nx and j < ny + 1 - bit(flags, 1):
            below, above = face_cells(j, ny, bit(flags, 1))
            excess = half * (temperature[i, below] + temperature[i, above]) - ambient[0]
            v_out[i, j] = v[i, j] + dt * coefficient[0] * excess * up_y

    @wp.kernel(module=module)
    def cool_temperature(temperature: array2, ambient: array1, rate: array1, dt: real, temperature_out: array2):
        # exact exponential relaxation towards the ambient temperature over dt
        i, j = wp.tid()
        decay = wp.exp(-rate[0] * dt)
        temperature_out[i, j] = ambient[0] + (temperature[i, j] - ambient[0]) * decay

    @wp.func(module=module)
    def cell_velocity(u: array2, v: array2, i: int, j: int, flags: int, nx: int, ny: int):
        ip = wp.where(bit(flags, 0) == 1, (i + 1) % nx, i + 1)
        jp = wp.where(bit(flags, 1) == 1, (j + 1) % ny, j + 1)
        return half * (u[i, j] + u[ip, j]), half * (v[i, j] + v[i, jp])

    @wp.kernel(module=module)
    def curl(u: array2, v: array2, dx: real, flags: int, nx: int, ny: int, vorticity: array2):
        # vorticity dv/dx - du/dy at cell centres from cell-averaged velocities
        i, j = wp.tid()
        il, ih, span_x = cell_neighbours(i, nx, bit(flags, 0))
        jl, jh, span_y = cell_neighbours(j, ny, bit(flags, 1))
        ul, vl = cell_velocity(u, v, il, j, flags, nx, ny)
        uh, vh = cell_velocity(u, v, ih, j, flags, nx, ny)
        ub, vb = cell_velocity(u, v, i, jl, flags, nx, ny)
        ut, vt = cell_velocity(u, v, i, jh, flags, nx, ny)
        vorticity[i, j] = (vh - vl) / (span_x * dx) - (ut - ub) / (span_y * dx)

    @wp.func(module=module)
    def confinement_force(vorticity: array2, i: int, j: int, dx: real, flags: int, nx: int, ny: int):
        # eps dx (N x omega) with N the unit gradient of |omega|
        il, ih, span_x = cell_neighbours(i, nx, bit(flags, 0))
        jl, jh, span_y = cell_neighbours(j, ny, bit(flags, 1))
        eta_x = (wp.abs(vorticity[ih, j]) - wp.abs(vorticity[il, j])) / (span_x * dx)
        eta_y = (wp.abs(vorticity[i, jh]) - wp.abs(vorticity[i, jl])) / (span_y * dx)
        norm = wp.sqrt(eta_x * eta_x + eta_y * eta_y + real(1.0e-20))
        w = vorticity[i, j] * dx / norm
        return eta_y * w, -eta_x * w

    @wp.kernel(module=module)
    def confine_vorticity(u: array2, v: array2, vorticity: array2, strength: array1, dx: real, dt: real,
                          flags: int, nx: int, ny: int, u_out: array2, v_out: array2):
        # vorticity confinement, averaged from the two cells beside each face
        i, j = wp.tid()
        if i < nx + 1 - bit(flags, 0) and j < ny:
            left, right = face_cells(i, nx, bit(flags, 0))
            fl_x, fl_y = confinement_force(vorticity, left, j, dx, flags, nx, ny)
            fr_x, fr_y = confinement_force(vorticity, right, j, dx, flags, nx, ny)
            u_out[i, j] = u[i, j] + dt * strength[0] * half * (fl_x + fr_x)
        if i < nx and j < ny + 1 - bit(flags, 1):
            below, above = face_cells(j, ny, bit(flags, 1))
            fb_x, fb_y = confinement_force(vorticity, i, below, dx, flags, nx, ny)
            fa_x, fa_y = confinement_force(vorticity, i, above, dx, flags, nx, ny)
            v_out[i, j] = v[i, j] + dt * strength[0] * half * (fb_y + fa_y)

    @wp.kernel(module=module, enable_backward=False)
    def divergence(u: array2, v: array2, weight_u: array2, weight_v: array2, dx: real, flags: int,
                   div: array2):
        # net outflow of the weighted face velocities per cell, divided by dx
        i, j = wp.tid()
        ip = wp.where(bit(flags, 0) == 1, (i + 1) % u.shape[0], i + 1)
        jp = wp.where(bit(flags, 1) == 1, (j + 1) % v.shape[1], j + 1)
        div[i, j] = (weight_u[ip, j] * u[ip, j] - weight_u[i, j] * u[i, j]
                     + weight_v[i, jp] * v[i, jp] - weight_v[i, j] * v[i, j]) / dx

    @wp.func(module=module)
    def neighbour_cell(p: array2, i: int, j: int, di: int, dj: int, flags: int):
        # pressure of the cell beyond a face: wrapped if periodic, 0 past an open edge
        ni = i + di
        nj = j + dj
        nx = p.shape[0]
        ny = p.shape[1]
        if bit(flags, 0) == 1:
            ni = (ni + nx) % nx
        if bit(flags, 1) == 1:
            nj = (nj + ny) % ny
        value = zero
        if ni >= 0 and ni < nx and nj >= 0 and nj < ny:
            value = p[ni, nj]
        return value

    @wp.kernel(module=module, enable_backward=False)
    def apply_pressure_operator(p: array2, area_u: array2, area_v: array2, dx: real, flags: int,
                                out: array2):
        # matrix-free G^T A G p: area-weighted Laplacian (negated), Dirichlet 0 past open edges
        i, j = wp.tid()
        ip = wp.where(bit(flags, 0) == 1, (i + 1) % area_u.shape[0], i + 1)
        jp = wp.where(bit(flags, 1) == 1, (j + 1) % area_v.shape[1], j + 1)
        c = p[i, j]
        total = (area_u[i, j] * (c - neighbour_cell(p, i, j, -1, 0, flags))
                 + area_u[ip, j] * (c - neighbour_cell(p, i, j, 1, 0, flags))
                 + area_v[i, j] * (c - neighbour_cell(p, i, j, 0, -1, flags))
                 + area_v[i, jp] * (c - neighbour_cell(p, i, j, 0, 1, flags)))
        out[i, j] = total / (dx * dx)

    @wp.kernel(module=module, enable_backward=False)
    def pressure_diagonal(area_u: array2, area_v: array2, dx: real, flags: int, out: array2):
        i, j = wp.tid()
        ip = wp.where(bit(flags, 0) == 1, (i + 1) % area_u.shape[0], i + 1)
        jp = wp.where(bit(flags, 1) == 1, (j + 1) % area_v.shape[1], j + 1)
        out[i, j] = (area_u[i, j] + area_u[ip, j] + area_v[i, j] + area_v[i, jp]) / (dx * dx)

    @wp.kernel(module=module, enable_backward=False)
    def subtract_pressure_gradient(u: array2, v: array2, p: array2, mask_u: array2, mask_v: array2,
                                   weight_u: array2, weight_v: array2, dx: real, flags: int, u_out: array2,
                                   v_out: array2):
        # u_out = mask u - weight grad p (forward: weight = mask; adjoint: weight = face area)
        i, j = wp.tid()
        if i < u.shape[0] and j < u.shape[1]:
            grad = (neighbour_cell(p, i, j, 0, 0, flags) - neighbour_cell(p, i, j, -1, 0, flags)) / dx
            u_out[i, j] = mask_u[i, j] * u[i, j] - weight_u[i, j] * grad
        if i < v.shape[0] and j < v.shape[1]:
            grad = (neighbour_cell(p, i, j, 0, 0, flags) - neighbour_cell(p, i, j, 0, -1, flags)) / dx
            v_out[i, j] = mask_v[i, j] * v[i, j] - weight_v[i, j] * grad

    @wp.func(module=module)
    def coupling_x(area_u: array2, i: int, j: int, scale: real, nx: int):
        # matrix entry between cells (i, j) and (i + 1, j); wrap-around couplings are left out
        value = zero
        if i >= 0 and i + 1 < nx:
            value = -area_u[i + 1, j] * scale
        return value

    @wp.func(module=module)
    def coupling_y(area_v: array2, i: int, j: int, scale: real, ny: int):
        value = zero
        if j >= 0 and j + 1 < ny:
            value = -area_v[i, j + 1] * scale
        return value

    @wp.kernel(module=module, enable_backward=False)
    def factor_incomplete_cholesky(area_u: array2, area_v: array2, dx: real, flags: int, precon: array2):
        # modified incomplete Cholesky MIC(0) of the pressure matrix, one serial sweep (launch dim 1)
        nx = precon.shape[0]
        ny = precon.shape[1]
        scale = one / (dx * dx)
        tau = real(0.97)
        sigma = real(0.25)
        for i in range(nx):
            for j in range(ny):
                ip = wp.where(bit(flags, 0) == 1, (i + 1) % area_u.shape[0], i + 1)
                jp = wp.where(bit(flags, 1) == 1, (j + 1) % area_v.shape[1], j + 1)
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
                value = zero
                if diag > zero:
                    value = one / wp.sqrt(e)
                precon[i, j] = value

    @wp.kernel(module=module, enable_backward=False)
    def apply_incomplete_cholesky(r: array2, area_u: array2, area_v: array2, precon: array2, dx: real,
                                  q: array2, z: array2):
        # z = (L L^T)^-1 r by a forward and a backward triangular sweep (serial, launch dim 1)
        nx = r.shape[0]
        ny = r.shape[1]
        scale = one / (dx * dx)
        for i in range(nx):
            for j in range(ny):
                t = r[i, j]
                if i > 0:
                    t = t - coupling_x(area_u, i - 1, j, scale, nx) * precon[i - 1, j] * q[i - 1, j]
                if j > 0:
                    t = t - coupling_y(area_v, i, j - 1, scale, ny) * precon[i, j - 1] * q[i, j - 1]
                q[i, j] = t * precon[i, j]
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

    @wp.func(module=module)
    def face_neighbour(x: array2, mask: array2, i: int, j: int, di: int, dj: int, periodic: int,
                       ghost_sign: real):
        # one Laplacian term (self - neighbour) and its diagonal weight; a missing neighbour is a
        # no-slip ghost (-self, weight 2) when ghost_sign < 0, else no term (zero gradient)
        n = wp.where(di != 0, x.shape[0], x.shape[1])
        k = wp.where(di != 0, i + di, j + dj)
        if periodic == 1:
            k = (k + n) % n
        value = zero
        weight = zero
        if k >= 0 and k < n:
            ni = wp.where(di != 0, k, i)
            nj = wp.where(di != 0, j, k)
            value = x[i, j] - mask[ni, nj] * x[ni, nj]
            weight = one
        elif ghost_sign < zero:
            value = real(2.0) * x[i, j]
            weight = real(2.0)
        return value, weight

    @wp.func(module=module)
    def face_laplacian(x: array2, mask: array2, i: int, j: int, kind: int, flags: int):
        # sum over the four neighbours of (self - neighbour) for the viscous operator, and its diagonal
        ax_lo, ax_hi, ay_lo, ay_hi = field_modes(kind, flags)
        a, wa = face_neighbour(x, mask, i, j, -1, 0, bit(flags, 0), wp.where(ax_lo == 1, -one, one))
        b, wb = face_neighbour(x, mask, i, j, 1, 0, bit(flags, 0), wp.where(ax_hi == 1, -one, one))
        c, wc = face_neighbour(x, mask, i, j, 0, -1, bit(flags, 1), wp.where(ay_lo == 1, -one, one))
        d, wd = face_neighbour(x, mask, i, j, 0, 1, bit(flags, 1), wp.where(ay_hi == 1, -one, one))
        return a + b + c + d, wa + wb + wc + wd

    @wp.kernel(module=module, enable_backward=False)
    def apply_diffusion_operator(xu: array2, xv: array2, mask_u: array2, mask_v: array2, alpha: real,
                                 beta: real, dx: real, flags: int, out_u: array2, out_v: array2):
        # alpha x + beta K x on free faces (K: negated face Laplacian), alpha x on solid faces
        i, j = wp.tid()
        scale = beta / (dx * dx)
        if i < xu.shape[0] and j < xu.shape[1]:
            lap, diag = face_laplacian(xu, mask_u, i, j, 1, flags)
            out_u[i, j] = alpha * xu[i, j] + mask_u[i, j] * scale * lap
        if i < xv.shape[0] and j < xv.shape[1]:
            lap, diag = face_laplacian(xv, mask_v, i, j, 2, flags)
            out_v[i, j] = alpha * xv[i, j] + mask_v[i, j] * scale * lap

    @wp.kernel(module=module, enable_backward=False)
    def diffusion_diagonal(xu: array2, xv: array2, mask_u: array2, mask_v: array2, alpha: real, beta: real,
                           dx: real, flags: int, out_u: array2, out_v: array2):
        i, j = wp.tid()
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
    import warp as wp

    module = f"hybridsim_grid_fluid_inflow{source_count}_{real.__name__}"
    array2 = wp.array2d[real]
    array1 = wp.array[real]
    zero, half, one = real(0.0), real(0.5), real(1.0)

    @wp.func(module=module)
    def smooth_coverage(e: real):
        # C1 ramp from 0 to 1 over one cell across the shape's edge
        s = wp.clamp(e + half, zero, one)
        return s * s * (real(3.0) - real(2.0) * s)

    @wp.func(module=module)
    def coverage(x: real, y: real, center: array2, size: array2, is_box: array1, s: int, dx: real):
        ox = x - center[s, 0]
        oy = y - center[s, 1]
        distance = wp.sqrt(ox * ox + oy * oy + real(1.0e-20))
        disc = smooth_coverage((size[s, 0] - distance) / dx)
        box = (smooth_coverage((size[s, 0] - wp.abs(ox)) / dx)
               * smooth_coverage((size[s, 1] - wp.abs(oy)) / dx))
        return is_box[s] * box + (one - is_box[s]) * disc

    @wp.kernel(module=module)
    def add_inflow(density: array2, center: array2, size: array2, rate: array1, is_box: array1, dx: real,
                   dt: real, density_out: array2):
        # sources add rate * coverage * dt; soft coverage makes the amount smooth in the centre
        i, j = wp.tid()
        x = (real(i) + half) * dx
        y = (real(j) + half) * dx
        total = zero
        for s in range(source_count):
            total = total + rate[s] * coverage(x, y, center, size, is_box, s, dx)
        density_out[i, j] = density[i, j] + dt * total

    @wp.kernel(module=module)
    def heat_inflow(temperature: array2, center: array2, size: array2, source_temperature: array1,
                    heats: array1, is_box: array1, dx: real, temperature_out: array2):
        # each heating source (heats = 1) holds its temperature inside its shape, blended by the soft coverage
        i, j = wp.tid()
        x = (real(i) + half) * dx
        y = (real(j) + half) * dx
        value = temperature[i, j]
        for s in range(source_count):
            weight = heats[s] * coverage(x, y, center, size, is_box, s, dx)
            value = value + weight * (source_temperature[s] - value)
        temperature_out[i, j] = value

    return SimpleNamespace(add_inflow=add_inflow, heat_inflow=heat_inflow)
