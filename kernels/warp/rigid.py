"""Warp kernels of the rigid-body solver, one per phase of a step.

A step is: ``integrate_forces`` (velocities after gravity, forces, torques) -> ``collide``
(one contact slot per candidate point/shape pair: normal, arms, gap, time-of-impact targets)
-> ``seed_velocities`` + ``solve_velocity`` (sequential impulses with restitution and Coulomb
friction) -> ``finalize_velocities`` -> ``predict_gaps`` -> ``solve_position`` (pseudo-velocity
split impulses that never feed back into velocity) -> ``integrate_positions``.

The two solve kernels run one thread that walks every (pass, slot) pair in order and writes
each result once into a history buffer (impulses and the body velocities after each slot), so
nothing is overwritten under the tape and the adjoint replays the chain exactly. Every helper
here has a twin of the same arithmetic in kernels/taichi/rigid.py. Quaternions are vec4 (x, y, z, w).
"""


import functools

# contact slot kinds
KIND_GROUND = 0
KIND_SPHERE = 1
KIND_BOX = 2
KIND_CAPSULE = 3
KIND_BOX_BOX = 4


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
        disc = wp.max(vn * vn - two * an * g, zero)
        denom = wp.max(wp.sqrt(disc) - vn, tiny)
        return wp.where(gap > zero, wp.min(two * g / denom, dt), zero)

    @wp.func
    def safe_direction(d: vec3, fallback: vec3):
        length = wp.sqrt(wp.dot(d, d))
        return wp.where(length > real(1.0e-12), d / wp.max(length, tiny), fallback)

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
        p = xa + quat_rotate(qa, slot_point[c])
        ra_point = slot_radius[c]
        # shape b in world
        cb = xb + quat_rotate(qb, slot_b_position[c])
        rot_b = quat_mul(qb, slot_b_rotation[c])
        size_b = slot_b_size[c]
        up = vec3(zero, zero, one)

        # ground plane z = cb.z
        n_ground = up
        d_ground = p[2] - cb[2] - ra_point

        # sphere
        n_sphere = safe_direction(p - cb, up)
        d_sphere = wp.length(p - cb) - size_b[0] - ra_point

        # capsule along its local z
        local_c = quat_rotate_inv(rot_b, p - cb)
        axis_point = vec3(zero, zero, wp.clamp(local_c[2], -size_b[1], size_b[1]))
        n_capsule = quat_rotate(rot_b, safe_direction(local_c - axis_point, vec3(one, zero, zero)))
        d_capsule = wp.length(local_c - axis_point) - size_b[0] - ra_point

        # box signed distance (closest face when inside)
        lb = local_c
        qd = vec3(wp.abs(lb[0]) - size_b[0], wp.abs(lb[1]) - size_b[1], wp.abs(lb[2]) - size_b[2])
        outside = vec3(wp.max(qd[0], zero), wp.max(qd[1], zero), wp.max(qd[2], zero))
        out_len = wp.length(outside)
        sign = vec3(wp.where(lb[0] < zero, -one, one), wp.where(lb[1] < zero, -one, one), wp.where(lb[2] < zero, -one, one))
        inside_axis = wp.where(qd[0] >= qd[1] and qd[0] >= qd[2], 0, wp.where(qd[1] >= qd[2], 1, 2))
        inside_d = wp.max(qd[0], wp.max(qd[1], qd[2]))
        n_in = wp.cw_mul(sign, unit(inside_axis))
        n_out = wp.cw_mul(sign, outside) / wp.max(out_len, tiny)
        is_out = inside_d > zero
        n_box = quat_rotate(rot_b, wp.where(is_out, n_out, n_in))
        d_box = wp.where(is_out, out_len, inside_d) - ra_point

        # box corner against box: separating axis over the 6 face normals, box b must own the axis
        ca = xa + quat_rotate(qa, slot_a_position[c])
        rot_a = quat_mul(qa, slot_a_rotation[c])
        size_a = slot_a_size[c]
        delta = ca - cb
        best = real(1.0e30)
        best_axis = up
        best_owner_b = 0
        best_index = 0
        for j in range(6):
            # the lower-index box's axes are tried first so both slots of a pair agree
            first_a = slot_order[c] == 1
            use_a = (j < 3) == first_a
            k = j % 3
            axis = wp.where(use_a, quat_rotate(rot_a, unit(k)), quat_rotate(rot_b, unit(k)))
            overlap = box_support(axis, rot_a, size_a) + box_support(axis, rot_b, size_b) - wp.abs(wp.dot(delta, axis))
            # against a static box (order 2) only the static box's faces can be the reference
            overlap = overlap + wp.where(use_a and slot_order[c] == 2, real(1.0e30), zero)
            better = overlap < best
            best = wp.where(better, overlap, best)
            best_axis = wp.where(better, axis, best_axis)
            best_owner_b = wp.where(better, wp.where(use_a, 0, 1), best_owner_b)
            best_index = wp.where(better, k, best_index)
        n_sat = wp.where(wp.dot(delta, best_axis) < zero, -best_axis, best_axis)
        local_p = quat_rotate_inv(rot_b, p - cb)
        t_index1 = (best_index + 1) % 3
        t_index2 = (best_index + 2) % 3
        within = (wp.abs(local_p[t_index1]) <= size_b[t_index1] * (one + face_tolerance)
                  and wp.abs(local_p[t_index2]) <= size_b[t_index2] * (one + face_tolerance))
        sat_valid = best_owner_b == 1 and within
        d_sat = wp.dot(p - cb, n_sat) - size_b[best_index]

        n = wp.where(kind == 0, n_ground, wp.where(kind == 1, n_sphere, wp.where(kind == 2, n_box, wp.where(kind == 3, n_capsule, n_sat))))
        d = wp.where(kind == 0, d_ground, wp.where(kind == 1, d_sphere, wp.where(kind == 2, d_box, wp.where(kind == 3, d_capsule, d_sat))))
        valid = wp.where(kind == 4, sat_valid, True)

        # contact point on the surface of a; arms from each centre of mass
        pc = p - ra_point * n
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

    @wp.kernel(module="unique")
    def seed_velocities(velocity_star: wp.array(dtype=vec3), angular_velocity_star: wp.array(dtype=vec3),
                        linear_history: wp.array(dtype=vec3), angular_history: wp.array(dtype=vec3)):
        i = wp.tid()
        linear_history[i] = velocity_star[i]
        angular_history[i] = angular_velocity_star[i]

    @wp.kernel(module="unique")
    def solve_velocity(
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
        # one thread: Gauss-Seidel over slots; pass 0 applies the warm-start impulses
        for s in range(pass_count * contact_count):
            k = s // contact_count
            c = s % contact_count
            a = slot_body[c][0]
            b = slot_body[c][1]
            bi = wp.max(b, 0)
            dyn_b = b >= 0
            ia_index = history_index(k, c, 0, a, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
            ib_index = history_index(k, c, 1, b, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
            va = linear_history[ia_index]
            wa = angular_history[ia_index]
            vb = linear_history[ib_index]
            wb = angular_history[ib_index]
            ima = inv_mass[a]
            imb = wp.where(dyn_b, inv_mass[bi], zero)
            ia = inv_inertia_world[a]
            ib = wp.where(dyn_b, inv_inertia_world[bi], mat33())
            n = contact_normal[c]
            t1 = contact_tangent1[c]
            t2 = contact_tangent2[c]
            ra = contact_arm_a[c]
            rb = contact_arm_b[c]
            m = contact_mass[c]
            active = contact_active[c]
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
            out = body_count + 1 + s * 2
            linear_history[out] = va + ima * dp
            angular_history[out] = wa + ia * wp.cross(ra, dp)
            linear_history[out + 1] = vb - imb * dp
            angular_history[out + 1] = wb - ib * wp.cross(rb, dp)

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
        for s in range(pass_count * contact_count):
            k = s // contact_count
            c = s % contact_count
            a = slot_body[c][0]
            b = slot_body[c][1]
            bi = wp.max(b, 0)
            dyn_b = b >= 0
            ia_index = history_index(k, c, 0, a, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
            ib_index = history_index(k, c, 1, b, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
            va = linear_history[ia_index]
            wa = angular_history[ia_index]
            vb = linear_history[ib_index]
            wb = angular_history[ib_index]
            ima = inv_mass[a]
            imb = wp.where(dyn_b, inv_mass[bi], zero)
            ia = inv_inertia_world[a]
            ib = wp.where(dyn_b, inv_inertia_world[bi], mat33())
            n = contact_normal[c]
            ra = contact_arm_a[c]
            rb = contact_arm_b[c]
            old = impulse_history[k * contact_count + c]
            vn = wp.dot(relative_velocity(va, wa, ra, vb, wb, rb), n)
            trial = old + contact_mass[c][0] * (contact_pseudo_target[c] - vn)
            # an impact lands exactly on its time-of-impact end gap (two-sided); resting contacts push only
            new = wp.where(contact_impacting[c] > zero, trial, wp.max(trial, zero)) * contact_active[c]
            impulse_history[(k + 1) * contact_count + c] = new
            dp = (new - old) * n
            out = body_count + 1 + s * 2
            linear_history[out] = va + ima * dp
            angular_history[out] = wa + ia * wp.cross(ra, dp)
            linear_history[out + 1] = vb - imb * dp
            angular_history[out + 1] = wb - ib * wp.cross(rb, dp)

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
        integrate_forces=integrate_forces, collide=collide, seed_velocities=seed_velocities,
        solve_velocity=solve_velocity, finalize_velocities=finalize_velocities, predict_gaps=predict_gaps,
        solve_position=solve_position, integrate_positions=integrate_positions,
    )
