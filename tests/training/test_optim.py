"""Row-sparse optimisers against torch's dense optimisers, and the norm-ball projection."""

import pytest
import torch

from metricrec.training.optim import RowAdagrad, RowAdam, clip_rows, make_optimizer


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


def test_dense_buffer_path_equals_sparse_path():
    from metricrec.training.optim import GradBuffer

    torch.manual_seed(1)
    w0 = torch.randn(10, 4) * 0.3
    a, b = w0.clone(), w0.clone()
    opt_a, opt_b = RowAdagrad(a, 0.5), RowAdagrad(b, 0.5)
    buf_a, buf_b = GradBuffer(10, 4), GradBuffer(10, 4)
    for rows in (torch.tensor([0, 3, 3, 7]), torch.tensor([1, 2, 4, 5, 6, 8, 9, 0])):
        g = torch.randn(rows.numel(), 4) * 3
        buf_a.add(rows, g)
        buf_b.add(rows, g)
        opt_a.step_buffer(buf_a, max_norm=1.0, dense_fraction=0.0)  # always the dense path
        opt_b.step_buffer(buf_b, max_norm=1.0, dense_fraction=2.0)  # always the sparse path
        assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(opt_a.acc, opt_b.acc, atol=1e-5)
        assert not buf_a.touched.any() and float(buf_a.grad.abs().sum()) == 0.0
    assert a.norm(dim=1).max() <= 1.0 + 1e-6
