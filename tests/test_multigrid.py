"""The multigrid V-cycle that preconditions the pressure CG: a symmetric positive definite
preconditioner on every boundary kind and with obstacles, a handful of iterations at any size,
the same projection as MIC(0)-PCG, and an exact adjoint."""

import pytest
import torch

from hybridsim.errors import HybridsimError
from hybridsim.solvers.grid_fluid import GridFluidBuilder, SolverGridFluid
from hybridsim.solvers.grid_fluid import multigrid as mg_module
from hybridsim.solvers.grid_fluid.multigrid import Multigrid

BOUNDARIES = {
    "closed": ("wall",) * 4,
    "open_top": ("wall", "wall", "wall", "open"),
    "periodic_x": ("periodic", "periodic", "wall", "open"),
    "periodic": ("periodic",) * 4,
}


def _model(n: int, boundary, obstacle: bool = True, dtype=torch.float64):
    builder = GridFluidBuilder(cell_count=(n, n), cell_size=1.0 / n, boundary=boundary, buoyancy=4.0)
    builder.add_inflow_disc((0.5, 0.15), 0.08, 4.0)
    if obstacle:
        builder.add_obstacle_disc((0.43, 0.55), 0.13)
        builder.add_obstacle_box((0.75, 0.3), (0.06, 0.1), angle=0.4)
    return builder.finalize(dtype=dtype)


def _random_faces(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(model.face_shape_x, generator=g, dtype=model.dtype),
            torch.randn(model.face_shape_y, generator=g, dtype=model.dtype))


@pytest.mark.parametrize("kind", sorted(BOUNDARIES))
def test_vcycle_is_symmetric_positive_definite(kind, monkeypatch):
    monkeypatch.setattr(mg_module, "MAX_COARSEST", 4)  # 16^2 -> 8^2 -> 4^2 -> 2^2: four levels
    n = 16
    model = _model(n, BOUNDARIES[kind])
    solver = SolverGridFluid(model, preconditioner="multigrid")
    area_x, area_y = solver.projection.area_x, solver.projection.area_y
    grid = Multigrid(area_x, area_y, cell_size=1.0, periodic=model.periodic)
    assert len(grid.levels) == 4
    cells = n * n
    matrix = torch.stack([grid.apply(column.view(n, n)).reshape(-1) for column in torch.eye(cells, dtype=torch.float64)], 1)
    assert torch.allclose(matrix, matrix.T, atol=1e-12)
    fluid = solver.projection.fluid_cells.reshape(-1) > 0
    eigenvalues = torch.linalg.eigvalsh(matrix[fluid][:, fluid])
    assert float(eigenvalues.min()) > 0.0


@pytest.mark.parametrize("kind,dtype,bound", [(kind, torch.float32, 1e-5) for kind in sorted(BOUNDARIES)]
                         + [(kind, torch.float64, 1e-9) for kind in ("open_top", "periodic_x")])
def test_plume_is_divergence_free_in_few_iterations(kind, dtype, bound):
    """max |div u| relative to (velocity scale / cell size) after a developed plume's projection."""
    model = _model(64, BOUNDARIES[kind], dtype=dtype)
    solver = SolverGridFluid(model)  # auto picks multigrid at 64^2
    assert solver.projection.preconditioner == "multigrid"
    state = model.state()
    with torch.no_grad():
        for _ in range(8):
            state = solver.step_differentiable(state, None, 0.01)
    divergence = solver.projection.divergence(state.velocity_x, state.velocity_y)
    scale = max(float(state.velocity_x.abs().max()), float(state.velocity_y.abs().max())) / float(model.cell_size)
    assert scale > 1.0
    assert float(divergence.abs().max()) / scale < bound
    assert solver.projection.last_result.converged
    assert solver.projection.last_result.iterations <= 16
    u, v = _random_faces(model, 0)  # white noise: the hardest right-hand side
    before = solver.projection.divergence(u, v)
    after = solver.projection.divergence(*solver.project(u, v))
    assert float(after.norm()) <= 1.01 * solver.projection.tolerance * float(before.norm())
    assert solver.projection.last_result.iterations <= 16


def test_same_projection_as_incomplete_cholesky_and_fewer_iterations():
    model = _model(128, BOUNDARIES["open_top"])
    u, v = _random_faces(model, 1)
    results = {}
    for preconditioner in ("multigrid", "incomplete_cholesky"):
        solver = SolverGridFluid(model, preconditioner=preconditioner, pressure_tolerance=1e-12)
        results[preconditioner] = (*solver.project(u, v), solver.projection.last_result.iterations)
    (mu, mv, m_it), (iu, iv, i_it) = results["multigrid"], results["incomplete_cholesky"]
    assert torch.allclose(mu, iu, atol=1e-9) and torch.allclose(mv, iv, atol=1e-9)
    assert m_it * 4 < i_it, (m_it, i_it)


@pytest.mark.parametrize("kind", ["closed", "periodic_x"])
def test_adjoint_projection_is_the_transpose(kind):
    model = _model(64, BOUNDARIES[kind])
    solver = SolverGridFluid(model, preconditioner="multigrid", pressure_tolerance=1e-14)
    u, v = _random_faces(model, 2)
    gu, gv = _random_faces(model, 3)
    pu, pv = solver.projection.project(u, v)
    au, av = solver.projection.project_adjoint(gu, gv)
    forward = float((pu * gu).sum() + (pv * gv).sum())
    adjoint = float((u * au).sum() + (v * av).sum())
    assert forward == pytest.approx(adjoint, rel=1e-11)


def test_buoyancy_gradient_matches_finite_differences_with_multigrid():
    model = _model(64, BOUNDARIES["open_top"], obstacle=False)
    solver = SolverGridFluid(model, preconditioner="multigrid", pressure_tolerance=1e-12)
    _, y = model.cell_centers()

    def loss(buoyancy):
        model.buoyancy = buoyancy
        state = model.state()
        for _ in range(4):
            state = solver.step_differentiable(state, None, 0.01)
        return (state.density * y).sum() + (state.velocity_y ** 2).sum()

    b = torch.tensor([4.0], dtype=torch.float64, requires_grad=True)
    loss(b).backward()
    h = 1e-5
    with torch.no_grad():
        fd = (float(loss(b.detach() + h)) - float(loss(b.detach() - h))) / (2 * h)
    assert float(b.grad) == pytest.approx(fd, rel=1e-6)


def test_uneven_grids_are_refused_or_fall_back():
    assert not Multigrid.supports((97, 64)) and Multigrid.supports((96, 64)) and Multigrid.supports((12, 16))
    model = _model(97, BOUNDARIES["closed"], obstacle=False)
    assert SolverGridFluid(model).projection.preconditioner == "incomplete_cholesky"
    with pytest.raises(HybridsimError, match="halve evenly"):
        SolverGridFluid(model, preconditioner="multigrid")


# ----------------------------------------------------------------------------------------- 3D

def _model3d(n: int, boundary, dtype=torch.float64):
    from hybridsim.solvers.grid_fluid3d import GridFluid3DBuilder

    builder = GridFluid3DBuilder(cell_count=(n, n, n), cell_size=1.0 / n, boundary=boundary, buoyancy=3.0)
    builder.add_inflow_sphere((0.5, 0.5, 0.15), 0.12, 4.0)
    builder.add_obstacle_sphere((0.45, 0.52, 0.55), 0.17)
    builder.add_obstacle_box((0.8, 0.3, 0.4), (0.08, 0.12, 0.1))
    return builder.finalize(dtype=dtype)


BOUNDARIES_3D = {"closed": ("wall",) * 6, "open_top": ("wall",) * 5 + ("open",),
                 "periodic_xy": ("periodic",) * 4 + ("wall", "open")}


@pytest.mark.parametrize("kind", sorted(BOUNDARIES_3D))
def test_vcycle_3d_is_symmetric_positive_definite(kind, monkeypatch):
    from hybridsim.solvers.grid_fluid3d import SolverGridFluid3D

    monkeypatch.setattr(mg_module, "MAX_COARSEST", 8)  # 8^3 -> 4^3 -> 2^3: three levels
    model = _model3d(8, BOUNDARIES_3D[kind])
    solver = SolverGridFluid3D(model, preconditioner="multigrid")
    grid = solver.projection.multigrid
    assert [level.shape for level in grid.levels] == [(8, 8, 8), (4, 4, 4), (2, 2, 2)]
    matrix = torch.stack([grid.apply(column.view(8, 8, 8)).reshape(-1) for column in torch.eye(512, dtype=torch.float64)], 1)
    assert torch.allclose(matrix, matrix.T, atol=1e-12)
    fluid = solver.projection.fluid_cells.reshape(-1) > 0
    assert float(torch.linalg.eigvalsh(matrix[fluid][:, fluid]).min()) > 0.0


@pytest.mark.parametrize("kind,dtype,bound", [("open_top", torch.float32, 1e-5), ("closed", torch.float32, 1e-5),
                                              ("periodic_xy", torch.float64, 1e-9)])
def test_3d_projection_is_divergence_free_in_few_iterations(kind, dtype, bound):
    from hybridsim.solvers.grid_fluid3d import SolverGridFluid3D

    model = _model3d(16, BOUNDARIES_3D[kind], dtype=dtype)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-10  # max-norm below 1e-5 needs an L2 residual of 1e-6
    solver = SolverGridFluid3D(model, pressure_tolerance=tolerance)  # auto: multigrid from 16^3
    assert solver.projection.preconditioner == "multigrid"
    state = model.state()
    with torch.no_grad():
        for _ in range(4):
            state = solver.step_differentiable(state, None, 0.01)
    fields = (state.velocity_x, state.velocity_y, state.velocity_z)
    divergence = solver.projection.divergence(*fields)
    scale = max(float(f.abs().max()) for f in fields) / float(model.cell_size)
    assert scale > 0.05  # the plume moves
    assert float(divergence.abs().max()) / scale < bound
    assert solver.projection.last_result.converged and solver.projection.last_result.iterations <= 16
    incomplete = SolverGridFluid3D(model, pressure_tolerance=tolerance, preconditioner="incomplete_cholesky")
    u = tuple(f.clone() for f in fields)
    u[2].add_(0.3)  # a divergent field through the open top / against the walls
    ours, theirs = solver.project(*u), incomplete.project(*u)
    assert incomplete.projection.last_result.iterations > 2 * solver.projection.last_result.iterations
    scale = max(float(f.abs().max()) for f in u)  # the input's scale (float32 round-off of the solve)
    difference = max(float((a - b).abs().max()) for a, b in zip(ours, theirs))
    assert difference < 100 * tolerance * scale, (difference, scale)
