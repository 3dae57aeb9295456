"""Taichi kernels of the MLS-MPM solver: the numerics of kernels/warp/mpm.py, 2D and 3D.

Arrays are torch tensors passed as external ndarrays; ``real`` (ti.f32/ti.f64) fixes the
precision of every literal. The stencil is a ``ti.static`` loop over ``ti.ndrange(3, ..., 3)``
in the same (row-major) node order as Warp's nested loops, and every expression keeps Warp's
operation order, so the two backends agree to round-off.

Two kinds of kernels share the per-particle and per-node ``ti.func`` s:

* differentiated by Taichi (``p2g``, ``grid_update``, ``g2p``; their ``.grad`` are the adjoints):
  branches on the material kind are ``ti.select`` so that the reverse mode sees straight-line code.
* forward-only, fused (``p2g_update``: zero the grid, p2g, grid_update; ``g2p_project``: g2p and
  the plasticity projection per particle; ``substep``: all of it in one launch). They branch on the
  material kind and on empty nodes (``branch=True``), which evaluates only the taken side of the
  same expressions: bit-identical values, less work. ``p2g_update_chunked`` and
  ``substep_chunked`` scatter without atomics: particle chunk c adds into its own grid copy with
  plain read-add-writes, then the copies are summed per node (see
  hybridsim/solvers/mpm/launchers.py, ``_TaichiMPM.scatter_chunks``).

``serialize=True`` builds the particle loops of ``p2g`` and ``g2p`` (and of the fused kernels)
with ``ti.loop_config(serialize=True)``: their scatters (P2G forward, G2P reverse) then run on one
thread in particle order, which makes results and gradients bit-reproducible.
"""

import functools

# material kinds and wall modes; must match hybridsim/solvers/mpm/model.py
MATERIAL_LIQUID = 0
MATERIAL_ELASTIC = 1
MATERIAL_SNOW = 2
WALL_SEPARATE = 0
WALL_SLIP = 1
WALL_NO_SLIP = 2

J_MIN = 1.0e-4  # log(J) guard of the neo-Hookean stress
HARDENING_MIN = 0.1
HARDENING_MAX = 5.0
SIGMA_MIN = 1.0e-12  # guard of 1 / sigma in the SVD
JACOBI_SWEEPS = 8
JACOBI_TOLERANCE = 1.0e-12  # off-diagonal entries below this (relative) count as converged


@functools.cache
def mpm_kernels(real, dim: int, serialize: bool = False):
    """Return a namespace of the MPM kernels for ``real`` (ti.f32/ti.f64) and ``dim`` in {2, 3}."""
    import types

    import taichi as ti

    vec = ti.types.vector(dim, real)
    mat = ti.types.matrix(dim, dim, real)
    vec_arr = ti.types.ndarray(dtype=vec, ndim=1)
    mat_arr = ti.types.ndarray(dtype=mat, ndim=1)
    real_arr = ti.types.ndarray(dtype=real, ndim=1)
    int_arr = ti.types.ndarray(dtype=ti.i32, ndim=1)
    stencil = [3] * dim
    pairs = [(0, 1)] if dim == 2 else [(0, 1), (0, 2), (1, 2)]

    @ti.func
    def stencil_base(x, origin, inv_dx, res):
        # lower corner of the 3^dim nodes around x, clamped inside the grid
        xg = (x - origin) * inv_dx
        base = ti.Vector([0, 0, 0])
        for a in ti.static(range(dim)):
            base[a] = ti.math.clamp(ti.cast(ti.floor(xg[a] - ti.cast(0.5, real)), ti.i32), 0, res[a] - 3)
        return base

    @ti.func
    def stencil_weights(x, origin, inv_dx, base):
        # quadratic B-spline weights per axis (rows: node 0, 1, 2) and the offset fx in cells
        xg = (x - origin) * inv_dx
        fx = vec(0)
        w = ti.Matrix.zero(real, 3, dim)
        for a in ti.static(range(dim)):
            f = xg[a] - ti.cast(base[a], real)
            fx[a] = f
            w[0, a] = ti.cast(0.5, real) * (ti.cast(1.5, real) - f) * (ti.cast(1.5, real) - f)
            w[1, a] = ti.cast(0.75, real) - (f - ti.cast(1.0, real)) * (f - ti.cast(1.0, real))
            w[2, a] = ti.cast(0.5, real) * (f - ti.cast(0.5, real)) * (f - ti.cast(0.5, real))
        return fx, w

    @ti.func
    def matmul(a, b):
        # a @ b with Warp's summation order, built without a mutable local matrix (which makes
        # Taichi's reverse-mode compiler warn about loads before stores)
        return mat([[sum_products(a, b, i, j) for j in ti.static(range(dim))] for i in ti.static(range(dim))])

    @ti.func
    def sum_products(a, b, i: ti.template(), j: ti.template()):
        total = a[i, 0] * b[0, j]
        for k in ti.static(range(1, dim)):
            total = total + a[i, k] * b[k, j]
        return total

    @ti.func
    def node_weight(w, offset):
        weight = w[offset[0], 0]
        for a in ti.static(range(1, dim)):
            weight = weight * w[offset[a], a]
        return weight

    @ti.func
    def node_index(base, offset, res):
        return ((base[0] + offset[0]) * res[1] + base[1] + offset[1]) * res[2] + base[2] + (
            offset[2] if ti.static(dim == 3) else 0)

    @ti.func
    def liquid_stress(F, C, mu, lam, viscosity):
        identity = ti.Matrix.identity(real, dim)
        J = F.determinant()
        viscous = (J * viscosity) * (C + C.transpose())
        bulk = lam + ti.cast(2.0 / dim, real) * mu
        return (bulk * J * (J - ti.cast(1.0, real))) * identity + viscous

    @ti.func
    def solid_stress(F, C, h, mu, lam, viscosity):
        identity = ti.Matrix.identity(real, dim)
        J = F.determinant()
        viscous = (J * viscosity) * (C + C.transpose())
        log_j = ti.log(ti.max(J, ti.cast(J_MIN, real)))
        return h * (mu * (F @ F.transpose() - identity) + (lam * log_j) * identity) + viscous

    @ti.func
    def snow_hardening(Jp, hardening):
        return ti.math.clamp(ti.exp(hardening * (ti.cast(1.0, real) - Jp)), ti.cast(HARDENING_MIN, real),
                             ti.cast(HARDENING_MAX, real))

    @ti.func
    def kirchhoff_stress(kind, F, C, Jp, mu, lam, viscosity, hardening, branch: ti.template()):
        # branch=False: straight-line ti.select code for Taichi's reverse mode (every material's
        # stress is evaluated); branch=True: forward-only kernels evaluate only the particle's own
        # material, with the same expressions, so the value is bit-identical
        tau = mat(0)
        if ti.static(branch):
            if kind == MATERIAL_LIQUID:
                tau = liquid_stress(F, C, mu, lam, viscosity)
            else:
                h = ti.cast(1.0, real)
                if kind == MATERIAL_SNOW:
                    h = snow_hardening(Jp, hardening)
                tau = solid_stress(F, C, h, mu, lam, viscosity)
        else:
            h = ti.select(kind == MATERIAL_SNOW, snow_hardening(Jp, hardening), ti.cast(1.0, real))
            tau = ti.select(kind == MATERIAL_LIQUID, liquid_stress(F, C, mu, lam, viscosity),
                            solid_stress(F, C, h, mu, lam, viscosity))
        return tau

    @ti.func
    def scatter_particle(p, position: ti.template(), velocity: ti.template(), affine: ti.template(),
                         deformation: ti.template(), plastic_volume: ti.template(), kind: ti.template(),
                         mass: ti.template(), volume: ti.template(), mu: ti.template(), lam: ti.template(),
                         viscosity: ti.template(), hardening: ti.template(), force: ti.template(), origin, dx, res, dt,
                         grid_momentum: ti.template(), grid_mass: ti.template(), branch: ti.template(),
                         first_node, private: ti.template()):
        # scatters into nodes first_node + index; private=True: the caller owns those nodes (a chunk's
        # private grid), so plain read-add-writes replace the atomic adds
        inv_dx = ti.cast(1.0, real) / dx
        x = position[p]
        base = stencil_base(x, origin, inv_dx, res)
        fx, w = stencil_weights(x, origin, inv_dx, base)
        m = mass[p]
        tau = kirchhoff_stress(kind[p], deformation[p], affine[p], plastic_volume[p], mu[p], lam[p],
                               viscosity[p], hardening[p], branch)
        # MLS-MPM: stress impulse and APIC affine momentum share one matrix
        stress_scale = -dt * volume[p] * ti.cast(4.0, real) * inv_dx * inv_dx
        apic = stress_scale * tau + m * affine[p]
        momentum = m * velocity[p] + dt * force[p]
        for offset in ti.static(ti.grouped(ti.ndrange(*stencil))):
            dpos = (ti.cast(offset, real) - fx) * dx
            weight = node_weight(w, offset)
            node = first_node + node_index(base, offset, res)
            if ti.static(private):
                grid_momentum[node] = grid_momentum[node] + weight * (momentum + apic @ dpos)
                grid_mass[node] = grid_mass[node] + weight * m
            else:
                grid_momentum[node] += weight * (momentum + apic @ dpos)
                grid_mass[node] += weight * m

    @ti.kernel
    def p2g(position: vec_arr, velocity: vec_arr, affine: mat_arr, deformation: mat_arr, plastic_volume: real_arr,
            kind: int_arr, mass: real_arr, volume: real_arr, mu: real_arr, lam: real_arr, viscosity: real_arr,
            hardening: real_arr, force: vec_arr, origin: vec, dx: real, res: ti.types.vector(3, ti.i32), dt: real,
            grid_momentum: vec_arr, grid_mass: real_arr):
        ti.loop_config(serialize=serialize)
        for p in range(position.shape[0]):
            scatter_particle(p, position, velocity, affine, deformation, plastic_volume, kind, mass, volume, mu, lam,
                             viscosity, hardening, force, origin, dx, res, dt, grid_momentum, grid_mass, False, 0,
                             False)

    @ti.func
    def wall_velocity(n, v, res, boundary_cells, wall_mode):
        # walls: a band of boundary_cells nodes on every face of the domain (n >= 0: raw division)
        node = ti.Vector([ti.raw_div(n, res[1] * res[2]), ti.raw_mod(ti.raw_div(n, res[2]), res[1]),
                          ti.raw_mod(n, res[2])])
        identity = ti.Matrix.identity(real, dim)
        in_band = ti.cast(0.0, real)
        for a in ti.static(range(dim)):
            lower = node[a] < boundary_cells
            upper = node[a] >= res[a] - boundary_cells
            separating = (lower & (v[a] < ti.cast(0.0, real))) | (upper & (v[a] > ti.cast(0.0, real)))
            hit = ti.select(wall_mode == WALL_SEPARATE, ti.select(separating, ti.cast(1.0, real), ti.cast(0.0, real)),
                            ti.select(lower | upper, ti.cast(1.0, real), ti.cast(0.0, real)))
            in_band = ti.max(in_band, hit)
            e_a = vec([identity[a, k] for k in ti.static(range(dim))])
            v = v - e_a * (v[a] * hit)
        return ti.select(wall_mode == WALL_NO_SLIP, v * (ti.cast(1.0, real) - in_band), v)

    @ti.func
    def update_node(n, grid_momentum: ti.template(), grid_mass: ti.template(), gravity, res, boundary_cells, wall_mode,
                    dt, grid_velocity: ti.template(), branch: ti.template()):
        m = grid_mass[n]
        if ti.static(branch):
            # an empty node's velocity is exactly zero through the walls too: skip them
            v = vec(0)
            if m > ti.cast(0.0, real):
                v = wall_velocity(n, grid_momentum[n] / m + dt * gravity, res, boundary_cells, wall_mode)
            grid_velocity[n] = v
        else:
            v = ti.select(m > ti.cast(0.0, real),
                          grid_momentum[n] / ti.select(m > ti.cast(0.0, real), m, ti.cast(1.0, real)) + dt * gravity,
                          vec(0))
            grid_velocity[n] = wall_velocity(n, v, res, boundary_cells, wall_mode)

    @ti.kernel
    def grid_update(grid_momentum: vec_arr, grid_mass: real_arr, gravity: vec, res: ti.types.vector(3, ti.i32),
                    boundary_cells: ti.i32, wall_mode: ti.i32, dt: real, grid_velocity: vec_arr):
        for n in range(grid_mass.shape[0]):
            update_node(n, grid_momentum, grid_mass, gravity, res, boundary_cells, wall_mode, dt, grid_velocity, False)

    @ti.kernel
    def p2g_update(position: vec_arr, velocity: vec_arr, affine: mat_arr, deformation: mat_arr,
                   plastic_volume: real_arr, kind: int_arr, mass: real_arr, volume: real_arr, mu: real_arr,
                   lam: real_arr, viscosity: real_arr, hardening: real_arr, force: vec_arr, origin: vec, dx: real,
                   res: ti.types.vector(3, ti.i32), dt: real, gravity: vec, boundary_cells: ti.i32, wall_mode: ti.i32,
                   grid_momentum: vec_arr, grid_mass: real_arr, grid_velocity: vec_arr):
        # forward only (never differentiated by Taichi): zero the grid, p2g, grid_update in one launch
        for n in range(grid_mass.shape[0]):
            grid_momentum[n] = vec(0)
            grid_mass[n] = ti.cast(0.0, real)
        ti.loop_config(serialize=serialize)
        for p in range(position.shape[0]):
            scatter_particle(p, position, velocity, affine, deformation, plastic_volume, kind, mass, volume, mu, lam,
                             viscosity, hardening, force, origin, dx, res, dt, grid_momentum, grid_mass, True, 0,
                             False)
        for n in range(grid_mass.shape[0]):
            update_node(n, grid_momentum, grid_mass, gravity, res, boundary_cells, wall_mode, dt, grid_velocity, True)

    @ti.func
    def sum_chunks(n, chunks, private_momentum: ti.template(), private_mass: ti.template(),
                   grid_momentum: ti.template(), grid_mass: ti.template()):
        # node n of the grid = its private copies summed in chunk order (copy 0 first: exact for one chunk)
        node_count = grid_mass.shape[0]
        momentum = private_momentum[n]
        m = private_mass[n]
        for c in range(1, chunks):
            momentum = momentum + private_momentum[c * node_count + n]
            m = m + private_mass[c * node_count + n]
        grid_momentum[n] = momentum
        grid_mass[n] = m

    @ti.kernel
    def p2g_update_chunked(position: vec_arr, velocity: vec_arr, affine: mat_arr, deformation: mat_arr,
                           plastic_volume: real_arr, kind: int_arr, mass: real_arr, volume: real_arr, mu: real_arr,
                           lam: real_arr, viscosity: real_arr, hardening: real_arr, force: vec_arr, origin: vec,
                           dx: real, res: ti.types.vector(3, ti.i32), dt: real, gravity: vec, boundary_cells: ti.i32,
                           wall_mode: ti.i32, grid_momentum: vec_arr, grid_mass: real_arr, grid_velocity: vec_arr,
                           chunks: ti.i32, private_momentum: vec_arr, private_mass: real_arr):
        # forward only, CPU: p2g_update without atomics. Particle chunk c scatters, in particle order on
        # one thread, into its own grid copy (nodes c * G ...); the copies are then summed per node.
        # With chunks = 1 the private copy may be the grid itself.
        for n in range(private_mass.shape[0]):
            private_momentum[n] = vec(0)
            private_mass[n] = ti.cast(0.0, real)
        ti.loop_config(block_dim=1)
        for c in range(chunks):
            count = position.shape[0]
            for p in range(c * count // chunks, (c + 1) * count // chunks):
                scatter_particle(p, position, velocity, affine, deformation, plastic_volume, kind, mass, volume, mu,
                                 lam, viscosity, hardening, force, origin, dx, res, dt, private_momentum,
                                 private_mass, True, c * grid_mass.shape[0], True)
        for n in range(grid_mass.shape[0]):
            sum_chunks(n, chunks, private_momentum, private_mass, grid_momentum, grid_mass)
            update_node(n, grid_momentum, grid_mass, gravity, res, boundary_cells, wall_mode, dt, grid_velocity, True)

    @ti.func
    def gather_particle(p, grid_velocity: ti.template(), position: ti.template(), deformation: ti.template(),
                        kind: ti.template(), origin, dx, res, dt, position_out: ti.template(),
                        velocity_out: ti.template(), affine_out: ti.template()):
        # writes x, v, C of particle p and returns its trial deformation gradient
        inv_dx = ti.cast(1.0, real) / dx
        x = position[p]
        base = stencil_base(x, origin, inv_dx, res)
        fx, w = stencil_weights(x, origin, inv_dx, base)
        v_new = vec(0)
        b_matrix = mat(0)
        for offset in ti.static(ti.grouped(ti.ndrange(*stencil))):
            dpos = (ti.cast(offset, real) - fx) * dx
            weight = node_weight(w, offset)
            gv = grid_velocity[node_index(base, offset, res)]
            v_new = v_new + weight * gv
            b_matrix = b_matrix + weight * gv.outer_product(dpos)
        c_new = (ti.cast(4.0, real) * inv_dx * inv_dx) * b_matrix
        f_new = matmul(ti.Matrix.identity(real, dim) + dt * c_new, deformation[p])
        # a liquid remembers only its volume ratio: F = diag(J, 1, ...)
        identity = ti.Matrix.identity(real, dim)
        e_0 = vec([identity[0, k] for k in ti.static(range(dim))])
        f_liquid = identity + (f_new.determinant() - ti.cast(1.0, real)) * e_0.outer_product(e_0)
        position_out[p] = x + dt * v_new
        velocity_out[p] = v_new
        affine_out[p] = c_new
        return ti.select(kind[p] == MATERIAL_LIQUID, f_liquid, f_new)

    @ti.kernel
    def g2p(grid_velocity: vec_arr, position: vec_arr, deformation: mat_arr, kind: int_arr, origin: vec, dx: real,
            res: ti.types.vector(3, ti.i32), dt: real, position_out: vec_arr, velocity_out: vec_arr,
            affine_out: mat_arr, deformation_trial: mat_arr):
        ti.loop_config(serialize=serialize)
        for p in range(position.shape[0]):
            deformation_trial[p] = gather_particle(p, grid_velocity, position, deformation, kind, origin, dx, res, dt,
                                                   position_out, velocity_out, affine_out)

    @ti.func
    def jacobi_svd(F):
        # one-sided Jacobi: eigenvectors V of F^T F by cyclic rotations (a fixed sweep count),
        # sigma = sqrt(eigenvalues), U = F V / sigma; sigma >= 0, no sorting
        a_sym = F.transpose() @ F
        v_rot = ti.Matrix.identity(real, dim)
        for _sweep in range(JACOBI_SWEEPS):
            for pq in ti.static(pairs):
                p, q = ti.static(pq[0], pq[1])
                apq = a_sym[p, q]
                if ti.abs(apq) > ti.cast(JACOBI_TOLERANCE, real) * (ti.abs(a_sym[p, p]) + ti.abs(a_sym[q, q])):
                    d = a_sym[q, q] - a_sym[p, p]
                    sign = ti.cast(1.0, real)
                    if d < ti.cast(0.0, real):
                        sign = ti.cast(-1.0, real)
                    t = sign * ti.cast(2.0, real) * apq / (ti.abs(d) + ti.sqrt(d * d + ti.cast(4.0, real) * apq * apq))
                    cos = ti.cast(1.0, real) / ti.sqrt(ti.cast(1.0, real) + t * t)
                    sin = t * cos
                    rot = ti.Matrix.identity(real, dim)
                    rot[p, p] = cos
                    rot[q, q] = cos
                    rot[p, q] = sin
                    rot[q, p] = -sin
                    a_sym = rot.transpose() @ a_sym @ rot
                    v_rot = v_rot @ rot
        sigma = vec(0)
        for i in ti.static(range(dim)):
            sigma[i] = ti.sqrt(ti.max(a_sym[i, i], ti.cast(0.0, real)))
        u_rot = F @ v_rot
        for i in ti.static(range(dim)):
            inv = ti.cast(1.0, real) / ti.max(sigma[i], ti.cast(SIGMA_MIN, real))
            for r in ti.static(range(dim)):
                u_rot[r, i] = u_rot[r, i] * inv
        return u_rot, sigma, v_rot

    @ti.func
    def column(matrix, i):
        return vec([matrix[r, i] for r in ti.static(range(dim))])

    @ti.func
    def project_particle(F, jp, kind, low, high):
        if kind == MATERIAL_SNOW:
            u_rot, sigma, v_rot = jacobi_svd(F)
            ratio = ti.cast(1.0, real)
            clamped = 0
            projected = mat(0)
            for i in ti.static(range(dim)):
                s = sigma[i]
                g = ti.math.clamp(s, low, high)
                if g != s:
                    clamped = 1
                ratio = ratio * (s / g)
                projected = projected + g * column(u_rot, i).outer_product(column(v_rot, i))
            if clamped == 1:
                F = projected
                jp = jp * ratio
        return F, jp

    @ti.kernel
    def project_plasticity(deformation_trial: mat_arr, plastic_volume: real_arr, kind: int_arr, clamp_low: real_arr,
                           clamp_high: real_arr, deformation_out: mat_arr, plastic_volume_out: real_arr):
        for p in range(deformation_trial.shape[0]):
            F, jp = project_particle(deformation_trial[p], plastic_volume[p], kind[p], clamp_low[p], clamp_high[p])
            deformation_out[p] = F
            plastic_volume_out[p] = jp

    @ti.func
    def gather_project(p, grid_velocity: ti.template(), position: ti.template(), deformation: ti.template(),
                       plastic_volume: ti.template(), kind: ti.template(), clamp_low: ti.template(),
                       clamp_high: ti.template(), origin, dx, res, dt, position_out: ti.template(),
                       velocity_out: ti.template(), affine_out: ti.template(), deformation_trial: ti.template(),
                       deformation_out: ti.template(), plastic_volume_out: ti.template(), keep_trial: ti.template()):
        trial = gather_particle(p, grid_velocity, position, deformation, kind, origin, dx, res, dt, position_out,
                                velocity_out, affine_out)
        if ti.static(keep_trial):  # the adjoint of the projection needs it
            deformation_trial[p] = trial
        F, jp = project_particle(trial, plastic_volume[p], kind[p], clamp_low[p], clamp_high[p])
        deformation_out[p] = F
        plastic_volume_out[p] = jp

    @ti.kernel
    def g2p_project(grid_velocity: vec_arr, position: vec_arr, deformation: mat_arr, plastic_volume: real_arr,
                    kind: int_arr, clamp_low: real_arr, clamp_high: real_arr, origin: vec, dx: real,
                    res: ti.types.vector(3, ti.i32), dt: real, position_out: vec_arr, velocity_out: vec_arr,
                    affine_out: mat_arr, deformation_trial: mat_arr, deformation_out: mat_arr,
                    plastic_volume_out: real_arr):
        # forward only (never differentiated by Taichi): g2p then project_plasticity, one loop
        ti.loop_config(serialize=serialize)
        for p in range(position.shape[0]):
            gather_project(p, grid_velocity, position, deformation, plastic_volume, kind, clamp_low, clamp_high,
                           origin, dx, res, dt, position_out, velocity_out, affine_out, deformation_trial,
                           deformation_out, plastic_volume_out, True)

    @ti.kernel
    def substep(position: vec_arr, velocity: vec_arr, affine: mat_arr, deformation: mat_arr,
                plastic_volume: real_arr, kind: int_arr, mass: real_arr, volume: real_arr, mu: real_arr,
                lam: real_arr, viscosity: real_arr, hardening: real_arr, force: vec_arr, clamp_low: real_arr,
                clamp_high: real_arr, origin: vec, dx: real, res: ti.types.vector(3, ti.i32), dt: real, gravity: vec,
                boundary_cells: ti.i32, wall_mode: ti.i32, grid_momentum: vec_arr, grid_mass: real_arr,
                grid_velocity: vec_arr, position_out: vec_arr, velocity_out: vec_arr, affine_out: mat_arr,
                deformation_out: mat_arr, plastic_volume_out: real_arr):
        # forward only: a whole raw substep without grid hooks (p2g_update then g2p_project) in one
        # launch; the trial F is not kept (no adjoint follows)
        for n in range(grid_mass.shape[0]):
            grid_momentum[n] = vec(0)
            grid_mass[n] = ti.cast(0.0, real)
        ti.loop_config(serialize=serialize)
        for p in range(position.shape[0]):
            scatter_particle(p, position, velocity, affine, deformation, plastic_volume, kind, mass, volume, mu, lam,
                             viscosity, hardening, force, origin, dx, res, dt, grid_momentum, grid_mass, True, 0,
                             False)
        for n in range(grid_mass.shape[0]):
            update_node(n, grid_momentum, grid_mass, gravity, res, boundary_cells, wall_mode, dt, grid_velocity, True)
        ti.loop_config(serialize=serialize)
        for p in range(position.shape[0]):
            gather_project(p, grid_velocity, position, deformation, plastic_volume, kind, clamp_low, clamp_high,
                           origin, dx, res, dt, position_out, velocity_out, affine_out, deformation_out,
                           deformation_out, plastic_volume_out, False)

    @ti.kernel
    def substep_chunked(position: vec_arr, velocity: vec_arr, affine: mat_arr, deformation: mat_arr,
                        plastic_volume: real_arr, kind: int_arr, mass: real_arr, volume: real_arr, mu: real_arr,
                        lam: real_arr, viscosity: real_arr, hardening: real_arr, force: vec_arr, clamp_low: real_arr,
                        clamp_high: real_arr, origin: vec, dx: real, res: ti.types.vector(3, ti.i32), dt: real,
                        gravity: vec, boundary_cells: ti.i32, wall_mode: ti.i32, grid_momentum: vec_arr,
                        grid_mass: real_arr, grid_velocity: vec_arr, position_out: vec_arr, velocity_out: vec_arr,
                        affine_out: mat_arr, deformation_out: mat_arr, plastic_volume_out: real_arr, chunks: ti.i32,
                        private_momentum: vec_arr, private_mass: real_arr):
        # substep with the scatter of p2g_update_chunked
        for n in range(private_mass.shape[0]):
            private_momentum[n] = vec(0)
            private_mass[n] = ti.cast(0.0, real)
        ti.loop_config(block_dim=1)
        for c in range(chunks):
            count = position.shape[0]
            for p in range(c * count // chunks, (c + 1) * count // chunks):
                scatter_particle(p, position, velocity, affine, deformation, plastic_volume, kind, mass, volume, mu,
                                 lam, viscosity, hardening, force, origin, dx, res, dt, private_momentum,
                                 private_mass, True, c * grid_mass.shape[0], True)
        for n in range(grid_mass.shape[0]):
            sum_chunks(n, chunks, private_momentum, private_mass, grid_momentum, grid_mass)
            update_node(n, grid_momentum, grid_mass, gravity, res, boundary_cells, wall_mode, dt, grid_velocity, True)
        for p in range(position.shape[0]):
            gather_project(p, grid_velocity, position, deformation, plastic_volume, kind, clamp_low, clamp_high,
                           origin, dx, res, dt, position_out, velocity_out, affine_out, deformation_out,
                           deformation_out, plastic_volume_out, False)

    @ti.kernel
    def project_plasticity_adjoint(deformation_trial: mat_arr, plastic_volume: real_arr, kind: int_arr,
                                   clamp_low: real_arr, clamp_high: real_arr, adj_deformation_out: mat_arr,
                                   adj_plastic_volume_out: real_arr, adj_deformation_trial: mat_arr,
                                   adj_plastic_volume: real_arr):
        # the guarded adjoint of project_plasticity, term for term as in kernels/warp/mpm.py
        for p in range(deformation_trial.shape[0]):
            F = deformation_trial[p]
            adj_f = adj_deformation_out[p]
            adj_jp_out = adj_plastic_volume_out[p]
            adj_jp = adj_jp_out
            if kind[p] == MATERIAL_SNOW:
                u_rot, sigma, v_rot = jacobi_svd(F)
                low = clamp_low[p]
                high = clamp_high[p]
                g = vec(0)
                slope = vec(0)
                ratio = ti.cast(1.0, real)
                clamped = 0
                for i in ti.static(range(dim)):
                    g[i] = ti.math.clamp(sigma[i], low, high)
                    if g[i] == sigma[i]:
                        slope[i] = ti.cast(1.0, real)
                    else:
                        clamped = 1
                    ratio = ratio * (sigma[i] / g[i])
                if clamped == 1:
                    adj_jp = adj_jp_out * ratio
                    m_rot = u_rot.transpose() @ adj_f @ v_rot
                    a_rot = mat(0)
                    jp_new = plastic_volume[p] * ratio
                    for i in ti.static(range(dim)):
                        a_rot[i, i] = slope[i] * m_rot[i, i] + adj_jp_out * jp_new * (ti.cast(1.0, real) - slope[i]) / ti.max(
                            sigma[i], ti.cast(SIGMA_MIN, real))
                        for j in ti.static(range(dim)):
                            if ti.static(j != i):
                                gap = sigma[i] - sigma[j]
                                alpha = ti.cast(0.5, real) * (slope[i] + slope[j])
                                if ti.abs(gap) > ti.cast(SIGMA_MIN, real):
                                    alpha = (g[i] - g[j]) / gap
                                beta = (g[i] + g[j]) / ti.max(sigma[i] + sigma[j], ti.cast(SIGMA_MIN, real))
                                sym = m_rot[i, j] + m_rot[j, i]
                                skew = m_rot[i, j] - m_rot[j, i]
                                a_rot[i, j] = ti.cast(0.5, real) * (alpha * sym + beta * skew)
                    adj_f = u_rot @ a_rot @ v_rot.transpose()
            adj_deformation_trial[p] = adj_f
            adj_plastic_volume[p] = adj_jp

    return types.SimpleNamespace(p2g=p2g, grid_update=grid_update, g2p=g2p, project_plasticity=project_plasticity,
                                 project_plasticity_adjoint=project_plasticity_adjoint, p2g_update=p2g_update,
                                 g2p_project=g2p_project, substep=substep,
                                 p2g_update_chunked=p2g_update_chunked, substep_chunked=substep_chunked)
