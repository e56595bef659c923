"""CML on a CUDA device: the torch step, sampler, optimiser, training and retrieval on the GPU
against the same code on the CPU. Skipped (cleanly) where no CUDA device is present."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from metricrec import CML
from metricrec.data.splits import ratio_split
from metricrec.data.synthetic import generate
from metricrec.metrics import evaluate_part
from metricrec.models.cml.step_torch import cml_step
from metricrec.training.optim import GradBuffer, RowAdagrad
from metricrec.training.sampling import UniformSampler
from tolerances import assert_rankings_agree

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(scope="module")
def split():
    return ratio_split(generate(preset="small", seed=0), seed=0)


def _problem(seed=0, n_users=60, n_items=90, d=12):
    rng = np.random.default_rng(seed)
    train = sp.random(n_users, n_items, density=0.15, random_state=rng, format="csr")
    train.data[:] = 1.0
    gen = torch.Generator().manual_seed(seed)
    ue = torch.randn(n_users, d, generator=gen) * 0.3
    ie = torch.randn(n_items, d, generator=gen) * 0.3
    users = torch.from_numpy(np.repeat(np.arange(n_users), np.diff(train.indptr)))
    return train, ue, ie, users, torch.from_numpy(train.indices.astype(np.int64))


@pytest.mark.parametrize("cov_weight", [0.0, 5.0])
def test_step_on_cuda_equals_the_cpu_step(cov_weight):
    train, ue, ie, users, pos = _problem()
    draw = UniformSampler(train, seed=0).sample(users, 7, 8)
    grads = {}
    for dev in ("cpu", "cuda"):
        gu, gi = GradBuffer(*ue.shape, device=dev), GradBuffer(*ie.shape, device=dev)
        moved = type(draw)(*(t.to(dev) for t in (draw.shared, draw.negatives, draw.fix_rows, draw.fix_cols)),
                           draw.group_size)
        stats = cml_step(ue.to(dev), ie.to(dev), users.to(dev), pos.to(dev), moved, gu, gi, margin=1.0,
                         cov_weight=cov_weight)
        grads[dev] = (stats, gu.grad.cpu(), gi.grad.cpu(), gu.touched.cpu(), gi.touched.cpu())
    (a, *ga), (b, *gb) = grads["cpu"], grads["cuda"]
    assert a.n_active == b.n_active
    assert b.metric_loss == pytest.approx(a.metric_loss, rel=1e-4)
    assert b.cov_loss == pytest.approx(a.cov_loss, rel=1e-4, abs=1e-9)
    for x, y in zip(ga, gb):
        assert torch.allclose(x.float(), y.float(), atol=1e-4)


def test_sampler_on_cuda_never_returns_a_positive():
    train, _, _, users, _ = _problem(1)
    sampler = UniformSampler(train, seed=3, device="cuda")
    draw = sampler.sample(users.cuda(), 10, 4)
    assert draw.negatives.is_cuda
    neg = draw.negatives.cpu().numpy()
    assert not (train.toarray()[users.numpy()[:, None], neg] > 0).any()


def test_optimiser_on_cuda_equals_the_cpu_one():
    torch.manual_seed(0)
    w0 = torch.randn(30, 5) * 0.3
    out = {}
    for dev in ("cpu", "cuda"):
        w = w0.clone().to(dev)
        opt, buf = RowAdagrad(w, 0.2), GradBuffer(30, 5, device=dev)
        gen = torch.Generator().manual_seed(1)
        for _ in range(4):
            rows = torch.randint(0, 30, (20,), generator=gen)
            buf.add(rows.to(dev), torch.randn(20, 5, generator=gen).to(dev))
            opt.step_buffer(buf, max_norm=1.0)
        out[dev] = w.cpu()
    assert torch.allclose(out["cpu"], out["cuda"], atol=1e-5)


def test_fit_on_cuda_matches_the_cpu_torch_backend(split):
    kw = dict(factors=16, batch_size=256, epochs=12, patience=0, margin=1.0, kernel="torch",
              show_progress=False, verbose=False)
    cpu = CML(device="cpu", **kw).fit(split.train)
    gpu = CML(device="cuda", **kw).fit(split.train)
    assert gpu._user.is_cuda and gpu.last_epoch_seconds is not None
    a = evaluate_part(cpu.scorer(), split, "test", ks=(10, 50))
    b = evaluate_part(gpu.scorer(), split, "test", ks=(10, 50))
    # the GPU draws other negatives (its own generator): the same curve, not the same bits
    assert b["recall@50"] == pytest.approx(a["recall@50"], abs=0.05)
    la, lb = [e.loss for e in cpu.history.epochs], [e.loss for e in gpu.history.epochs]
    assert np.allclose(la, lb, rtol=0.15)


def test_recommend_on_cuda_equals_cpu(split, tmp_path):
    model = CML(factors=16, batch_size=256, epochs=3, show_progress=False, verbose=False).fit(split.train)
    model.save(tmp_path / "m")
    gpu = CML.load(tmp_path / "m", device="cuda")
    liked = split.train.matrix[:5]
    ids_c, scores_c = model.recommend(np.arange(5), liked, N=10)
    ids_g, scores_g = gpu.recommend(np.arange(5), liked, N=10)
    # other kernels (cuBLAS, TF32 off) than the CPU's: the same lists up to ties within rounding
    assert_rankings_agree(ids_g, scores_g, ids_c, scores_c, atol=1e-4)
