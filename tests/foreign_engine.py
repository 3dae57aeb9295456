"""A stand-in for "some other engine": closed-form motion and a numpy ray caster that share no code
with hybridsim. It builds its own pinhole camera from the scene's camera fields (z up, vertical
field of view, pixel centres at half-integers), shades with gamma-encoded Lambert plus Phong
highlights, draws a sky gradient and its own checkered floor, casts hard shadows, and antialiases by
supersampling. Motions are the textbook solutions: a ball on a frictionless floor whose normal
speed is multiplied by e at each impact, a block decelerating at mu g, a damped harmonic oscillator.

Used by ``tests/test_fit_foreign.py`` to check that fits recover the physics from videos this
project did not render.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# ------------------------------------------------------------------------------------------ motion


def ball_on_frictionless_floor(p0, v0, radius: float, e: float, g: float, times) -> np.ndarray:
    """Centres (T, 3) of a ball thrown from ``p0`` with ``v0``, bouncing on the floor z = 0 with
    coefficient of restitution ``e`` (post-impact normal speed / pre-impact), no friction, no spin."""
    out = []
    for t in np.asarray(times, dtype=float):
        z, vz, now = p0[2], v0[2], 0.0
        while True:
            tau = (vz + math.sqrt(vz * vz + 2.0 * g * max(z - radius, 0.0))) / g  # time to reach z = r
            if vz * vz < 1e-12 and z - radius < 1e-12:  # resting
                z, vz = radius, 0.0
                break
            if now + tau >= t:
                dt = t - now
                z = z + vz * dt - 0.5 * g * dt * dt
                break
            now += tau
            vz = e * (g * tau - vz)  # |v_z| at impact is g tau - vz; reflected and scaled
            z = radius
            if vz < 1e-6:
                vz = 0.0
        out.append([p0[0] + v0[0] * t, p0[1] + v0[1] * t, z])
    return np.array(out)


def block_sliding_to_rest(p0, speed: float, mu: float, g: float, times) -> np.ndarray:
    """Centres (T, 3) of a block sliding along +x at ``speed``, Coulomb friction ``mu``."""
    t = np.minimum(np.asarray(times, dtype=float), speed / (mu * g))
    x = p0[0] + speed * t - 0.5 * mu * g * t * t
    return np.stack([x, np.full_like(x, p0[1]), np.full_like(x, p0[2])], axis=1)


def weight_on_a_spring(p0, mass: float, stiffness: float, damping: float, g: float, times) -> np.ndarray:
    """Centres (T, 3) of a weight released at rest from ``p0`` with its (vertical) spring at rest
    length: m z'' = -k (z - z0) - c z' - m g, underdamped."""
    w0 = math.sqrt(stiffness / mass)
    zeta = damping / (2.0 * math.sqrt(stiffness * mass))
    wd = w0 * math.sqrt(1.0 - zeta * zeta)
    t = np.asarray(times, dtype=float)
    drop = mass * g / stiffness
    z = p0[2] - drop + drop * np.exp(-zeta * w0 * t) * (np.cos(wd * t) + zeta * w0 / wd * np.sin(wd * t))
    return np.stack([np.full_like(t, p0[0]), np.full_like(t, p0[1]), z], axis=1)


# ------------------------------------------------------------------------------------------ rendering


@dataclass
class Look:
    sky_horizon: tuple = (0.85, 0.88, 0.95)
    sky_zenith: tuple = (0.35, 0.5, 0.8)
    floor: tuple = ((0.75, 0.72, 0.65), (0.45, 0.42, 0.38))
    checker: float = 0.4
    light: tuple = (0.3, -0.5, -1.0)  # direction the light travels
    ambient: float = 0.3
    gamma: float = 2.2
    supersample: int = 3


@dataclass
class Sphere:
    center: np.ndarray
    radius: float
    color: tuple
    shiny: float = 0.5


@dataclass
class Block:
    center: np.ndarray
    half: np.ndarray
    color: tuple
    shiny: float = 0.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))


def camera_rays(position, look_at, fovy_deg: float, width: int, height: int, supersample: int):
    eye = np.asarray(position, dtype=float)
    fwd = np.asarray(look_at, dtype=float) - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    focal = 0.5 * height / math.tan(math.radians(fovy_deg) / 2.0)
    sub = (np.arange(supersample) + 0.5) / supersample
    u = (np.arange(width)[:, None] + sub[None]).reshape(-1) - 0.5 * width
    v = (np.arange(height)[:, None] + sub[None]).reshape(-1) - 0.5 * height
    uu, vv = np.meshgrid(u, v)
    d = focal * fwd + uu[..., None] * right + vv[..., None] * down
    return eye, d / np.linalg.norm(d, axis=-1, keepdims=True)


def _hit_sphere(o, d, s: Sphere):
    oc = o - s.center
    b = (oc * d).sum(-1)
    c = (oc * oc).sum(-1) - s.radius ** 2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0.0))
    t = np.where((disc > 0) & (t > 1e-6), t, np.inf)
    n = o + t[..., None] * d - s.center
    return t, n / s.radius


def _hit_block(o, d, blk: Block):
    r = blk.rotation
    ol, dl = (o - blk.center) @ r, d @ r
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(dl) < 1e-12, 1e-12, dl)
        t1, t2 = (-blk.half - ol) * inv, (blk.half - ol) * inv
    tnear, tfar = np.minimum(t1, t2), np.maximum(t1, t2)
    t_in, t_out = tnear.max(-1), tfar.min(-1)
    t = np.where((t_in <= t_out) & (t_in > 1e-6), t_in, np.inf)
    axis = tnear.argmax(-1)
    n_local = np.zeros(ol.shape)
    np.put_along_axis(n_local, axis[..., None], -np.sign(np.take_along_axis(dl, axis[..., None], -1)), -1)
    return t, n_local @ r.T


def _trace(o, d, objects):
    best = np.full(d.shape[:-1], np.inf)
    normal = np.zeros(d.shape)
    index = np.full(d.shape[:-1], -1)
    for i, obj in enumerate(objects):
        t, n = _hit_sphere(o, d, obj) if isinstance(obj, Sphere) else _hit_block(o, d, obj)
        closer = t < best
        best = np.where(closer, t, best)
        normal = np.where(closer[..., None], n, normal)
        index = np.where(closer, i, index)
    return best, normal, index


def render_frame(camera: dict, objects, look: Look = Look()) -> np.ndarray:
    """One uint8 image (H, W, 3) of ``objects`` over a floor at z = 0 and a sky."""
    w, h, s = int(camera["width"]), int(camera["height"]), look.supersample
    eye, d = camera_rays(camera["position"], camera["look_at"], camera["fovy_deg"], w, h, s)
    o = np.broadcast_to(eye, d.shape)
    light = -np.asarray(look.light, dtype=float)
    light /= np.linalg.norm(light)

    t_obj, n_obj, idx = _trace(o, d, objects)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_floor = np.where(d[..., 2] < -1e-9, -eye[2] / d[..., 2], np.inf)
    floor_hit = t_floor < t_obj
    t = np.minimum(t_floor, t_obj)
    p = eye + np.where(np.isfinite(t), t, 0.0)[..., None] * d
    n = np.where(floor_hit[..., None], np.array([0.0, 0.0, 1.0]), n_obj)

    cells = (np.floor(p[..., 0] / look.checker) + np.floor(p[..., 1] / look.checker)).astype(np.int64) % 2
    albedo = np.where((cells == 0)[..., None], np.array(look.floor[0]), np.array(look.floor[1]))
    shiny = np.zeros(d.shape[:-1])
    for i, obj in enumerate(objects):
        mine = (~floor_hit) & (idx == i)
        albedo = np.where(mine[..., None], np.array(obj.color, dtype=float), albedo)
        shiny = np.where(mine, obj.shiny, shiny)

    t_shadow, _, _ = _trace(p + 1e-4 * n, np.broadcast_to(light, d.shape), objects)
    lit = np.isinf(t_shadow)
    diffuse = np.clip((n * light).sum(-1), 0.0, None) * lit
    half = light - d
    half /= np.linalg.norm(half, axis=-1, keepdims=True)
    spec = shiny * np.clip((n * half).sum(-1), 0.0, None) ** 40 * lit
    linear = albedo * (look.ambient + (1.0 - look.ambient) * diffuse)[..., None] + spec[..., None]

    elevation = np.clip(d[..., 2], 0.0, 1.0)[..., None]
    sky = (1 - elevation) * np.array(look.sky_horizon) + elevation * np.array(look.sky_zenith)
    linear = np.where(np.isfinite(t)[..., None], linear, sky ** look.gamma)
    image = np.clip(linear, 0.0, 1.0) ** (1.0 / look.gamma)
    image = image.reshape(h, s, w, s, 3).mean(axis=(1, 3))
    return np.round(image * 255.0).astype(np.uint8)


def render_video(camera: dict, frames_of_objects, look: Look = Look()) -> np.ndarray:
    return np.stack([render_frame(camera, objs, look) for objs in frames_of_objects])


def degrade(frames: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma, frames.shape)
    return np.clip(frames.astype(np.float64) + noise, 0, 255).astype(np.uint8)
