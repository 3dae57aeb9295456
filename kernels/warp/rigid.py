"""Warp kernels of the rigid-body solver, one per phase of a step.

A step is: ``integrate_forces`` (velocities after gravity, forces, torques) -> ``collide``
(one contact slot per candidate point/shape pair: normal, arms, gap, time-of-impact targets)
-> ``seed_velocities`` + ``solve_velocity`` (sequential impulses with restitution and Coulomb
friction) -> ``finalize_velocities`` -> ``predict_gaps`` -> ``solve_position`` (pseudo-velocity
split impulses that never feed back into velocity) -> ``integrate_positions``.

The two solve kernels run one thread per world (``world_slot_start``: each world's slots are one
range; worlds share no body) that walks the world's (pass, slot) pairs in order and writes each
result once into a history buffer (impulses and the body velocities after each slot, at the index
a serial walk over all slots would use), so the results are the serial walk's bits, nothing is
overwritten under the tape and the adjoint replays each chain exactly (an inactive slot only
passes both velocities through, ``pass_through``: the values and adjoints of computing it, up to
the sign of a zero impulse); the part they
share (``slot_bodies``: read both bodies' latest velocities; ``record_slot``: write them after an
impulse) is one pair of helpers. Every helper here has a twin of the same arithmetic in
kernels/taichi/rigid.py.
Slots against a convex mesh (kind 5) measure the point against the mesh's hull planes
(n_k, o_k) in its shape frame: gap max_k (n_k . p - o_k) (exact inside and on the surface, a lower
bound of the distance outside near edges and corners), normal that plane's. The maximising
plane is picked first by ``select_hull_planes`` (an integer per slot, a piecewise-constant choice
with no adjoint, launched outside the tape), so ``collide`` stays free of run-time loops.
Edge-edge slots (kind 6, one per convex pair with a mesh: mesh-mesh, mesh-box) work the same way:
``select_hull_planes`` runs the separating-axis test of the two hulls (face normals, and the edge
pairs that make a face of their Minkowski difference) and keeps the best edge pair when an edge
axis separates clearly better than every face; ``collide`` then puts one contact at the closest
points of those two edges (``hull_edge_contact``), differentiable in both bodies' poses.
``collide`` computes the sliding-capsule point and the box-box manifold only for the slots that
use them (real branches: the values it skips are never selected, so results and adjoints are
those of computing everything). Quaternions are vec4 (x, y, z, w).
"""


import functools

# contact slot kinds
KIND_GROUND = 0
KIND_SPHERE = 1
KIND_BOX = 2
KIND_CAPSULE = 3
KIND_BOX_BOX = 4
KIND_MESH = 5
KIND_EDGE = 6
# flipped point slots: a static mesh's hull vertex (slot_point, world frame; body b = -1) against
# body a's box (7), convex-mesh hull (8) or capsule (9), whose shape offset in body a is slot_b_position /
# slot_b_rotation (size slot_b_size, hull slot_b_hull); the normal is then negated (it points
# from the static vertex into a, as every slot's normal points from b to a)
KIND_STATIC_VERTEX_BOX = 7
KIND_STATIC_VERTEX_MESH = 8
KIND_STATIC_VERTEX_CAPSULE = 9


@functools.cache
def rigid_kernels(real):
    """Return a namespace of the rigid-body kernels for scalar type ``real`` (wp.float32/float64)."""
    import types

    import warp as wp

    vec3 = wp.types.vector(3, real)
    vec4 = wp.types.vector(4, real)
    mat33 = wp.types.matrix((3, 3), real)
    ivec2 = wp.types.vector(2, wp.int32)
    zero = real(0.0)
    one = real(1.0)
    two = real(2.0)
    half = real(0.5)
    tiny = real(1.0e-30)

    @wp.func
    def quat_mul(a: vec4, b: vec4):
        return vec4(
            a[3] * b[0] + a[0] * b[3] + a[1] * b[2] - a[2] * b[1],
            a[3] * b[1] - a[0] * b[2] + a[1] * b[3] + a[2] * b[0],
            a[3] * b[2] + a[0] * b[1] - a[1] * b[0] + a[2] * b[3],
            a[3] * b[3] - a[0] * b[0] - a[1] * b[1] - a[2] * b[2],
        )

    @wp.func
    def quat_rotate(q: vec4, v: vec3):
        u = vec3(q[0], q[1], q[2])
        t = two * wp.cross(u, v)
        return v + q[3] * t + wp.cross(u, t)

    @wp.func
    def quat_rotate_inv(q: vec4, v: vec3):
        return quat_rotate(vec4(-q[0], -q[1], -q[2], q[3]), v)

    @wp.func
    def quat_normalize(q: vec4):
        return q / wp.sqrt(wp.dot(q, q))

    @wp.func
    def quat_axis_angle(axis: vec3, angle: real):
        s = wp.sin(half * angle)
        return vec4(axis[0] * s, axis[1] * s, axis[2] * s, wp.cos(half * angle))

    @wp.func
    def principal_axis(q: vec4, qp: vec4, e: vec3):
        return quat_rotate(quat_mul(q, qp), e)

    @wp.func
    def world_inertia(q: vec4, qp: vec4, diag: vec3):
        # R diag R^T as a sum of outer products of the world principal axes
        a0 = principal_axis(q, qp, vec3(one, zero, zero))
        a1 = principal_axis(q, qp, vec3(zero, one, zero))
        a2 = principal_axis(q, qp, vec3(zero, zero, one))
        return diag[0] * wp.outer(a0, a0) + diag[1] * wp.outer(a1, a1) + diag[2] * wp.outer(a2, a2)

    @wp.func
    def rotate_about_axis(q: vec4, qp: vec4, e: vec3, inv_i: real, momentum: vec3, h: real):
        # exact flow of the kinetic energy term L_i^2 / (2 I_i): a rotation about principal axis i
        axis = principal_axis(q, qp, e)
        angle = h * wp.dot(momentum, axis) * inv_i
        return quat_normalize(quat_mul(quat_axis_angle(axis, angle), q))

    @wp.func
    def impact_time(gap: real, vn: real, an: real, dt: real):
        # smallest t in [0, dt] with gap + vn t + an t^2 / 2 = 0 (cancellation-free form)
        g = wp.max(gap, zero)
        disc = wp.max(vn * vn - two * an * g, tiny)  # > 0: a finite sqrt adjoint when no root exists
        denom = wp.max(wp.sqrt(disc) - vn, tiny)
        return wp.where(gap > zero, wp.min(two * g / denom, dt), zero)

    @wp.func
    def safe_length(d: vec3):
        # |d| whose adjoint stays finite at d = 0 (unused branches must not turn gradients into NaN)
        return wp.sqrt(wp.max(wp.dot(d, d), tiny))

    @wp.func
    def safe_direction(d: vec3, fallback: vec3):
        length = safe_length(d)
        return wp.where(length > real(1.0e-12), d / wp.max(length, tiny), fallback)

    @wp.func
    def sliding_point(seg_c: vec3, seg_rot: vec4, seg_half: real, cb: vec3, rot_b: vec4, size_b: vec3, b_box: wp.bool):
        # the point of a capsule's axis segment nearest shape b (a box, or a capsule's axis), by
        # alternating projections between the two convex sets; returns the point and its segment
        # parameter in [0, 1]
        e0 = seg_c + quat_rotate(seg_rot, vec3(zero, zero, -seg_half))
        axis = quat_rotate(seg_rot, vec3(zero, zero, two * seg_half))
        length2 = wp.max(wp.dot(axis, axis), tiny)
        p = seg_c
        t = half
        for _ in range(4):
            local = quat_rotate_inv(rot_b, p - cb)
            on_box = vec3(wp.clamp(local[0], -size_b[0], size_b[0]), wp.clamp(local[1], -size_b[1], size_b[1]),
                          wp.clamp(local[2], -size_b[2], size_b[2]))
            on_axis = vec3(zero, zero, wp.clamp(local[2], -size_b[1], size_b[1]))
            q = cb + quat_rotate(rot_b, wp.where(b_box, on_box, on_axis))
            t = wp.clamp(wp.dot(q - e0, axis) / length2, zero, one)
            p = e0 + t * axis
        return p, t

    @wp.func
    def plane_height(plane: vec4, local: vec3):
        # signed height of a shape-frame point over a hull plane (n . x - offset; > 0 outside)
        return plane[0] * local[0] + plane[1] * local[1] + plane[2] * local[2] - plane[3]

    @wp.func
    def box_support(axis: vec3, q: vec4, size: vec3):
        # half-width of a box (half extents ``size``, orientation q) along a world axis
        return (size[0] * wp.abs(wp.dot(axis, quat_rotate(q, vec3(one, zero, zero))))
                + size[1] * wp.abs(wp.dot(axis, quat_rotate(q, vec3(zero, one, zero))))
                + size[2] * wp.abs(wp.dot(axis, quat_rotate(q, vec3(zero, zero, one)))))

    @wp.func
    def unit(i: int):
        return vec3(wp.where(i == 0, one, zero), wp.where(i == 1, one, zero), wp.where(i == 2, one, zero))

    @wp.func
    def relative_velocity(va: vec3, wa: vec3, ra: vec3, vb: vec3, wb: vec3, rb: vec3):
        return va + wp.cross(wa, ra) - vb - wp.cross(wb, rb)

    @wp.func
    def effective_mass(u: vec3, ra: vec3, rb: vec3, ima: real, imb: real, ia: mat33, ib: mat33):
        ca = wp.cross(ra, u)
        cb = wp.cross(rb, u)
        k = ima + imb + wp.dot(ca, ia * ca) + wp.dot(cb, ib * cb)
        return one / wp.max(k, tiny)

    @wp.func
    def comp(v: vec3, k: int):
        return wp.dot(v, unit(k))

    @wp.func
    def sgn(x: real):
        return wp.where(x < zero, -one, one)

    @wp.func
    def cross2(a: vec3, b: vec3):
        # z of the cross product of two 2D vectors stored as (x, y, 0)
        return a[0] * b[1] - a[1] * b[0]

    @wp.func
    def quad_corner(i: int):
        # cyclic corners (+,+), (-,+), (-,-), (+,-) of a rectangle as sign pairs
        return vec3(wp.where(i == 0 or i == 3, one, -one), wp.where(i < 2, one, -one), zero)

    @wp.func
    def box_box_contact(ca: vec3, rot_a: vec4, size_a: vec3, cb: vec3, rot_b: vec4, size_b: vec3, m: int,
                        face_tolerance: real):
        # contact candidate m of a box pair: separating axis over 15 axes (3 + 3 face normals, 9 edge
        # crosses); a face axis gives the clipped manifold of the incident face against the reference
        # face (m < 4: incident corners inside the reference face, m < 8: reference corners inside the
        # incident face, m < 24: crossings of incident and reference edges), an edge axis the closest
        # points of the two edges (m == 0). Returns (normal from b to a, gap, contact point, valid 0/1).
        delta = ca - cb
        # box b's faces first; box a's face becomes the reference only when clearly better, so a
        # face-to-face tie (a stack) keeps one reference and the slots keep their warm starts
        best = real(1.0e30)
        best_axis = vec3(zero, zero, one)
        best_k = 0
        best_a = real(1.0e30)
        axis_a = vec3(zero, zero, one)
        k_a = 0
        for j in range(6):
            use_a = j >= 3
            k = j % 3
            axis = wp.where(use_a, quat_rotate(rot_a, unit(k)), quat_rotate(rot_b, unit(k)))
            overlap = box_support(axis, rot_a, size_a) + box_support(axis, rot_b, size_b) - wp.abs(wp.dot(delta, axis))
            better = overlap < wp.where(use_a, best_a, best)
            best = wp.where(better and not use_a, overlap, best)
            best_axis = wp.where(better and not use_a, axis, best_axis)
            best_k = wp.where(better and not use_a, k, best_k)
            best_a = wp.where(better and use_a, overlap, best_a)
            axis_a = wp.where(better and use_a, axis, axis_a)
            k_a = wp.where(better and use_a, k, k_a)
        scale = size_a[0] + size_a[1] + size_a[2] + size_b[0] + size_b[1] + size_b[2]
        face_tie = real(0.02) * wp.abs(best) + real(1.0e-4) * scale
        take_a = best_a < best - face_tie
        best_ref_b = wp.where(take_a, 0, 1)
        best_axis = wp.where(take_a, axis_a, best_axis)
        best_k = wp.where(take_a, k_a, best_k)
        best = wp.where(take_a, best_a, best)
        edge_best = real(1.0e30)
        edge_axis = vec3(zero, zero, one)
        edge_i = 0
        edge_j = 0
        for j in range(9):
            i_a = j // 3
            i_b = j % 3
            raw = wp.cross(quat_rotate(rot_a, unit(i_a)), quat_rotate(rot_b, unit(i_b)))
            length = wp.sqrt(wp.max(wp.dot(raw, raw), tiny))  # parallel edges: no NaN in the adjoint
            axis = raw / wp.max(length, tiny)
            overlap = box_support(axis, rot_a, size_a) + box_support(axis, rot_b, size_b) - wp.abs(wp.dot(delta, axis))
            better = overlap < edge_best and length > real(1.0e-3)
            edge_best = wp.where(better, overlap, edge_best)
            edge_axis = wp.where(better, axis, edge_axis)
            edge_i = wp.where(better, i_a, edge_i)
            edge_j = wp.where(better, i_b, edge_j)
        # an edge axis must separate clearly better than the best face (faces win near-ties)
        use_edge = edge_best < best - (real(0.05) * wp.abs(best) + real(1.0e-4) * scale)

        # -- face: reference box r (owner of the axis), incident box i ------------------------
        ref_b = best_ref_b == 1
        c_r = wp.where(ref_b, cb, ca)
        c_i = wp.where(ref_b, ca, cb)
        rot_r = wp.where(ref_b, rot_b, rot_a)
        rot_i = wp.where(ref_b, rot_a, rot_b)
        size_r = wp.where(ref_b, size_b, size_a)
        size_i = wp.where(ref_b, size_a, size_b)
        # reference face normal, pointing from the reference box to the incident one
        n_ref = best_axis * sgn(wp.dot(c_i - c_r, best_axis))
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
        d0 = wp.abs(wp.dot(i0, n_ref))
        d1 = wp.abs(wp.dot(i1, n_ref))
        d2 = wp.abs(wp.dot(i2, n_ref))
        l = wp.where(d0 >= d1 and d0 >= d2, 0, wp.where(d1 >= d2, 1, 2))
        axis_l = quat_rotate(rot_i, unit(l))
        n_inc = -axis_l * sgn(wp.dot(axis_l, n_ref))
        g = c_i + comp(size_i, l) * n_inc
        e1 = quat_rotate(rot_i, unit((l + 1) % 3)) * comp(size_i, (l + 1) % 3)
        e2 = quat_rotate(rot_i, unit((l + 2) % 3)) * comp(size_i, (l + 2) % 3)
        # the incident quad in reference-face coordinates (x, y, 0)
        w0 = g + e1 + e2 - f
        w1 = g - e1 + e2 - f
        w2 = g - e1 - e2 - f
        w3 = g + e1 - e2 - f
        q0 = vec3(wp.dot(w0, u), wp.dot(w0, v), zero)
        q1 = vec3(wp.dot(w1, u), wp.dot(w1, v), zero)
        q2 = vec3(wp.dot(w2, u), wp.dot(w2, v), zero)
        q3 = vec3(wp.dot(w3, u), wp.dot(w3, v), zero)
        half_r = vec3(hu, hv, zero)
        slack = one + face_tolerance
        # m < 4: an incident corner inside the reference rectangle
        # diagonal corners first (Gauss-Seidel converges faster than walking around the quad)
        mi = wp.where(m % 4 == 1, 2, wp.where(m % 4 == 2, 1, m % 4))
        qm = wp.where(mi == 0, q0, wp.where(mi == 1, q1, wp.where(mi == 2, q2, q3)))
        inc_inside = wp.abs(qm[0]) <= hu * slack and wp.abs(qm[1]) <= hv * slack
        # m < 8: a reference corner inside the incident quad (same side of its 4 edges)
        rm = wp.cw_mul(quad_corner(mi), half_r)
        orient = sgn(cross2(q2 - q0, q3 - q1))
        tol = face_tolerance * (hu + hv)
        in0 = orient * cross2(q1 - q0, rm - q0) >= -tol * wp.length(q1 - q0)
        in1 = orient * cross2(q2 - q1, rm - q1) >= -tol * wp.length(q2 - q1)
        in2 = orient * cross2(q3 - q2, rm - q2) >= -tol * wp.length(q3 - q2)
        in3 = orient * cross2(q0 - q3, rm - q3) >= -tol * wp.length(q0 - q3)
        ref_inside = in0 and in1 and in2 and in3
        # m < 24: incident edge e crosses reference edge r
        mc = wp.max(m - 8, 0)
        e_index = mc // 4
        r_index = mc % 4
        wa_ = wp.where(e_index == 0, q0, wp.where(e_index == 1, q1, wp.where(e_index == 2, q2, q3)))
        wb_ = wp.where(e_index == 0, q1, wp.where(e_index == 1, q2, wp.where(e_index == 2, q3, q0)))
        ra_ = wp.cw_mul(quad_corner(r_index), half_r)
        rb_ = wp.cw_mul(quad_corner((r_index + 1) % 4), half_r)
        dw = wb_ - wa_
        dr = rb_ - ra_
        denom = cross2(dw, dr)
        parallel = denom * denom <= real(1.0e-18) * wp.dot(dw, dw) * wp.dot(dr, dr)
        safe = wp.where(parallel, one, denom)
        s_w = cross2(ra_ - wa_, dr) / safe
        s_r = cross2(ra_ - wa_, dw) / safe
        crossing = (not parallel) and s_w >= zero and s_w <= one and s_r >= zero and s_r <= one
        pm = wp.where(m < 4, qm, wp.where(m < 8, rm, wa_ + s_w * dw))
        face_valid = wp.where(m < 4, inc_inside, wp.where(m < 8, ref_inside, crossing))
        # gap: from the reference face along n_ref to the incident face's plane
        p_ref = f + pm[0] * u + pm[1] * v
        gap_face = wp.dot(g - p_ref, n_inc) / wp.min(wp.dot(n_ref, n_inc), -real(0.1))
        point_face = p_ref + wp.where(ref_b, gap_face, zero) * n_ref
        normal_face = wp.where(ref_b, n_ref, -n_ref)

        # -- edge: closest points of the two supporting edges ----------------------------------
        n_edge = edge_axis * sgn(wp.dot(delta, edge_axis))
        da = quat_rotate(rot_a, unit(edge_i))
        db = quat_rotate(rot_b, unit(edge_j))
        pa0 = ca
        pb0 = cb
        for k in range(3):
            ax = quat_rotate(rot_a, unit(k))
            bx = quat_rotate(rot_b, unit(k))
            pa0 = pa0 - wp.where(k == edge_i, zero, sgn(wp.dot(ax, n_edge)) * comp(size_a, k)) * ax
            pb0 = pb0 + wp.where(k == edge_j, zero, sgn(wp.dot(bx, n_edge)) * comp(size_b, k)) * bx
        r0 = pa0 - pb0
        bd = wp.dot(da, db)
        cc = wp.dot(da, r0)
        ff = wp.dot(db, r0)
        s_a = wp.clamp((bd * ff - cc) / wp.max(one - bd * bd, real(1.0e-12)), -comp(size_a, edge_i), comp(size_a, edge_i))
        t_b = wp.clamp(ff + s_a * bd, -comp(size_b, edge_j), comp(size_b, edge_j))
        pa = pa0 + s_a * da
        pb = pb0 + t_b * db
        gap_edge = wp.dot(pa - pb, n_edge)

        n = wp.where(use_edge, n_edge, normal_face)
        d = wp.where(use_edge, gap_edge, gap_face)
        point = wp.where(use_edge, half * (pa + pb), point_face)
        valid = wp.where(use_edge, m == 0, face_valid)
        return n, d, point, wp.where(valid, one, zero)

    # -- edge-edge contacts of two convex hulls (mesh-mesh, mesh-box) ---------------------------
    # A shape's edge block (builder ``_edge_block``) in hull_planes, in its body's frame: row h a
    # header (faces F, vertices V, edges E, radius), h + 1 the centroid, then F planes, V vertices,
    # and 4 rows per edge (two end points, the outward normals of its two faces).
    @wp.func
    def block_count(hull_planes: wp.array(dtype=vec4), h: int, k: int):
        return int(hull_planes[h][k] + half)

    @wp.func
    def block_point(hull_planes: wp.array(dtype=vec4), row: int, x: vec3, q: vec4):
        r = hull_planes[row]
        return x + quat_rotate(q, vec3(r[0], r[1], r[2]))

    @wp.func
    def block_direction(hull_planes: wp.array(dtype=vec4), row: int, q: vec4):
        r = hull_planes[row]
        return quat_rotate(q, vec3(r[0], r[1], r[2]))

    @wp.func
    def face_separation(hull_planes: wp.array(dtype=vec4), ha: int, xa: vec3, qa: vec4, hb: int, xb: vec3, qb: vec4):
        # the largest separation of hull b from a face plane of hull a (min over b's vertices of the
        # height over the plane; < 0: overlapping along that normal)
        fa = block_count(hull_planes, ha, 0)
        fb = block_count(hull_planes, hb, 0)
        vb = block_count(hull_planes, hb, 1)
        best = real(-1.0e30)
        for k in range(fa):
            plane = hull_planes[ha + 2 + k]
            n = quat_rotate(qa, vec3(plane[0], plane[1], plane[2]))
            offset = plane[3] + wp.dot(n, xa)
            lowest = real(1.0e30)
            for v in range(vb):
                lowest = wp.min(lowest, wp.dot(n, block_point(hull_planes, hb + 2 + fb + v, xb, qb)))
            best = wp.max(best, lowest - offset)
        return best

    @wp.func
    def minkowski_face(a: vec3, b: vec3, c: vec3, d: vec3):
        # do the Gauss-map arcs a-b and c-d (unit face normals) cross? (arcs of an edge of hull a and
        # of the negated normals of an edge of hull b: the two edges then make a face of a - b)
        bxa = wp.cross(b, a)
        dxc = wp.cross(d, c)
        cba = wp.dot(c, bxa)
        dba = wp.dot(d, bxa)
        adc = wp.dot(a, dxc)
        bdc = wp.dot(b, dxc)
        return cba * dba < zero and adc * bdc < zero and cba * bdc > zero

    @wp.func
    def segment_parameters(pa0: vec3, da: vec3, pb0: vec3, db: vec3):
        # closest points pa0 + s da, pb0 + t db of two segments (s, t in [0, 1]; Ericson 5.1.9) and
        # the unclamped s, t of the two lines
        r = pa0 - pb0
        aa = wp.dot(da, da)
        ee = wp.max(wp.dot(db, db), real(1.0e-18))
        bb = wp.dot(da, db)
        cc = wp.dot(da, r)
        ff = wp.dot(db, r)
        denom = wp.max(aa * ee - bb * bb, real(1.0e-18))
        s_line = (bb * ff - cc * ee) / denom
        t_line = (bb * s_line + ff) / ee
        s = wp.clamp(s_line, zero, one)
        t = wp.clamp((bb * s + ff) / ee, zero, one)
        return s, t, s_line, t_line

    @wp.func
    def select_edge_pair(hull_planes: wp.array(dtype=vec4), ha: int, xa: vec3, qa: vec4, hb: int, xb: vec3, qb: vec4):
        # separating axis over two hulls: their face normals and the cross products of the edge
        # pairs that make a face of the Minkowski difference. Returns (pair * 2 + flip) of the best
        # edge pair (pair = i E_b + j; flip: its axis is -(da x db)) when an edge axis separates
        # clearly better than every face (faces win near-ties, as for box pairs) and the closest
        # points of the two edges lie inside both; else -1
        fa = block_count(hull_planes, ha, 0)
        va = block_count(hull_planes, ha, 1)
        ea = block_count(hull_planes, ha, 2)
        fb = block_count(hull_planes, hb, 0)
        vb = block_count(hull_planes, hb, 1)
        eb = block_count(hull_planes, hb, 2)
        centre_a = block_point(hull_planes, ha + 1, xa, qa)
        face = wp.max(face_separation(hull_planes, ha, xa, qa, hb, xb, qb),
                      face_separation(hull_planes, hb, xb, qb, ha, xa, qa))
        best = real(-1.0e30)
        code = int(-1)
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
                    axis = wp.cross(da, db)
                    length = wp.length(axis)
                    if length > real(1.0e-3) * wp.length(da) * wp.length(db):
                        axis = axis / length
                        flip = int(0)
                        if wp.dot(axis, pa0 - centre_a) < zero:  # pointing out of a
                            axis = -axis
                            flip = 1
                        separation = wp.dot(axis, pb0 - pa0)
                        if separation > best:
                            best = separation
                            code = (i * eb + j) * 2 + flip
        scale = hull_planes[ha][3] + hull_planes[hb][3]
        result = int(-1)
        if code >= 0 and best > face + real(0.05) * wp.abs(face) + real(1.0e-4) * scale:
            pair = code // 2
            ra = ha + 2 + fa + va + 4 * (pair // eb)
            rb = hb + 2 + fb + vb + 4 * (pair % eb)
            pa0 = block_point(hull_planes, ra, xa, qa)
            pb0 = block_point(hull_planes, rb, xb, qb)
            s, t, s_line, t_line = segment_parameters(pa0, block_point(hull_planes, ra + 1, xa, qa) - pa0, pb0,
                                                      block_point(hull_planes, rb + 1, xb, qb) - pb0)
            if s_line >= zero and s_line <= one and t_line >= zero and t_line <= one:
                result = code
        return result

    @wp.func
    def hull_edge_contact(hull_planes: wp.array(dtype=vec4), ha: int, hb: int, code: int, xa: vec3, qa: vec4,
                          xb: vec3, qb: vec4):
        # the edge pair ``select_edge_pair`` chose: normal from b to a, gap along it between the
        # closest points of the two edges, and the contact point between them
        fa = block_count(hull_planes, ha, 0)
        va = block_count(hull_planes, ha, 1)
        fb = block_count(hull_planes, hb, 0)
        vb = block_count(hull_planes, hb, 1)
        eb = wp.max(block_count(hull_planes, hb, 2), 1)
        pair = code // 2
        ra = ha + 2 + fa + va + 4 * (pair // eb)
        rb = hb + 2 + fb + vb + 4 * (pair % eb)
        pa0 = block_point(hull_planes, ra, xa, qa)
        da = block_point(hull_planes, ra + 1, xa, qa) - pa0
        pb0 = block_point(hull_planes, rb, xb, qb)
        db = block_point(hull_planes, rb + 1, xb, qb) - pb0
        axis = safe_direction(wp.cross(da, db), vec3(zero, zero, one)) * wp.where(code % 2 == 1, -one, one)
        s, t, s_line, t_line = segment_parameters(pa0, da, pb0, db)
        pa = pa0 + s * da
        pb = pb0 + t * db
        return -axis, wp.dot(pb - pa, axis), half * (pa + pb)

    @wp.kernel(module="unique")
    def integrate_forces(
        orientation: wp.array(dtype=vec4),
        velocity: wp.array(dtype=vec3),
        angular_velocity: wp.array(dtype=vec3),
        force: wp.array(dtype=vec3),
        torque: wp.array(dtype=vec3),
        inv_mass: wp.array(dtype=real),
        inv_inertia: wp.array(dtype=vec3),
        inertia_rotation: wp.array(dtype=vec4),
        gravity: wp.array(dtype=vec3),
        dt: real,
        velocity_star: wp.array(dtype=vec3),
        angular_velocity_star: wp.array(dtype=vec3),
        inv_inertia_world: wp.array(dtype=mat33),
    ):
        i = wp.tid()
        iw = world_inertia(orientation[i], inertia_rotation[i], inv_inertia[i])
        # gravity acts on dynamic bodies only (inv_mass > 0)
        g = wp.where(inv_mass[i] > zero, gravity[0], vec3(zero, zero, zero))
        velocity_star[i] = velocity[i] + dt * (g + inv_mass[i] * force[i])
        # L += dt tau at fixed orientation, i.e. w += dt I^-1 tau (no explicit gyroscopic term)
        angular_velocity_star[i] = angular_velocity[i] + dt * (iw * torque[i])
        inv_inertia_world[i] = iw

    @wp.kernel(enable_backward=False, module="unique")
    def select_hull_planes(
        position: wp.array(dtype=vec3),
        orientation: wp.array(dtype=vec4),
        slot_body: wp.array(dtype=ivec2),
        slot_point: wp.array(dtype=vec3),
        slot_b_position: wp.array(dtype=vec3),
        slot_b_rotation: wp.array(dtype=vec4),
        slot_b_hull: wp.array(dtype=ivec2),
        hull_planes: wp.array(dtype=vec4),
        contact_plane: wp.array(dtype=wp.int32),
    ):
        # per slot against a convex mesh: the row of the hull plane its point is highest over (the
        # same point and mesh frame as ``collide``); other slots get their (unused) start row; an
        # edge-edge slot (b_hull = (-1 - a's edge block row, b's)) its edge pair (``select_edge_pair``)
        c = wp.tid()
        a = slot_body[c][0]
        b = slot_body[c][1]
        bi = wp.max(b, 0)
        dyn_b = b >= 0
        xb = wp.where(dyn_b, position[bi], vec3(zero, zero, zero))
        qb = wp.where(dyn_b, orientation[bi], vec4(zero, zero, zero, one))
        # a flipped slot (a static vertex against a's hull): the point is fixed, the hull moves with a
        # (kind 8: the builder stores its hull as (start, -count))
        flip = slot_b_hull[c][1] < 0
        p = wp.where(flip, slot_point[c], position[a] + quat_rotate(orientation[a], slot_point[c]))
        xt = wp.where(flip, position[a], xb)
        qt = wp.where(flip, orientation[a], qb)
        cb = xt + quat_rotate(qt, slot_b_position[c])
        local = quat_rotate_inv(quat_mul(qt, slot_b_rotation[c]), p - cb)
        start = slot_b_hull[c][0]
        if start < 0:
            contact_plane[c] = select_edge_pair(hull_planes, -1 - start, position[a], orientation[a], slot_b_hull[c][1],
                                                xb, qb)
        else:
            best_row = start
            best = plane_height(hull_planes[start], local)
            for row in range(start + 1, start + wp.abs(slot_b_hull[c][1])):
                height = plane_height(hull_planes[row], local)
                if height > best:
                    best = height
                    best_row = row
            contact_plane[c] = best_row

    @wp.kernel(module="unique")
    def collide(
        position: wp.array(dtype=vec3),
        orientation: wp.array(dtype=vec4),
        velocity: wp.array(dtype=vec3),
        angular_velocity: wp.array(dtype=vec3),
        velocity_star: wp.array(dtype=vec3),
        angular_velocity_star: wp.array(dtype=vec3),
        inv_mass: wp.array(dtype=real),
        inv_inertia_world: wp.array(dtype=mat33),
        slot_body: wp.array(dtype=ivec2),
        slot_kind: wp.array(dtype=wp.int32),
        slot_order: wp.array(dtype=wp.int32),
        slot_point: wp.array(dtype=vec3),
        slot_radius: wp.array(dtype=real),
        slot_a_position: wp.array(dtype=vec3),
        slot_a_rotation: wp.array(dtype=vec4),
        slot_a_size: wp.array(dtype=vec3),
        slot_b_position: wp.array(dtype=vec3),
        slot_b_rotation: wp.array(dtype=vec4),
        slot_b_size: wp.array(dtype=vec3),
        hull_planes: wp.array(dtype=vec4),
        contact_plane: wp.array(dtype=wp.int32),
        slot_restitution: wp.array(dtype=real),
        restitution_threshold: real,
        face_tolerance: real,
        contact_margin: real,
        dt: real,
        contact_normal: wp.array(dtype=vec3),
        contact_arm_a: wp.array(dtype=vec3),
        contact_arm_b: wp.array(dtype=vec3),
        contact_tangent1: wp.array(dtype=vec3),
        contact_tangent2: wp.array(dtype=vec3),
        contact_mass: wp.array(dtype=vec3),
        contact_gap: wp.array(dtype=real),
        contact_normal_velocity: wp.array(dtype=real),
        contact_velocity_target: wp.array(dtype=real),
        contact_gap_target: wp.array(dtype=real),
        contact_active: wp.array(dtype=real),
        contact_impacting: wp.array(dtype=real),
    ):
        c = wp.tid()
        a = slot_body[c][0]
        b = slot_body[c][1]
        bi = wp.max(b, 0)
        dyn_b = b >= 0
        kind = slot_kind[c]
        xa = position[a]
        qa = orientation[a]
        identity = vec4(zero, zero, zero, one)
        origin = vec3(zero, zero, zero)
        xb = wp.where(dyn_b, position[bi], origin)
        qb = wp.where(dyn_b, orientation[bi], identity)
        # flipped kinds (7, 8, 9): the point is a static vertex (world frame), the target moves with a
        flip = kind == 7 or kind == 8 or kind == 9
        p = wp.where(flip, slot_point[c], xa + quat_rotate(qa, slot_point[c]))
        ra_point = slot_radius[c]
        xt = wp.where(flip, xa, xb)
        qt = wp.where(flip, qa, qb)
        # shape b (flipped: a's target shape) in world
        cb = xt + quat_rotate(qt, slot_b_position[c])
        rot_b = quat_mul(qt, slot_b_rotation[c])
        size_b = slot_b_size[c]
        up = vec3(zero, zero, one)

        # a capsule's sliding slot (slot_order 1 on a box / capsule target): the point of its axis
        # nearest the other shape, so a crossing in the middle of the segment is caught; its ends
        # have their own slots, so it is active only inside the segment
        sliding = slot_order[c] == 1 and (kind == 2 or kind == 3)
        # branches that only some kinds use run only for them (the skipped values are never selected,
        # so results and adjoints are those of computing everything)
        t_slide = half
        if sliding:
            p_slide, t_slide = sliding_point(xa + quat_rotate(qa, slot_a_position[c]), quat_mul(qa, slot_a_rotation[c]),
                                             slot_a_size[c][1], cb, rot_b, size_b, kind == 2)
            p = p_slide
        inner = t_slide > real(0.02) and t_slide < real(0.98)

        # ground plane z = cb.z
        n_ground = up
        d_ground = p[2] - cb[2] - ra_point

        # sphere
        n_sphere = safe_direction(p - cb, up)
        d_sphere = safe_length(p - cb) - size_b[0] - ra_point

        # capsule along its local z
        local_c = quat_rotate_inv(rot_b, p - cb)
        axis_point = vec3(zero, zero, wp.clamp(local_c[2], -size_b[1], size_b[1]))
        n_capsule = quat_rotate(rot_b, safe_direction(local_c - axis_point, vec3(one, zero, zero)))
        d_capsule = safe_length(local_c - axis_point) - size_b[0] - ra_point

        # box signed distance (closest face when inside)
        lb = local_c
        qd = vec3(wp.abs(lb[0]) - size_b[0], wp.abs(lb[1]) - size_b[1], wp.abs(lb[2]) - size_b[2])
        outside = vec3(wp.max(qd[0], zero), wp.max(qd[1], zero), wp.max(qd[2], zero))
        out_len = safe_length(outside)
        sign = vec3(wp.where(lb[0] < zero, -one, one), wp.where(lb[1] < zero, -one, one), wp.where(lb[2] < zero, -one, one))
        inside_axis = wp.where(qd[0] >= qd[1] and qd[0] >= qd[2], 0, wp.where(qd[1] >= qd[2], 1, 2))
        inside_d = wp.max(qd[0], wp.max(qd[1], qd[2]))
        n_in = wp.cw_mul(sign, unit(inside_axis))
        n_out = wp.cw_mul(sign, outside) / wp.max(out_len, tiny)
        is_out = inside_d > zero
        n_box = quat_rotate(rot_b, wp.where(is_out, n_out, n_in))
        d_box = wp.where(is_out, out_len, inside_d) - ra_point

        # convex mesh: the hull plane ``select_hull_planes`` found the point highest over
        plane = hull_planes[wp.where(kind == 5 or kind == 8, contact_plane[c], 0)]
        n_mesh = quat_rotate(rot_b, vec3(plane[0], plane[1], plane[2]))
        d_mesh = plane_height(plane, local_c) - ra_point

        # box against box: one slot per manifold candidate (slot_order holds the candidate index)
        ca = xa + quat_rotate(qa, slot_a_position[c])
        rot_a = quat_mul(qa, slot_a_rotation[c])
        n_sat = up
        d_sat = zero
        point_sat = ca
        valid_sat = zero
        if kind == 4:
            n_sat, d_sat, point_sat, valid_sat = box_box_contact(ca, rot_a, slot_a_size[c], cb, rot_b, size_b, slot_order[c],
                                                                 face_tolerance)

        # two convex hulls edge to edge: the pair select_hull_planes chose (-1: none); a_size holds
        # the rows of the two edge blocks (builder)
        edge_ok = kind == 6 and contact_plane[c] >= 0
        n_edge = up
        d_edge = zero
        point_edge = xa
        if edge_ok:
            n_edge, d_edge, point_edge = hull_edge_contact(hull_planes, int(slot_a_size[c][0] + half),
                                                           int(slot_a_size[c][1] + half), contact_plane[c], xa, qa, xb, qb)

        n = wp.where(kind == 0, n_ground, wp.where(kind == 1, n_sphere, wp.where(kind == 2, n_box, wp.where(
            kind == 3, n_capsule, wp.where(kind == 5, n_mesh, wp.where(kind == 6, n_edge, wp.where(
            kind == 7, -n_box, wp.where(kind == 8, -n_mesh, wp.where(kind == 9, -n_capsule, n_sat)))))))))
        d = wp.where(kind == 0, d_ground, wp.where(kind == 1, d_sphere, wp.where(kind == 2, d_box, wp.where(
            kind == 3, d_capsule, wp.where(kind == 5, d_mesh, wp.where(kind == 6, d_edge, wp.where(
            kind == 7, d_box, wp.where(kind == 8, d_mesh, wp.where(kind == 9, d_capsule, d_sat)))))))))
        valid = (kind != 4 or valid_sat > zero) and (kind != 6 or edge_ok) and (not sliding or inner)

        # contact point on the surface of a; arms from each centre of mass
        pc = wp.where(kind == 4, point_sat, wp.where(kind == 6, point_edge, p - ra_point * n))
        arm_a = pc - xa
        arm_b = pc - xb
        ima = inv_mass[a]
        imb = wp.where(dyn_b, inv_mass[bi], zero)
        ia = inv_inertia_world[a]
        ib = wp.where(dyn_b, inv_inertia_world[bi], mat33())
        vb0 = wp.where(dyn_b, velocity[bi], origin)
        wb0 = wp.where(dyn_b, angular_velocity[bi], origin)
        vbs = wp.where(dyn_b, velocity_star[bi], origin)
        wbs = wp.where(dyn_b, angular_velocity_star[bi], origin)
        vn0 = wp.dot(relative_velocity(velocity[a], angular_velocity[a], arm_a, vb0, wb0, arm_b), n)
        vns = wp.dot(relative_velocity(velocity_star[a], angular_velocity_star[a], arm_a, vbs, wbs, arm_b), n)
        an = (vns - vn0) / dt

        # time of impact inside the step for the constant-acceleration normal motion
        reach = d <= zero or d + vn0 * dt + half * an * dt * dt <= zero
        t = impact_time(d, vn0, an, dt)
        vc = vn0 + an * t
        # speculative: a contact within the margin keeps the trapezoidal end gap >= 0 (never binding
        # for free motion that does not reach it) even when only other contacts push the bodies together
        # (the ground's time-of-impact test is exact on its own: no margin there)
        active = (reach or (d <= contact_margin and kind != 0)) and valid
        impacting = active and vc < -restitution_threshold
        e = slot_restitution[c]
        s = dt - t
        helper = wp.where(wp.abs(n[0]) < real(0.57), vec3(one, zero, zero), vec3(zero, one, zero))
        t1 = wp.normalize(wp.cross(n, helper))
        t2 = wp.cross(n, t1)

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
        # a rebound too weak to leave the surface within the step ends resting on it (as in spheres.py)
        contact_velocity_target[c] = wp.where(impacting, wp.max(-e * vc + an * s, zero),
                                              wp.where(reach, zero, wp.min(zero, -two * wp.max(d, zero) / dt - vn0)))
        contact_gap_target[c] = wp.where(impacting, wp.max(-e * vc * s + half * an * s * s, zero), zero)
        contact_active[c] = wp.where(active, one, zero)
        contact_impacting[c] = wp.where(impacting, one, zero)

    @wp.func
    def history_index(k: int, c: int, side: int, body: int, contact_count: int, body_count: int,
                      slot_prev: wp.array(dtype=ivec2), slot_prev_side: wp.array(dtype=ivec2),
                      body_last: wp.array(dtype=wp.int32), body_last_side: wp.array(dtype=wp.int32)):
        # where the latest velocity of ``body`` lives before slot c of pass k: a record of an
        # earlier slot of this pass, the last slot of the previous pass, the seed, or the zero row
        bb = wp.max(body, 0)
        prev = slot_prev[c][side]
        prev_side = slot_prev_side[c][side]
        base = body_count + 1
        in_pass = base + (k * contact_count + prev) * 2 + prev_side
        last_pass = base + ((k - 1) * contact_count + body_last[bb]) * 2 + body_last_side[bb]
        index = wp.where(prev >= 0, in_pass, wp.where(k > 0, last_pass, bb))
        return wp.where(body < 0, body_count, index)

    @wp.func
    def slot_bodies(k: int, c: int, a: int, b: int, contact_count: int, body_count: int,
                    slot_prev: wp.array(dtype=ivec2), slot_prev_side: wp.array(dtype=ivec2),
                    body_last: wp.array(dtype=wp.int32), body_last_side: wp.array(dtype=wp.int32),
                    inv_mass: wp.array(dtype=real), inv_inertia_world: wp.array(dtype=mat33),
                    linear_history: wp.array(dtype=vec3), angular_history: wp.array(dtype=vec3)):
        # both bodies of slot c before it in pass k: velocities (from the history), inverse masses and
        # world inverse inertias (zero for a static b)
        bi = wp.max(b, 0)
        dyn_b = b >= 0
        ia_index = history_index(k, c, 0, a, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
        ib_index = history_index(k, c, 1, b, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
        return (linear_history[ia_index], angular_history[ia_index], linear_history[ib_index], angular_history[ib_index],
                inv_mass[a], wp.where(dyn_b, inv_mass[bi], zero), inv_inertia_world[a],
                wp.where(dyn_b, inv_inertia_world[bi], mat33()))

    @wp.func
    def record_slot(s: int, body_count: int, va: vec3, wa: vec3, vb: vec3, wb: vec3, ima: real, imb: real, ia: mat33,
                    ib: mat33, ra: vec3, rb: vec3, dp: vec3, linear_history: wp.array(dtype=vec3),
                    angular_history: wp.array(dtype=vec3)):
        # write both bodies' velocities after impulse dp at arms ra / rb (each record written once)
        out = body_count + 1 + s * 2
        linear_history[out] = va + ima * dp
        angular_history[out] = wa + ia * wp.cross(ra, dp)
        linear_history[out + 1] = vb - imb * dp
        angular_history[out + 1] = wb - ib * wp.cross(rb, dp)

    @wp.func
    def pass_through(s: int, body_count: int, va: vec3, wa: vec3, vb: vec3, wb: vec3, linear_history: wp.array(dtype=vec3),
                     angular_history: wp.array(dtype=vec3)):
        # ``record_slot`` of an inactive slot: both bodies' velocities unchanged
        out = body_count + 1 + s * 2
        linear_history[out] = va
        angular_history[out] = wa
        linear_history[out + 1] = vb
        angular_history[out + 1] = wb

    @wp.kernel(module="unique")
    def seed_velocities(velocity_star: wp.array(dtype=vec3), angular_velocity_star: wp.array(dtype=vec3),
                        linear_history: wp.array(dtype=vec3), angular_history: wp.array(dtype=vec3)):
        i = wp.tid()
        linear_history[i] = velocity_star[i]
        angular_history[i] = angular_velocity_star[i]

    @wp.kernel(module="unique")
    def solve_velocity(
        world_slot_start: wp.array(dtype=wp.int32),
        slot_body: wp.array(dtype=ivec2),
        slot_prev: wp.array(dtype=ivec2),
        slot_prev_side: wp.array(dtype=ivec2),
        body_last: wp.array(dtype=wp.int32),
        body_last_side: wp.array(dtype=wp.int32),
        inv_mass: wp.array(dtype=real),
        inv_inertia_world: wp.array(dtype=mat33),
        contact_normal: wp.array(dtype=vec3),
        contact_arm_a: wp.array(dtype=vec3),
        contact_arm_b: wp.array(dtype=vec3),
        contact_tangent1: wp.array(dtype=vec3),
        contact_tangent2: wp.array(dtype=vec3),
        contact_mass: wp.array(dtype=vec3),
        contact_velocity_target: wp.array(dtype=real),
        contact_active: wp.array(dtype=real),
        slot_friction: wp.array(dtype=real),
        warm_impulse: wp.array(dtype=vec3),
        pass_count: int,
        contact_count: int,
        body_count: int,
        impulse_history: wp.array(dtype=vec3),
        linear_history: wp.array(dtype=vec3),
        angular_history: wp.array(dtype=vec3),
    ):
        # one thread per world: Gauss-Seidel over the world's slots; pass 0 applies the warm-start impulses
        world = wp.tid()
        first = world_slot_start[world]
        count = world_slot_start[world + 1] - first
        for k in range(pass_count):
            for j in range(count):
                c = first + j
                s = k * contact_count + c  # the (pass, slot) record, as in a serial walk over all slots
                va, wa, vb, wb, ima, imb, ia, ib = slot_bodies(k, c, slot_body[c][0], slot_body[c][1], contact_count, body_count,
                                                               slot_prev, slot_prev_side, body_last, body_last_side, inv_mass,
                                                               inv_inertia_world, linear_history, angular_history)
                active = contact_active[c]
                if active == zero:
                    # an inactive slot is a no-op (impulse 0, both velocities pass through): skip its arithmetic
                    pass_through(s, body_count, va, wa, vb, wb, linear_history, angular_history)
                    impulse_history[(k + 1) * contact_count + c] = vec3(zero, zero, zero)
                else:
                    n = contact_normal[c]
                    t1 = contact_tangent1[c]
                    t2 = contact_tangent2[c]
                    ra = contact_arm_a[c]
                    rb = contact_arm_b[c]
                    m = contact_mass[c]
                    old = impulse_history[k * contact_count + c]
                    # normal: accumulated impulse stays >= 0 and reaches the restitution target velocity
                    vn = wp.dot(relative_velocity(va, wa, ra, vb, wb, rb), n)
                    lam_n = wp.max(old[0] + m[0] * (contact_velocity_target[c] - vn), zero) * active
                    pn = (lam_n - old[0]) * n
                    va1 = va + ima * pn
                    wa1 = wa + ia * wp.cross(ra, pn)
                    vb1 = vb - imb * pn
                    wb1 = wb - ib * wp.cross(rb, pn)
                    # friction: stop the tangential slip, clamped to the Coulomb disc mu * lambda_n
                    vr = relative_velocity(va1, wa1, ra, vb1, wb1, rb)
                    lt1 = old[1] - m[1] * wp.dot(vr, t1)
                    lt2 = old[2] - m[2] * wp.dot(vr, t2)
                    limit = slot_friction[c] * lam_n
                    norm2 = lt1 * lt1 + lt2 * lt2
                    scale = wp.where(norm2 > limit * limit, limit / wp.sqrt(wp.max(norm2, tiny)), one) * active
                    solved = vec3(lam_n, lt1 * scale, lt2 * scale)
                    new = wp.where(k == 0, warm_impulse[c] * active, solved)
                    impulse_history[(k + 1) * contact_count + c] = new
                    dp = (new[0] - old[0]) * n + (new[1] - old[1]) * t1 + (new[2] - old[2]) * t2
                    record_slot(s, body_count, va, wa, vb, wb, ima, imb, ia, ib, ra, rb, dp, linear_history, angular_history)

    @wp.kernel(module="unique")
    def finalize_velocities(
        body_last: wp.array(dtype=wp.int32),
        body_last_side: wp.array(dtype=wp.int32),
        linear_history: wp.array(dtype=vec3),
        angular_history: wp.array(dtype=vec3),
        pass_count: int,
        contact_count: int,
        body_count: int,
        velocity_final: wp.array(dtype=vec3),
        angular_velocity_final: wp.array(dtype=vec3),
    ):
        i = wp.tid()
        last = body_last[i]
        record = body_count + 1 + ((pass_count - 1) * contact_count + last) * 2 + body_last_side[i]
        index = wp.where(last >= 0 and pass_count > 0, record, i)
        velocity_final[i] = linear_history[index]
        angular_velocity_final[i] = angular_history[index]

    @wp.kernel(module="unique")
    def predict_gaps(
        slot_body: wp.array(dtype=ivec2),
        velocity_final: wp.array(dtype=vec3),
        angular_velocity_final: wp.array(dtype=vec3),
        contact_normal: wp.array(dtype=vec3),
        contact_arm_a: wp.array(dtype=vec3),
        contact_arm_b: wp.array(dtype=vec3),
        contact_gap: wp.array(dtype=real),
        contact_normal_velocity: wp.array(dtype=real),
        contact_gap_target: wp.array(dtype=real),
        dt: real,
        contact_pseudo_target: wp.array(dtype=real),
    ):
        c = wp.tid()
        a = slot_body[c][0]
        b = slot_body[c][1]
        bi = wp.max(b, 0)
        origin = vec3(zero, zero, zero)
        vb = wp.where(b >= 0, velocity_final[bi], origin)
        wb = wp.where(b >= 0, angular_velocity_final[bi], origin)
        vn1 = wp.dot(relative_velocity(velocity_final[a], angular_velocity_final[a], contact_arm_a[c], vb, wb, contact_arm_b[c]), contact_normal[c])
        # the gap the trapezoidal position update will reach, linearised at the step start
        predicted = contact_gap[c] + half * dt * (contact_normal_velocity[c] + vn1)
        contact_pseudo_target[c] = (contact_gap_target[c] - predicted) / dt

    @wp.kernel(module="unique")
    def solve_position(
        world_slot_start: wp.array(dtype=wp.int32),
        slot_body: wp.array(dtype=ivec2),
        slot_prev: wp.array(dtype=ivec2),
        slot_prev_side: wp.array(dtype=ivec2),
        body_last: wp.array(dtype=wp.int32),
        body_last_side: wp.array(dtype=wp.int32),
        inv_mass: wp.array(dtype=real),
        inv_inertia_world: wp.array(dtype=mat33),
        contact_normal: wp.array(dtype=vec3),
        contact_arm_a: wp.array(dtype=vec3),
        contact_arm_b: wp.array(dtype=vec3),
        contact_mass: wp.array(dtype=vec3),
        contact_pseudo_target: wp.array(dtype=real),
        contact_active: wp.array(dtype=real),
        contact_impacting: wp.array(dtype=real),
        pass_count: int,
        contact_count: int,
        body_count: int,
        impulse_history: wp.array(dtype=real),
        linear_history: wp.array(dtype=vec3),
        angular_history: wp.array(dtype=vec3),
    ):
        # split impulses on pseudo-velocities: they move bodies but never enter the velocity
        world = wp.tid()
        first = world_slot_start[world]
        count = world_slot_start[world + 1] - first
        for k in range(pass_count):
            for j in range(count):
                c = first + j
                s = k * contact_count + c
                va, wa, vb, wb, ima, imb, ia, ib = slot_bodies(k, c, slot_body[c][0], slot_body[c][1], contact_count, body_count,
                                                               slot_prev, slot_prev_side, body_last, body_last_side, inv_mass,
                                                               inv_inertia_world, linear_history, angular_history)
                active = contact_active[c]
                if active == zero:  # a no-op, as in solve_velocity
                    pass_through(s, body_count, va, wa, vb, wb, linear_history, angular_history)
                    impulse_history[(k + 1) * contact_count + c] = zero
                else:
                    n = contact_normal[c]
                    ra = contact_arm_a[c]
                    rb = contact_arm_b[c]
                    old = impulse_history[k * contact_count + c]
                    vn = wp.dot(relative_velocity(va, wa, ra, vb, wb, rb), n)
                    trial = old + contact_mass[c][0] * (contact_pseudo_target[c] - vn)
                    # an impact lands exactly on its time-of-impact end gap (two-sided); resting contacts push only
                    new = wp.where(contact_impacting[c] > zero, trial, wp.max(trial, zero)) * active
                    impulse_history[(k + 1) * contact_count + c] = new
                    dp = (new - old) * n
                    record_slot(s, body_count, va, wa, vb, wb, ima, imb, ia, ib, ra, rb, dp, linear_history, angular_history)

    @wp.kernel(module="unique")
    def integrate_positions(
        position: wp.array(dtype=vec3),
        orientation: wp.array(dtype=vec4),
        velocity: wp.array(dtype=vec3),
        angular_velocity: wp.array(dtype=vec3),
        velocity_final: wp.array(dtype=vec3),
        angular_velocity_final: wp.array(dtype=vec3),
        inertia: wp.array(dtype=vec3),
        inv_inertia: wp.array(dtype=vec3),
        inertia_rotation: wp.array(dtype=vec4),
        body_last: wp.array(dtype=wp.int32),
        body_last_side: wp.array(dtype=wp.int32),
        pseudo_linear_history: wp.array(dtype=vec3),
        pseudo_angular_history: wp.array(dtype=vec3),
        pseudo_pass_count: int,
        contact_count: int,
        body_count: int,
        dt: real,
        position_out: wp.array(dtype=vec3),
        orientation_out: wp.array(dtype=vec4),
        velocity_out: wp.array(dtype=vec3),
        angular_velocity_out: wp.array(dtype=vec3),
    ):
        i = wp.tid()
        last = body_last[i]
        record = body_count + 1 + ((pseudo_pass_count - 1) * contact_count + last) * 2 + body_last_side[i]
        index = wp.where(last >= 0 and pseudo_pass_count > 0, record, body_count)
        pseudo_v = pseudo_linear_history[index]
        pseudo_w = pseudo_angular_history[index]
        q = orientation[i]
        qp = inertia_rotation[i]
        diag = inertia[i]
        inv_diag = inv_inertia[i]
        # trapezoidal position update: exact for constant acceleration, no drift at rest
        position_out[i] = position[i] + (half * dt) * (velocity[i] + velocity_final[i]) + dt * pseudo_v
        # world angular momentum before/after the impulses, at the step-start orientation
        inertia_start = world_inertia(q, qp, diag)
        momentum_start = inertia_start * angular_velocity[i]
        momentum_end = inertia_start * angular_velocity_final[i]
        momentum = half * (momentum_start + momentum_end)
        # symmetric splitting into exact rotations about the principal axes (|L| exact, energy bounded)
        e0 = vec3(one, zero, zero)
        e1 = vec3(zero, one, zero)
        e2 = vec3(zero, zero, one)
        q = rotate_about_axis(q, qp, e0, inv_diag[0], momentum, half * dt)
        q = rotate_about_axis(q, qp, e1, inv_diag[1], momentum, half * dt)
        q = rotate_about_axis(q, qp, e2, inv_diag[2], momentum, dt)
        q = rotate_about_axis(q, qp, e1, inv_diag[1], momentum, half * dt)
        q = rotate_about_axis(q, qp, e0, inv_diag[0], momentum, half * dt)
        # pseudo angular velocity: a position-only correction
        dq = quat_mul(vec4(pseudo_w[0], pseudo_w[1], pseudo_w[2], zero), q)
        q = quat_normalize(q + (half * dt) * dq)
        orientation_out[i] = q
        velocity_out[i] = velocity_final[i]
        angular_velocity_out[i] = world_inertia(q, qp, inv_diag) * momentum_end

    return types.SimpleNamespace(
        vec3=vec3, vec4=vec4, mat33=mat33, ivec2=ivec2,
        integrate_forces=integrate_forces, select_hull_planes=select_hull_planes, collide=collide, seed_velocities=seed_velocities,
        solve_velocity=solve_velocity, finalize_velocities=finalize_velocities, predict_gaps=predict_gaps,
        solve_position=solve_position, integrate_positions=integrate_positions,
    )
