"""Taichi kernels of the rigid-body solver: the phases and arithmetic of kernels/warp/rigid.py.

Arrays are torch tensors passed as external ndarrays; ``real`` (ti.f32/ti.f64) types every
literal. Selections are branch-free (``ti.select``) so the reverse mode (``kernel.grad``) stays
exact; the two solve kernels walk (pass, slot) pairs in one serial inner loop that writes each
history record once, which Taichi's reverse mode replays backwards. Quaternions are vec4 (x, y, z, w).
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
        disc = ti.max(vn * vn - lit(2.0) * an * g, lit(0.0))
        denom = ti.max(ti.sqrt(disc) - vn, lit(1.0e-30))
        return ti.select(gap > lit(0.0), ti.min(lit(2.0) * g / denom, dt), lit(0.0))

    @ti.func
    def vlength(d):
        return ti.sqrt(d.dot(d))

    @ti.func
    def safe_direction(d, fallback):
        length = ti.sqrt(d.dot(d))
        return ti.select(length > lit(1.0e-12), d / ti.max(length, lit(1.0e-30)), fallback)

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
    def collide(position: a_vec3, orientation: a_vec4, velocity: a_vec3, angular_velocity: a_vec3, velocity_star: a_vec3,
                angular_velocity_star: a_vec3, inv_mass: a_real, inv_inertia_world: a_mat, slot_body: a_ivec2,
                slot_kind: a_int, slot_order: a_int, slot_point: a_vec3, slot_radius: a_real, slot_a_position: a_vec3,
                slot_a_rotation: a_vec4, slot_a_size: a_vec3, slot_b_position: a_vec3, slot_b_rotation: a_vec4,
                slot_b_size: a_vec3, slot_restitution: a_real, restitution_threshold: real, face_tolerance: real, contact_margin: real, dt: real,
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
            p = xa + quat_rotate(qa, slot_point[c])
            ra_point = slot_radius[c]
            cb = xb + quat_rotate(qb, slot_b_position[c])
            rot_b = quat_mul(qb, slot_b_rotation[c])
            size_b = slot_b_size[c]
            up = vec3(0.0, 0.0, 1.0)

            n_ground = up
            d_ground = p[2] - cb[2] - ra_point

            n_sphere = safe_direction(p - cb, up)
            d_sphere = vlength(p - cb) - size_b[0] - ra_point

            local_c = quat_rotate_inv(rot_b, p - cb)
            axis_point = vec3(0.0, 0.0, ti.min(ti.max(local_c[2], -size_b[1]), size_b[1]))
            n_capsule = quat_rotate(rot_b, safe_direction(local_c - axis_point, vec3(1.0, 0.0, 0.0)))
            d_capsule = vlength(local_c - axis_point) - size_b[0] - ra_point

            lb = local_c
            qd = vec3(ti.abs(lb[0]) - size_b[0], ti.abs(lb[1]) - size_b[1], ti.abs(lb[2]) - size_b[2])
            outside = vec3(ti.max(qd[0], lit(0.0)), ti.max(qd[1], lit(0.0)), ti.max(qd[2], lit(0.0)))
            out_len = vlength(outside)
            sign = vec3(ti.select(lb[0] < lit(0.0), lit(-1.0), lit(1.0)), ti.select(lb[1] < lit(0.0), lit(-1.0), lit(1.0)),
                        ti.select(lb[2] < lit(0.0), lit(-1.0), lit(1.0)))
            inside_axis = ti.select((qd[0] >= qd[1]) & (qd[0] >= qd[2]), 0, ti.select(qd[1] >= qd[2], 1, 2))
            inside_d = ti.max(qd[0], ti.max(qd[1], qd[2]))
            n_in = sign * unit(inside_axis)
            n_out = sign * outside / ti.max(out_len, lit(1.0e-30))
            is_out = inside_d > lit(0.0)
            n_box = quat_rotate(rot_b, ti.select(is_out, n_out, n_in))
            d_box = ti.select(is_out, out_len, inside_d) - ra_point

            ca = xa + quat_rotate(qa, slot_a_position[c])
            rot_a = quat_mul(qa, slot_a_rotation[c])
            size_a = slot_a_size[c]
            delta = ca - cb
            best = lit(1.0e30)
            best_axis = up
            best_owner_b = 0
            best_index = 0
            for j in ti.static(range(6)):
                # the lower-index box's axes are tried first so both slots of a pair agree
                first_a = slot_order[c] == 1
                use_a = (j < 3) == first_a
                k = j % 3
                axis = ti.select(use_a, quat_rotate(rot_a, unit(k)), quat_rotate(rot_b, unit(k)))
                overlap0 = box_support(axis, rot_a, size_a) + box_support(axis, rot_b, size_b) - ti.abs(delta.dot(axis))
                # against a static box (order 2) only the static box's faces can be the reference
                overlap = overlap0 + ti.select(use_a & (slot_order[c] == 2), lit(1.0e30), lit(0.0))
                better = overlap < best
                best = ti.select(better, overlap, best)
                best_axis = ti.select(better, axis, best_axis)
                best_owner_b = ti.select(better, ti.select(use_a, 0, 1), best_owner_b)
                best_index = ti.select(better, k, best_index)
            n_sat = ti.select(delta.dot(best_axis) < lit(0.0), -best_axis, best_axis)
            local_p = quat_rotate_inv(rot_b, p - cb)
            u1 = unit((best_index + 1) % 3)
            u2 = unit((best_index + 2) % 3)
            within = ((ti.abs(local_p.dot(u1)) <= size_b.dot(u1) * (lit(1.0) + face_tolerance))
                      & (ti.abs(local_p.dot(u2)) <= size_b.dot(u2) * (lit(1.0) + face_tolerance)))
            sat_valid = (best_owner_b == 1) & within
            d_sat = (p - cb).dot(n_sat) - size_b.dot(unit(best_index))

            n = ti.select(kind == 0, n_ground, ti.select(kind == 1, n_sphere, ti.select(kind == 2, n_box, ti.select(kind == 3, n_capsule, n_sat))))
            d = ti.select(kind == 0, d_ground, ti.select(kind == 1, d_sphere, ti.select(kind == 2, d_box, ti.select(kind == 3, d_capsule, d_sat))))
            valid = ti.select(kind == 4, sat_valid, 1)

            pc = p - ra_point * n
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

    @ti.kernel
    def seed_velocities(velocity_star: a_vec3, angular_velocity_star: a_vec3, linear_history: a_vec3, angular_history: a_vec3):
        for i in range(velocity_star.shape[0]):
            linear_history[i] = velocity_star[i]
            angular_history[i] = angular_velocity_star[i]

    @ti.kernel
    def solve_velocity(slot_body: a_ivec2, slot_prev: a_ivec2, slot_prev_side: a_ivec2, body_last: a_int, body_last_side: a_int,
                       inv_mass: a_real, inv_inertia_world: a_mat, contact_normal: a_vec3, contact_arm_a: a_vec3,
                       contact_arm_b: a_vec3, contact_tangent1: a_vec3, contact_tangent2: a_vec3, contact_mass: a_vec3,
                       contact_velocity_target: a_real, contact_active: a_real, slot_friction: a_real, warm_impulse: a_vec3,
                       pass_count: ti.i32, contact_count: ti.i32, body_count: ti.i32, impulse_history: a_vec3,
                       linear_history: a_vec3, angular_history: a_vec3):
        # one thread: Gauss-Seidel over slots; pass 0 applies the warm-start impulses
        for _ in range(1):
            for s in range(pass_count * contact_count):
                k = s // contact_count
                c = s % contact_count
                a = slot_body[c][0]
                b = slot_body[c][1]
                bi = ti.max(b, 0)
                dyn_b = b >= 0
                ia_index = history_index(k, c, 0, a, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
                ib_index = history_index(k, c, 1, b, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
                va = linear_history[ia_index]
                wa = angular_history[ia_index]
                vb = linear_history[ib_index]
                wb = angular_history[ib_index]
                ima = inv_mass[a]
                imb = ti.select(dyn_b, inv_mass[bi], lit(0.0))
                ia = inv_inertia_world[a]
                ib = ti.select(dyn_b, inv_inertia_world[bi], ti.Matrix.zero(real, 3, 3))
                n = contact_normal[c]
                t1 = contact_tangent1[c]
                t2 = contact_tangent2[c]
                ra = contact_arm_a[c]
                rb = contact_arm_b[c]
                m = contact_mass[c]
                active = contact_active[c]
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
                out = body_count + 1 + s * 2
                linear_history[out] = va + ima * dp
                angular_history[out] = wa + ia @ ra.cross(dp)
                linear_history[out + 1] = vb - imb * dp
                angular_history[out + 1] = wb - ib @ rb.cross(dp)

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
    def solve_position(slot_body: a_ivec2, slot_prev: a_ivec2, slot_prev_side: a_ivec2, body_last: a_int, body_last_side: a_int,
                       inv_mass: a_real, inv_inertia_world: a_mat, contact_normal: a_vec3, contact_arm_a: a_vec3,
                       contact_arm_b: a_vec3, contact_mass: a_vec3, contact_pseudo_target: a_real, contact_active: a_real,
                       contact_impacting: a_real, pass_count: ti.i32, contact_count: ti.i32, body_count: ti.i32,
                       impulse_history: a_real, linear_history: a_vec3, angular_history: a_vec3):
        for _ in range(1):
            for s in range(pass_count * contact_count):
                k = s // contact_count
                c = s % contact_count
                a = slot_body[c][0]
                b = slot_body[c][1]
                bi = ti.max(b, 0)
                dyn_b = b >= 0
                ia_index = history_index(k, c, 0, a, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
                ib_index = history_index(k, c, 1, b, contact_count, body_count, slot_prev, slot_prev_side, body_last, body_last_side)
                va = linear_history[ia_index]
                wa = angular_history[ia_index]
                vb = linear_history[ib_index]
                wb = angular_history[ib_index]
                ima = inv_mass[a]
                imb = ti.select(dyn_b, inv_mass[bi], lit(0.0))
                ia = inv_inertia_world[a]
                ib = ti.select(dyn_b, inv_inertia_world[bi], ti.Matrix.zero(real, 3, 3))
                n = contact_normal[c]
                ra = contact_arm_a[c]
                rb = contact_arm_b[c]
                old = impulse_history[k * contact_count + c]
                vn = relative_velocity(va, wa, ra, vb, wb, rb).dot(n)
                trial = old + contact_mass[c][0] * (contact_pseudo_target[c] - vn)
                new = ti.select(contact_impacting[c] > lit(0.0), trial, ti.max(trial, lit(0.0))) * contact_active[c]
                impulse_history[(k + 1) * contact_count + c] = new
                dp = (new - old) * n
                out = body_count + 1 + s * 2
                linear_history[out] = va + ima * dp
                angular_history[out] = wa + ia @ ra.cross(dp)
                linear_history[out + 1] = vb - imb * dp
                angular_history[out + 1] = wb - ib @ rb.cross(dp)

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
        integrate_forces=integrate_forces, collide=collide, seed_velocities=seed_velocities, solve_velocity=solve_velocity,
        finalize_velocities=finalize_velocities, predict_gaps=predict_gaps, solve_position=solve_position,
        integrate_positions=integrate_positions,
    )
