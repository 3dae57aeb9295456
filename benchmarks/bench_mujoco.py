"""Our rigid-body solver against MuJoCo on the same scenes, side by side in one run.

Scenes (the same geometry, masses, friction and time step on both sides; float32 for ours):

- ``mujoco_spheres64`` / ``mujoco_spheres512``: 64 or 512 spheres (r = 0.1 m, 1000 kg/m^3) in a
  4^3 or 8^3 lattice (jittered), dropped into an open box of four static walls on the ground (1 m
  or 2 m wide) where they pile up 3 or 5 layers deep, stepped at dt = 1/240 s (the first 240
  steps: fall, impacts, piling). Steps per second, one world.
- ``mujoco_box_slide``: one box pushed at 3 m/s sliding to rest (mu = 0.5). Steps per second; the
  stop distances of both against v0^2 / (2 mu g) are in ``extra``.
- ``mujoco_batch256``: 256 independent worlds of the 64-sphere scene (each with its own small
  random jitter of the initial heights), 240 steps, as world-steps per second. MuJoCo:
  ``mujoco.rollout`` with one MjData per thread (2 threads; the 1-thread figure is in ``extra``).
  Ours: the 256 scenes are the worlds of one model (``RigidBuilder.add_builder``), stepped
  together with one launch per phase (each world gets the bits it would alone); the contact solve
  runs one Gauss-Seidel thread per world. Both backends are measured and the faster is the
  headline (``extra["ours_backend"]``; both rates are in ``extra``): Taichi runs every phase on
  its CPU pool, capped at 2 threads like MuJoCo (``TI_CPU_MAX_NUM_THREADS``, unless Taichi was
  initialised earlier in the process: ``extra["ours_taichi_threads"]`` says what it had); Warp's
  CPU launches run on one thread, so the Warp solver runs its two contact solves as 2 launches
  over halves of the worlds side by side (``SolverRigid(cpu_threads=2)``) and its other phases
  (contact generation, integration) and the torch broad phase on one thread. ``extra`` also has
  each side's CPU time per world-step (all threads), which other load on the machine does not
  inflate the way it does wall time.
- ``mujoco_backward_vs_forward``: backward / forward time of a differentiable rollout of the
  64-sphere scene (ours: torch autograd through our adjoint kernels) against what a gradient
  through a MuJoCo rollout costs with MuJoCo's own tools: one ``mjd_transitionFD`` (forward
  differences of the step) per step, relative to ``mj_step``.

Ratios are ours / MuJoCo for rates (above 1: we are faster) and for the backward/forward case
(below 1: our gradients are relatively cheaper). MuJoCo is an optional dependency
(``pip install mujoco`` or ``pip install -e ".[bench]"``); without it every case here returns a
record marked SKIPPED (values NaN) and says how to install it.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from hybridsim.bench import Record, case, median_time

DT = 1.0 / 240.0
RADIUS = 0.1
DENSITY = 1000.0
FRICTION = 0.5
WALL = 0.1                # wall half thickness [m]
SLIDE_SPEED = 3.0
BOX_HALF = (0.15, 0.15, 0.1)


def _mujoco():
    try:
        import mujoco
    except ImportError:
        return None
    return mujoco


def _skipped(name: str, unit: str) -> Record:
    message = "SKIPPED: mujoco is not installed (pip install mujoco, or pip install -e '.[bench]')"
    print(f"{name}: {message}", file=sys.stderr, flush=True)
    return Record(name, float("nan"), float("nan"), unit, "ours", "mujoco (not installed)", torch.get_num_threads(),
                  notes=message, extra={"skipped": True})


def _side(count: int) -> int:
    side = round(count ** (1.0 / 3.0))
    assert side**3 == count, "sphere counts are cubes (64, 512)"
    return side


def _sphere_centres(count: int, seed: int = 0) -> np.ndarray:
    """A side^3 lattice 0.22 m apart (spheres 0.02 m apart) with a small random jitter per sphere
    (seeded), dropped so that they pile up about side/2 layers deep in the box."""
    side = _side(count)
    generator = np.random.default_rng(seed)
    k = np.arange(count)
    offset = -0.11 * (side - 1)
    x = offset + 0.22 * (k % side) + 0.02 * (generator.random(count) - 0.5)
    y = offset + 0.22 * ((k // side) % side) + 0.02 * (generator.random(count) - 0.5)
    z = 0.3 + 0.22 * (k // (side * side)) + 0.04 * generator.random(count)
    return np.stack([x, y, z], axis=1)


def _walls(count: int):
    """(centre, half extents) of the four static walls: an open box of inner half width
    0.125 m x side (0.5 m for 64 spheres, 1 m for 512), tall enough for the drop."""
    side = _side(count)
    half_width, half_height = 0.125 * side, 0.25 + 0.125 * side
    outer = half_width + WALL
    return [((outer, 0.0, half_height), (WALL, outer + WALL, half_height)),
            ((-outer, 0.0, half_height), (WALL, outer + WALL, half_height)),
            ((0.0, outer, half_height), (outer + WALL, WALL, half_height)),
            ((0.0, -outer, half_height), (outer + WALL, WALL, half_height))]


# -- ours ------------------------------------------------------------------------------------
def _spheres_builder(count: int, seed: int = 0):
    from hybridsim.solvers.rigid import RigidBuilder

    builder = RigidBuilder(ground_friction=FRICTION, ground_restitution=0.0)
    for centre in _sphere_centres(count, seed):
        body = builder.add_body(position=tuple(centre))
        builder.add_shape_sphere(body, RADIUS, density=DENSITY, friction=FRICTION, restitution=0.0)
    for centre, half in _walls(count):
        builder.add_static_box(half, position=centre, friction=FRICTION, restitution=0.0)
    return builder


def _ours_spheres(count: int, seed: int = 0):
    return _spheres_builder(count, seed).finalize(dtype=torch.float32)


def _ours_sphere_worlds(count: int, worlds: int):
    """``worlds`` sphere scenes (seeds 0..worlds-1) as the worlds of one model."""
    from hybridsim.solvers.rigid import RigidBuilder

    builder = RigidBuilder(ground_friction=FRICTION, ground_restitution=0.0)
    for seed in range(worlds):
        builder.add_builder(_spheres_builder(count, seed))
    return builder.finalize(dtype=torch.float32)


def _ours_box():
    from hybridsim.solvers.rigid import RigidBuilder

    builder = RigidBuilder(ground_friction=FRICTION, ground_restitution=0.0)
    body = builder.add_body(position=(0.0, 0.0, BOX_HALF[2]), velocity=(SLIDE_SPEED, 0.0, 0.0))
    builder.add_shape_box(body, BOX_HALF, density=DENSITY, friction=FRICTION, restitution=0.0)
    return builder.finalize(dtype=torch.float32)


def _ours_run(model, steps: int, backend: str = "warp", cpu_threads: int = 1):
    """A closure stepping ``steps`` steps from the model's initial state; returns the last state."""
    from hybridsim.solvers.rigid import SolverRigid

    solver = SolverRigid(model, backend=backend, cpu_threads=cpu_threads)

    def go():
        state = model.state()
        for _ in range(steps):
            out = state.empty_like()
            solver.step(state, out, None, DT)
            state = out
        return state

    return go


# -- MuJoCo ----------------------------------------------------------------------------------
def _mjcf_spheres(count: int, seed: int = 0) -> str:
    walls = "\n".join(f'<geom type="box" pos="{c[0]} {c[1]} {c[2]}" size="{h[0]} {h[1]} {h[2]}"/>'
                      for c, h in _walls(count))
    bodies = "\n".join(f'<body pos="{x:.6f} {y:.6f} {z:.6f}"><freejoint/><geom type="sphere" size="{RADIUS}"/></body>'
                       for x, y, z in _sphere_centres(count, seed))
    return f"""<mujoco>
  <option timestep="{DT!r}" gravity="0 0 -9.81"/>
  <default><geom friction="{FRICTION} 0.005 0.0001" density="{DENSITY}"/></default>
  <worldbody>
    <geom type="plane" size="0 0 1"/>
    {walls}
    {bodies}
  </worldbody>
</mujoco>"""


def _mjcf_box() -> str:
    hx, hy, hz = BOX_HALF
    return f"""<mujoco>
  <option timestep="{DT!r}" gravity="0 0 -9.81"/>
  <default><geom friction="{FRICTION} 0.005 0.0001" density="{DENSITY}"/></default>
  <worldbody>
    <geom type="plane" size="0 0 1"/>
    <body pos="0 0 {hz}"><freejoint/><geom type="box" size="{hx} {hy} {hz}"/></body>
  </worldbody>
</mujoco>"""


def _mujoco_run(mujoco, model, steps: int, setup=None):
    data = mujoco.MjData(model)

    def go():
        mujoco.mj_resetData(model, data)
        if setup is not None:
            setup(data)
        for _ in range(steps):
            mujoco.mj_step(model, data)
        return data

    return go


def _label(mujoco) -> str:
    return f"mujoco {mujoco.__version__} mj_step (Newton, pyramidal cone, broad phase)"


# -- cases -----------------------------------------------------------------------------------
def _spheres_case(name: str, count: int, quick: bool, steps: int, quick_steps: int) -> Record:
    mujoco = _mujoco()
    if mujoco is None:
        return _skipped(name, "steps/s")
    steps = quick_steps if quick else steps
    big = count > 64
    start = time.perf_counter()
    model = _ours_spheres(count)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    _ours_run(model, 1)()  # kernel load + first step
    first_s = time.perf_counter() - start
    go = _ours_run(model, steps)
    repeats, warmup = (1, 0) if big else (3, 1)
    t_ours = median_time(go, repeats=repeats, warmup=warmup) / steps
    final = go() if not big else None
    extra = {}
    if not big:  # the other backend, for the record (same numerics; Warp is the faster on CPU)
        t_taichi = median_time(_ours_run(model, min(steps, 48), backend="taichi"), repeats=1, warmup=1) / min(steps, 48)
        extra["taichi_steps_per_s"] = 1.0 / t_taichi
    mj_model = mujoco.MjModel.from_xml_string(_mjcf_spheres(count))
    run = _mujoco_run(mujoco, mj_model, steps)
    t_mj = median_time(run, repeats=repeats, warmup=warmup) / steps
    data = run()
    slots = model.contact_count
    pairs = count * (count - 1) // 2
    extra.update({"ours_ms_per_step": t_ours * 1e3, "mujoco_ms_per_step": t_mj * 1e3, "contact_slots": slots,
                  "sphere_pair_slots": pairs, "build_s": build_s, "first_step_s": first_s, "steps": steps,
                  "mujoco_contacts_at_end": int(data.ncon), "mujoco_solver_iterations_at_end": int(data.solver_niter[0]),
                  "mujoco_lowest_centre_m": float(data.qpos.reshape(count, 7)[:, 2].min())})
    if final is not None:
        extra["ours_lowest_centre_m"] = float(final.body_position[:, 2].min())
    phase = "the fall only" if steps * DT < 0.2 else "fall, impacts and piling"
    return Record(name, 1.0 / t_ours, 1.0 / t_mj, "steps/s",
                  f"warp rigid solver, {count} spheres + 4 walls, {slots:,} contact slots, float32",
                  _label(mujoco), torch.get_num_threads(),
                  notes=(f"the same {steps} steps ({phase}) on both; ours visits only the slots its broad phase "
                         f"keeps (of {slots:,}; {pairs:,} are sphere pairs) in one serial Gauss-Seidel thread, "
                         "with reused buffers and recorded launches"),
                  extra=extra)


@case("mujoco_spheres64")
def spheres64(quick: bool) -> Record:
    return _spheres_case("mujoco_spheres64", 64, quick, 240, 48)


@case("mujoco_spheres512")
def spheres512(quick: bool) -> Record:
    return _spheres_case("mujoco_spheres512", 512, quick, 240, 4)


@case("mujoco_box_slide")
def box_slide(quick: bool) -> Record:
    mujoco = _mujoco()
    if mujoco is None:
        return _skipped("mujoco_box_slide", "steps/s")
    steps = 120 if quick else 360
    model = _ours_box()
    go = _ours_run(model, steps)
    t_ours = median_time(go, repeats=3) / steps
    final = go()
    mj_model = mujoco.MjModel.from_xml_string(_mjcf_box())

    def push(data):
        data.qvel[0] = SLIDE_SPEED

    run = _mujoco_run(mujoco, mj_model, steps, push)
    t_mj = median_time(run, repeats=3) / steps
    mj_final = run()
    expected = SLIDE_SPEED**2 / (2.0 * FRICTION * 9.81)
    extra = {"ours_ms_per_step": t_ours * 1e3, "mujoco_ms_per_step": t_mj * 1e3, "closed_form_stop_m": expected}
    if steps * DT > SLIDE_SPEED / (FRICTION * 9.81):
        extra.update(ours_stop_m=float(final.body_position[0, 0]), mujoco_stop_m=float(mj_final.qpos[0]),
                     ours_final_speed=float(final.body_velocity[0].norm()),
                     mujoco_final_speed=float(np.linalg.norm(mj_final.qvel[:3])))
    return Record("mujoco_box_slide", 1.0 / t_ours, 1.0 / t_mj, "steps/s",
                  "warp rigid solver, 1 box (8 ground slots), float32", _label(mujoco), torch.get_num_threads(),
                  notes=f"{steps} steps at dt = 1/240 s from v0 = {SLIDE_SPEED} m/s, mu = {FRICTION}; "
                        "a one-body step is mostly Python overhead on our side (8 recorded kernel launches "
                        "replayed from Python, torch ops for the inputs)",
                  extra=extra)


BATCH_THREADS = 2  # MuJoCo's rollout threads, and the CPU threads ours may use (Taichi's pool, torch)


def _taichi_threads() -> int:
    """Initialise Taichi for the CPU with a pool of BATCH_THREADS threads (unless something in this
    process initialised it first) and return the pool size it actually has."""
    import os

    from hybridsim import backends

    os.environ.setdefault("TI_CPU_MAX_NUM_THREADS", str(BATCH_THREADS))  # read by ti.init
    ti = backends.taichi("cpu")
    return int(ti.lang.impl.current_cfg().cpu_max_num_threads)


def _timed(fn) -> tuple[float, float]:
    """Wall and CPU seconds (all of this process's threads) of one ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def _ours_batch_rate(model, worlds: int, steps: int, backend: str) -> tuple[float, float]:
    """World-steps per second of ``steps`` forward-only steps of all worlds (after a first step that
    loads the kernels), and the CPU microseconds per world-step."""
    _ours_run(model, 1, backend, BATCH_THREADS)()
    wall, cpu = _timed(_ours_run(model, steps, backend, BATCH_THREADS))
    return worlds * steps / wall, cpu / (worlds * steps) * 1e6


@case("mujoco_batch256")
def batch256(quick: bool) -> Record:
    mujoco = _mujoco()
    if mujoco is None:
        return _skipped("mujoco_batch256", "world-steps/s")
    from mujoco import rollout

    worlds, steps = (16, 24) if quick else (256, 240)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(min(torch_threads, BATCH_THREADS))  # the broad phase's torch ops
    try:
        taichi_threads = _taichi_threads()
        # ours: the worlds of one model (each its own seed), all stepped by one solver, on both backends
        start = time.perf_counter()
        model = _ours_sphere_worlds(64, worlds)
        build_s = time.perf_counter() - start
        measured = {backend: _ours_batch_rate(model, worlds, steps, backend) for backend in ("warp", "taichi")}
        ours_torch_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(torch_threads)
    ours = {backend: rate for backend, (rate, _) in measured.items()}
    best = max(ours, key=ours.get)
    # MuJoCo: the same initial states (the same jitter scheme), stepped by rollout's thread pool
    mj_model = mujoco.MjModel.from_xml_string(_mjcf_spheres(64))
    data = mujoco.MjData(mj_model)
    spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
    nstate = mujoco.mj_stateSize(mj_model, spec)
    initial = np.empty((worlds, nstate))
    for w in range(worlds):
        mujoco.mj_resetData(mj_model, data)
        qpos = data.qpos.reshape(64, 7)
        qpos[:, :3] = _sphere_centres(64, w)
        mujoco.mj_getState(mj_model, data, initial[w], spec)
    rates, mj_cpu = {}, {}
    for threads in (1, BATCH_THREADS):
        datas = [mujoco.MjData(mj_model) for _ in range(threads)]

        def go():
            rollout.rollout(mj_model, datas, initial, nstep=steps)

        wall, cpu = min((_timed(go) for _ in range(1 if not quick else 3)), key=lambda t: t[0])
        rates[threads] = worlds * steps / wall
        mj_cpu[threads] = cpu / (worlds * steps) * 1e6
    threads_of = {"warp": BATCH_THREADS, "taichi": taichi_threads}
    return Record("mujoco_batch256", ours[best], rates[BATCH_THREADS], "world-steps/s",
                  f"{best} rigid solver (the faster backend here), {worlds} worlds in one model "
                  f"({model.contact_count:,} slots), one launch per phase, {threads_of[best]} solver threads, "
                  f"{steps} steps, float32",
                  f"mujoco {mujoco.__version__} rollout, {worlds} worlds x {steps} steps, {BATCH_THREADS} threads",
                  BATCH_THREADS,
                  notes=(f"ours steps all worlds together; the contact solve runs one Gauss-Seidel thread per world "
                         f"(the same bits as one serial walk). Taichi spreads every phase over its {taichi_threads}-thread "
                         f"CPU pool; Warp's CPU launches run on one thread, so its solves run as {BATCH_THREADS} launches "
                         f"over world ranges side by side (SolverRigid cpu_threads) and its other phases on one; the "
                         f"broad phase is torch ({ours_torch_threads} thread(s)). mujoco's rollout spreads worlds over "
                         f"{BATCH_THREADS} threads"),
                  extra={"ours_backend": best, "ours_warp_world_steps_per_s": ours["warp"],
                         "ours_taichi_world_steps_per_s": ours["taichi"], "ours_warp_threads": BATCH_THREADS,
                         "ours_taichi_threads": taichi_threads, "ours_torch_threads": ours_torch_threads,
                         "mujoco_1_thread_world_steps_per_s": rates[1],
                         "mujoco_2_thread_world_steps_per_s": rates[BATCH_THREADS],
                         "ratio_warp": ours["warp"] / rates[BATCH_THREADS],
                         "ratio_taichi": ours["taichi"] / rates[BATCH_THREADS],
                         # CPU time (all threads) per world-step: what the work costs whatever else runs
                         "ours_warp_cpu_us_per_world_step": measured["warp"][1],
                         "ours_taichi_cpu_us_per_world_step": measured["taichi"][1],
                         "mujoco_1_thread_cpu_us_per_world_step": mj_cpu[1],
                         "mujoco_2_thread_cpu_us_per_world_step": mj_cpu[BATCH_THREADS],
                         "ours_build_s": build_s, "steps": steps, "worlds": worlds})


@case("mujoco_backward_vs_forward")
def backward_vs_forward(quick: bool) -> Record:
    mujoco = _mujoco()
    if mujoco is None:
        return _skipped("mujoco_backward_vs_forward", "x forward")
    from hybridsim.solvers.rigid import SolverRigid

    steps = 12 if quick else 48
    model = _ours_spheres(64)
    solver = SolverRigid(model, backend="warp")
    # start mid-fall with contacts about to happen: run the first 60 steps without a tape
    start_state = _ours_run(model, 60)()
    forward_times, backward_times = [], []
    for _ in range(3):
        state = start_state.clone()
        state.body_velocity.requires_grad_(True)
        t0 = time.perf_counter()
        current = state
        for _ in range(steps):
            current = solver.step_differentiable(current, None, DT)
        loss = (current.body_position[:, 2] ** 2).sum() + current.body_velocity.square().sum()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        forward_times.append(t1 - t0)
        backward_times.append(t2 - t1)
    ours = float(np.median(backward_times) / np.median(forward_times))
    mj_model = mujoco.MjModel.from_xml_string(_mjcf_spheres(64))
    data = mujoco.MjData(mj_model)
    for _ in range(60):
        mujoco.mj_step(mj_model, data)
    nx = 2 * mj_model.nv + mj_model.na
    a = np.zeros((nx, nx))
    snapshot = (data.qpos.copy(), data.qvel.copy(), data.time)

    def restore():
        data.qpos[:], data.qvel[:], data.time = snapshot
        mujoco.mj_forward(mj_model, data)

    def fd():
        restore()
        for _ in range(4):
            mujoco.mjd_transitionFD(mj_model, data, 1e-6, 0, a, None, None, None)
            mujoco.mj_step(mj_model, data)

    def plain():
        restore()
        for _ in range(4):
            mujoco.mj_step(mj_model, data)

    t_plain = median_time(plain, repeats=5)
    t_fd = median_time(fd, repeats=3 if quick else 5) - t_plain
    reference = t_fd / t_plain
    return Record("mujoco_backward_vs_forward", ours, reference, "x forward",
                  f"ours: backward / forward of a {steps}-step differentiable rollout, 64 spheres (warp adjoint kernels)",
                  f"mujoco {mujoco.__version__}: mjd_transitionFD / mj_step per step (forward differences, nx = {nx})",
                  torch.get_num_threads(),
                  notes="a gradient through a mujoco rollout needs each step's transition Jacobian (finite differences "
                        "over the state); ours replays one adjoint per step, whatever the state size",
                  extra={"ours_forward_s": float(np.median(forward_times)), "ours_backward_s": float(np.median(backward_times)),
                         "ours_steps": steps, "mujoco_step_ms": t_plain / 4 * 1e3, "mujoco_transition_fd_ms": t_fd / 4 * 1e3})
