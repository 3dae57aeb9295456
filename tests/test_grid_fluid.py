"""Grid fluid (smoke): projection, analytic flows, conservation, cross-backend agreement, the
numpy reference, gradients against finite differences, and bad inputs."""

import math

import numpy as np
import pytest
import torch

from hybridsim.errors import HybridsimError, SimulationError
from hybridsim.solvers.grid_fluid import (
    GridFluidBuilder,
    GridFluidControl,
    GridFluidState,
    SolverGridFluid,
    rollout_grid_fluid,
)
from hybridsim.solvers.grid_fluid.reference import GridFluidNumpy

BACKENDS = ["warp", "taichi"]
F64 = torch.float64


def smoke_model(*, n=(16, 16), boundary=("wall", "wall", "wall", "open"), wall_slip="free_slip", obstacle=True,
                dtype=F64, buoyancy=3.0, vorticity_strength=0.5, viscosity=0.002, inflow_rate=4.0,
                gravity_direction=(0.0, -1.0)):
    """A unit-width smoke box with a disc source low down and (optionally) a disc obstacle above it."""
    builder = GridFluidBuilder(cell_count=n, cell_size=1.0 / n[0], boundary=boundary, wall_slip=wall_slip,
                               buoyancy=buoyancy, vorticity_strength=vorticity_strength, viscosity=viscosity,
                               gravity_direction=gravity_direction)
    builder.add_inflow_disc((0.45, 0.22), 0.14, inflow_rate)
    if obstacle:
        builder.add_obstacle_disc((0.55, 0.62), 0.15)
    return builder.finalize(dtype=dtype)


def random_state(model, seed=0, speed=0.3, project_with=None):
    generator = torch.Generator().manual_seed(seed)
    state = model.state()
    state.velocity_x.normal_(0.0, speed, generator=generator)
    state.velocity_y.normal_(0.0, speed, generator=generator)
    state.density.uniform_(0.0, 1.0, generator=generator)
    if project_with is not None:
        with torch.no_grad():
            u, v = project_with.project(state.velocity_x, state.velocity_y)
        state = GridFluidState(u, v, state.density)
    return state


# ---------------------------------------------------------------------------- projection

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("boundary,obstacle", [("wall", False), ("wall", True), (("wall", "wall", "wall", "open"), True),
                                               ("periodic", False)])
def test_projection_leaves_divergence_below_tolerance(backend, boundary, obstacle):
    model = smoke_model(n=(24, 20), boundary=boundary, obstacle=obstacle)
    tolerance = 1e-8
    solver = SolverGridFluid(model, backend=backend, pressure_tolerance=tolerance)
    state = random_state(model)
    before = solver.divergence(state.velocity_x, state.velocity_y)
    u, v = solver.project(state.velocity_x, state.velocity_y)
    after = solver.divergence(u, v)
    result = solver.projection.last_result
    assert result.converged and 0 < result.iterations < solver.projection.max_iterations
    assert after.norm() <= 1.01 * tolerance * before.norm(), (after.norm(), before.norm())
    assert before.norm() > 1.0  # a real field, not a trivially solenoidal one
    # solid faces carry no flow; projecting twice changes nothing
    assert float(u[solver.projection.mask_x == 0].abs().sum()) == 0.0
    u2, v2 = solver.project(u, v)
    assert torch.allclose(u2, u, atol=1e-6 * float(u.abs().max())) and torch.allclose(v2, v, atol=1e-6 * float(v.abs().max()))
    if model.pressure_is_singular:  # mean removed: the singular system still converges, pressure has zero mean
        pressure = solver.projection.solve(-before)
        fluid = solver.projection.fluid.view_as(pressure) > 0
        assert abs(float(pressure[fluid].mean())) < 1e-12 * float(pressure.abs().max())


def test_jacobi_and_incomplete_cholesky_preconditioners_give_the_same_projection():
    model = smoke_model(n=(32, 32), boundary="wall", obstacle=True)
    state = random_state(model)
    results = {}
    for preconditioner in ("jacobi", "incomplete_cholesky"):
        solver = SolverGridFluid(model, preconditioner=preconditioner, pressure_tolerance=1e-11)
        results[preconditioner] = (solver.project(state.velocity_x, state.velocity_y),
                                   solver.projection.last_result.iterations)
    (u_j, v_j), jacobi_iterations = results["jacobi"]
    (u_c, v_c), cholesky_iterations = results["incomplete_cholesky"]
    assert torch.allclose(u_j, u_c, atol=1e-8) and torch.allclose(v_j, v_c, atol=1e-8)
    assert cholesky_iterations < jacobi_iterations / 3, (cholesky_iterations, jacobi_iterations)


def test_projection_backward_is_the_adjoint_solve_and_stores_nothing_per_iteration():
    """<g, P du> from finite differences equals <P^T g, du> from backward, to solver precision,
    and the bytes autograd saves do not depend on how many CG iterations ran."""
    model = smoke_model(n=(20, 16), boundary=("wall", "wall", "wall", "open"), obstacle=True)
    generator = torch.Generator().manual_seed(3)
    u0 = torch.randn(model.face_shape_x, generator=generator, dtype=F64)
    v0 = torch.randn(model.face_shape_y, generator=generator, dtype=F64)
    du = torch.randn(u0.shape, generator=generator, dtype=F64)
    dv = torch.randn(v0.shape, generator=generator, dtype=F64)
    gu = torch.randn(u0.shape, generator=generator, dtype=F64)
    gv = torch.randn(v0.shape, generator=generator, dtype=F64)

    saved_bytes = {}
    for tolerance, max_iterations in ((1e-4, 10_000), (1e-13, 10_000_000)):
        solver = SolverGridFluid(model, pressure_tolerance=tolerance, max_iterations=max_iterations)
        u, v = u0.clone().requires_grad_(True), v0.clone().requires_grad_(True)
        total = [0]

        def pack(tensor, total=total):
            total[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            pu, pv = solver.project(u, v)
        iterations = solver.projection.last_result.iterations
        ((pu * gu).sum() + (pv * gv).sum()).backward()
        saved_bytes[iterations] = total[0]
    assert len(saved_bytes) == 2 and all(b == 0 for b in saved_bytes.values()), saved_bytes

    # the last solver ran at 1e-13: compare with the finite-difference JVP (exact for a linear map)
    h = 1e-3
    with torch.no_grad():
        plus = solver.project(u0 + h * du, v0 + h * dv)
        minus = solver.project(u0 - h * du, v0 - h * dv)
    jvp = ((plus[0] - minus[0]) * gu).sum() / (2 * h) + ((plus[1] - minus[1]) * gv).sum() / (2 * h)
    vjp = (u.grad * du).sum() + (v.grad * dv).sum()
    assert abs(float(vjp - jvp)) < 1e-9 * abs(float(jvp)), (float(vjp), float(jvp))
    # with an obstacle the projection is not symmetric: backward must not simply reuse forward
    with torch.no_grad():
        forward_of_g = solver.project(gu, gv)
    assert not torch.allclose(forward_of_g[0], u.grad, atol=1e-6)


# ---------------------------------------------------------------------------- analytic flows

def taylor_green(n, viscosity, advection, steps, dt):
    length = 2 * math.pi
    builder = GridFluidBuilder(cell_count=(n, n), cell_size=length / n, boundary="periodic", viscosity=viscosity)
    model = builder.finalize(dtype=F64)
    dx = length / n
    index = torch.arange(n, dtype=F64)
    x_face, y_cell = torch.meshgrid(index * dx, (index + 0.5) * dx, indexing="ij")
    x_cell, y_face = torch.meshgrid((index + 0.5) * dx, index * dx, indexing="ij")
    state = GridFluidState(torch.sin(x_face) * torch.cos(y_cell), -torch.cos(x_cell) * torch.sin(y_face),
                           torch.zeros(n, n, dtype=F64))
    energy = lambda s: float(s.velocity_x.pow(2).sum() + s.velocity_y.pow(2).sum())  # noqa: E731
    energy0 = energy(state)
    solver = SolverGridFluid(model, advection=advection)
    with torch.no_grad():
        for _ in range(steps):
            state = solver.step_differentiable(state, None, dt)
    return energy(state) / energy0


def test_taylor_green_energy_decays_at_the_viscous_rate():
    """u = sin x cos y, v = -cos x sin y (k^2 = 2): kinetic energy decays as exp(-4 nu t)."""
    nu, dt, steps = 0.1, 0.05, 20
    t = dt * steps
    ratio = taylor_green(32, nu, "maccormack", steps, dt)
    assert abs(ratio / math.exp(-4 * nu * t) - 1) < 0.03, ratio
    # the viscous part of the decay rate, net of the scheme's own (small) dissipation
    inviscid = taylor_green(32, 0.0, "maccormack", steps, dt)
    rate = (math.log(inviscid) - math.log(ratio)) / t
    assert abs(rate / (4 * nu) - 1) < 0.03, rate
    assert inviscid > 0.95


def test_free_slip_keeps_a_uniform_channel_flow_and_no_slip_slows_it():
    results = {}
    for wall_slip in ("free_slip", "no_slip"):
        builder = GridFluidBuilder(cell_count=(12, 12), cell_size=1.0 / 12, boundary=("periodic", "periodic", "wall", "wall"),
                                   wall_slip=wall_slip, viscosity=0.01)
        model = builder.finalize(dtype=F64)
        state = model.state()
        state.velocity_x.fill_(0.5)
        solver = SolverGridFluid(model)
        with torch.no_grad():
            for _ in range(10):
                state = solver.step_differentiable(state, None, 0.02)
        results[wall_slip] = state.velocity_x
    assert torch.allclose(results["free_slip"], torch.full_like(results["free_slip"], 0.5), atol=1e-9)
    near_wall, middle = results["no_slip"][:, 0].mean(), results["no_slip"][:, 6].mean()
    assert near_wall < 0.45 and middle > 0.49  # a boundary layer forms only at no-slip walls


@pytest.mark.parametrize("backend", BACKENDS)
def test_conservative_advection_conserves_total_density_in_a_closed_box(backend):
    model = smoke_model(n=(20, 20), boundary="wall", obstacle=True, inflow_rate=0.0, buoyancy=2.0)
    solver = SolverGridFluid(model, backend=backend, density_advection="conservative")
    state = random_state(model, speed=0.5, project_with=solver)
    mass0 = float(state.density.sum())
    with torch.no_grad():
        for _ in range(15):
            state = solver.step_differentiable(state, None, 0.01)
    assert abs(float(state.density.sum()) - mass0) < 1e-10 * mass0
    # the same flow moves the smoke visibly, and the semi-Lagrangian scheme does not conserve it
    semi_lagrangian = SolverGridFluid(model, backend=backend)
    other = random_state(model, speed=0.5, project_with=solver)
    with torch.no_grad():
        for _ in range(15):
            other = semi_lagrangian.step_differentiable(other, None, 0.01)
    assert abs(float(other.density.sum()) - mass0) > 1e-6 * mass0


def test_plume_rises_under_buoyancy():
    heights = {}
    for buoyancy in (0.0, 6.0):
        model = smoke_model(n=(20, 24), boundary=("wall", "wall", "wall", "open"), obstacle=False, buoyancy=buoyancy,
                            vorticity_strength=0.2, viscosity=0.0, dtype=torch.float32)
        solver = SolverGridFluid(model, advection="maccormack")
        trajectory = rollout_grid_fluid(model, model.state(), 30, dt=0.02, solver=solver, record_every=10)
        _, y = model.cell_centers()
        heights[buoyancy] = [float((rho * y).sum() / rho.sum()) for rho in trajectory.density[1:]]
    rising = heights[6.0]
    assert rising[0] < rising[1] < rising[2], rising
    assert rising[2] > heights[0.0][2] + 0.1, (rising, heights[0.0])


# ---------------------------------------------------------------------------- cross-checks

def test_warp_and_taichi_agree_on_one_step_in_float32():
    model = smoke_model(n=(24, 20), wall_slip="no_slip", dtype=torch.float32)
    state = random_state(model, seed=1)
    steps = {}
    for backend in BACKENDS:
        solver = SolverGridFluid(model, backend=backend, advection="maccormack")
        steps[backend] = solver.step_differentiable(state, None, 0.02)
    for name, a, b in zip(("velocity_x", "velocity_y", "density"), steps["warp"].tensors(), steps["taichi"].tensors()):
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max()), name


def _loss_weights(model, seed=7):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=F64)
            for shape in (model.face_shape_x, model.face_shape_y, model.cell_count)]


LEARNABLE = ("buoyancy", "vorticity_strength", "viscosity", "inflow_rate", "inflow_center")


def _rollout_loss(model, solver, state, weights, params, steps=6, dt=0.03):
    for name, value in params.items():
        setattr(model, name, value)
    for _ in range(steps):
        state = solver.step_differentiable(state, None, dt)
    return sum((tensor * weight).sum() for tensor, weight in zip(state.tensors(), weights)), state


def test_warp_and_taichi_agree_on_rollouts_and_gradients_in_float64():
    model = smoke_model(n=(16, 16))
    base = {name: getattr(model, name).clone() for name in LEARNABLE}
    state = random_state(model, seed=2, speed=0.2)
    weights = _loss_weights(model)
    results = {}
    for backend in BACKENDS:
        solver = SolverGridFluid(model, backend=backend, advection="maccormack", pressure_tolerance=1e-12)
        params = {name: value.clone().requires_grad_(True) for name, value in base.items()}
        initial = GridFluidState(*(t.clone().requires_grad_(True) for t in state.tensors()))
        loss, final = _rollout_loss(model, solver, initial, weights, params, steps=8)
        loss.backward()
        results[backend] = ([t.detach() for t in final.tensors()], [params[n].grad for n in LEARNABLE]
                            + [t.grad for t in initial.tensors()])
    for a, b in zip(*(results[backend][0] + results[backend][1] for backend in BACKENDS)):
        assert float((a - b).abs().max()) <= 1e-6 * float(b.abs().max()) + 1e-14
    assert all(float(g.abs().max()) > 0 for g in results["warp"][1])


@pytest.mark.parametrize("boundary,wall_slip,advection,density_advection", [
    (("wall", "wall", "wall", "open"), "free_slip", "semi_lagrangian", None),
    ("periodic", "free_slip", "maccormack", "conservative"),
    (("periodic", "periodic", "wall", "wall"), "no_slip", "maccormack", None),
    (("open", "wall", "wall", "wall"), "no_slip", "semi_lagrangian", "conservative"),
])
def test_kernels_match_the_numpy_reference(boundary, wall_slip, advection, density_advection):
    builder = GridFluidBuilder(cell_count=(14, 11), cell_size=0.1, boundary=boundary, wall_slip=wall_slip, buoyancy=2.0,
                               vorticity_strength=0.4, viscosity=0.01, gravity_direction=(0.3, -1.0))
    builder.add_inflow_disc((0.5, 0.3), 0.2, 3.0)
    builder.add_inflow_box((1.0, 0.5), (0.15, 0.1), 2.0)
    builder.add_obstacle_disc((0.8, 0.7), 0.22)
    model = builder.finalize(dtype=F64)
    state = random_state(model, seed=1, speed=0.5)
    solver = SolverGridFluid(model, advection=advection, density_advection=density_advection, pressure_tolerance=1e-12)
    reference = GridFluidNumpy(model, advection=advection, density_advection=density_advection, tolerance=1e-12,
                               dtype=np.float64)
    ours = solver.step_differentiable(state, None, 0.05)
    theirs = reference.step(*(t.numpy() for t in state.tensors()), 0.05)
    for a, b in zip(ours.tensors(), theirs):
        assert np.abs(a.detach().numpy() - b).max() <= 1e-10 * np.abs(b).max()


def test_disc_obstacle_face_fractions_are_exact_chords():
    radius, center = 0.3, (1.02, 0.97)
    builder = GridFluidBuilder(cell_count=(40, 40), cell_size=0.05)
    builder.add_obstacle_disc(center, radius)
    model = builder.finalize(dtype=F64)
    dx = model.cell_size
    # along each x-face column, the blocked lengths add up to the disc's chord at that x
    x = torch.arange(model.face_shape_x[0], dtype=F64) * dx
    chord = 2 * (radius ** 2 - (x - center[0]) ** 2).clamp(min=0).sqrt()
    blocked = (1.0 - model.face_fraction_x).sum(dim=1) * dx
    interior = slice(1, -1)  # the wall columns are closed
    assert torch.allclose(blocked[interior], chord[interior], atol=2e-3 * dx)
    # summed over columns, a Riemann sum of the disc's area
    assert abs(float(chord.sum()) * dx / (math.pi * radius ** 2) - 1) < 0.03
    partial = model.face_fraction_x[(model.face_fraction_x > 0) & (model.face_fraction_x < 1)]
    assert partial.numel() > 8  # cut faces get fractional areas, not 0/1 staircases


# ---------------------------------------------------------------------------- gradients

def test_gradients_match_central_finite_differences():
    model = smoke_model(n=(16, 16))
    solver = SolverGridFluid(model, pressure_tolerance=1e-13)
    state = random_state(model, seed=4, speed=0.2, project_with=solver)
    weights = _loss_weights(model)
    base = {name: getattr(model, name).clone() for name in LEARNABLE}
    params = {name: value.clone().requires_grad_(True) for name, value in base.items()}
    loss, _ = _rollout_loss(model, solver, state, weights, params)
    loss.backward()
    checks = [(name, 0) for name in LEARNABLE] + [("inflow_center", 1)]  # index 0 of the centre: its x
    for name, index in checks:
        h = 1e-6 * max(1.0, abs(float(base[name].reshape(-1)[index])))
        values = []
        for sign in (1.0, -1.0):
            shifted = {key: value.clone() for key, value in base.items()}
            shifted[name].reshape(-1)[index] += sign * h
            with torch.no_grad():
                values.append(float(_rollout_loss(model, solver, state, weights, shifted)[0]))
        finite_difference = (values[0] - values[1]) / (2 * h)
        autodiff = float(params[name].grad.reshape(-1)[index])
        assert abs(autodiff - finite_difference) <= 1e-4 * abs(finite_difference), (name, index, autodiff, finite_difference)
        assert abs(finite_difference) > 1e-4, name  # the loss really depends on the parameter


@pytest.mark.parametrize("advection,density_advection", [("semi_lagrangian", "conservative"), ("maccormack", None)])
def test_initial_state_gradients_match_finite_differences(advection, density_advection):
    model = smoke_model(n=(12, 12), boundary="wall", wall_slip="no_slip")
    solver = SolverGridFluid(model, advection=advection, density_advection=density_advection, pressure_tolerance=1e-13)
    state = random_state(model, seed=5, speed=0.2, project_with=solver)
    weights = _loss_weights(model, seed=9)
    generator = torch.Generator().manual_seed(11)
    directions = [torch.randn(t.shape, generator=generator, dtype=F64) for t in state.tensors()]
    # only move fluid faces: solid faces hold exactly zero velocity, where the semi-Lagrangian
    # trace sits on a grid line (a kink of linear interpolation: one-sided derivatives)
    directions[0] *= solver.projection.mask_x
    directions[1] *= solver.projection.mask_y
    initial = GridFluidState(*(t.clone().requires_grad_(True) for t in state.tensors()))
    loss, _ = _rollout_loss(model, solver, initial, weights, {}, steps=5)
    loss.backward()
    autodiff = sum(float((t.grad * d).sum()) for t, d in zip(initial.tensors(), directions))
    h = 1e-6
    values = []
    for sign in (1.0, -1.0):
        shifted = GridFluidState(*(t + sign * h * d for t, d in zip(state.tensors(), directions)))
        with torch.no_grad():
            values.append(float(_rollout_loss(model, solver, shifted, weights, {}, steps=5)[0]))
    finite_difference = (values[0] - values[1]) / (2 * h)
    assert abs(autodiff - finite_difference) <= 1e-4 * abs(finite_difference), (autodiff, finite_difference)


def test_checkpointed_rollout_gives_the_same_gradients():
    model = smoke_model(n=(12, 12), obstacle=False)
    weights = _loss_weights(model)
    grads = []
    for checkpoint in (False, True):
        model.buoyancy = torch.tensor([3.0], dtype=F64, requires_grad=True)
        model.inflow_center = torch.tensor([[0.45, 0.22]], dtype=F64, requires_grad=True)
        trajectory = rollout_grid_fluid(model, model.state(), 16, dt=0.03, checkpoint=checkpoint, segment_steps=4)
        final = trajectory.state(-1)
        sum((t * w).sum() for t, w in zip(final.tensors(), weights)).backward()
        grads.append(torch.cat([model.buoyancy.grad, model.inflow_center.grad.reshape(-1)]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=0), grads


def test_control_acceleration_and_inflow_rate_receive_gradients():
    model = smoke_model(n=(12, 12), obstacle=False)
    solver = SolverGridFluid(model)
    acceleration = torch.zeros(model.face_shape_y, dtype=F64, requires_grad=True)
    rate = torch.tensor([2.0], dtype=F64, requires_grad=True)
    control = GridFluidControl(acceleration_y=acceleration, inflow_rate=rate)
    state = model.state()
    for _ in range(3):
        state = solver.step_differentiable(state, control, 0.03)
    _, y = model.cell_centers()
    (state.density * y).sum().backward()
    assert float(rate.grad) != 0.0 and float(acceleration.grad.abs().max()) > 0.0


# ---------------------------------------------------------------------------- API contract and bad inputs

def test_step_is_pure_and_raw_step_matches_the_differentiable_one():
    model = smoke_model(n=(12, 12), dtype=torch.float32)
    solver = SolverGridFluid(model)
    state = random_state(model)
    copy = state.clone()
    new = solver.step_differentiable(state, None, 0.02)
    out = state.empty_like()
    solver.step(state, out, None, 0.02)
    for a, b in zip(state.tensors(), copy.tensors()):
        assert torch.equal(a, b)
    for a, b in zip(new.tensors(), out.tensors()):
        assert torch.equal(a, b)
    assert new.step_count == out.step_count == 1


def test_cfl_violation_warns_with_the_fix():
    model = smoke_model(n=(12, 12), dtype=torch.float32)
    solver = SolverGridFluid(model)
    state = random_state(model, speed=5.0)
    with pytest.warns(RuntimeWarning, match="lower dt"):
        solver.step_differentiable(state, None, 0.1)


def test_non_finite_state_raises_simulation_error_naming_step_and_quantity():
    model = smoke_model(n=(12, 12), dtype=torch.float32)
    solver = SolverGridFluid(model)
    state = random_state(model)
    state.density[3, 4] = float("nan")
    state.step_count = 41
    with pytest.raises(SimulationError, match="step 42") as info:
        solver.step_differentiable(state, None, 0.01)
    assert info.value.quantity.startswith("density")


@pytest.mark.parametrize("kwargs,message", [
    (dict(boundary=("periodic", "wall", "wall", "wall")), "periodic boundaries come in pairs"),
    (dict(boundary="slippery"), "unknown boundary kind"),
    (dict(wall_slip="sticky"), "wall_slip"),
    (dict(cell_count=(2, 8)), "at least 3 cells"),
    (dict(viscosity=-1.0), "viscosity must be >= 0"),
])
def test_bad_models_are_refused_with_the_field_named(kwargs, message):
    options = dict(cell_count=(8, 8))
    options.update(kwargs)
    with pytest.raises(HybridsimError, match=message):
        GridFluidBuilder(**options).finalize()


def test_bad_solver_options_and_state_shapes_are_refused():
    model = smoke_model(n=(8, 8), dtype=torch.float32)
    with pytest.raises(HybridsimError, match="unknown advection"):
        SolverGridFluid(model, advection="upwind")
    with pytest.raises(HybridsimError, match="unknown backend"):
        SolverGridFluid(model, backend="jax")
    solver = SolverGridFluid(model)
    state = model.state()
    with pytest.raises(HybridsimError, match="velocity_x has shape"):
        solver.step_differentiable(GridFluidState(state.velocity_x[:-1], state.velocity_y, state.density), None, 0.01)
