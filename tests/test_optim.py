"""Row-sparse optimisers against torch's dense optimisers, and the norm-ball projection."""

import pytest
import torch

from metricrec.optim import RowAdagrad, RowAdam, clip_rows, make_optimizer


def test_clip_rows_by_hand():
    rows = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    clip_rows(rows, 1.0)
    assert torch.allclose(rows, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    same = torch.tensor([[3.0, 4.0]])
    assert torch.equal(clip_rows(same, None), torch.tensor([[3.0, 4.0]]))


def test_row_adagrad_equals_dense_adagrad_on_touched_rows():
    torch.manual_seed(0)
    w0 = torch.randn(8, 3, dtype=torch.float64)
    ours = w0.clone()
    opt = RowAdagrad(ours, lr=0.3, initial_accumulator=0.1, eps=0.0)
    ref = w0.clone().requires_grad_(True)
    ref_opt = torch.optim.Adagrad([ref], lr=0.3, initial_accumulator_value=0.1, eps=0.0)
    for step in range(4):
        rows = torch.tensor([1, 4, 6]) if step % 2 == 0 else torch.tensor([0, 4])
        g = torch.randn(rows.numel(), 3, dtype=torch.float64)
        dense = torch.zeros_like(w0)
        dense[rows] = g
        opt.step(rows, g)
        ref_opt.zero_grad()
        ref.grad = dense
        ref_opt.step()
    assert torch.allclose(ours, ref.detach(), atol=1e-12)


def test_row_adam_matches_hand_computation_for_one_row():
    w = torch.zeros(2, 1, dtype=torch.float64)
    opt = RowAdam(w, lr=0.1, betas=(0.9, 0.999), eps=0.0)
    opt.step(torch.tensor([1]), torch.tensor([[2.0]], dtype=torch.float64))
    # first step: m = 0.2, v = 0.004, m_hat = 2, v_hat = 4 -> update -0.1 * 2 / 2 = -0.1
    assert w[1, 0].item() == pytest.approx(-0.1)
    assert w[0, 0].item() == 0.0


def test_updates_are_clipped_into_the_ball():
    w = torch.zeros(3, 2)
    opt = RowAdagrad(w, lr=10.0)
    opt.step(torch.tensor([0, 2]), torch.tensor([[-5.0, 0.0], [3.0, -4.0]]), max_norm=1.0)
    norms = w.norm(dim=1)
    assert norms[0] == pytest.approx(1.0) and norms[2] == pytest.approx(1.0) and norms[1] == 0.0


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgdx", torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError, match="learning rate"):
        RowAdagrad(torch.zeros(2, 2), 0.0)
