"""The finite-difference gradient check tells kinks and jumps of the loss from gradient errors."""

from __future__ import annotations

import pytest
import torch

from hybridsim.testing import finite_difference_gradcheck

D64 = torch.float64


class _Doubled(torch.autograd.Function):
    """x -> x with a wrong (doubled) gradient: a bug the check must catch."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def _row(loss_of, x0: float = 0.0):
    params = {"a": torch.tensor(x0, dtype=D64)}
    (row,) = finite_difference_gradcheck(None, params=params, evaluate=lambda v: (loss_of(v["a"]), None))
    return row


def test_smooth_loss_matches():
    row = _row(lambda a: torch.sin(3 * a) + a * a, 0.3)
    assert row.kind == "smooth" and row.error < 1e-7


def test_a_kink_is_checked_against_the_branch_autodiff_follows():
    row = _row(lambda a: torch.relu(a) + 0.5 * a)  # autodiff takes relu'(0) = 0: the left branch
    assert row.kind == "kink" and row.one_sided[0] == pytest.approx(1.5, rel=1e-6)
    assert row.error < 1e-7


def test_a_jump_at_the_point_is_not_differentiable():
    row = _row(lambda a: a + (a > 0).to(D64))
    assert row.kind == "jump" and row.error == 0.0


def test_a_jump_within_the_first_step_is_stepped_over():
    row = _row(lambda a: a + (a < -5e-7).to(D64))
    assert row.kind == "smooth" and row.step < 1e-6 and row.error < 1e-7


def test_a_wrong_gradient_still_fails():
    row = _row(lambda a: torch.sin(_Doubled.apply(a)), 0.2)
    assert row.kind == "smooth" and row.error > 0.3
