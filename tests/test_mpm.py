"""MLS-MPM solver: conservation, settling and bouncing, cross-backend and numpy agreement,
finite-difference gradients (float64), determinism, sampling and bad input."""

import warnings

import numpy as np
import pytest
import torch

from hybridsim.errors import AssetError, SimulationError
from hybridsim.solvers.mpm import (MATERIAL_KINDS, WALL_MODES, MPMBuilder, MPMControl, MPMGrid, SolverMPM, check_dt,
                                   rollout_mpm, stable_dt, substep_count)
from hybridsim.solvers.mpm.reference import mpm_substep_numpy

BACKENDS = ["warp", "taichi"]
F64 = torch.float64


def mixed_scene(dim=2, resolution=16, gravity=None, dtype=F64, wall_mode="separate", seed=0):
    """An elastic block, a snow block and a liquid ball moving towards each other."""
    builder = MPMBuilder(dim=dim, resolution=resolution, gravity=gravity, wall_mode=wall_mode)
    elastic = builder.add_material("elastic", youngs_modulus=3e3, poisson_ratio=0.3, viscosity=0.2)
    snow = builder.add_material("snow", youngs_modulus=3e3, poisson_ratio=0.2)
    liquid = builder.add_material("liquid", bulk_modulus=2e3, viscosity=0.3)
    rest = (0.0,) * (dim - 1)
    builder.add_box((0.3,) * dim, (0.48,) * dim, material=elastic, velocity=(1.0,) + rest, seed=seed)
    builder.add_box((0.52,) * dim, (0.7,) * dim, material=snow, velocity=(-1.0,) + (0.5,) * (dim - 1), seed=seed + 1)
    builder.add_sphere((0.32,) * (dim - 1) + (0.68,), 0.09, material=liquid, velocity=rest + (-1.0,), seed=seed + 2)
    return builder.finalize(dtype=dtype)


def block_scene(kind="elastic", *, dim=2, resolution=16, lower=(0.3, 0.25), upper=(0.55, 0.45), velocity=(0.3, -1.0),
                youngs_modulus=2e3, dtype=F64, **material):
    builder = MPMBuilder(dim=dim, resolution=resolution)
    index = builder.add_material(kind, youngs_modulus=youngs_modulus, **material)
    builder.add_box(lower, upper, material=index, velocity=velocity)
    return builder.finalize(dtype=dtype)


def run_steps(solver, state, steps, dt, control=None):
    for _ in range(steps):
        state = solver.step_differentiable(state, control, dt)
    return state


def kinetic_energy(model, velocity):
    mass = model.particle_parameters().mass.detach()
    return float(0.5 * (mass[:, None] * velocity.detach() ** 2).sum())


# -- constants and sampling ----------------------------------------------------------------------

def test_kernel_constants_match_the_model():
    from hybridsim.kernels.taichi import mpm as taichi_mpm
    from hybridsim.kernels.warp import mpm as warp_mpm

    for module in (warp_mpm, taichi_mpm):
        assert {name: getattr(module, f"MATERIAL_{name.upper()}") for name in MATERIAL_KINDS} == MATERIAL_KINDS
        assert {name: getattr(module, f"WALL_{name.upper()}") for name in WALL_MODES} == WALL_MODES


def test_box_and_sphere_sampling_is_seeded_and_fills_the_shape():
    builder = MPMBuilder(dim=2, resolution=33)  # dx = 1/32, spacing 1/64
    a = builder.add_material("elastic", youngs_modulus=1e4)
    b = builder.add_material("liquid", bulk_modulus=1e4)
    box = builder.add_box((0.25, 0.25), (0.5, 0.5), material=a, color=(1.0, 0.0, 0.0), seed=3)
    disc = builder.add_sphere((0.7, 0.7), 0.1, material=b, color=(0.0, 0.0, 1.0), seed=3)
    model = builder.finalize()
    assert len(box) == 16 * 16  # 0.25 / (1/64) lattice points per axis
    assert abs(len(disc) - np.pi * 0.1 ** 2 * 64 ** 2) < 0.05 * len(disc)
    x = model.particle_position[box.start:box.stop]
    assert float(x.min()) >= 0.25 - 0.5 / 128 and float(x.max()) <= 0.5 + 0.5 / 128  # jitter stays within half a cell
    assert torch.equal(model.particle_material, torch.tensor([a] * len(box) + [b] * len(disc)))
    assert torch.equal(model.particle_color[0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(model.particle_color[-1], torch.tensor([0.0, 0.0, 1.0]))
    again = MPMBuilder(dim=2, resolution=33)
    again.add_material("elastic", youngs_modulus=1e4)
    again.add_box((0.25, 0.25), (0.5, 0.5), material=0, seed=3)
    assert torch.equal(again.finalize().particle_position, x)
    other = MPMBuilder(dim=2, resolution=33)
    other.add_material("elastic", youngs_modulus=1e4)
    other.add_box((0.25, 0.25), (0.5, 0.5), material=0, seed=4)
    assert not torch.equal(other.finalize().particle_position, x)


def test_mesh_sampling_fills_a_watertight_mesh(tmp_path):
    import trimesh

    path = tmp_path / "ball.stl"
    trimesh.creation.icosphere(subdivisions=3, radius=0.15).export(path)
    builder = MPMBuilder(dim=3, resolution=17)
    index = builder.add_material("elastic", youngs_modulus=1e4)
    particles = builder.add_mesh(path, material=index, translate=(0.5, 0.5, 0.5), jitter=0.0)
    expected = 4.0 / 3.0 * np.pi * 0.15 ** 3 / (0.5 / 16) ** 3
    assert abs(len(particles) - expected) < 0.1 * expected
    x = builder.finalize().particle_position
    assert float((x - 0.5).norm(dim=1).max()) <= 0.15


def test_non_watertight_mesh_raises_asset_error_naming_the_file(tmp_path):
    import trimesh

    mesh = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    mesh.update_faces(np.arange(len(mesh.faces)) != 0)  # punch a hole
    path = tmp_path / "open_box.stl"
    mesh.export(path)
    builder = MPMBuilder(dim=3, resolution=17)
    index = builder.add_material("elastic", youngs_modulus=1e4)
    with pytest.raises(AssetError, match="not watertight") as error:
        builder.add_mesh(path, material=index, translate=(0.5, 0.5, 0.5))
    assert error.value.file == str(path) and str(path) in str(error.value)


def test_stable_dt_follows_the_stiffest_material_and_warns_for_a_learnable_range():
    model = block_scene(youngs_modulus=1e4, poisson_ratio=0.25, density=500.0)
    mu, lam = 1e4 / 2.5, 1e4 * 0.25 / (1.25 * 0.5)
    expected = 0.4 * model.grid.dx / np.sqrt((lam + 2 * mu) / 500.0)
    assert stable_dt(model) == pytest.approx(expected, rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_dt(model, 0.9 * expected)
    with pytest.warns(UserWarning, match="learnable range"):
        check_dt(model, 0.9 * expected, youngs_modulus_range=(torch.tensor([1e3]), torch.tensor([1e5])))
    with pytest.warns(UserWarning, match="exceeds the stable bound"):
        check_dt(model, 1.5 * expected)


# -- conservation and physical behaviour ---------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_p2g_conserves_mass_and_momentum_exactly(backend):
    model = mixed_scene(gravity=(0.0, 0.0))
    solver = SolverMPM(model, backend=backend)
    state = run_steps(solver, model.state(), 5, 2e-3)  # non-trivial C and F
    with torch.no_grad():
        grid = solver.grid(state, None, 2e-3)
    mass = model.particle_parameters().mass
    assert float(grid.mass.sum()) == pytest.approx(float(mass.sum()), rel=1e-13)
    # no walls touched: sum_i m_i v_i equals the particles' momentum (stress forces cancel)
    momentum = (mass[:, None] * state.particle_velocity).sum(0)
    grid_momentum = (grid.mass[:, None] * grid.velocity).sum(0)
    assert torch.allclose(grid_momentum, momentum, rtol=0, atol=1e-12 * float(momentum.norm()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_momentum_is_conserved_without_gravity_and_walls(backend):
    model = mixed_scene(gravity=(0.0, 0.0), dtype=torch.float32)
    solver = SolverMPM(model, backend=backend)
    mass = model.particle_parameters().mass
    state = model.state()
    before = (mass[:, None] * state.particle_velocity).sum(0)
    with torch.no_grad():
        state = run_steps(solver, state, 60, 2e-3)
    after = (mass[:, None] * state.particle_velocity).sum(0)
    assert float((state.particle_affine.abs().amax())) > 1.0  # bodies collided and deformed
    assert float((after - before).norm() / before.norm()) < 1e-5


def test_liquid_column_settles_without_exploding():
    builder = MPMBuilder(dim=2, resolution=32)
    liquid = builder.add_material("liquid", bulk_modulus=1e5, viscosity=50.0, density=1000.0)
    builder.add_box((0.1, 0.1), (0.3, 0.6), material=liquid)
    model = builder.finalize(dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dt is inside the stable bound
        with torch.no_grad():
            trajectory = rollout_mpm(SolverMPM(model), frames=60, substeps=25, dt=1e-3)  # 1.5 s
    energy = np.array([kinetic_energy(model, v) for v in trajectory.velocities])
    peak = int(np.argmax(energy))
    assert 0 < peak < 30 and energy[peak] > 0.0
    assert energy[-1] < 0.1 * energy[peak] and energy[40:].max() < 0.2 * energy[peak]  # decays after the collapse
    assert float(trajectory.velocities.norm(dim=-1).max()) < 1.5 * np.sqrt(2 * 9.81 * 0.5)  # no explosion
    assert float(trajectory.positions[-1, :, 1].max()) < 0.35  # the column has collapsed
    assert float(trajectory.positions[-1, :, 0].max()) > 0.5  # and spread along the floor
    J = trajectory.final_state.particle_deformation[:, 0, 0]
    assert 0.85 < float(J.min()) and float(J.max()) < 1.15  # weakly compressible


@pytest.mark.slow
@pytest.mark.parametrize("dim", [2, 3])
def test_liquid_settles_to_rest_over_seconds(dim):
    builder = MPMBuilder(dim=dim, resolution=48 if dim == 2 else 24)
    liquid = builder.add_material("liquid", bulk_modulus=1e5, viscosity=50.0, density=1000.0)
    builder.add_box((0.08,) * dim, (0.35,) * (dim - 1) + (0.7,), material=liquid)
    model = builder.finalize(dtype=torch.float32)
    substeps = substep_count(model, 0.04)
    with torch.no_grad():
        trajectory = rollout_mpm(SolverMPM(model), frames=100, substeps=substeps, dt=0.04 / substeps)  # 4 s
    energy = [kinetic_energy(model, v) for v in trajectory.velocities]
    assert energy[-1] < 0.01 * max(energy)
    assert float(trajectory.positions[-1, :, -1].max()) < 0.35


def test_elastic_block_bounces_and_keeps_its_shape():
    builder = MPMBuilder(dim=2, resolution=32)
    jelly = builder.add_material("elastic", youngs_modulus=2e5, poisson_ratio=0.3, density=1000.0, viscosity=20.0)
    builder.add_box((0.4, 0.45), (0.6, 0.6), material=jelly)
    model = builder.finalize(dtype=torch.float32)
    frame_dt = 0.02
    substeps = substep_count(model, frame_dt)  # from the stiffest material
    assert frame_dt / substeps <= stable_dt(model) < frame_dt / (substeps - 1)
    with torch.no_grad():
        trajectory = rollout_mpm(SolverMPM(model), frames=25, substeps=substeps, dt=frame_dt / substeps)  # to the apex
    vy = trajectory.velocities[..., 1].mean(dim=1)
    landing = int(torch.argmin(vy))
    assert float(vy[landing]) < -2.0 and float(vy[landing:].max()) > 0.5 * abs(float(vy[landing]))  # it bounced
    floor = model.grid.boundary_cells * model.grid.dx
    assert float(trajectory.positions[-1, :, 1].min()) > floor + 0.1  # and flies clear of the floor
    F = trajectory.final_state.particle_deformation
    strain = (F.transpose(1, 2) @ F - torch.eye(2)).norm(dim=(1, 2))
    assert float(strain.mean()) < 0.05  # F is close to a rotation
    x0, x1 = trajectory.positions[0], trajectory.positions[-1]
    aspect = lambda x: float((x[:, 0].max() - x[:, 0].min()) / (x[:, 1].max() - x[:, 1].min()))  # noqa: E731
    assert abs(aspect(x1) / aspect(x0) - 1.0) < 0.1


# -- independent checks: numpy reference and the other backend ----------------------------------

@pytest.mark.parametrize("dim", [2, 3])
def test_warp_substep_matches_the_numpy_reference(dim):
    model = mixed_scene(dim=dim, resolution=16 if dim == 2 else 12)
    solver = SolverMPM(model)
    with torch.no_grad():
        state = run_steps(solver, model.state(), 12, 2e-3)
        out = solver.step_differentiable(state, None, 2e-3)
    p = model.particle_parameters()
    params = {name: getattr(p, name).numpy() for name in ("kind", "mass", "volume", "mu", "lam", "viscosity",
                                                           "hardening", "clamp_low", "clamp_high")}
    reference = mpm_substep_numpy(model.grid, model.gravity, params, *[t.numpy() for t in state.tensors()], 2e-3)
    assert float((out.particle_plastic_volume - 1.0).abs().max()) > 1e-3  # snow plasticity was active
    for ours, theirs in zip(out.tensors(), reference):
        scale = max(1.0, float(np.abs(theirs).max()))
        assert float(np.abs(ours.numpy() - theirs).max()) < 1e-12 * scale


def test_warp_and_taichi_agree_on_one_float32_substep():
    model = mixed_scene(dim=2, resolution=24, dtype=torch.float32)
    with torch.no_grad():
        state = run_steps(SolverMPM(model), model.state(), 8, 2e-3)
        outputs = [SolverMPM(model, backend=b).step_differentiable(state, None, 2e-3) for b in BACKENDS]
    for name, a, b in zip(("x", "v", "C", "F", "Jp"), outputs[0].tensors(), outputs[1].tensors()):
        scale = max(1.0, float(a.abs().max()))
        assert float((a - b).abs().max()) < 1e-6 * scale, name


@pytest.mark.parametrize("dim", [2, 3])
def test_warp_and_taichi_agree_on_float64_rollouts(dim):
    model = mixed_scene(dim=dim, resolution=16 if dim == 2 else 12)
    finals = []
    for backend in BACKENDS:
        with torch.no_grad():
            finals.append(rollout_mpm(SolverMPM(model, backend=backend), frames=5, substeps=20, dt=2e-3))
    assert float((finals[0].positions - finals[1].positions).abs().max()) < 1e-6
    assert float((finals[0].velocities - finals[1].velocities).abs().max()) < 1e-6
    for a, b in zip(finals[0].final_state.tensors()[2:], finals[1].final_state.tensors()[2:]):
        assert float((a - b).abs().max()) < 1e-6


# -- gradients ----------------------------------------------------------------------------------

def _directional_check(loss_of, tensor, direction, step):
    """(autodiff, central finite difference) of loss_of along ``direction`` at ``tensor``."""
    value = tensor.detach().clone().requires_grad_(True)
    loss_of(value).backward()
    autodiff = float((value.grad * direction).sum())
    with torch.no_grad():
        plus = float(loss_of(tensor.detach() + step * direction))
        minus = float(loss_of(tensor.detach() - step * direction))
    return autodiff, (plus - minus) / (2 * step)


def _relative_error(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _fd_rows(model, backend, steps=50, dt=2e-3):
    generator = torch.Generator().manual_seed(0)
    n, d = model.particle_count, model.dim
    w_x = torch.randn(n, d, generator=generator, dtype=F64)
    w_v = torch.randn(n, d, generator=generator, dtype=F64)
    x0, v0 = model.particle_position.clone(), model.particle_velocity.clone()

    def loss(**override):
        for name in ("youngs_modulus", "poisson_ratio", "viscosity", "density"):
            setattr(model, name, override.get(name, base[name]))
        solver = SolverMPM(model, backend=backend)
        state = model.state()
        state.particle_position = override.get("position", x0)
        state.particle_velocity = override.get("velocity", v0)
        state = run_steps(solver, state, steps, dt)
        return ((state.particle_position * w_x).sum() + 0.1 * (state.particle_velocity * w_v).sum()
                + state.particle_deformation.sum() + state.particle_plastic_volume.sum())

    base = {name: getattr(model, name).detach().clone() for name in ("youngs_modulus", "poisson_ratio", "viscosity",
                                                                     "density")}
    rows = {}
    for name, rel in (("youngs_modulus", 1e-5), ("poisson_ratio", 1e-5), ("viscosity", 1e-5), ("density", 1e-6)):
        one = torch.ones_like(base[name])
        step = rel * (abs(float(base[name][0])) or 1.0)
        rows[name] = _directional_check(lambda t, k=name: loss(**{k: t}), base[name], one, step)
    rows["velocity"] = _directional_check(lambda t: loss(velocity=t), v0, torch.randn(n, d, generator=generator,
                                                                                     dtype=F64), 1e-6)
    rows["position"] = _directional_check(lambda t: loss(position=t), x0, torch.randn(n, d, generator=generator,
                                                                                     dtype=F64), 1e-7)
    return rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_finite_differences_through_floor_contact(backend):
    model = block_scene("elastic", viscosity=0.5)
    rows = _fd_rows(model, backend)
    for name, (autodiff, fd) in rows.items():
        assert np.isfinite(autodiff), name
        assert abs(autodiff) > 1e-6, name
        assert _relative_error(autodiff, fd) < 1e-3, (name, autodiff, fd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_snow_at_rest_has_finite_gradients_through_clamped_equal_singular_values(backend):
    # starts at rest (F = I exactly, equal singular values) and lands, so the clamp engages
    model = block_scene("snow", lower=(0.3, 0.12), upper=(0.6, 0.3), velocity=(0.0, 0.0), youngs_modulus=1e3,
                        poisson_ratio=0.2)
    with torch.no_grad():
        final = run_steps(SolverMPM(model, backend=backend), model.state(), 50, 2e-3)
    assert float((final.particle_plastic_volume - 1.0).abs().max()) > 1e-3
    rows = _fd_rows(model, backend)
    for name, (autodiff, fd) in rows.items():
        assert np.isfinite(autodiff), name
        assert _relative_error(autodiff, fd) < 1e-3, (name, autodiff, fd)


@pytest.mark.parametrize("backend", BACKENDS)
def test_plasticity_adjoint_matches_gradcheck_at_equal_clamped_singular_values(backend):
    from hybridsim.solvers.mpm.solver import _GridToParticle

    model = block_scene("snow", poisson_ratio=0.2)
    solver = SolverMPM(model, backend=backend)
    p = model.particle_parameters()
    n = model.particle_count
    grid_velocity = torch.zeros(model.grid.node_count, 2, dtype=F64)  # so F_trial = F
    generator = torch.Generator().manual_seed(1)
    F = torch.eye(2, dtype=F64).repeat(n, 1, 1)
    F[: n // 3] *= 0.9  # both singular values clamped to 1 - theta_c: equal
    F[n // 3: 2 * n // 3] *= 1.0  # identity: equal, unclamped
    F[2 * n // 3:] += 0.05 * torch.randn(n - 2 * n // 3, 2, 2, generator=generator, dtype=F64)
    jp = torch.ones(n, dtype=F64)

    def project(F, jp):
        out = _GridToParticle.apply(solver._launch, model.grid, 1e-3, p.kind, p.clamp_low, p.clamp_high,
                                    grid_velocity, model.particle_position, F, jp)
        return out[3], out[4]

    assert torch.autograd.gradcheck(project, (F.requires_grad_(True), jp.requires_grad_(True)), eps=1e-7, atol=1e-6)


def test_checkpointed_rollout_gives_the_same_gradients():
    model = block_scene("elastic")
    grads = []
    for checkpoint in (False, True):
        youngs = torch.tensor([2e3], dtype=F64, requires_grad=True)
        model.youngs_modulus = youngs
        state = model.state(requires_grad=True)
        trajectory = rollout_mpm(SolverMPM(model), state, frames=6, substeps=10, dt=2e-3, checkpoint=checkpoint,
                                 segment_frames=2)
        (trajectory.positions.pow(2).sum() + trajectory.final_state.particle_deformation.sum()).backward()
        grads.append((youngs.grad.clone(), state.particle_velocity.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-12)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-12, atol=1e-14)


def test_grid_hook_acts_as_a_differentiable_boundary():
    class MovingPlate:
        """Nodes below a height take the plate's velocity (the coupling interface a rigid body uses)."""

        def __init__(self, velocity):
            self.velocity = velocity

        def __call__(self, grid: MPMGrid, node_position, dt):
            below = (node_position[:, 1] < 0.3)[:, None]
            return torch.where(below, self.velocity.expand_as(grid.velocity), grid.velocity)

    model = block_scene("elastic", lower=(0.3, 0.32), upper=(0.5, 0.45), velocity=(0.0, -1.0))

    def final_x(plate_velocity):
        solver = SolverMPM(model, grid_hooks=[MovingPlate(plate_velocity)])
        return run_steps(solver, model.state(), 40, 2e-3).particle_position

    with torch.no_grad():
        still = final_x(torch.zeros(2, dtype=F64))
        moving = final_x(torch.tensor([0.5, 0.0], dtype=F64))
    assert float(still[:, 1].min()) > 0.28  # the plate stopped the fall
    assert float((moving - still)[:, 0].mean()) > 0.005  # and drags the block along
    autodiff, fd = _directional_check(lambda v: final_x(v)[:, 0].sum(), torch.tensor([0.5, 0.0], dtype=F64),
                                      torch.tensor([1.0, 0.0], dtype=F64), 1e-6)
    assert autodiff > 0 and _relative_error(autodiff, fd) < 1e-4


# -- purity, determinism, errors ------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_steps_are_pure_and_the_raw_step_equals_the_differentiable_one(backend):
    model = mixed_scene(dtype=torch.float32)
    solver = SolverMPM(model, backend=backend)
    state = run_steps(solver, model.state(), 3, 2e-3)
    before = state.clone()
    force = MPMControl(particle_force=torch.full_like(state.particle_position, 0.01))
    differentiable = solver.step_differentiable(state, force, 2e-3)
    raw = state.empty_like()
    solver.step(state, raw, force, 2e-3)
    for a, b, c in zip(state.tensors(), before.tensors(), raw.tensors()):
        assert torch.equal(a, b)
    for a, b in zip(differentiable.tensors(), raw.tensors()):
        assert torch.equal(a, b)
    plain = solver.step_differentiable(state, None, 2e-3)
    assert not torch.equal(plain.particle_velocity, differentiable.particle_velocity)  # the force acted


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_step_with_a_grid_hook_equals_the_differentiable_one(backend):
    model = mixed_scene(dtype=torch.float32)

    def slow_down(grid, node_position, dt):
        return grid.velocity * (node_position[:, :1] + 0.5)

    solver = SolverMPM(model, backend=backend, grid_hooks=[slow_down])
    state = run_steps(SolverMPM(model, backend=backend), model.state(), 3, 2e-3)
    differentiable = solver.step_differentiable(state, None, 2e-3)
    raw = state.empty_like()
    solver.step(state, raw, None, 2e-3)
    for a, b in zip(differentiable.tensors(), raw.tensors()):
        assert torch.equal(a, b)
    unhooked = state.empty_like()
    SolverMPM(model, backend=backend).step(state, unhooked, None, 2e-3)
    assert not torch.equal(unhooked.particle_velocity, raw.particle_velocity)


def test_taichi_fast_launch_matches_taichis_own_kernel_call():
    """The launch path that fills Taichi's launch context itself (launchers._TaichiCall) runs the same
    compiled kernels as Taichi's ordinary call: bit-identical states and gradients."""
    from hybridsim.solvers.mpm.launchers import _TaichiMPM

    model = mixed_scene(resolution=24, dtype=torch.float32)
    fast = SolverMPM(model, backend="taichi", deterministic=True)
    ordinary = SolverMPM(model, backend="taichi", deterministic=True)
    for solver, use_fast in ((fast, True), (ordinary, False)):  # HYBRIDSIM_TAICHI_FAST_LAUNCH set either way
        solver._launch = _TaichiMPM("cpu", torch.float32, 2, deterministic=True)
        for call in solver._launch.call.values():
            call.fast = use_fast
    runs, youngs = [], model.youngs_modulus.clone()
    for solver in (fast, ordinary):
        model.youngs_modulus = youngs.clone()  # _gradient_run replaces it
        raw = [model.state(), model.state().empty_like()]
        for k in range(6):
            solver.step(raw[k % 2], raw[(k + 1) % 2], None, 2e-3)
        runs.append(list(raw[0].tensors()) + _gradient_run(solver, model, steps=6))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert all(fast._launch.call[name].instances for name in ("substep", "p2g_update", "g2p_project", "p2g.grad",
                                                                "grid_update.grad", "g2p.grad"))
    assert not any(call.instances for call in ordinary._launch.call.values())


@pytest.mark.parametrize("chunks", [2, 3])
def test_taichi_chunked_cpu_scatter_matches_the_serial_one(chunks):
    """Particle chunks scattering into private grid copies (no atomics) give the serial scatter's
    result up to round-off, in the raw and the differentiable step alike."""
    from hybridsim.solvers.mpm.launchers import _TaichiMPM

    model = mixed_scene(resolution=24)
    runs = []
    for count in (1, chunks):
        solver = SolverMPM(model, backend="taichi")
        solver._launch = _TaichiMPM("cpu", F64, 2, deterministic=False)
        solver._launch.scatter_chunks = lambda particles, nodes, count=count: count
        state = run_steps(solver, model.state(), 10, 2e-3)
        raw = state.empty_like()
        solver.step(state, raw, None, 2e-3)
        for a, b in zip(solver.step_differentiable(state, None, 2e-3).tensors(), raw.tensors()):
            assert torch.equal(a, b)
        with torch.no_grad():
            grid = solver.grid(state, None, 2e-3)
        runs.append((raw, grid))
    (serial, serial_grid), (chunked, chunked_grid) = runs
    assert float(chunked_grid.mass.sum()) == pytest.approx(float(model.particle_parameters().mass.sum()), rel=1e-13)
    assert torch.allclose(chunked_grid.velocity, serial_grid.velocity, rtol=1e-10, atol=1e-12)
    for a, b in zip(chunked.tensors(), serial.tensors()):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def test_taichi_scatter_chunks_follow_threads_and_grid_size():
    from hybridsim.solvers.mpm.launchers import MAX_SCATTER_CHUNKS, _TaichiMPM

    launch = _TaichiMPM("cpu", torch.float32, 2, deterministic=False)
    launch.threads = 2
    assert launch.scatter_chunks(8192, 128 * 128) == 2  # the mpm88 scene
    assert launch.scatter_chunks(500, 16 * 16) == 1  # too few particles per chunk: serial, in particle order
    assert launch.scatter_chunks(8192, 1024 * 1024) == 1  # sparse: copies would cost more than the scatter
    launch.threads = 64
    assert launch.scatter_chunks(1 << 20, 128 * 128) == MAX_SCATTER_CHUNKS
    assert launch.scatter_chunks(8192, 1024 * 1024) == 0  # many threads, sparse: atomics
    launch.deterministic = True
    assert launch.scatter_chunks(8192, 128 * 128) == 0  # serialized atomic kernels


def test_taichi_wheel_examples_load_headless_and_our_scenes_match_their_size():
    """The benchmark against taichi's mpm88/mpm128 examples finds them in the wheel and strips the GUI."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_mpm.py"
    spec = importlib.util.spec_from_file_location("bench_mpm_under_test", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for name, particles, dt in (("mpm88", 8192, 2e-4), ("mpm128", 9000, 1e-4)):
        code = bench.headless_example(bench.example_path(name))
        assert "gui" not in code.co_names and "substep" in code.co_names
        model, scene_dt = bench.example_scene(name)
        assert (model.particle_count, model.grid.resolution, scene_dt) == (particles, (128, 128), dt)
        assert model.grid.dx == pytest.approx(1 / 128) and float(model.particle_volume[0]) == pytest.approx(
            (0.5 / 128) ** 2)


def _gradient_run(solver, model, steps=15):
    youngs = torch.tensor([3e3, 3e3, 1e3], dtype=model.youngs_modulus.dtype, requires_grad=True)
    model.youngs_modulus = youngs
    state = model.state(requires_grad=True)
    final = run_steps(solver, state, steps, 2e-3)
    (final.particle_position.sin().sum() + final.particle_deformation.pow(2).sum()).backward()
    return [final.particle_position.detach(), final.particle_deformation.detach(), youngs.grad,
            state.particle_position.grad, state.particle_velocity.grad]


def test_taichi_deterministic_mode_reruns_bit_identical():
    model = mixed_scene(resolution=24, dtype=torch.float32)
    runs = [_gradient_run(SolverMPM(model, backend="taichi", deterministic=True), model) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_warp_ordered_kernels_match_the_parallel_ones_and_rerun_bit_identical():
    """On CUDA, deterministic mode runs p2g/g2p on one thread; here the same kernels run on the CPU."""
    from hybridsim.solvers.mpm.launchers import _WarpMPM

    model = mixed_scene(resolution=24)
    ordered = SolverMPM(model, deterministic=True)
    ordered._launch = _WarpMPM("cpu", F64, 2, deterministic=True)
    ordered._launch.ordered = True
    runs = [_gradient_run(ordered, model) for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    parallel = _gradient_run(SolverMPM(model), model)
    assert torch.equal(parallel[0], runs[0][0]) and torch.equal(parallel[1], runs[0][1])
    for a, b in zip(parallel[2:], runs[0][2:]):  # the adjoint loop runs in reverse order: round-off only
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12 * float(b.abs().max()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_state_raises_simulation_error_naming_step_and_quantity(backend):
    model = block_scene("elastic", dtype=torch.float32)
    state = model.state()
    state.particle_velocity[3, 0] = float("nan")
    with pytest.raises(SimulationError) as error:
        with torch.no_grad():
            rollout_mpm(SolverMPM(model, backend=backend), state, frames=3, substeps=4, dt=1e-3, first_step=100)
    assert error.value.step == 104 and error.value.quantity in ("particle_position", "particle_velocity")
    assert "step 104" in str(error.value)
