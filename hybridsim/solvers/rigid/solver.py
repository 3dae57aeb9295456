"""SolverRigid: one interface over the Warp and Taichi rigid-body kernels, and the torch
autograd bridge.

A step is a fixed list of phase launches (see kernels/warp/rigid.py) over torch buffers that
are allocated fresh for the step and written once each, so the backward pass replays the same
list under a Warp tape, or calls each Taichi kernel's ``.grad`` in reverse order, on the saved
inputs. Springs are torch ops evaluated before the kernels (shared by both backends).
"""

from __future__ import annotations

import torch

from ... import backends
from ...errors import HybridsimError, SimulationError
from .model import RigidControl, RigidModel, RigidState, quat_multiply, quat_rotate

__all__ = ["SolverRigid"]

# differentiable inputs of one step, in order
_INPUTS = ("position", "orientation", "velocity", "angular_velocity", "warm_impulse", "force", "torque",
           "inv_mass", "inv_inertia", "inertia", "gravity", "slot_friction", "slot_restitution")
_OUTPUTS = ("position_out", "orientation_out", "velocity_out", "angular_velocity_out", "impulse_history")
_SLOT_KEYS = ("body", "kind", "order", "point", "radius", "a_position", "a_rotation", "a_size",
              "b_position", "b_rotation", "b_size")
_CONTACT_OUT = ("contact_normal", "contact_arm_a", "contact_arm_b", "contact_tangent1", "contact_tangent2",
                "contact_mass", "contact_gap", "contact_normal_velocity", "contact_velocity_target",
                "contact_gap_target", "contact_active", "contact_impacting")


def _phases(model: RigidModel, dt: float):
    """The step as (kernel name, launch dim, argument list); a str names a buffer,
    ("real", x)/("int", n) is a scalar."""
    B, C = model.body_count, model.contact_count
    pv, pp = model.iterations + 1, model.position_iterations
    real, integer = (lambda x: ("real", float(x))), (lambda n: ("int", int(n)))
    slots = [f"slot_{k}" for k in _SLOT_KEYS]
    phases = [("integrate_forces", B, ["orientation", "velocity", "angular_velocity", "force", "torque", "inv_mass",
                                       "inv_inertia", "inertia_rotation", "gravity", real(dt), "velocity_star",
                                       "angular_velocity_star", "inv_inertia_world"])]
    if C > 0:
        phases.append(("collide", C, ["position", "orientation", "velocity", "angular_velocity", "velocity_star",
                                      "angular_velocity_star", "inv_mass", "inv_inertia_world", *slots, "slot_restitution",
                                      real(model.restitution_threshold), real(model.face_tolerance), real(model.contact_margin), real(dt), *_CONTACT_OUT]))
    phases.append(("seed_velocities", B, ["velocity_star", "angular_velocity_star", "linear_history", "angular_history"]))
    chain = ["slot_body", "slot_prev", "slot_prev_side", "body_last", "body_last_side", "inv_mass", "inv_inertia_world"]
    if C > 0:
        phases.append(("solve_velocity", 1, [*chain, "contact_normal", "contact_arm_a", "contact_arm_b", "contact_tangent1",
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
        phases.append(("solve_position", 1, [*chain, "contact_normal", "contact_arm_a", "contact_arm_b", "contact_mass",
                                             "contact_pseudo_target", "contact_active", "contact_impacting", integer(pp),
                                             integer(C), integer(B), "pseudo_impulse_history", "pseudo_linear_history",
                                             "pseudo_angular_history"]))
    phases.append(("integrate_positions", B, ["position", "orientation", "velocity", "angular_velocity", "velocity_final",
                                              "angular_velocity_final", "inertia", "inv_inertia", "inertia_rotation",
                                              "body_last", "body_last_side", "pseudo_linear_history", "pseudo_angular_history",
                                              integer(pp if C > 0 else 0), integer(C), integer(B), real(dt), "position_out",
                                              "orientation_out", "velocity_out", "angular_velocity_out"]))
    return phases


def _buffers(model: RigidModel, inputs: dict) -> dict:
    """Fresh (write-once) buffers of one step, plus the model's constant slot tables."""
    B, C = model.body_count, model.contact_count
    pv, pp = model.iterations + 1, model.position_iterations
    opts = dict(dtype=model.dtype, device=model.device)
    buf = dict(inputs)
    buf["inertia_rotation"] = model.body_inertia_rotation
    for k in _SLOT_KEYS:
        buf[f"slot_{k}"] = model.contact[k]
    for k in ("prev", "prev_side"):
        buf[f"slot_{k}"] = model.contact[k]
    buf["body_last"], buf["body_last_side"] = model.contact["body_last"], model.contact["body_last_side"]
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
    rows_v = B + 1 + (pv * C * 2 if C > 0 else 0)
    rows_p = B + 1 + (pp * C * 2 if C > 0 else 0)
    buf["linear_history"], buf["angular_history"] = torch.zeros(rows_v, 3, **opts), torch.zeros(rows_v, 3, **opts)
    buf["impulse_history"] = torch.zeros((pv + 1) * C, 3, **opts)
    buf["pseudo_linear_history"], buf["pseudo_angular_history"] = torch.zeros(rows_p, 3, **opts), torch.zeros(rows_p, 3, **opts)
    buf["pseudo_impulse_history"] = torch.zeros((pp + 1) * C, **opts)
    return buf


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

    def _launch_all(self, phases, arrays):
        for name, dim, args in phases:
            values = []
            for a in args:
                if isinstance(a, tuple):
                    values.append(self.real(a[1]) if a[0] == "real" else int(a[1]))
                else:
                    values.append(arrays[a])
            self.wp.launch(getattr(self.k, name), dim=dim, inputs=values, device=self.device)

    def forward(self, model, phases, buf):
        self._launch_all(phases, {name: self._view(t) for name, t in buf.items()})

    def backward(self, model, phases, buf, grad_outputs):
        # plain contiguous gradients: zeros_like would copy a size-1 dimension's stride 0, which Warp rejects
        grads = {name: torch.zeros(t.shape, dtype=t.dtype, device=t.device) for name, t in buf.items()
                 if t.is_floating_point()}
        arrays = {name: self._view(t, grads.get(name)) for name, t in buf.items()}
        tape = self.wp.Tape()
        with tape:
            self._launch_all(phases, arrays)
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
            kernel = getattr(self.k, name)
            values = [a[1] if isinstance(a, tuple) else buf[a] for a in args]
            (kernel.grad if reverse else kernel)(*values)
        self.ti.sync()

    def forward(self, model, phases, buf):
        self._run(phases, buf)

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


def _outputs(model: RigidModel, buf: dict) -> tuple:
    C = model.contact_count
    return (buf["position_out"], buf["orientation_out"], buf["velocity_out"], buf["angular_velocity_out"],
            buf["impulse_history"][(model.iterations + 1) * C:])


class _RigidStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, launcher, model, dt, *inputs):
        inputs = tuple(t.detach().contiguous() for t in inputs)
        phases = _phases(model, dt)
        buf = _buffers(model, dict(zip(_INPUTS, inputs)))
        launcher.forward(model, phases, buf)
        ctx.launcher, ctx.model, ctx.dt = launcher, model, dt
        ctx.save_for_backward(*inputs)
        return tuple(t.clone() for t in _outputs(model, buf))

    @staticmethod
    def backward(ctx, *grad_outputs):
        model, inputs = ctx.model, ctx.saved_tensors
        phases = _phases(model, ctx.dt)
        buf = _buffers(model, dict(zip(_INPUTS, inputs)))
        full = []
        for name, g in zip(_OUTPUTS, grad_outputs):
            target = torch.zeros_like(buf[name])
            if g is not None:
                if name == "impulse_history":
                    target[(model.iterations + 1) * model.contact_count:] = g
                else:
                    target.copy_(g)
            full.append(target)
        grads = ctx.launcher.backward(model, phases, buf, full)
        result = [grads[name] if need else None for name, need in zip(_INPUTS, ctx.needs_input_grad[3:])]
        return (None, None, None, *result)


class SolverRigid:
    """Rigid bodies with ground/static-box/body contact, restitution, Coulomb friction, springs
    and ball / hinge joints.

    Args:
        model: the scene's constants (tensors may carry gradients).
        backend: ``"warp"`` or ``"taichi"``; both run the same numerics.
        device: ``"cpu"`` or ``"cuda"`` (must match the model's tensors).
    """

    def __init__(self, model: RigidModel, *, backend: str = "warp", device: str | None = None):
        if backend not in _LAUNCHERS:
            raise HybridsimError(f"unknown backend {backend!r}; expected one of {sorted(_LAUNCHERS)}", field="backend")
        self.model, self.backend = model, backend
        self.device = device or model.device
        self._launcher = _launcher(backend, self.device, model.dtype)

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

    def _inputs(self, state: RigidState, control: RigidControl | None, dt: float) -> tuple:
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
        friction, restitution = model.slot_materials()
        return (state.body_position, state.body_orientation, state.body_velocity, state.body_angular_velocity,
                state.contact_impulse, force, torque, 1.0 / model.body_mass, 1.0 / model.body_inertia,
                model.body_inertia, model.gravity.reshape(1, 3), friction, restitution)

    # -- stepping ------------------------------------------------------------------------
    def step(self, state_in: RigidState, state_out: RigidState, control: RigidControl | None, dt: float) -> None:
        """Advance ``state_in`` by ``dt`` seconds into ``state_out`` (no autograd; state_in untouched)."""
        with torch.no_grad():
            inputs = tuple(t.detach().contiguous() for t in self._inputs(state_in, control, dt))
            buf = _buffers(self.model, dict(zip(_INPUTS, inputs)))
            self._launcher.forward(self.model, _phases(self.model, float(dt)), buf)
            outputs = self._joints(_outputs(self.model, buf), dt)
            for dst, src in zip(state_out.tensors(), outputs):
                dst.copy_(src)

    def step_differentiable(self, state: RigidState, control: RigidControl | None, dt: float) -> RigidState:
        """Advance ``state`` by ``dt``; a torch autograd op over state, control and model tensors."""
        outputs = _RigidStep.apply(self._launcher, self.model, float(dt), *self._inputs(state, control, dt))
        return RigidState(*self._joints(outputs, dt))

    def _joints(self, outputs: tuple, dt: float) -> tuple:
        """Project the stepped poses onto the ball / hinge joints (torch ops, both backends)."""
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
