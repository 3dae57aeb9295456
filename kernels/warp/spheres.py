"""Warp kernels for spheres under gravity bouncing on a ground plane (z = ground_height).

The flight inside a step is integrated exactly for constant acceleration
(x += v dt + a dt^2 / 2, v += a dt), and the ground impact is solved for its time inside the
step, so bounce apexes do not drift with dt and gradients do not jump when an impact moves
from one step to the next.
"""


import functools


@functools.cache
def integrate_spheres_kernel(real):
    """Return the ``integrate_spheres`` kernel for scalar type ``real`` (wp.float32/float64)."""
    import warp as wp

    vec3 = wp.types.vector(3, real)

    @wp.func
    def impact_time(gap: real, vz: real, az: real, dt: real):
        # smallest t in [0, dt] with gap + vz t + az t^2 / 2 = 0, in the cancellation-free form
        if gap <= real(0.0):
            return real(0.0)
        disc = wp.max(vz * vz - real(2.0) * az * gap, real(0.0))
        denom = wp.max(wp.sqrt(disc) - vz, real(1.0e-30))
        return wp.min(real(2.0) * gap / denom, dt)

    @wp.kernel(module="unique")
    def integrate_spheres(
        position: wp.array(dtype=vec3),
        velocity: wp.array(dtype=vec3),
        force: wp.array(dtype=vec3),
        mass: wp.array(dtype=real),
        radius: wp.array(dtype=real),
        restitution: wp.array(dtype=real),
        gravity: wp.array(dtype=vec3),
        ground_height: real,
        dt: real,
        position_out: wp.array(dtype=vec3),
        velocity_out: wp.array(dtype=vec3),
    ):
        i = wp.tid()
        x = position[i]
        v = velocity[i]
        a = gravity[i] + force[i] / mass[i]
        contact_z = ground_height + radius[i]
        half = real(0.5)
        # free flight over the whole step
        x_end = x + v * dt + a * (half * dt * dt)
        v_end = v + a * dt
        if x_end[2] < contact_z:
            # impact inside the step: fly to it, reflect the normal velocity, fly the rest
            t = impact_time(x[2] - contact_z, v[2], a[2], dt)
            xc = x + v * t + a * (half * t * t)
            vc = v + a * t
            if vc[2] < real(0.0):
                vc = vec3(vc[0], vc[1], -restitution[i] * vc[2])
            s = dt - t
            x_end = xc + vc * s + a * (half * s * s)
            v_end = vc + a * s
            if x_end[2] < contact_z:
                # a second impact within the same step only happens when resting: stay on the ground
                x_end = vec3(x_end[0], x_end[1], contact_z)
                v_end = vec3(v_end[0], v_end[1], wp.max(v_end[2], real(0.0)))
        position_out[i] = x_end
        velocity_out[i] = v_end

    return integrate_spheres
