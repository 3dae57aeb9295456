"""SolverRigid: one interface over the Warp and Taichi rigid-body kernels, and the torch
autograd bridge.

A step is a fixed list of phase launches (see kernels/warp/rigid.py) over the contact slots
that the broad phase keeps (``broad_phase.py``: the others are exact no-ops). Under autograd
(``step_differentiable``) its buffers are allocated fresh and written once each, so the backward
pass replays the same list under a Warp tape, or calls each Taichi kernel's ``.grad`` in reverse
order, on the saved inputs. The forward-only ``step`` runs the same kernels on buffers (and, for
Warp, array wrappers and recorded launches) kept across steps, so both give the same bits.
Springs are torch ops evaluated before the kernels (shared by both backends).

The two contact solves (``solve_velocity``, ``solve_position``) launch one thread per world: the
builder lays each world's slots out as one range (``contact["world_start"]``; a plan keeps them
ascending, so ``world_slot_start`` is again one range per world) and worlds share no body, so each
thread's Gauss-Seidel walk reads and writes only its own history records, at the indices a serial
walk over all slots would use: the same bits, and on Taichi's CPU pool or a GPU the worlds run in
parallel (Warp's CPU launches are single-threaded: ``cpu_threads`` runs the solves as launches
over world ranges side by side). The forward-only ``step`` keeps a broad-phase plan while it
covers the slots a step needs, and a new plan keeps the slots within reach over two steps, so
plans are rebuilt less often (kept slots out of reach are inactive: the same bits). An inactive
slot (``contact_active`` 0) is a no-op of both solves: its impulse is 0 and both bodies'
velocities pass through, so the kernels skip its arithmetic (values and gradients as computing
it, up to the sign of a zero impulse).
"""

from __future__ import annotations

import torch

from ... import backends
from ...errors import HybridsimError, SimulationError
from .broad_phase import SMALL_SLOT_COUNT, ShapeBounds, candidate_slots, slot_chain
from .model import RigidControl, RigidModel, RigidState, quat_multiply, quat_rotate

__all__ = ["SolverRigid"]

# differentiable inputs of one step, in order
_INPUTS = ("position", "orientation", "velocity", "angular_velocity", "warm_impulse", "force", "torque",
           "inv_mass", "inv_inertia", "inertia", "gravity", "slot_friction", "slot_restitution")
_OUTPUTS = ("position_out", "orientation_out", "velocity_out", "angular_velocity_out", "impulse_history")
_SLOT_KEYS = ("body", "kind", "order", "point", "radius", "a_position", "a_rotation", "a_size",
              "b_position", "b_rotation", "b_size", "b_hull")
_CONTACT_OUT = ("contact_normal", "contact_arm_a", "contact_arm_b", "contact_tangent1", "contact_tangent2",
                "contact_mass", "contact_gap", "contact_normal_velocity", "contact_velocity_target",
                "contact_gap_target", "contact_active", "contact_impacting")
# phases with no adjoint (integer outputs only): launched outside Warp's tape, no Taichi reverse pass
_NO_GRAD_PHASES = frozenset(("select_hull_planes",))


class _SlotPlan:
    """The slots one step visits: ``slots`` (K,) int64 ascending indices into the model's slots
    (None: all of them), and ``tables``, the slot tables and Gauss-Seidel chain restricted to them."""

    def __init__(self, slots: torch.Tensor | None, tables: dict):
        self.slots, self.tables = slots, tables
        self.count = int(tables["slot_kind"].shape[0])
        self.kept = None  # (C,) bool mask of ``slots`` (set by SolverRigid._plan for a sub plan)


def _world_start(model: RigidModel) -> torch.Tensor:
    """(W + 1,) int32: world w's slots are the range [start[w], start[w + 1]) (builder: contiguous)."""
    start = model.contact.get("world_start")
    if start is None:  # a model made without it: one world over all slots
        start = torch.tensor([0, model.contact_count], dtype=torch.int32, device=model.device)
    return start


def _full_plan(model: RigidModel) -> _SlotPlan:
    tables = {f"slot_{k}": model.contact[k] for k in (*_SLOT_KEYS, "prev", "prev_side")}
    tables.update(body_last=model.contact["body_last"], body_last_side=model.contact["body_last_side"],
                  world_slot_start=_world_start(model))
    return _SlotPlan(None, tables)


class _PackedSlotTables:
    """The model's slot tables side by side, one (C, n) tensor per dtype, so that a plan's rows come
    out of one row gather per dtype (many narrow gathers cost more than the copies)."""

    def __init__(self, model: RigidModel):
        C = model.contact_count
        self.groups = []
        for dtype in {model.contact[k].dtype for k in _SLOT_KEYS}:
            names = [k for k in _SLOT_KEYS if model.contact[k].dtype == dtype]
            columns = [model.contact[k].reshape(C, -1) for k in names]
            layout, start = [], 0
            for name, column in zip(names, columns):
                layout.append((name, start, start + column.shape[1], model.contact[name].shape[1:]))
                start += column.shape[1]
            self.groups.append((layout, torch.cat(columns, dim=1)))

    def select(self, slots: torch.Tensor) -> dict:
        K, tables = int(slots.shape[0]), {}
        for layout, packed in self.groups:
            rows = packed.index_select(0, slots)
            for name, lo, hi, shape in layout:
                tables[f"slot_{name}"] = rows[:, lo:hi].reshape(K, *shape).contiguous()
        return tables


def _sub_plan(model: RigidModel, slots: torch.Tensor, packed: _PackedSlotTables | None = None) -> _SlotPlan:
    if packed is None:
        tables = {f"slot_{k}": model.contact[k].index_select(0, slots) for k in _SLOT_KEYS}
    else:
        tables = packed.select(slots)
    chain = slot_chain(tables["slot_body"], model.body_count)
    # the kept slots stay ascending, so each world's are again one range of the plan
    start = torch.searchsorted(slots, _world_start(model).to(slots.dtype)).to(torch.int32)
    tables.update(slot_prev=chain["prev"], slot_prev_side=chain["prev_side"], body_last=chain["body_last"],
                  body_last_side=chain["body_last_side"], world_slot_start=start)
    return _SlotPlan(slots, tables)


def _phases(model: RigidModel, dt: float, C: int):
    """The step over C slots as (kernel name, launch dim, argument list); a str names a buffer,
    ("real", x)/("int", n) is a scalar."""
    B = model.body_count
    W = int(_world_start(model).shape[0]) - 1  # solve launches: one thread per world
    pv, pp = model.iterations + 1, model.position_iterations
    real, integer = (lambda x: ("real", float(x))), (lambda n: ("int", int(n)))
    slots = [f"slot_{k}" for k in _SLOT_KEYS if k != "b_hull"]  # collide reads the hull through contact_plane
    phases = []
    if C > 0 and model.has_mesh_targets:
        # the hull plane of each convex-mesh slot, from the step-start poses (read by collide)
        phases.append(("select_hull_planes", C, ["position", "orientation", "slot_body", "slot_point", "slot_b_position",
                                                 "slot_b_rotation", "slot_b_hull", "hull_planes", "contact_plane"]))
    phases += [("integrate_forces", B, ["orientation", "velocity", "angular_velocity", "force", "torque", "inv_mass",
                                       "inv_inertia", "inertia_rotation", "gravity", real(dt), "velocity_star",
                                       "angular_velocity_star", "inv_inertia_world"])]
    if C > 0:
        phases.append(("collide", C, ["position", "orientation", "velocity", "angular_velocity", "velocity_star",
                                      "angular_velocity_star", "inv_mass", "inv_inertia_world", *slots, "hull_planes",
                                      "contact_plane", "slot_restitution",
                                      real(model.restitution_threshold), real(model.face_tolerance), real(model.contact_margin), real(dt), *_CONTACT_OUT]))
    phases.append(("seed_velocities", B, ["velocity_star", "angular_velocity_star", "linear_history", "angular_history"]))
    chain = ["world_slot_start", "slot_body", "slot_prev", "slot_prev_side", "body_last", "body_last_side", "inv_mass",
             "inv_inertia_world"]
    if C > 0:
        phases.append(("solve_velocity", W, [*chain, "contact_normal", "contact_arm_a", "contact_arm_b", "contact_tangent1",
                                             "contact_tangent2", "contact_mass", "contact_velocity_target", "contact_active",
                                             "slot_friction", "warm_impulse", integer(pv), integer(C), integer(B),
                                             "impulse_history", "linear_history", "angular_history"]))
    phases.append(("finalize_velocities", B, ["body_last", "body_last_side", "linear_history", "angular_history",
                                              integer(pv if C > 0 else 0), integer(C), integer(B), "velocity_final",
                                              "angular_velocity_final"]))
    if C > 0:
        phases.append(("predict_gaps", C, ["slot_body", "velocity_final", "angular_velocity_final", "contact_normal",
                                           "contact_arm_a", "contact_arm_b", "contact_gap", "contact_normal_velocity",
                                           "contact_gap_target", real(dt), "contact_pseudo_target"]))
        phases.append(("solve_position", W, [*chain, "contact_normal", "contact_arm_a", "contact_arm_b", "contact_mass",
                                             "contact_pseudo_target", "contact_active", "contact_impacting", integer(pp),
                                             integer(C), integer(B), "pseudo_impulse_history", "pseudo_linear_history",
                                             "pseudo_angular_history"]))
    phases.append(("integrate_positions", B, ["position", "orientation", "velocity", "angular_velocity", "velocity_final",
                                              "angular_velocity_final", "inertia", "inv_inertia", "inertia_rotation",
                                              "body_last", "body_last_side", "pseudo_linear_history", "pseudo_angular_history",
                                              integer(pp if C > 0 else 0), integer(C), integer(B), real(dt), "position_out",
                                              "orientation_out", "velocity_out", "angular_velocity_out"]))
    return phases


def _buffers(model: RigidModel, plan: _SlotPlan, inputs: dict, capacity: int | None = None) -> dict:
    """Zeroed buffers of one step for the plan's slots (``capacity`` slots when given, for reuse),
    plus the plan's slot tables."""
    B = model.body_count
    C = plan.count if capacity is None else capacity
    pv, pp = model.iterations + 1, model.position_iterations
    opts = dict(dtype=model.dtype, device=model.device)
    buf = dict(inputs)
    buf["inertia_rotation"] = model.body_inertia_rotation.detach()
    hull = model.hull_planes
    buf["hull_planes"] = torch.zeros(1, 4, **opts) if hull is None else hull.detach()
    buf.update(plan.tables)
    for name in ("velocity_star", "angular_velocity_star", "velocity_final", "angular_velocity_final",
                 "position_out", "velocity_out", "angular_velocity_out"):
        buf[name] = torch.zeros(B, 3, **opts)
    buf["orientation_out"] = torch.zeros(B, 4, **opts)
    buf["inv_inertia_world"] = torch.zeros(B, 3, 3, **opts)
    for name in ("contact_normal", "contact_arm_a", "contact_arm_b", "contact_tangent1", "contact_tangent2", "contact_mass"):
        buf[name] = torch.zeros(C, 3, **opts)
    for name in ("contact_gap", "contact_normal_velocity", "contact_velocity_target", "contact_gap_target",
                 "contact_active", "contact_impacting", "contact_pseudo_target"):
        buf[name] = torch.zeros(C, **opts)
    buf["contact_plane"] = torch.zeros(C, dtype=torch.int32, device=model.device)
    rows_v = B + 1 + (pv * C * 2 if C > 0 else 0)
    rows_p = B + 1 + (pp * C * 2 if C > 0 else 0)
    buf["linear_history"], buf["angular_history"] = torch.zeros(rows_v, 3, **opts), torch.zeros(rows_v, 3, **opts)
    buf["impulse_history"] = torch.zeros((pv + 1) * C, 3, **opts)
    buf["pseudo_linear_history"], buf["pseudo_angular_history"] = torch.zeros(rows_p, 3, **opts), torch.zeros(rows_p, 3, **opts)
    buf["pseudo_impulse_history"] = torch.zeros((pp + 1) * C, **opts)
    return buf


class _Workspace:
    """Buffers of the forward-only step, reused from step to step (per solver).

    K-sized buffers hold ``capacity`` slots (grown when a step keeps more). Only what a step
    reads before writing is reset: the zero rows of the histories stay zero (no kernel writes
    them), and the first pass's "previous impulse" rows are zeroed per step."""

    def __init__(self, cpu_threads: int = 1):
        self.capacity, self.version, self.buf, self.plan = -1, 0, {}, None
        self.cpu_threads = cpu_threads  # Warp CPU: threads of the solves' world ranges
        self.backend_cache = None  # the launcher's own per-workspace data (Warp arrays, recorded launches)

    def prepare(self, model: RigidModel, plan: _SlotPlan, inputs: dict) -> dict:
        """Copy the step's inputs and the plan's tables in (the plan's K rows of K-sized buffers);
        return the buffers (full capacity: kernels index by the slot count they are given)."""
        K = plan.count
        if K > self.capacity:
            capacity = min(max(K, int(1.25 * self.capacity) + 8), model.contact_count)
            self.buf = _buffers(model, plan, {name: torch.empty_like(t) for name, t in inputs.items()}, capacity)
            for name, t in plan.tables.items():
                shape = (capacity, *t.shape[1:]) if name in _K_SIZED else t.shape
                self.buf[name] = torch.zeros(shape, dtype=t.dtype, device=t.device)
            for name in ("warm_impulse", "slot_friction", "slot_restitution"):
                self.buf[name] = torch.zeros((capacity, *inputs[name].shape[1:]), dtype=model.dtype, device=model.device)
            self.buf["inertia_rotation"] = torch.empty_like(self.buf["inertia_rotation"])  # not the model's own
            self.capacity, self.version, self.plan = capacity, self.version + 1, None
        buf = self.buf
        buf["inertia_rotation"].copy_(model.body_inertia_rotation)
        for name, t in inputs.items():
            buf[name][:t.shape[0]].copy_(t)
        if plan is not self.plan:
            for name, t in plan.tables.items():
                buf[name][:t.shape[0]].copy_(t)
            self.plan = plan
        buf["impulse_history"][:K].zero_()
        buf["pseudo_impulse_history"][:K].zero_()
        return buf

    def cut(self, model: RigidModel, K: int) -> dict:
        """The buffers cut to K slots (for kernels that loop over array lengths)."""
        cut = {name: (t[:K] if name in _K_SIZED else t) for name, t in self.buf.items()}
        cut["impulse_history"] = self.buf["impulse_history"][:(model.iterations + 2) * K]
        return cut


# a new broad-phase plan keeps the slots within reach over this many steps (see SolverRigid._plan)
_PLAN_REACH = 2.0

# buffers with one row per visited slot (the workspace keeps them at capacity)
_K_SIZED = frozenset((*(f"slot_{k}" for k in (*_SLOT_KEYS, "prev", "prev_side")), "warm_impulse", "slot_friction",
                      "slot_restitution", *_CONTACT_OUT, "contact_pseudo_target", "contact_plane"))


# phases launched with one thread per world (their dim is the world count)
_WORLD_PHASES = frozenset(("solve_velocity", "solve_position"))
_pools: dict = {}


def _pool(workers: int):
    """A process-wide thread pool of ``workers`` threads (for the Warp CPU solves' world ranges)."""
    if workers not in _pools:
        from concurrent.futures import ThreadPoolExecutor

        _pools[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hybridsim-rigid")
    return _pools[workers]


class _WarpRigid:
    def __init__(self, device: str, dtype: torch.dtype):
        wp = backends.warp()
        from hybridsim.kernels.warp.rigid import rigid_kernels

        self.wp = wp
        self.real = wp.float64 if dtype == torch.float64 else wp.float32
        self.k = rigid_kernels(self.real)
        self.device = "cuda:0" if device == "cuda" else device

    def _view(self, t: torch.Tensor, grad: torch.Tensor | None = None):
        k, wp = self.k, self.wp
        if t.numel() == 0:  # numpy-made empty tensors can carry strides Warp rejects
            t = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        if t.dtype == torch.int32:
            dtype = k.ivec2 if t.dim() == 2 else wp.int32
        elif t.dim() == 3:
            dtype = k.mat33
        elif t.dim() == 2:
            dtype = k.vec3 if t.shape[1] == 3 else k.vec4
        else:
            dtype = self.real
        if grad is None:
            return wp.from_torch(t, dtype=dtype, requires_grad=False)
        return wp.from_torch(t, dtype=dtype, requires_grad=True, grad=grad)

    def _scalar(self, arg):
        return self.real(arg[1]) if arg[0] == "real" else int(arg[1])

    def _launch_all(self, phases, arrays):
        for name, dim, args in phases:
            values = [self._scalar(a) if isinstance(a, tuple) else arrays[a] for a in args]
            self.wp.launch(getattr(self.k, name), dim=dim, inputs=values, device=self.device)

    def forward(self, model, phases, buf):
        self._launch_all(phases, {name: self._view(t) for name, t in buf.items()})

    def forward_reused(self, model, work: _Workspace, phases):
        """``forward`` on the workspace: Warp arrays over its full buffers are made once per
        allocation and the launches recorded once; a step only updates launch sizes and scalars.
        (The kernels index by the slot count they are given, never by array length.)"""
        cache = work.backend_cache
        if cache is None or cache["version"] != work.version:
            cache = work.backend_cache = {"version": work.version, "launches": None, "phases": None,
                                          "arrays": {name: self._view(t) for name, t in work.buf.items()}}
        threads = work.cpu_threads if self.device == "cpu" else 1
        if (cache["launches"] is None or [p[0] for p in cache["phases"]] != [p[0] for p in phases]
                or cache.get("threads") != threads):
            record = lambda name, dim, args, arrays: self.wp.launch(  # noqa: E731
                getattr(self.k, name), dim=dim, device=self.device, record_cmd=True,
                inputs=[self._scalar(a) if isinstance(a, tuple) else arrays[a] for a in args])
            cache["launches"] = [record(name, dim, args, cache["arrays"]) for name, dim, args in phases]
            # Warp's CPU launches run on one thread: the solves' worlds are cut into ``threads``
            # ranges, each a launch over its part of ``world_slot_start``, run side by side (ctypes
            # releases the GIL); worlds write disjoint records, so the bits are the one launch's
            cache["parts"], cache["threads"] = {}, threads
            for index, (name, dim, args) in enumerate(phases):
                if name in _WORLD_PHASES and threads > 1 and dim > 1:
                    n = min(threads, dim)
                    cuts = [dim * j // n for j in range(n + 1)]
                    cache["parts"][index] = [
                        record(name, hi - lo, args, {**cache["arrays"], "world_slot_start": self._view(
                            work.buf["world_slot_start"][lo:hi + 1])}) for lo, hi in zip(cuts[:-1], cuts[1:])]
        else:
            for index, ((_, dim, args), (_, old_dim, old_args)) in enumerate(zip(phases, cache["phases"])):
                launch = cache["launches"][index]
                if dim != old_dim:
                    launch.set_dim(dim)
                for position, (arg, old) in enumerate(zip(args, old_args)):
                    if isinstance(arg, tuple) and arg != old:
                        for target in (launch, *cache["parts"].get(index, ())):
                            target.set_param_at_index(position, self._scalar(arg))
        cache["phases"] = phases
        for index, launch in enumerate(cache["launches"]):
            parts = cache["parts"].get(index)
            if parts is None:
                launch.launch()
            else:
                pending = [_pool(len(parts) - 1).submit(part.launch) for part in parts[1:]]
                parts[0].launch()
                for future in pending:
                    future.result()

    def backward(self, model, phases, buf, grad_outputs):
        # plain contiguous gradients: zeros_like would copy a size-1 dimension's stride 0, which Warp rejects
        grads = {name: torch.zeros(t.shape, dtype=t.dtype, device=t.device) for name, t in buf.items()
                 if t.is_floating_point()}
        arrays = {name: self._view(t, grads.get(name)) for name, t in buf.items()}
        self._launch_all([p for p in phases if p[0] in _NO_GRAD_PHASES], arrays)  # they come first
        tape = self.wp.Tape()
        with tape:
            self._launch_all([p for p in phases if p[0] not in _NO_GRAD_PHASES], arrays)
        for name, g in zip(_OUTPUTS, grad_outputs):
            grads[name].copy_(g)
        tape.backward(grads={arrays[name]: arrays[name].grad for name in _OUTPUTS})
        return grads


class _TaichiRigid:
    def __init__(self, device: str, dtype: torch.dtype):
        ti = backends.taichi(device)
        from hybridsim.kernels.taichi.rigid import rigid_kernels

        self.ti = ti
        self.k = rigid_kernels(ti.f64 if dtype == torch.float64 else ti.f32)

    def _run(self, phases, buf, reverse=False):
        order = reversed(phases) if reverse else phases
        for name, _dim, args in order:
            if reverse and name in _NO_GRAD_PHASES:
                continue
            kernel = getattr(self.k, name)
            values = [a[1] if isinstance(a, tuple) else buf[a] for a in args]
            (kernel.grad if reverse else kernel)(*values)
        self.ti.sync()

    def forward(self, model, phases, buf):
        self._run(phases, buf)

    def forward_reused(self, model, work: _Workspace, phases):
        # Taichi takes the torch buffers as they are; its loops run over the arrays' lengths
        self._run(phases, work.cut(model, work.plan.count))

    def backward(self, model, phases, buf, grad_outputs):
        # Taichi's reverse mode reads and accumulates the ``.grad`` of each external array
        tracked = {}
        for name, t in buf.items():
            if t.is_floating_point():
                t = t.detach().clone().requires_grad_(True)
                t.grad = torch.zeros_like(t)
            tracked[name] = t
        self._run(phases, tracked)
        for name, g in zip(_OUTPUTS, grad_outputs):
            tracked[name].grad.copy_(g)
        self._run(phases, tracked, reverse=True)
        return {name: t.grad for name, t in tracked.items() if t.is_floating_point()}


_LAUNCHERS = {"warp": _WarpRigid, "taichi": _TaichiRigid}
_launcher_cache: dict = {}


def _launcher(backend: str, device: str, dtype: torch.dtype):
    key = (backend, device, dtype)
    if key not in _launcher_cache:
        _launcher_cache[key] = _LAUNCHERS[backend](device, dtype)
    return _launcher_cache[key]


def _outputs(model: RigidModel, plan: _SlotPlan, buf: dict) -> tuple:
    K = plan.count
    return (buf["position_out"], buf["orientation_out"], buf["velocity_out"], buf["angular_velocity_out"],
            buf["impulse_history"][(model.iterations + 1) * K:(model.iterations + 2) * K])


class _RigidStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launcher, model, plan, dt, *inputs):
        inputs = tuple(t.detach().contiguous() for t in inputs)
        phases = _phases(model, dt, plan.count)
        buf = _buffers(model, plan, dict(zip(_INPUTS, inputs)))
        launcher.forward(model, phases, buf)
        ctx.launcher, ctx.model, ctx.plan, ctx.dt = launcher, model, plan, dt
        ctx.save_for_backward(*inputs)
        return tuple(t.clone() for t in _outputs(model, plan, buf))

    @staticmethod
    def backward(ctx, *grad_outputs):
        model, plan, inputs = ctx.model, ctx.plan, ctx.saved_tensors
        phases = _phases(model, ctx.dt, plan.count)
        buf = _buffers(model, plan, dict(zip(_INPUTS, inputs)))
        full = []
        for name, g in zip(_OUTPUTS, grad_outputs):
            target = torch.zeros_like(buf[name])
            if g is not None:
                if name == "impulse_history":
                    target[(model.iterations + 1) * plan.count:] = g
                else:
                    target.copy_(g)
            full.append(target)
        grads = ctx.launcher.backward(model, phases, buf, full)
        result = [grads[name] if need else None for name, need in zip(_INPUTS, ctx.needs_input_grad[4:])]
        return (None, None, None, None, *result)


class SolverRigid:
    """Rigid bodies with ground/static-box/body contact, restitution, Coulomb friction, springs
    and ball / hinge joints.

    Args:
        model: the scene's constants (tensors may carry gradients).
        backend: ``"warp"`` or ``"taichi"``; both run the same numerics.
        device: ``"cpu"`` or ``"cuda"`` (must match the model's tensors).
        broad_phase: visit only the slots whose shapes' bounds come within reach this step
            (``broad_phase.py``); off, every slot is visited. The results are the same bits.
        cpu_threads: Warp on the CPU, forward-only ``step`` of a many-world model: run the
            contact solves' worlds as this many ranges side by side (Warp's CPU launches are
            single-threaded; Taichi uses its own pool). The same bits as 1.
    """

    def __init__(self, model: RigidModel, *, backend: str = "warp", device: str | None = None, broad_phase: bool = True,
                 cpu_threads: int = 1):
        if backend not in _LAUNCHERS:
            raise HybridsimError(f"unknown backend {backend!r}; expected one of {sorted(_LAUNCHERS)}", field="backend")
        self.model, self.backend = model, backend
        self.device = device or model.device
        self._launcher = _launcher(backend, self.device, model.dtype)
        self._bounds = None if broad_phase else False  # broad-phase shape data, made on the first step (False: none)
        self._last_plan = None    # the last step's slots, reused while unchanged
        self._packed = None       # the slot tables packed for the broad phase's row gathers
        self._workspace = None    # buffers of the forward-only step
        self._constants_cache = None
        self.cpu_threads = max(1, int(cpu_threads))

    # -- loads ---------------------------------------------------------------------------
    def spring_loads(self, state: RigidState, dt: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Spring-damper force and torque on each body [N], [N m], each (B, 3).

        Evaluated at the mid-step pose predicted from the current velocities, which keeps an
        undamped spring's energy bounded with the trapezoidal position update."""
        model = self.model
        force = torch.zeros(model.body_count, 3, dtype=model.dtype, device=model.device)
        torque = torch.zeros_like(force)
        if model.spring_count == 0:
            return force, torque
        x = state.body_position + 0.5 * dt * state.body_velocity
        w = state.body_angular_velocity
        q = state.body_orientation
        zero = torch.zeros_like(w[:, :1])
        q = q + 0.25 * dt * quat_multiply(torch.cat([w, zero], dim=1), q)
        q = q / q.norm(dim=1, keepdim=True)
        s = model.spring
        a, b = s["body"][:, 0], s["body"][:, 1]
        has_b = (b >= 0).unsqueeze(1)
        bb = b.clamp(min=0)
        arm_a = quat_rotate(q[a], s["anchor_a"])
        pa = x[a] + arm_a
        va = state.body_velocity[a] + torch.cross(w[a], arm_a, dim=1)
        arm_b = quat_rotate(q[bb], s["anchor_b"])
        pb = torch.where(has_b, x[bb] + arm_b, s["anchor_b"])
        vb = torch.where(has_b, state.body_velocity[bb] + torch.cross(w[bb], arm_b, dim=1), torch.zeros_like(va))
        delta = pa - pb
        length = torch.sqrt((delta * delta).sum(1, keepdim=True) + torch.finfo(model.dtype).tiny)
        direction = delta / length
        rate = ((va - vb) * direction).sum(1, keepdim=True)
        magnitude = s["stiffness"].unsqueeze(1) * (length - s["rest_length"].unsqueeze(1)) + s["damping"].unsqueeze(1) * rate
        f = -magnitude * direction
        force = force.index_add(0, a, f)
        torque = torque.index_add(0, a, torch.cross(arm_a, f, dim=1))
        keep = has_b.to(f.dtype)
        force = force.index_add(0, bb, -f * keep)
        torque = torque.index_add(0, bb, -torch.cross(arm_b, f, dim=1) * keep)
        return force, torque

    def _inputs(self, state: RigidState, control: RigidControl | None, dt: float, cached: bool = False) -> tuple:
        model = self.model
        zeros = torch.zeros(model.body_count, 3, dtype=model.dtype, device=model.device)
        force = zeros if control is None or control.body_force is None else control.body_force
        torque = zeros if control is None or control.body_torque is None else control.body_torque
        if model.spring_count:
            spring_force, spring_torque = self.spring_loads(state, dt)
            force, torque = force + spring_force, torque + spring_torque
        if model.joint_count:
            from .joints import joint_loads

            # at the mid-step pose predicted from the current velocities, as the springs
            w = state.body_angular_velocity
            q = state.body_orientation
            q = q + 0.25 * dt * quat_multiply(torch.cat([w, torch.zeros_like(w[:, :1])], dim=1), q)
            joint_force, joint_torque = joint_loads(model, state.body_position + 0.5 * dt * state.body_velocity,
                                                    q / q.norm(dim=1, keepdim=True), state.body_velocity, w,
                                                    force, torque)
            force, torque = force + joint_force, torque + joint_torque
        inv_mass, inv_inertia, inertia, gravity, friction, restitution = (
            self._constants() if cached else self._model_inputs())
        return (state.body_position, state.body_orientation, state.body_velocity, state.body_angular_velocity,
                state.contact_impulse, force, torque, inv_mass, inv_inertia, inertia, gravity, friction, restitution)

    def _model_inputs(self) -> tuple:
        """The model's per-body and per-slot inputs of a step (torch ops: gradients reach the model)."""
        model = self.model
        friction, restitution = model.slot_materials()
        return (1.0 / model.body_mass, 1.0 / model.body_inertia, model.body_inertia, model.gravity.reshape(1, 3),
                friction, restitution)

    def _constants(self) -> tuple:
        """``_model_inputs`` without autograd, recomputed only when a model tensor is replaced or
        changed in place (the cache holds the tensors, so their ids cannot be reused)."""
        model = self.model
        sources = (model.body_mass, model.body_inertia, model.gravity, model.shape_friction, model.shape_restitution,
                   model.ground_friction, model.ground_restitution, model.contact["shape"])
        key = tuple((id(t), t._version) for t in sources)
        if self._constants_cache is None or self._constants_cache[0] != key:
            with torch.no_grad():
                self._constants_cache = (key, sources, self._model_inputs())
        return self._constants_cache[2]

    # -- stepping ------------------------------------------------------------------------
    def _plan(self, inputs: tuple, dt: float, widen: bool = False) -> _SlotPlan:
        """The broad phase of this step (see ``broad_phase.py``). The last plan is reused while it
        keeps the same slots or, with ``widen`` (the forward-only ``step``), every slot this step
        needs; a new plan then keeps the slots within reach over _PLAN_REACH steps. Without it the
        plan is a function of the step's inputs alone (checkpointed rollouts recompute steps)."""
        model = self.model
        if self._bounds is None:
            self._bounds = ShapeBounds(model) if model.contact_count >= SMALL_SLOT_COUNT else False
        slots = None
        if self._bounds:
            x, _, v, w, _, f, tau = (t.detach() for t in inputs[:7])
            slots = candidate_slots(model, self._bounds, x, v, w, f, tau, dt)
            if slots is not None and slots.shape[0] == model.contact_count:
                slots = None
        last = self._last_plan
        if slots is None:
            if last is None or last.slots is not None:
                last = _full_plan(model)
        elif last is None or last.slots is None or not (
                torch.equal(last.slots, slots) or (widen and bool(last.kept.index_select(0, slots).all()))):
            if widen:
                # the slots within reach over _PLAN_REACH steps (a superset: the reach grows with the
                # time span), so the next steps can reuse the plan while it covers their slots (a
                # kept slot out of reach is inactive, an exact no-op: the same bits)
                wide = candidate_slots(model, self._bounds, x, v, w, f, tau, _PLAN_REACH * dt)
                if wide is not None and wide.shape[0] < model.contact_count:
                    slots = wide
            if self._packed is None:
                self._packed = _PackedSlotTables(model)
            last = _sub_plan(model, slots, self._packed)
            last.kept = torch.zeros(model.contact_count, dtype=torch.bool, device=slots.device).index_fill_(0, slots, True)
        self._last_plan = last
        return last

    @staticmethod
    def _restrict(plan: _SlotPlan, inputs: tuple) -> tuple:
        """The per-slot inputs (warm impulse, friction, restitution) of the plan's slots only."""
        if plan.slots is None:
            return inputs
        return (*inputs[:4], inputs[4].index_select(0, plan.slots), *inputs[5:11],
                inputs[11].index_select(0, plan.slots), inputs[12].index_select(0, plan.slots))

    def _impulses(self, plan: _SlotPlan, impulse: torch.Tensor) -> torch.Tensor:
        """Per-slot impulses (K, 3) of the plan back to all slots (C, 3); skipped slots hold 0."""
        if plan.slots is None:
            return impulse
        full = torch.zeros(self.model.contact_count, 3, dtype=impulse.dtype, device=impulse.device)
        return full.index_copy(0, plan.slots, impulse)

    def step(self, state_in: RigidState, state_out: RigidState, control: RigidControl | None, dt: float) -> None:
        """Advance ``state_in`` by ``dt`` seconds into ``state_out`` (no autograd; state_in untouched).

        Runs the kernels of ``step_differentiable`` on buffers kept from step to step, without
        the tape; the results are the same bits."""
        dt = float(dt)
        with torch.no_grad():
            inputs = self._inputs(state_in, control, dt, cached=True)
            plan = self._plan(inputs, dt, widen=True)
            inputs = self._restrict(plan, inputs)
            if self._workspace is None:
                self._workspace = _Workspace(self.cpu_threads)
            self._workspace.cpu_threads = self.cpu_threads
            buf = self._workspace.prepare(self.model, plan, dict(zip(_INPUTS, inputs)))
            self._launcher.forward_reused(self.model, self._workspace, _phases(self.model, dt, plan.count))
            outputs = _outputs(self.model, plan, buf)
            outputs = self._joints((*outputs[:4], self._impulses(plan, outputs[4])), dt)
            for dst, src in zip(state_out.tensors(), outputs):
                dst.copy_(src)

    def step_differentiable(self, state: RigidState, control: RigidControl | None, dt: float) -> RigidState:
        """Advance ``state`` by ``dt``; a torch autograd op over state, control and model tensors."""
        dt = float(dt)
        inputs = self._inputs(state, control, dt)
        plan = self._plan(inputs, dt)
        outputs = _RigidStep.apply(self._launcher, self.model, plan, dt, *self._restrict(plan, inputs))
        return RigidState(*self._joints((*outputs[:4], self._impulses(plan, outputs[4])), dt))

    def _joints(self, outputs: tuple, dt: float) -> tuple:
        """Project the stepped poses onto the ball / hinge joints, with the jointed bodies' ground
        contacts in the same sweeps (torch ops, both backends; ``joints.project_joints``)."""
        if not self.model.joint_count:
            return tuple(outputs)
        from .joints import project_joints

        return (*project_joints(self.model, *outputs[:4], float(dt)), *outputs[4:])

    def rollout(self, state: RigidState, steps: int, dt: float, control: RigidControl | None = None, *,
                differentiable: bool = True, record: bool = False):
        """Run ``steps`` steps; returns the final state (and the list of states if ``record``).
        Raises SimulationError naming the step when a state turns non-finite."""
        states = [state] if record else None
        for k in range(steps):
            if differentiable:
                state = self.step_differentiable(state, control, dt)
            else:
                out = state.empty_like()
                self.step(state, out, control, dt)
                state = out
            if not torch.isfinite(state.body_position).all():
                raise SimulationError("body positions became non-finite (reduce dt or check masses)", step=k + 1,
                                      quantity="body_position")
            if record:
                states.append(state)
        return (state, states) if record else state
