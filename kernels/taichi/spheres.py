"""Taichi kernels for spheres bouncing on a ground plane: the numerics of kernels/warp/spheres.py.

Arrays are torch tensors passed as external ndarrays; ``real`` (ti.f32/ti.f64) fixes the
precision of every literal so float32 and float64 runs use the same arithmetic as Warp.
"""


import functools


@functools.cache
def integrate_spheres_kernel(real):
    """Return the ``integrate_spheres`` kernel for scalar type ``real`` (ti.f32/ti.f64)."""
    import taichi as ti

    vec3 = ti.types.vector(3, real)
    arr_vec = ti.types.ndarray(dtype=vec3, ndim=1)
    arr = ti.types.ndarray(dtype=real, ndim=1)

    @ti.func
    def impact_time(gap, vz, az, dt):
        # smallest t in [0, dt] with gap + vz t + az t^2 / 2 = 0, in the cancellation-free form
        zero = ti.cast(0.0, real)
        g = ti.max(gap, zero)
        disc = ti.max(vz * vz - ti.cast(2.0, real) * az * g, zero)
        denom = ti.max(ti.sqrt(disc) - vz, ti.cast(1.0e-30, real))
        return ti.select(gap > zero, ti.min(ti.cast(2.0, real) * g / denom, dt), zero)

    @ti.kernel
    def integrate_spheres(
        position: arr_vec,
        velocity: arr_vec,
        force: arr_vec,
        mass: arr,
        radius: arr,
        restitution: arr,
        gravity: arr_vec,
        ground_height: real,
        dt: real,
        position_out: arr_vec,
        velocity_out: arr_vec,
    ):
        for i in position:
            x = position[i]
            v = velocity[i]
            a = gravity[i] + force[i] / mass[i]
            contact_z = ground_height + radius[i]
            half = ti.cast(0.5, real)
            # free flight over the whole step
            x_free = x + v * dt + a * (half * dt * dt)
            v_free = v + a * dt
            # impact inside the step: fly to it, reflect the normal velocity, fly the rest
            # (computed branch-free and selected, which keeps Taichi's reverse mode simple)
            t = impact_time(x[2] - contact_z, v[2], a[2], dt)
            xc = x + v * t + a * (half * t * t)
            vc = v + a * t
            vc_z = ti.select(vc[2] < 0.0, -restitution[i] * vc[2], vc[2])
            vc = vec3(vc[0], vc[1], vc_z)
            s = dt - t
            x_hit = xc + vc * s + a * (half * s * s)
            v_hit = vc + a * s
            # a second impact within the same step only happens when resting: stay on the ground
            resting = x_hit[2] < contact_z
            x_hit = vec3(x_hit[0], x_hit[1], ti.select(resting, contact_z, x_hit[2]))
            v_hit = vec3(v_hit[0], v_hit[1], ti.select(resting, ti.max(v_hit[2], ti.cast(0.0, real)), v_hit[2]))
            hit = x_free[2] < contact_z
            position_out[i] = ti.select(hit, x_hit, x_free)
            velocity_out[i] = ti.select(hit, v_hit, v_free)

    return integrate_spheres
