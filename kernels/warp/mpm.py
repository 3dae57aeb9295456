"""Warp kernels of the MLS-MPM solver (APIC transfers, quadratic B-splines), 2D and 3D.

One substep is ``p2g`` -> ``grid_update`` -> ``g2p`` -> ``project_plasticity``; the grid is a
fresh, zeroed flat array per substep (node (i, j, k) at ``(i * ny + j) * nz + k``, ``nz = 1``
in 2D). Kernels are dimension-generic: the 3x3(x3) stencil is three unrolled loops whose
innermost one has length 1 in 2D. ``project_plasticity`` (the only SVD) is not differentiated
by Warp: ``project_plasticity_adjoint`` is its hand-written, guarded adjoint.

Numerics shared with kernels/taichi/mpm.py and hybridsim/solvers/mpm/reference.py:
Kirchhoff stress tau = P F^T,
  liquid:  tau = K J (J - 1) I + J eta (C + C^T),  K = lam + 2 mu / dim
  elastic: tau = mu (F F^T - I) + lam log(max(J, J_MIN)) I + J eta (C + C^T)  (neo-Hookean)
  snow:    the elastic tau scaled by h = clamp(exp(xi (1 - Jp)), 0.1, 5); singular values of
           F clamped to [1 - theta_c, 1 + theta_s] after each substep.
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
def mpm_kernels(real, dim: int):
    """Return a namespace of the MPM kernels for scalar type ``real`` and ``dim`` in {2, 3}."""
    import types

    import warp as wp

    vec = wp.types.vector(dim, real)
    mat = wp.types.matrix(shape=(dim, dim), dtype=real)
    weights_t = wp.types.matrix(shape=(3, dim), dtype=real)
    stencil_z = 3 if dim == 3 else 1
    pair_count = 3 if dim == 3 else 1
    inv_dim_two = 2.0 / dim

    if dim == 2:

        @wp.func
        def node_offset(a: int, b: int, c: int):
            return vec(real(a), real(b))

        @wp.func
        def node_weight(w: weights_t, a: int, b: int, c: int):
            return w[a, 0] * w[b, 1]

    else:

        @wp.func
        def node_offset(a: int, b: int, c: int):
            return vec(real(a), real(b), real(c))

        @wp.func
        def node_weight(w: weights_t, a: int, b: int, c: int):
            return w[a, 0] * w[b, 1] * w[c, 2]

    @wp.func
    def stencil_base(x: vec, origin: vec, inv_dx: real, res: wp.vec3i):
        # lower corner of the 3^dim nodes around x, clamped inside the grid
        xg = (x - origin) * inv_dx
        base = wp.vec3i(0, 0, 0)
        for a in range(dim):
            base[a] = wp.clamp(int(wp.floor(xg[a] - real(0.5))), 0, res[a] - 3)
        return base

    @wp.func
    def stencil_weights(x: vec, origin: vec, inv_dx: real, base: wp.vec3i):
        # quadratic B-spline weights per axis (rows: node 0, 1, 2) and the offset fx in cells
        xg = (x - origin) * inv_dx
        fx = vec()
        w = weights_t()
        for a in range(dim):
            f = xg[a] - real(base[a])
            fx[a] = f
            w[0, a] = real(0.5) * (real(1.5) - f) * (real(1.5) - f)
            w[1, a] = real(0.75) - (f - real(1.0)) * (f - real(1.0))
            w[2, a] = real(0.5) * (f - real(0.5)) * (f - real(0.5))
        return fx, w

    @wp.func
    def kirchhoff_stress(kind: int, F: mat, C: mat, Jp: real, mu: real, lam: real,
                         viscosity: real, hardening: real):
        identity = wp.identity(n=dim, dtype=real)
        J = wp.determinant(F)
        viscous = (J * viscosity) * (C + wp.transpose(C))
        h = real(1.0)
        if kind == MATERIAL_SNOW:
            h = wp.clamp(wp.exp(hardening * (real(1.0) - Jp)), real(HARDENING_MIN), real(HARDENING_MAX))
        log_j = wp.log(wp.max(J, real(J_MIN)))
        tau = h * (mu * (F @ wp.transpose(F) - identity) + (lam * log_j) * identity) + viscous
        if kind == MATERIAL_LIQUID:
            bulk = lam + real(inv_dim_two) * mu
            tau = (bulk * J * (J - real(1.0))) * identity + viscous
        return tau

    @wp.func
    def scatter_particle(
        p: int, position: wp.array(dtype=vec), velocity: wp.array(dtype=vec), affine: wp.array(dtype=mat),
        deformation: wp.array(dtype=mat), plastic_volume: wp.array(dtype=real), kind: wp.array(dtype=wp.int32),
        mass: wp.array(dtype=real), volume: wp.array(dtype=real), mu: wp.array(dtype=real),
        lam: wp.array(dtype=real), viscosity: wp.array(dtype=real), hardening: wp.array(dtype=real),
        force: wp.array(dtype=vec), origin: vec, dx: real, res: wp.vec3i, dt: real,
        grid_momentum: wp.array(dtype=vec), grid_mass: wp.array(dtype=real),
    ):
        inv_dx = real(1.0) / dx
        x = position[p]
        base = stencil_base(x, origin, inv_dx, res)
        fx, w = stencil_weights(x, origin, inv_dx, base)
        m = mass[p]
        tau = kirchhoff_stress(kind[p], deformation[p], affine[p], plastic_volume[p], mu[p], lam[p],
                               viscosity[p], hardening[p])
        # MLS-MPM: stress impulse and APIC affine momentum share one matrix
        stress_scale = -dt * volume[p] * real(4.0) * inv_dx * inv_dx
        apic = stress_scale * tau + m * affine[p]
        momentum = m * velocity[p] + dt * force[p]
        for a in range(3):
            for b in range(3):
                for c in range(stencil_z):
                    dpos = (node_offset(a, b, c) - fx) * dx
                    weight = node_weight(w, a, b, c)
                    node = ((base[0] + a) * res[1] + base[1] + b) * res[2] + base[2] + c
                    wp.atomic_add(grid_momentum, node, weight * (momentum + apic @ dpos))
                    wp.atomic_add(grid_mass, node, weight * m)

    @wp.kernel(module="unique")
    def p2g(
        position: wp.array(dtype=vec), velocity: wp.array(dtype=vec), affine: wp.array(dtype=mat),
        deformation: wp.array(dtype=mat), plastic_volume: wp.array(dtype=real), kind: wp.array(dtype=wp.int32),
        mass: wp.array(dtype=real), volume: wp.array(dtype=real), mu: wp.array(dtype=real),
        lam: wp.array(dtype=real), viscosity: wp.array(dtype=real), hardening: wp.array(dtype=real),
        force: wp.array(dtype=vec), origin: vec, dx: real, res: wp.vec3i, dt: real,
        grid_momentum: wp.array(dtype=vec), grid_mass: wp.array(dtype=real),
    ):
        p = wp.tid()
        scatter_particle(p, position, velocity, affine, deformation, plastic_volume, kind, mass, volume, mu, lam,
                         viscosity, hardening, force, origin, dx, res, dt, grid_momentum, grid_mass)

    @wp.kernel(module="unique")
    def p2g_ordered(
        position: wp.array(dtype=vec), velocity: wp.array(dtype=vec), affine: wp.array(dtype=mat),
        deformation: wp.array(dtype=mat), plastic_volume: wp.array(dtype=real), kind: wp.array(dtype=wp.int32),
        mass: wp.array(dtype=real), volume: wp.array(dtype=real), mu: wp.array(dtype=real),
        lam: wp.array(dtype=real), viscosity: wp.array(dtype=real), hardening: wp.array(dtype=real),
        force: wp.array(dtype=vec), origin: vec, dx: real, res: wp.vec3i, dt: real,
        grid_momentum: wp.array(dtype=vec), grid_mass: wp.array(dtype=real),
    ):
        # deterministic mode on GPUs: one thread scatters every particle in index order
        for p in range(position.shape[0]):
            scatter_particle(p, position, velocity, affine, deformation, plastic_volume, kind, mass, volume, mu,
                             lam, viscosity, hardening, force, origin, dx, res, dt, grid_momentum, grid_mass)

    @wp.kernel(module="unique")
    def grid_update(
        grid_momentum: wp.array(dtype=vec), grid_mass: wp.array(dtype=real), gravity: vec, res: wp.vec3i,
        boundary_cells: int, wall_mode: int, dt: real, grid_velocity: wp.array(dtype=vec),
    ):
        n = wp.tid()
        m = grid_mass[n]
        v = vec()
        if m > real(0.0):
            v = grid_momentum[n] / m + dt * gravity
        node = wp.vec3i(n // (res[1] * res[2]), (n // res[2]) % res[1], n % res[2])
        identity = wp.identity(n=dim, dtype=real)
        # walls: a band of boundary_cells nodes on every face of the domain
        in_band = real(0.0)
        for a in range(dim):
            lower = node[a] < boundary_cells
            upper = node[a] >= res[a] - boundary_cells
            hit = real(0.0)
            if wall_mode == WALL_SEPARATE:
                if (lower and v[a] < real(0.0)) or (upper and v[a] > real(0.0)):
                    hit = real(1.0)
            elif lower or upper:
                hit = real(1.0)
            in_band = wp.max(in_band, hit)
            v = v - identity[a] * (v[a] * hit)
        if wall_mode == WALL_NO_SLIP:
            v = v * (real(1.0) - in_band)
        grid_velocity[n] = v

    @wp.func
    def gather_particle(
        p: int, grid_velocity: wp.array(dtype=vec), position: wp.array(dtype=vec), deformation: wp.array(dtype=mat),
        kind: wp.array(dtype=wp.int32), origin: vec, dx: real, res: wp.vec3i, dt: real,
        position_out: wp.array(dtype=vec), velocity_out: wp.array(dtype=vec), affine_out: wp.array(dtype=mat),
        deformation_trial: wp.array(dtype=mat),
    ):
        inv_dx = real(1.0) / dx
        x = position[p]
        base = stencil_base(x, origin, inv_dx, res)
        fx, w = stencil_weights(x, origin, inv_dx, base)
        v_new = vec()
        b_matrix = mat()
        for a in range(3):
            for b in range(3):
                for c in range(stencil_z):
                    dpos = (node_offset(a, b, c) - fx) * dx
                    weight = node_weight(w, a, b, c)
                    node = ((base[0] + a) * res[1] + base[1] + b) * res[2] + base[2] + c
                    gv = grid_velocity[node]
                    v_new = v_new + weight * gv
                    b_matrix = b_matrix + weight * wp.outer(gv, dpos)
        c_new = (real(4.0) * inv_dx * inv_dx) * b_matrix
        identity = wp.identity(n=dim, dtype=real)
        f_new = (identity + dt * c_new) @ deformation[p]
        if kind[p] == MATERIAL_LIQUID:
            # a liquid remembers only its volume ratio: F = diag(J, 1, ...)
            e_0 = identity[0]
            f_new = identity + (wp.determinant(f_new) - real(1.0)) * wp.outer(e_0, e_0)
        position_out[p] = x + dt * v_new
        velocity_out[p] = v_new
        affine_out[p] = c_new
        deformation_trial[p] = f_new

    @wp.kernel(module="unique")
    def g2p(
        grid_velocity: wp.array(dtype=vec), position: wp.array(dtype=vec), deformation: wp.array(dtype=mat),
        kind: wp.array(dtype=wp.int32), origin: vec, dx: real, res: wp.vec3i, dt: real,
        position_out: wp.array(dtype=vec), velocity_out: wp.array(dtype=vec), affine_out: wp.array(dtype=mat),
        deformation_trial: wp.array(dtype=mat),
    ):
        p = wp.tid()
        gather_particle(p, grid_velocity, position, deformation, kind, origin, dx, res, dt,
                        position_out, velocity_out, affine_out, deformation_trial)

    @wp.kernel(module="unique")
    def g2p_ordered(
        grid_velocity: wp.array(dtype=vec), position: wp.array(dtype=vec), deformation: wp.array(dtype=mat),
        kind: wp.array(dtype=wp.int32), origin: vec, dx: real, res: wp.vec3i, dt: real,
        position_out: wp.array(dtype=vec), velocity_out: wp.array(dtype=vec), affine_out: wp.array(dtype=mat),
        deformation_trial: wp.array(dtype=mat),
    ):
        # deterministic mode on GPUs: the adjoint scatters into the grid, so it runs on one thread
        for p in range(position.shape[0]):
            gather_particle(p, grid_velocity, position, deformation, kind, origin, dx, res, dt,
                            position_out, velocity_out, affine_out, deformation_trial)

    @wp.func
    def jacobi_svd(F: mat):
        # one-sided Jacobi: eigenvectors V of F^T F by cyclic rotations (a fixed sweep count),
        # sigma = sqrt(eigenvalues), U = F V / sigma; sigma >= 0, no sorting
        a_sym = wp.transpose(F) @ F
        v_rot = wp.identity(n=dim, dtype=real)
        for sweep in range(JACOBI_SWEEPS):
            for pair in range(pair_count):
                p = 0
                q = 1
                if pair == 1:
                    q = 2
                if pair == 2:
                    p = 1
                    q = 2
                apq = a_sym[p, q]
                if wp.abs(apq) > real(JACOBI_TOLERANCE) * (wp.abs(a_sym[p, p]) + wp.abs(a_sym[q, q])):
                    d = a_sym[q, q] - a_sym[p, p]
                    sign = real(1.0)
                    if d < real(0.0):
                        sign = real(-1.0)
                    t = sign * real(2.0) * apq / (wp.abs(d) + wp.sqrt(d * d + real(4.0) * apq * apq))
                    cos = real(1.0) / wp.sqrt(real(1.0) + t * t)
                    sin = t * cos
                    rot = wp.identity(n=dim, dtype=real)
                    rot[p, p] = cos
                    rot[q, q] = cos
                    rot[p, q] = sin
                    rot[q, p] = -sin
                    a_sym = wp.transpose(rot) @ a_sym @ rot
                    v_rot = v_rot @ rot
        sigma = vec()
        for i in range(dim):
            sigma[i] = wp.sqrt(wp.max(a_sym[i, i], real(0.0)))
        u_rot = F @ v_rot
        for i in range(dim):
            inv = real(1.0) / wp.max(sigma[i], real(SIGMA_MIN))
            for r in range(dim):
                u_rot[r, i] = u_rot[r, i] * inv
        return u_rot, sigma, v_rot

    @wp.kernel(enable_backward=False, module="unique")
    def project_plasticity(
        deformation_trial: wp.array(dtype=mat), plastic_volume: wp.array(dtype=real), kind: wp.array(dtype=wp.int32),
        clamp_low: wp.array(dtype=real), clamp_high: wp.array(dtype=real),
        deformation_out: wp.array(dtype=mat), plastic_volume_out: wp.array(dtype=real),
    ):
        p = wp.tid()
        F = deformation_trial[p]
        jp = plastic_volume[p]
        if kind[p] == MATERIAL_SNOW:
            u_rot, sigma, v_rot = jacobi_svd(F)
            ratio = real(1.0)
            clamped = int(0)
            projected = mat()
            for i in range(dim):
                s = sigma[i]
                g = wp.clamp(s, clamp_low[p], clamp_high[p])
                if g != s:
                    clamped = 1
                ratio = ratio * (s / g)
                projected = projected + g * wp.outer(wp.transpose(u_rot)[i], wp.transpose(v_rot)[i])
            if clamped == 1:
                F = projected
                jp = jp * ratio
        deformation_out[p] = F
        plastic_volume_out[p] = jp

    @wp.kernel(enable_backward=False, module="unique")
    def project_plasticity_adjoint(
        deformation_trial: wp.array(dtype=mat), plastic_volume: wp.array(dtype=real), kind: wp.array(dtype=wp.int32),
        clamp_low: wp.array(dtype=real), clamp_high: wp.array(dtype=real),
        adj_deformation_out: wp.array(dtype=mat), adj_plastic_volume_out: wp.array(dtype=real),
        adj_deformation_trial: wp.array(dtype=mat), adj_plastic_volume: wp.array(dtype=real),
    ):
        # adjoint of F -> U clamp(S) V^T, Jp -> Jp prod(s / clamp(s)) in the singular frame:
        # A_ii = g'_i M_ii, A_ij = (alpha (M_ij + M_ji) + beta (M_ij - M_ji)) / 2 with
        # alpha = (g_i - g_j) / (s_i - s_j) (-> (g'_i + g'_j) / 2 for equal s), beta = (g_i + g_j) / (s_i + s_j)
        p = wp.tid()
        F = deformation_trial[p]
        adj_f = adj_deformation_out[p]
        adj_jp_out = adj_plastic_volume_out[p]
        adj_jp = adj_jp_out
        if kind[p] == MATERIAL_SNOW:
            u_rot, sigma, v_rot = jacobi_svd(F)
            low = clamp_low[p]
            high = clamp_high[p]
            g = vec()
            slope = vec()
            ratio = real(1.0)
            clamped = int(0)
            for i in range(dim):
                g[i] = wp.clamp(sigma[i], low, high)
                if g[i] == sigma[i]:
                    slope[i] = real(1.0)
                else:
                    clamped = 1
                ratio = ratio * (sigma[i] / g[i])
            if clamped == 1:
                adj_jp = adj_jp_out * ratio
                m_rot = wp.transpose(u_rot) @ adj_f @ v_rot
                a_rot = mat()
                jp_new = plastic_volume[p] * ratio
                for i in range(dim):
                    a_rot[i, i] = slope[i] * m_rot[i, i] + adj_jp_out * jp_new * (real(1.0) - slope[i]) / wp.max(
                        sigma[i], real(SIGMA_MIN))
                    for j in range(dim):
                        if j != i:
                            gap = sigma[i] - sigma[j]
                            alpha = real(0.5) * (slope[i] + slope[j])
                            if wp.abs(gap) > real(SIGMA_MIN):
                                alpha = (g[i] - g[j]) / gap
                            beta = (g[i] + g[j]) / wp.max(sigma[i] + sigma[j], real(SIGMA_MIN))
                            sym = m_rot[i, j] + m_rot[j, i]
                            skew = m_rot[i, j] - m_rot[j, i]
                            a_rot[i, j] = real(0.5) * (alpha * sym + beta * skew)
                adj_f = u_rot @ a_rot @ wp.transpose(v_rot)
        adj_deformation_trial[p] = adj_f
        adj_plastic_volume[p] = adj_jp

    return types.SimpleNamespace(
        p2g=p2g, p2g_ordered=p2g_ordered, grid_update=grid_update, g2p=g2p, g2p_ordered=g2p_ordered,
        project_plasticity=project_plasticity, project_plasticity_adjoint=project_plasticity_adjoint,
        vec=vec, mat=mat,
    )
