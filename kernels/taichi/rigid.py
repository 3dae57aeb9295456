"""Taichi kernels of the rigid-body solver: the phases and arithmetic of kernels/warp/rigid.py.

Arrays are torch tensors passed as external ndarrays; ``real`` (ti.f32/ti.f64) types every
literal. Selections are branch-free (``ti.select``) so the reverse mode (``kernel.grad``) stays
exact; the two solve kernels walk (pass, slot) pairs in one serial inner loop that writes each
history record once, which Taichi's reverse mode replays backwards (one thread per world, each
over its own range of slots: worlds share no body; an inactive slot only passes both velocities
through, ``pass_through``, as in the Warp kernels); ``slot_bodies`` and
``record_slot`` are the part they share. Quaternions are vec4 (x, y, z, w). The hull plane of a
convex-mesh slot is picked by ``select_hull_planes`` (integers only; the solver runs no reverse
pass for it): Taichi 1.7.4's reverse mode crashes on a run-time inner loop that carries a local
(a probe with an argmax over ndarray rows segfaulted), so ``collide`` has none. Edge-edge slots
(kind 6) get their edge pair the same way (``select_edge_pair``); ``collide`` computes their
contact (``hull_edge_contact``) branch-free for every slot, from row 0 and two fixed unit edges
where it is not selected.
"""


import functools


@functools.cache
def rigid_kernels(real):
    """Return a namespace of the rigid-body kernels for scalar type ``real`` (ti.f32/ti.f64)."""
    import types

    import taichi as ti

    vec3 = ti.types.vector(3, real)
    vec4 = ti.types.vector(4, real)
    mat33 = ti.types.matrix(3, 3, real)
    ivec2 = ti.types.vector(2, ti.i32)
    WORLD_PAD = 4096  # iterations of the solves' world loop (see solve_velocity)
    a_vec3 = ti.types.ndarray(dtype=vec3, ndim=1)
    a_vec4 = ti.types.ndarray(dtype=vec4, ndim=1)
    a_mat = ti.types.ndarray(dtype=mat33, ndim=1)
    a_real = ti.types.ndarray(dtype=real, ndim=1)
    a_int = ti.types.ndarray(dtype=ti.i32, ndim=1)
    a_ivec2 = ti.types.ndarray(dtype=ivec2, ndim=1)

    @ti.func
    def lit(x):
        return ti.cast(x, real)

    @ti.func
    def quat_mul(a, b):
        return vec4(
            a[3] * b[0] + a[0] * b[3] + a[1] * b[2] - a[2] * b[1],
            a[3] * b[1] - a[0] * b[2] + a[1] * b[3] + a[2] * b[0],
            a[3] * b[2] + a[0] * b[1] - a[1] * b[0] + a[2] * b[3],
            a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2],
        )

    @ti.func
    def quat_rotate(q, v):
        u = vec3(q[0], q[1], q[2])
        t = lit(2.0) * u.cross(v)
        return v + q[3] * t + u.cross(t)

    @ti.func
    def quat_rotate_inv(q, v):
        return quat_rotate(vec4(-q[0], -q[1], -q[2], q[3]), v)

    @ti.func
    def quat_normalize(q):
        return q / ti.sqrt(q.dot(q))

    @ti.func
    def quat_axis_angle(axis, angle):
        s = ti.sin(lit(0.5) * angle)
        return vec4(axis[0] * s, axis[1] * s, axis[2] * s, ti.cos(lit(0.5) * angle))

    @ti.func
    def principal_axis(q, qp, e):
        return quat_rotate(quat_mul(q, qp), e)

    @ti.func
    def world_inertia(q, qp, diag):
        a0 = principal_axis(q, qp, vec3(1.0, 0.0, 0.0))
        a1 = principal_axis(q, qp, vec3(0.0, 1.0, 0.0))
        a2 = principal_axis(q, qp, vec3(0.0, 0.0, 1.0))
        return diag[0] * a0.outer_product(a0) + diag[1] * a1.outer_product(a1) + diag[2] * a2.outer_product(a2)

    @ti.func
    def rotate_about_axis(q, qp, e, inv_i, momentum, h):
        # exact flow of the kinetic energy term L_i^2 / (2 I_i): a rotation about principal axis i
        axis = principal_axis(q, qp, e)
        angle = h * momentum.dot(axis) * inv_i
        return quat_normalize(quat_mul(quat_axis_angle(axis, angle), q))

    @ti.func
    def impact_time(gap, vn, an, dt):
        # smallest t in [0, dt] with gap + vn t + an t^2 / 2 = 0 (cancellation-free form)
        g = ti.max(gap, lit(0.0))
        disc = ti.max(vn * vn - lit(2.0) * an * g, lit(1.0e-30))  # > 0: a finite sqrt adjoint when no root exists
        denom = ti.max(ti.sqrt(disc) - vn, lit(1.0e-30))
        return ti.select(gap > lit(0.0), ti.min(lit(2.0) * g / denom, dt), lit(0.0))

    @ti.func
    def vlength(d):
        return ti.sqrt(d.dot(d))

    @ti.func
    def safe_length(d):
        # |d| whose adjoint stays finite at d = 0 (unused branches must not turn gradients into NaN)
        return ti.sqrt(ti.max(d.dot(d), lit(1.0e-30)))

    @ti.func
    def safe_direction(d, fallback):
        length = safe_length(d)
        return ti.select(length > lit(1.0e-12), d / ti.max(length, lit(1.0e-30)), fallback)

    @ti.func
    def sliding_point(seg_c, seg_rot, seg_half, cb, rot_b, size_b, b_box):
        # the point of a capsule's axis segment nearest shape b (a box, or a capsule's axis), by
        # alternating projections between the two convex sets; returns the point and its segment
        # parameter in [0, 1] (the same numerics as the Warp kernel)
        e0 = seg_c + quat_rotate(seg_rot, vec3(0.0, 0.0, -seg_half))
        axis = quat_rotate(seg_rot, vec3(0.0, 0.0, 2.0 * seg_half))
        length2 = ti.max(axis.dot(axis), lit(1.0e-30))
        p = seg_c
        t = lit(0.5)
        for _ in ti.static(range(4)):
            local = quat_rotate_inv(rot_b, p - cb)
            on_box = vec3(ti.min(ti.max(local[0], -size_b[0]), size_b[0]), ti.min(ti.max(local[1], -size_b[1]), size_b[1]),
                          ti.min(ti.max(local[2], -size_b[2]), size_b[2]))
            on_axis = vec3(0.0, 0.0, ti.min(ti.max(local[2], -size_b[1]), size_b[1]))
            q = cb + quat_rotate(rot_b, ti.select(b_box, on_box, on_axis))
            t = ti.min(ti.max((q - e0).dot(axis) / length2, lit(0.0)), lit(1.0))
            p = e0 + t * axis
        return p, t

    @ti.func
    def plane_height(plane, local):
        # signed height of a shape-frame point over a hull plane (n . x - offset; > 0 outside)
        return plane[0] * local[0] + plane[1] * local[1] + plane[2] * local[2] - plane[3]

    @ti.func
    def box_support(axis, q, size):
        return (size[0] * ti.abs(axis.dot(quat_rotate(q, vec3(1.0, 0.0, 0.0))))
                + size[1] * ti.abs(axis.dot(quat_rotate(q, vec3(0.0, 1.0, 0.0))))
                + size[2] * ti.abs(axis.dot(quat_rotate(q, vec3(0.0, 0.0, 1.0)))))

    @ti.func
    def unit(i):
        return vec3(ti.select(i == 0, lit(1.0), lit(0.0)), ti.select(i == 1, lit(1.0), lit(0.0)), ti.select(i == 2, lit(1.0), lit(0.0)))

    @ti.func
    def relative_velocity(va, wa, ra, vb, wb, rb):
        return va + wa.cross(ra) - vb - wb.cross(rb)

    @ti.func
    def effective_mass(u, ra, rb, ima, imb, ia, ib):
        ca = ra.cross(u)
        cb = rb.cross(u)
        k = ima + imb + ca.dot(ia @ ca) + cb.dot(ib @ cb)
        return lit(1.0) / ti.max(k, lit(1.0e-30))

    @ti.func
    def tdot(a, b):
        return a.dot(b)

    @ti.func
    def tcross(a, b):
        return a.cross(b)

    @ti.func
    def cw(a, b):
        return a * b

    @ti.func
    def clamp(x, lo, hi):
        return ti.min(ti.max(x, lo), hi)

    @ti.func
    def comp(v, k):
        return v.dot(unit(k))

    @ti.func
    def sgn(x):
        return ti.select(x < lit(0.0), lit(-1.0), lit(1.0))

    @ti.func
    def cross2(a, b):
        # z of the cross product of two 2D vectors stored as (x, y, 0)
        return a[0] * b[1] - a[1] * b[0]

    @ti.func
    def quad_corner(i):
        # cyclic corners (+,+), (-,+), (-,-), (+,-) of a rectangle as sign pairs
        return vec3(ti.select((i == 0) | (i == 3), lit(1.0), lit(-1.0)), ti.select(i < 2, lit(1.0), lit(-1.0)), lit(0.0))

    @ti.func
    def box_box_contact(ca, rot_a, size_a, cb, rot_b, size_b, m, face_tolerance):
        # contact candidate m of a box pair: separating axis over 15 axes (3 + 3 face normals, 9 edge
        # crosses); a face axis gives the clipped manifold of the incident face against the reference
        # face (m < 4: incident corners inside the reference face, m < 8: reference corners inside the
        # incident face, m < 24: crossings of incident and reference edges), an edge axis the closest
        # points of the two edges (m == 0). Returns (normal from b to a, gap, contact point, valid 0/1).
        delta = ca - cb
        # box b's faces first; box a's face becomes the reference only when clearly better, so a
        # face-to-face tie (a stack) keeps one reference and the slots keep their warm starts
        best = lit(1.0e30)
        best_axis = vec3(0.0, 0.0, 1.0)
        best_k = 0
        best_a = lit(1.0e30)
        axis_a = vec3(0.0, 0.0, 1.0)
        k_a = 0
        for j in ti.static(range(6)):
            if ti.static(j >= 3):
                axis = quat_rotate(rot_a, unit(j - 3))
                overlap = box_support(axis, rot_a, size_a) + box_support(axis, rot_b, size_b) - ti.abs(tdot(delta, axis))
                better = overlap < best_a
                best_a = ti.select(better, overlap, best_a)
                axis_a = ti.select(better, axis, axis_a)
                k_a = ti.select(better, j - 3, k_a)
            else:
                axis = quat_rotate(rot_b, unit(j))
                overlap = box_support(axis, rot_a, size_a) + box_support(axis, rot_b, size_b) - ti.abs(tdot(delta, axis))
                better = overlap < best
                best = ti.select(better, overlap, best)
                best_axis = ti.select(better, axis, best_axis)
                best_k = ti.select(better, j, best_k)
        scale = size_a[0] + size_a[1] + size_a[2] + size_b[0] + size_b[1] + size_b[2]
        face_tie = lit(0.02) * ti.abs(best) + lit(1.0e-4) * scale
        take_a = best_a < best - face_tie
        best_ref_b = ti.select(take_a, 0, 1)
        best_axis = ti.select(take_a, axis_a, best_axis)
        best_k = ti.select(take_a, k_a, best_k)
        best = ti.select(take_a, best_a, best)
        edge_best = lit(1.0e30)
        edge_axis = vec3(lit(0.0), lit(0.0), lit(1.0))
        edge_i = 0
        edge_j = 0
        for j in ti.static(range(9)):
            i_a = j // 3
            i_b = j % 3
            raw = tcross(quat_rotate(rot_a, unit(i_a)), quat_rotate(rot_b, unit(i_b)))
            length = ti.sqrt(ti.max(tdot(raw, raw), lit(1.0e-30)))  # parallel edges: no NaN in the adjoint
            axis = raw / ti.max(length, lit(1.0e-30))
            overlap = box_support(axis, rot_a, size_a) + box_support(axis, rot_b, size_b) - ti.abs(tdot(delta, axis))
            better = (overlap < edge_best) & (length > lit(1.0e-3))
            edge_best = ti.select(better, overlap, edge_best)
            edge_axis = ti.select(better, axis, edge_axis)
            edge_i = ti.select(better, i_a, edge_i)
            edge_j = ti.select(better, i_b, edge_j)
        # an edge axis must separate clearly better than the best face (faces win near-ties)
        use_edge = edge_best < best - (lit(0.05) * ti.abs(best) + lit(1.0e-4) * scale)

        # -- face: reference box r (owner of the axis), incident box i ------------------------
        ref_b = best_ref_b == 1
        c_r = ti.select(ref_b, cb, ca)
        c_i = ti.select(ref_b, ca, cb)
        rot_r = ti.select(ref_b, rot_b, rot_a)
        rot_i = ti.select(ref_b, rot_a, rot_b)
        size_r = ti.select(ref_b, size_b, size_a)
        size_i = ti.select(ref_b, size_a, size_b)
        # reference face normal, pointing from the reference box to the incident lit(1.0)
        n_ref = best_axis * sgn(tdot(c_i - c_r, best_axis))
        f = c_r + comp(size_r, best_k) * n_ref
        k1 = (best_k + 1) % 3
        k2 = (best_k + 2) % 3
        u = quat_rotate(rot_r, unit(k1))
        v = quat_rotate(rot_r, unit(k2))
        hu = comp(size_r, k1)
        hv = comp(size_r, k2)
        # incident face: the face of box i most anti-parallel to n_ref
        i0 = quat_rotate(rot_i, unit(0))
        i1 = quat_rotate(rot_i, unit(1))
        i2 = quat_rotate(rot_i, unit(2))
        d0 = ti.abs(tdot(i0, n_ref))
        d1 = ti.abs(tdot(i1, n_ref))
        d2 = ti.abs(tdot(i2, n_ref))
        l = ti.select((d0 >= d1) & (d0 >= d2), 0, ti.select(d1 >= d2, 1, 2))
        axis_l = quat_rotate(rot_i, unit(l))
        n_inc = -axis_l * sgn(tdot(axis_l, n_ref))
        g = c_i + comp(size_i, l) * n_inc
        e1 = quat_rotate(rot_i, unit((l + 1) % 3)) * comp(size_i, (l + 1) % 3)
        e2 = quat_rotate(rot_i, unit((l + 2) % 3)) * comp(size_i, (l + 2) % 3)
        # the incident quad in reference-face coordinates (x, y, 0)
        w0 = g + e1 + e2 - f
        w1 = g - e1 + e2 - f
        w2 = g - e1 - e2 - f
        w3 = g + e1 - e2 - f
        q0 = vec3(tdot(w0, u), tdot(w0, v), lit(0.0))
        q1 = vec3(tdot(w1, u), tdot(w1, v), lit(0.0))
        q2 = vec3(tdot(w2, u), tdot(w2, v), lit(0.0))
        q3 = vec3(tdot(w3, u), tdot(w3, v), lit(0.0))
        half_r = vec3(hu, hv, lit(0.0))
        slack = lit(1.0) + face_tolerance
        # m < 4: an incident corner inside the reference rectangle
        # diagonal corners first (Gauss-Seidel converges faster than walking around the quad)
        mi = ti.select(m % 4 == 1, 2, ti.select(m % 4 == 2, 1, m % 4))
        qm = ti.select(mi == 0, q0, ti.select(mi == 1, q1, ti.select(mi == 2, q2, q3)))
        inc_inside = (ti.abs(qm[0]) <= hu * slack) & (ti.abs(qm[1]) <= hv * slack)
        # m < 8: a reference corner inside the incident quad (same side of its 4 edges)
        rm = cw(quad_corner(mi), half_r)
        orient = sgn(cross2(q2 - q0, q3 - q1))
        tol = face_tolerance * (hu + hv)
        in0 = orient * cross2(q1 - q0, rm - q0) >= -tol * vlength(q1 - q0)
        in1 = orient * cross2(q2 - q1, rm - q1) >= -tol * vlength(q2 - q1)
        in2 = orient * cross2(q3 - q2, rm - q2) >= -tol * vlength(q3 - q2)
        in3 = orient * cross2(q0 - q3, rm - q3) >= -tol * vlength(q0 - q3)
        ref_inside = in0 & in1 & in2 & in3
        # m < 24: incident edge e crosses reference edge r
        mc = ti.max(m - 8, 0)
        e_index = mc // 4
        r_index = mc % 4
        wa_ = ti.select(e_index == 0, q0, ti.select(e_index == 1, q1, ti.select(e_index == 2, q2, q3)))
        wb_ = ti.select(e_index == 0, q1, ti.select(e_index == 1, q2, ti.select(e_index == 2, q3, q0)))
        ra_ = cw(quad_corner(r_index), half_r)
        rb_ = cw(quad_corner((r_index + 1) % 4), half_r)
        dw = wb_ - wa_
        dr = rb_ - ra_
        denom = cross2(dw, dr)
        parallel = denom * denom <= lit(1.0e-18) * tdot(dw, dw) * tdot(dr, dr)
        safe = ti.select(parallel, lit(1.0), denom)
        s_w = cross2(ra_ - wa_, dr) / safe
        s_r = cross2(ra_ - wa_, dw) / safe
        crossing = (parallel == 0) & (s_w >= lit(0.0)) & (s_w <= lit(1.0)) & (s_r >= lit(0.0)) & (s_r <= lit(1.0))
        pm = ti.select(m < 4, qm, ti.select(m < 8, rm, wa_ + s_w * dw))
        face_valid = ti.select(m < 4, inc_inside, ti.select(m < 8, ref_inside, crossing))
        # gap: from the reference face along n_ref to the incident face's plane
        p_ref = f + pm[0] * u + pm[1] * v
        gap_face = tdot(g - p_ref, n_inc) / ti.min(tdot(n_ref, n_inc), -lit(0.1))
        point_face = p_ref + ti.select(ref_b, gap_face, lit(0.0)) * n_ref
        normal_face = ti.select(ref_b, n_ref, -n_ref)

        # -- edge: closest points of the two supporting edges ----------------------------------
        n_edge = edge_axis * sgn(tdot(delta, edge_axis))
        da = quat_rotate(rot_a, unit(edge_i))
        db = quat_rotate(rot_b, unit(edge_j))
        pa0 = ca
        pb0 = cb
        for k in ti.static(range(3)):
            ax = quat_rotate(rot_a, unit(k))
            bx = quat_rotate(rot_b, unit(k))
            pa0 = pa0 - ti.select(k == edge_i, lit(0.0), sgn(tdot(ax, n_edge)) * comp(size_a, k)) * ax
            pb0 = pb0 + ti.select(k == edge_j, lit(0.0), sgn(tdot(bx, n_edge)) * comp(size_b, k)) * bx
        r0 = pa0 - pb0
        bd = tdot(da, db)
        cc = tdot(da, r0)
        ff = tdot(db, r0)
        s_a = clamp((bd * ff - cc) / ti.max(lit(1.0) - bd * bd, lit(1.0e-12)), -comp(size_a, edge_i), comp(size_a, edge_i))
        t_b = clamp(ff + s_a * bd, -comp(size_b, edge_j), comp(size_b, edge_j))
        pa = pa0 + s_a * da
        pb = pb0 + t_b * db
        gap_edge = tdot(pa - pb, n_edge)

        n = ti.select(use_edge, n_edge, normal_face)
        d = ti.select(use_edge, gap_edge, gap_face)
        point = ti.select(use_edge, lit(0.5) * (pa + pb), point_face)
        valid = ti.select(use_edge, m == 0, face_valid)
        return n, d, point, ti.select(valid, lit(1.0), lit(0.0))

    # -- edge-edge contacts of two convex hulls (mesh-mesh, mesh-box), as in the Warp kernels -----
    # edge blocks in hull_planes (builder ``_edge_block``): header (F, V, E, radius), centroid, F
    # planes, V vertices, 4 rows per edge (end points, the normals of its two faces), body frame
    @ti.func
    def block_count(hull_planes: ti.template(), h, k):
        return ti.cast(hull_planes[h][k] + lit(0.5), ti.i32)

    @ti.func
    def block_point(hull_planes: ti.template(), row, x, q):
        r = hull_planes[row]
        return x + quat_rotate(q, vec3(r[0], r[1], r[2]))

    @ti.func
    def block_direction(hull_planes: ti.template(), row, q):
        r = hull_planes[row]
        return quat_rotate(q, vec3(r[0], r[1], r[2]))

    @ti.func
    def face_separation(hull_planes: ti.template(), ha, xa, qa, hb, xb, qb):
        fa = block_count(hull_planes, ha, 0)
        fb = block_count(hull_planes, hb, 0)
        vb = block_count(hull_planes, hb, 1)
        best = lit(-1.0e30)
        for k in range(fa):
            plane = hull_planes[ha + 2 + k]
            n = quat_rotate(qa, vec3(plane[0], plane[1], plane[2]))
            offset = plane[3] + n.dot(xa)
            lowest = lit(1.0e30)
            for v in range(vb):
                lowest = ti.min(lowest, n.dot(block_point(hull_planes, hb + 2 + fb + v, xb, qb)))
            best = ti.max(best, lowest - offset)
        return best

    @ti.func
    def minkowski_face(a, b, c, d):
        bxa = b.cross(a)
        dxc = d.cross(c)
        cba = c.dot(bxa)
        dba = d.dot(bxa)
        adc = a.dot(dxc)
        bdc = b.dot(dxc)
        return (cba * dba < lit(0.0)) & (adc * bdc < lit(0.0)) & (cba * bdc > lit(0.0))

    @ti.func
    def segment_parameters(pa0, da, pb0, db):
        r = pa0 - pb0
        aa = da.dot(da)
        ee = ti.max(db.dot(db), lit(1.0e-18))
        bb = da.dot(db)
        cc = da.dot(r)
        ff = db.dot(r)
        denom = ti.max(aa * ee - bb * bb, lit(1.0e-18))
        s_line = (bb * ff - cc * ee) / denom
        t_line = (bb * s_line + ff) / ee
        s = clamp(s_line, lit(0.0), lit(1.0))
        t = clamp((bb * s + ff) / ee, lit(0.0), lit(1.0))
        return s, t, s_line, t_line

    @ti.func
    def select_edge_pair(hull_planes: ti.template(), ha, xa, qa, hb, xb, qb):
        fa = block_count(hull_planes, ha, 0)
        va = block_count(hull_planes, ha, 1)
        ea = block_count(hull_planes, ha, 2)
        fb = block_count(hull_planes, hb, 0)
        vb = block_count(hull_planes, hb, 1)
        eb = block_count(hull_planes, hb, 2)
        centre_a = block_point(hull_planes, ha + 1, xa, qa)
        face = ti.max(face_separation(hull_planes, ha, xa, qa, hb, xb, qb),
                      face_separation(hull_planes, hb, xb, qb, ha, xa, qa))
        best = lit(-1.0e30)
        code = -1
        for i in range(ea):
            ra = ha + 2 + fa + va + 4 * i
            pa0 = block_point(hull_planes, ra, xa, qa)
            da = block_point(hull_planes, ra + 1, xa, qa) - pa0
            na0 = block_direction(hull_planes, ra + 2, qa)
            na1 = block_direction(hull_planes, ra + 3, qa)
            for j in range(eb):
                rb = hb + 2 + fb + vb + 4 * j
                nb0 = block_direction(hull_planes, rb + 2, qb)
                nb1 = block_direction(hull_planes, rb + 3, qb)
                if minkowski_face(na0, na1, -nb0, -nb1):
                    pb0 = block_point(hull_planes, rb, xb, qb)
                    db = block_point(hull_planes, rb + 1, xb, qb) - pb0
                    axis = da.cross(db)
                    length = vlength(axis)
                    if length > lit(1.0e-3) * vlength(da) * vlength(db):
                        axis = axis / length
                        flip = 0
                        if axis.dot(pa0 - centre_a) < lit(0.0):
                            axis = -axis
                            flip = 1
                        separation = axis.dot(pb0 - pa0)
                        if separation > best:
                            best = separation
                            code = (i * eb + j) * 2 + flip
        scale = hull_planes[ha][3] + hull_planes[hb][3]
        result = -1
        if (code >= 0) & (best > face + lit(0.05) * ti.abs(face) + lit(1.0e-4) * scale):
            pair = code // 2
            ra = ha + 2 + fa + va + 4 * (pair // eb)
            rb = hb + 2 + fb + vb + 4 * (pair % eb)
            pa0 = block_point(hull_planes, ra, xa, qa)
            pb0 = block_point(hull_planes, rb, xb, qb)
            s, t, s_line, t_line = segment_parameters(pa0, block_point(hull_planes, ra + 1, xa, qa) - pa0, pb0,
                                                      block_point(hull_planes, rb + 1, xb, qb) - pb0)
            if (s_line >= lit(0.0)) & (s_line <= lit(1.0)) & (t_line >= lit(0.0)) & (t_line <= lit(1.0)):
                result = code
        return result

    @ti.func
    def hull_edge_contact(hull_planes: ti.template(), use, ha, hb, code, xa, qa, xb, qb):
        # branch-free twin of the Warp function: slots that do not use it read row 0 and get two
        # fixed crossing unit edges, so its (unselected) values and adjoints stay finite
        fa = block_count(hull_planes, ha, 0)
        va = block_count(hull_planes, ha, 1)
        fb = block_count(hull_planes, hb, 0)
        vb = block_count(hull_planes, hb, 1)
        eb = ti.max(block_count(hull_planes, hb, 2), 1)
        pair = code // 2
        ra = ti.select(use, ha + 2 + fa + va + 4 * (pair // eb), 0)
        rb = ti.select(use, hb + 2 + fb + vb + 4 * (pair % eb), 0)
        step = ti.select(use, 1, 0)
        pa0 = block_point(hull_planes, ra, xa, qa)
        da = ti.select(use, block_point(hull_planes, ra + step, xa, qa) - pa0, vec3(1.0, 0.0, 0.0))
        pb0 = block_point(hull_planes, rb, xb, qb)
        db = ti.select(use, block_point(hull_planes, rb + step, xb, qb) - pb0, vec3(0.0, 1.0, 0.0))
        axis = safe_direction(da.cross(db), vec3(0.0, 0.0, 1.0)) * ti.select(code % 2 == 1, lit(-1.0), lit(1.0))
        s, t, s_line, t_line = segment_parameters(pa0, da, pb0, db)
        pa = pa0 + s * da
        pb = pb0 + t * db
        return -axis, (pb - pa).dot(axis), lit(0.5) * (pa + pb)

    @ti.kernel
    def integrate_forces(orientation: a_vec4, velocity: a_vec3, angular_velocity: a_vec3, force: a_vec3, torque: a_vec3,
                         inv_mass: a_real, inv_inertia: a_vec3, inertia_rotation: a_vec4, gravity: a_vec3, dt: real,
                         velocity_star: a_vec3, angular_velocity_star: a_vec3, inv_inertia_world: a_mat):
        for i in range(orientation.shape[0]):
            iw = world_inertia(orientation[i], inertia_rotation[i], inv_inertia[i])
            g = ti.select(inv_mass[i] > lit(0.0), gravity[0], vec3(0.0, 0.0, 0.0))
            velocity_star[i] = velocity[i] + dt * (g + inv_mass[i] * force[i])
            angular_velocity_star[i] = angular_velocity[i] + dt * (iw @ torque[i])
            inv_inertia_world[i] = iw

    @ti.kernel
    def select_hull_planes(position: a_vec3, orientation: a_vec4, slot_body: a_ivec2, slot_point: a_vec3,
                           slot_b_position: a_vec3, slot_b_rotation: a_vec4, slot_b_hull: a_ivec2, hull_planes: a_vec4,
                           contact_plane: a_int):
        # per slot against a convex mesh: the row of the hull plane its point is highest over; per
        # edge-edge slot (b_hull[0] < 0) its edge pair (as Warp)
        for c in range(slot_body.shape[0]):
            a = slot_body[c][0]
            b = slot_body[c][1]
            bi = ti.max(b, 0)
            dyn_b = b >= 0
            xb = ti.select(dyn_b, position[bi], vec3(0.0, 0.0, 0.0))
            qb = ti.select(dyn_b, orientation[bi], vec4(0.0, 0.0, 0.0, 1.0))
            # a flipped slot (kind 8, hull stored as (start, -count)): a static vertex against a's hull
            flip = slot_b_hull[c][1] < 0
            p = ti.select(flip, slot_point[c], position[a] + quat_rotate(orientation[a], slot_point[c]))
            xt = ti.select(flip, position[a], xb)
            qt = ti.select(flip, orientation[a], qb)
            cb = xt + quat_rotate(qt, slot_b_position[c])
            local = quat_rotate_inv(quat_mul(qt, slot_b_rotation[c]), p - cb)
            start = slot_b_hull[c][0]
            if start < 0:
                contact_plane[c] = select_edge_pair(hull_planes, -1 - start, position[a], orientation[a],
                                                    slot_b_hull[c][1], xb, qb)
            else:
                best_row = start
                best = plane_height(hull_planes[start], local)
                for row in range(start + 1, start + ti.abs(slot_b_hull[c][1])):
                    height = plane_height(hull_planes[row], local)
                    if height > best:
                        best = height
                        best_row = row
                contact_plane[c] = best_row

    @ti.kernel
    def collide(position: a_vec3, orientation: a_vec4, velocity: a_vec3, angular_velocity: a_vec3, velocity_star: a_vec3,
                angular_velocity_star: a_vec3, inv_mass: a_real, inv_inertia_world: a_mat, slot_body: a_ivec2,
                slot_kind: a_int, slot_order: a_int, slot_point: a_vec3, slot_radius: a_real, slot_a_position: a_vec3,
                slot_a_rotation: a_vec4, slot_a_size: a_vec3, slot_b_position: a_vec3, slot_b_rotation: a_vec4,
                slot_b_size: a_vec3, hull_planes: a_vec4, contact_plane: a_int, slot_restitution: a_real, restitution_threshold: real, face_tolerance: real, contact_margin: real, dt: real,
                contact_normal: a_vec3, contact_arm_a: a_vec3, contact_arm_b: a_vec3, contact_tangent1: a_vec3,
                contact_tangent2: a_vec3, contact_mass: a_vec3, contact_gap: a_real, contact_normal_velocity: a_real,
                contact_velocity_target: a_real, contact_gap_target: a_real, contact_active: a_real, contact_impacting: a_real):
        for c in range(slot_kind.shape[0]):
            a = slot_body[c][0]
            b = slot_body[c][1]
            bi = ti.max(b, 0)
            dyn_b = b >= 0
            kind = slot_kind[c]
            xa = position[a]
            qa = orientation[a]
            identity = vec4(0.0, 0.0, 0.0, 1.0)
            origin = vec3(0.0, 0.0, 0.0)
            xb = ti.select(dyn_b, position[bi], origin)
            qb = ti.select(dyn_b, orientation[bi], identity)
            # flipped kinds (7, 8, 9): a static vertex (world frame) against a's box / hull / capsule (as Warp)
            flip = (kind == 7) | (kind == 8) | (kind == 9)
            p = ti.select(flip, slot_point[c], xa + quat_rotate(qa, slot_point[c]))
            ra_point = slot_radius[c]
            xt = ti.select(flip, xa, xb)
            qt = ti.select(flip, qa, qb)
            cb = xt + quat_rotate(qt, slot_b_position[c])
            rot_b = quat_mul(qt, slot_b_rotation[c])
            size_b = slot_b_size[c]
            up = vec3(0.0, 0.0, 1.0)

            # a capsule's sliding slot (slot_order 1 on a box / capsule target), as in the Warp kernel
            sliding = (slot_order[c] == 1) & ((kind == 2) | (kind == 3))
            p_slide, t_slide = sliding_point(xa + quat_rotate(qa, slot_a_position[c]), quat_mul(qa, slot_a_rotation[c]),
                                             slot_a_size[c][1], cb, rot_b, size_b, kind == 2)
            p = ti.select(sliding, p_slide, p)
            inner = (t_slide > lit(0.02)) & (t_slide < lit(0.98))

            n_ground = up
            d_ground = p[2] - cb[2] - ra_point

            n_sphere = safe_direction(p - cb, up)
            d_sphere = safe_length(p - cb) - size_b[0] - ra_point

            local_c = quat_rotate_inv(rot_b, p - cb)
            axis_point = vec3(0.0, 0.0, ti.min(ti.max(local_c[2], -size_b[1]), size_b[1]))
            n_capsule = quat_rotate(rot_b, safe_direction(local_c - axis_point, vec3(1.0, 0.0, 0.0)))
            d_capsule = safe_length(local_c - axis_point) - size_b[0] - ra_point

            lb = local_c
            qd = vec3(ti.abs(lb[0]) - size_b[0], ti.abs(lb[1]) - size_b[1], ti.abs(lb[2]) - size_b[2])
            outside = vec3(ti.max(qd[0], lit(0.0)), ti.max(qd[1], lit(0.0)), ti.max(qd[2], lit(0.0)))
            out_len = safe_length(outside)
            sign = vec3(ti.select(lb[0] < lit(0.0), lit(-1.0), lit(1.0)), ti.select(lb[1] < lit(0.0), lit(-1.0), lit(1.0)),
                        ti.select(lb[2] < lit(0.0), lit(-1.0), lit(1.0)))
            inside_axis = ti.select((qd[0] >= qd[1]) & (qd[0] >= qd[2]), 0, ti.select(qd[1] >= qd[2], 1, 2))
            inside_d = ti.max(qd[0], ti.max(qd[1], qd[2]))
            n_in = sign * unit(inside_axis)
            n_out = sign * outside / ti.max(out_len, lit(1.0e-30))
            is_out = inside_d > lit(0.0)
            n_box = quat_rotate(rot_b, ti.select(is_out, n_out, n_in))
            d_box = ti.select(is_out, out_len, inside_d) - ra_point

            # convex mesh: the hull plane ``select_hull_planes`` found the point highest over
            plane = hull_planes[ti.select((kind == 5) | (kind == 8), contact_plane[c], 0)]
            n_mesh = quat_rotate(rot_b, vec3(plane[0], plane[1], plane[2]))
            d_mesh = plane_height(plane, local_c) - ra_point

            # box against box: one slot per manifold candidate (slot_order holds the candidate index)
            ca = xa + quat_rotate(qa, slot_a_position[c])
            rot_a = quat_mul(qa, slot_a_rotation[c])
            # other kinds get unit boxes here, so the unused branch stays finite (and its adjoint too)
            box_a = ti.select(kind == 4, slot_a_size[c], vec3(1.0, 1.0, 1.0))
            box_b = ti.select(kind == 4, size_b, vec3(1.0, 1.0, 1.0))
            n_sat, d_sat, point_sat, valid_sat = box_box_contact(ca, rot_a, box_a, cb, rot_b, box_b, slot_order[c], face_tolerance)

            # two convex hulls edge to edge (the pair select_hull_planes chose; -1: none)
            edge_ok = (kind == 6) & (contact_plane[c] >= 0)
            edge_ha = ti.select(edge_ok, ti.cast(slot_a_size[c][0] + lit(0.5), ti.i32), 0)
            edge_hb = ti.select(edge_ok, ti.cast(slot_a_size[c][1] + lit(0.5), ti.i32), 0)
            n_edge, d_edge, point_edge = hull_edge_contact(hull_planes, edge_ok, edge_ha, edge_hb,
                                                           ti.select(edge_ok, contact_plane[c], 0), xa, qa, xb, qb)

            n = ti.select(kind == 0, n_ground, ti.select(kind == 1, n_sphere, ti.select(kind == 2, n_box, ti.select(
                kind == 3, n_capsule, ti.select(kind == 5, n_mesh, ti.select(kind == 6, n_edge, ti.select(
                    kind == 7, -n_box, ti.select(kind == 8, -n_mesh, ti.select(kind == 9, -n_capsule, n_sat)))))))))
            d = ti.select(kind == 0, d_ground, ti.select(kind == 1, d_sphere, ti.select(kind == 2, d_box, ti.select(
                kind == 3, d_capsule, ti.select(kind == 5, d_mesh, ti.select(kind == 6, d_edge, ti.select(
                    kind == 7, d_box, ti.select(kind == 8, d_mesh, ti.select(kind == 9, d_capsule, d_sat)))))))))
            valid = ((kind != 4) | (valid_sat > lit(0.0))) & ((kind != 6) | edge_ok) & ((not sliding) | inner)

            pc = ti.select(kind == 4, point_sat, ti.select(kind == 6, point_edge, p - ra_point * n))
            arm_a = pc - xa
            arm_b = pc - xb
            ima = inv_mass[a]
            imb = ti.select(dyn_b, inv_mass[bi], lit(0.0))
            ia = inv_inertia_world[a]
            ib = ti.select(dyn_b, inv_inertia_world[bi], ti.Matrix.zero(real, 3, 3))
            vb0 = ti.select(dyn_b, velocity[bi], origin)
            wb0 = ti.select(dyn_b, angular_velocity[bi], origin)
            vbs = ti.select(dyn_b, velocity_star[bi], origin)
            wbs = ti.select(dyn_b, angular_velocity_star[bi], origin)
            vn0 = relative_velocity(velocity[a], angular_velocity[a], arm_a, vb0, wb0, arm_b).dot(n)
            vns = relative_velocity(velocity_star[a], angular_velocity_star[a], arm_a, vbs, wbs, arm_b).dot(n)
            an = (vns - vn0) / dt

            reach = (d <= lit(0.0)) | (d + vn0 * dt + lit(0.5) * an * dt * dt <= lit(0.0))
            t = impact_time(d, vn0, an, dt)
            vc = vn0 + an * t
            active = (reach | ((d <= contact_margin) & (kind != 0))) & (valid != 0)
            impacting = active & (vc < -restitution_threshold)
            e = slot_restitution[c]
            s = dt - t
            helper = ti.select(ti.abs(n[0]) < lit(0.57), vec3(1.0, 0.0, 0.0), vec3(0.0, 1.0, 0.0))
            t1 = n.cross(helper).normalized()
            t2 = n.cross(t1)

            contact_normal[c] = n
            contact_arm_a[c] = arm_a
            contact_arm_b[c] = arm_b
            contact_tangent1[c] = t1
            contact_tangent2[c] = t2
            contact_mass[c] = vec3(effective_mass(n, arm_a, arm_b, ima, imb, ia, ib),
                                   effective_mass(t1, arm_a, arm_b, ima, imb, ia, ib),
                                   effective_mass(t2, arm_a, arm_b, ima, imb, ia, ib))
            contact_gap[c] = d
            contact_normal_velocity[c] = vn0
            # a rebound too weak to leave the surface within the step ends resting on it
            contact_velocity_target[c] = ti.select(impacting, ti.max(-e * vc + an * s, lit(0.0)),
                                                    ti.select(reach, lit(0.0), ti.min(lit(0.0), -lit(2.0) * ti.max(d, lit(0.0)) / dt - vn0)))
            contact_gap_target[c] = ti.select(impacting, ti.max(-e * vc * s + lit(0.5) * an * s * s, lit(0.0)), lit(0.0))
            contact_active[c] = ti.select(active, lit(1.0), lit(0.0))
            contact_impacting[c] = ti.select(impacting, lit(1.0), lit(0.0))

    @ti.func
    def history_index(k, c, side, body, contact_count, body_count, slot_prev: ti.template(), slot_prev_side: ti.template(),
                      body_last: ti.template(), body_last_side: ti.template()):
        bb = ti.max(body, 0)
        prev = slot_prev[c][side]
        prev_side = slot_prev_side[c][side]
        base = body_count + 1
        in_pass = base + (k * contact_count + prev) * 2 + prev_side
        last_pass = base + ((k - 1) * contact_count + body_last[bb]) * 2 + body_last_side[bb]
        index = ti.select(prev >= 0, in_pass, ti.select(k > 0, last_pass, bb))
        return ti.select(body < 0, body_count, index)

    @ti.func
    def slot_bodies(k, c, a, b, contact_count, body_count, slot_prev: ti.template(), slot_prev_side: ti.template(),
                    body_last: ti.template(), body_last_side: ti.template(), inv_mass: ti.template(),
                    inv_inertia_world: ti.template(), linear_history: ti.template(), angular_history: ti.template()):
        # both bodies of slot c before it in pass k: velocities, inverse masses, world inverse inertias
        bi = ti.max(b, 0)
        dyn_b = b >= 0
        ia_index = history_index(k, c, 0, a, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
        ib_index = history_index(k, c, 1, b, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
        return (linear_history[ia_index], angular_history[ia_index], linear_history[ib_index], angular_history[ib_index],
                inv_mass[a], ti.select(dyn_b, inv_mass[bi], lit(0.0)), inv_inertia_world[a],
                ti.select(dyn_b, inv_inertia_world[bi], ti.Matrix.zero(real, 3, 3)))

    @ti.func
    def record_slot(s, body_count, va, wa, vb, wb, ima, imb, ia, ib, ra, rb, dp, linear_history: ti.template(),
                    angular_history: ti.template()):
        # both bodies' velocities after impulse dp at arms ra / rb (each record written once)
        out = body_count + 1 + s * 2
        linear_history[out] = va + ima * dp
        angular_history[out] = wa + ia @ ra.cross(dp)
        linear_history[out + 1] = vb - imb * dp
        angular_history[out + 1] = wb - ib @ rb.cross(dp)

    @ti.func
    def pass_through(s, body_count, va, wa, vb, wb, linear_history: ti.template(), angular_history: ti.template()):
        # ``record_slot`` of an inactive slot: both bodies' velocities unchanged
        out = body_count + 1 + s * 2
        linear_history[out] = va
        angular_history[out] = wa
        linear_history[out + 1] = vb
        angular_history[out + 1] = wb

    @ti.kernel
    def seed_velocities(velocity_star: a_vec3, angular_velocity_star: a_vec3, linear_history: a_vec3, angular_history: a_vec3):
        for i in range(velocity_star.shape[0]):
            linear_history[i] = velocity_star[i]
            angular_history[i] = angular_velocity_star[i]

    @ti.kernel
    def solve_velocity(world_slot_start: a_int, slot_body: a_ivec2, slot_prev: a_ivec2, slot_prev_side: a_ivec2, body_last: a_int, body_last_side: a_int,
                       inv_mass: a_real, inv_inertia_world: a_mat, contact_normal: a_vec3, contact_arm_a: a_vec3,
                       contact_arm_b: a_vec3, contact_tangent1: a_vec3, contact_tangent2: a_vec3, contact_mass: a_vec3,
                       contact_velocity_target: a_real, contact_active: a_real, slot_friction: a_real, warm_impulse: a_vec3,
                       pass_count: ti.i32, contact_count: ti.i32, body_count: ti.i32, impulse_history: a_vec3,
                       linear_history: a_vec3, angular_history: a_vec3):
        # one thread per world (the outermost loop is parallel): Gauss-Seidel over the world's slots,
        # records at the serial walk's indices; pass 0 applies the warm-start impulses
        # Taichi's CPU pool splits a parallel loop into blocks of at least 512 iterations (its adaptive
        # block size ignores ti.loop_config), so a loop over a few hundred worlds would run on one
        # thread: the loop runs over about WORLD_PAD iterations (several worlds: one world every
        # ``stride``; one world: no padding), the others empty. Its bound is one expression: Taichi's
        # reverse mode takes no statements outside the loop.
        for t in range((world_slot_start.shape[0] - 1) * ti.select(world_slot_start.shape[0] > 2, ti.max(
                WORLD_PAD // (world_slot_start.shape[0] - 1), 1), 1)):
            stride = ti.select(world_slot_start.shape[0] > 2, ti.max(WORLD_PAD // (world_slot_start.shape[0] - 1), 1), 1)
            world = t // stride
            first = world_slot_start[world]
            count = ti.select(t % stride == 0, world_slot_start[world + 1] - first, 0)
            for i in range(pass_count * count):
                k = i // count
                c = first + i % count
                s = k * contact_count + c
                va, wa, vb, wb, ima, imb, ia, ib = slot_bodies(k, c, slot_body[c][0], slot_body[c][1], contact_count,
                                                               body_count, slot_prev, slot_prev_side, body_last,
                                                               body_last_side, inv_mass, inv_inertia_world,
                                                               linear_history, angular_history)
                active = contact_active[c]
                if active == lit(0.0):
                    # an inactive slot is a no-op (impulse 0, both velocities pass through): skip its arithmetic
                    pass_through(s, body_count, va, wa, vb, wb, linear_history, angular_history)
                    impulse_history[(k + 1) * contact_count + c] = vec3(0.0, 0.0, 0.0)
                else:
                    n = contact_normal[c]
                    t1 = contact_tangent1[c]
                    t2 = contact_tangent2[c]
                    ra = contact_arm_a[c]
                    rb = contact_arm_b[c]
                    m = contact_mass[c]
                    old = impulse_history[k * contact_count + c]
                    vn = relative_velocity(va, wa, ra, vb, wb, rb).dot(n)
                    lam_n = ti.max(old[0] + m[0] * (contact_velocity_target[c] - vn), lit(0.0)) * active
                    pn = (lam_n - old[0]) * n
                    va1 = va + ima * pn
                    wa1 = wa + ia @ ra.cross(pn)
                    vb1 = vb - imb * pn
                    wb1 = wb - ib @ rb.cross(pn)
                    vr = relative_velocity(va1, wa1, ra, vb1, wb1, rb)
                    lt1 = old[1] - m[1] * vr.dot(t1)
                    lt2 = old[2] - m[2] * vr.dot(t2)
                    limit = slot_friction[c] * lam_n
                    norm2 = lt1 * lt1 + lt2 * lt2
                    scale = ti.select(norm2 > limit * limit, limit / ti.sqrt(ti.max(norm2, lit(1.0e-30))), lit(1.0)) * active
                    solved = vec3(lam_n, lt1 * scale, lt2 * scale)
                    new = ti.select(k == 0, warm_impulse[c] * active, solved)
                    impulse_history[(k + 1) * contact_count + c] = new
                    dp = (new[0] - old[0]) * n + (new[1] - old[1]) * t1 + (new[2] - old[2]) * t2
                    record_slot(s, body_count, va, wa, vb, wb, ima, imb, ia, ib, ra, rb, dp, linear_history, angular_history)

    @ti.kernel
    def finalize_velocities(body_last: a_int, body_last_side: a_int, linear_history: a_vec3, angular_history: a_vec3,
                            pass_count: ti.i32, contact_count: ti.i32, body_count: ti.i32, velocity_final: a_vec3,
                            angular_velocity_final: a_vec3):
        for i in range(body_last.shape[0]):
            last = body_last[i]
            record = body_count + 1 + ((pass_count - 1) * contact_count + last) * 2 + body_last_side[i]
            index = ti.select((last >= 0) & (pass_count > 0), record, i)
            velocity_final[i] = linear_history[index]
            angular_velocity_final[i] = angular_history[index]

    @ti.kernel
    def predict_gaps(slot_body: a_ivec2, velocity_final: a_vec3, angular_velocity_final: a_vec3, contact_normal: a_vec3,
                     contact_arm_a: a_vec3, contact_arm_b: a_vec3, contact_gap: a_real, contact_normal_velocity: a_real,
                     contact_gap_target: a_real, dt: real, contact_pseudo_target: a_real):
        for c in range(slot_body.shape[0]):
            a = slot_body[c][0]
            b = slot_body[c][1]
            bi = ti.max(b, 0)
            origin = vec3(0.0, 0.0, 0.0)
            vb = ti.select(b >= 0, velocity_final[bi], origin)
            wb = ti.select(b >= 0, angular_velocity_final[bi], origin)
            vn1 = relative_velocity(velocity_final[a], angular_velocity_final[a], contact_arm_a[c], vb, wb, contact_arm_b[c]).dot(contact_normal[c])
            predicted = contact_gap[c] + lit(0.5) * dt * (contact_normal_velocity[c] + vn1)
            contact_pseudo_target[c] = (contact_gap_target[c] - predicted) / dt

    @ti.kernel
    def solve_position(world_slot_start: a_int, slot_body: a_ivec2, slot_prev: a_ivec2, slot_prev_side: a_ivec2, body_last: a_int, body_last_side: a_int,
                       inv_mass: a_real, inv_inertia_world: a_mat, contact_normal: a_vec3, contact_arm_a: a_vec3,
                       contact_arm_b: a_vec3, contact_mass: a_vec3, contact_pseudo_target: a_real, contact_active: a_real,
                       contact_impacting: a_real, pass_count: ti.i32, contact_count: ti.i32, body_count: ti.i32,
                       impulse_history: a_real, linear_history: a_vec3, angular_history: a_vec3):
        # one thread per world, as solve_velocity
        for t in range((world_slot_start.shape[0] - 1) * ti.select(world_slot_start.shape[0] > 2, ti.max(
                WORLD_PAD // (world_slot_start.shape[0] - 1), 1), 1)):
            stride = ti.select(world_slot_start.shape[0] > 2, ti.max(WORLD_PAD // (world_slot_start.shape[0] - 1), 1), 1)
            world = t // stride
            first = world_slot_start[world]
            count = ti.select(t % stride == 0, world_slot_start[world + 1] - first, 0)
            for i in range(pass_count * count):
                k = i // count
                c = first + i % count
                s = k * contact_count + c
                va, wa, vb, wb, ima, imb, ia, ib = slot_bodies(k, c, slot_body[c][0], slot_body[c][1], contact_count,
                                                               body_count, slot_prev, slot_prev_side, body_last,
                                                               body_last_side, inv_mass, inv_inertia_world,
                                                               linear_history, angular_history)
                active = contact_active[c]
                if active == lit(0.0):  # a no-op, as in solve_velocity
                    pass_through(s, body_count, va, wa, vb, wb, linear_history, angular_history)
                    impulse_history[(k + 1) * contact_count + c] = lit(0.0)
                else:
                    n = contact_normal[c]
                    ra = contact_arm_a[c]
                    rb = contact_arm_b[c]
                    old = impulse_history[k * contact_count + c]
                    vn = relative_velocity(va, wa, ra, vb, wb, rb).dot(n)
                    trial = old + contact_mass[c][0] * (contact_pseudo_target[c] - vn)
                    new = ti.select(contact_impacting[c] > lit(0.0), trial, ti.max(trial, lit(0.0))) * active
                    impulse_history[(k + 1) * contact_count + c] = new
                    dp = (new - old) * n
                    record_slot(s, body_count, va, wa, vb, wb, ima, imb, ia, ib, ra, rb, dp, linear_history, angular_history)

    @ti.kernel
    def integrate_positions(position: a_vec3, orientation: a_vec4, velocity: a_vec3, angular_velocity: a_vec3,
                            velocity_final: a_vec3, angular_velocity_final: a_vec3, inertia: a_vec3, inv_inertia: a_vec3,
                            inertia_rotation: a_vec4, body_last: a_int, body_last_side: a_int, pseudo_linear_history: a_vec3,
                            pseudo_angular_history: a_vec3, pseudo_pass_count: ti.i32, contact_count: ti.i32, body_count: ti.i32,
                            dt: real, position_out: a_vec3, orientation_out: a_vec4, velocity_out: a_vec3,
                            angular_velocity_out: a_vec3):
        for i in range(position.shape[0]):
            last = body_last[i]
            record = body_count + 1 + ((pseudo_pass_count - 1) * contact_count + last) * 2 + body_last_side[i]
            index = ti.select((last >= 0) & (pseudo_pass_count > 0), record, body_count)
            pseudo_v = pseudo_linear_history[index]
            pseudo_w = pseudo_angular_history[index]
            q0 = orientation[i]
            qp = inertia_rotation[i]
            diag = inertia[i]
            inv_diag = inv_inertia[i]
            h = lit(0.5) * dt
            position_out[i] = position[i] + h * (velocity[i] + velocity_final[i]) + dt * pseudo_v
            inertia_start = world_inertia(q0, qp, diag)
            momentum_start = inertia_start @ angular_velocity[i]
            momentum_end = inertia_start @ angular_velocity_final[i]
            momentum = lit(0.5) * (momentum_start + momentum_end)
            q1 = rotate_about_axis(q0, qp, vec3(1.0, 0.0, 0.0), inv_diag[0], momentum, h)
            q2 = rotate_about_axis(q1, qp, vec3(0.0, 1.0, 0.0), inv_diag[1], momentum, h)
            q3 = rotate_about_axis(q2, qp, vec3(0.0, 0.0, 1.0), inv_diag[2], momentum, dt)
            q4 = rotate_about_axis(q3, qp, vec3(0.0, 1.0, 0.0), inv_diag[1], momentum, h)
            q5 = rotate_about_axis(q4, qp, vec3(1.0, 0.0, 0.0), inv_diag[0], momentum, h)
            dq = quat_mul(vec4(pseudo_w[0], pseudo_w[1], pseudo_w[2], 0.0), q5)
            q6 = quat_normalize(q5 + h * dq)
            orientation_out[i] = q6
            velocity_out[i] = velocity_final[i]
            angular_velocity_out[i] = world_inertia(q6, qp, inv_diag) @ momentum_end

    return types.SimpleNamespace(
        integrate_forces=integrate_forces, select_hull_planes=select_hull_planes, collide=collide, seed_velocities=seed_velocities, solve_velocity=solve_velocity,
        finalize_velocities=finalize_velocities, predict_gaps=predict_gaps, solve_position=solve_position,
        integrate_positions=integrate_positions,
    )
