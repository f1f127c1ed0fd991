"""kexue.optim.accum (https://kexue.fm/archives/8634, chapter momentum-grad-accum): folded accumulation
against an explicit-accumulation loop written out by hand in float64, against torch.optim.Adam and
against lion_pytorch.Lion (Tiger = Lion with β₁ = β₂)."""
import numpy as np
import pytest
import torch
from torch import nn

from kexue.optim.accum import (FoldedAccumAdam, FoldedAccumSGDM, FoldedAccumTiger, chi,
                               feed_gradients, max_abs_diff, microbatch_stream, mlp, run_stream,
                               state_bytes, tilde_beta, train_arm)

F64 = torch.float64
K, MB, UPDATES = 4, 4, 40


def _data(n=64, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    y = torch.randint(0, c, (n,), generator=g)
    return X, y


def _net(seed=1):
    return mlp([6, 8, 3], seed=seed, dtype=F64)


def _reference_sgdm(net, X, y, stream, *, lr, beta, k, wd=0.0):
    """The slow obvious loop: an explicit buffer acc += g/k; every k micro-steps m = βm + (1-β)acc,
    θ -= lr (m + wd θ)."""
    ps = list(net.parameters())
    m = [torch.zeros_like(p) for p in ps]
    acc = [torch.zeros_like(p) for p in ps]
    for t, idx in enumerate(stream, start=1):
        net.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
        with torch.no_grad():
            for i, p in enumerate(ps):
                acc[i] += p.grad / k
            if t % k == 0:
                for i, p in enumerate(ps):
                    m[i] = beta * m[i] + (1 - beta) * acc[i]
                    p -= lr * (m[i] + wd * p)
                    acc[i] = torch.zeros_like(p)
    return m


def test_chi_and_tilde_beta():
    assert [chi(t, 3) for t in range(0, 7)] == [1, 0, 0, 1, 0, 0, 1]
    assert all(chi(t, 1) == 1 for t in range(5))
    with pytest.raises(ValueError):
        chi(1, 0)
    assert tilde_beta(0.9, 4) == pytest.approx(0.975)
    assert tilde_beta(0.9, 4) ** 4 == pytest.approx(0.9, abs=0.01)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_folded_sgdm_equals_explicit_and_true_batch(wd):
    X, y = _data()
    stream = microbatch_stream(len(X), MB, K * UPDATES, seed=3)
    ref = _net()
    m_ref = _reference_sgdm(ref, X, y, stream, lr=0.3, beta=0.9, k=K, wd=wd)
    folded = _net()
    opt = FoldedAccumSGDM(folded.parameters(), lr=0.3, beta=0.9, k=K, weight_decay=wd)
    run_stream(folded, opt, X, y, stream, k=K, mode="folded")
    assert max_abs_diff(folded, ref) < 1e-10
    assert max_abs_diff([opt.state[p]["m"] for p in folded.parameters()], m_ref) < 1e-12
    assert max_abs_diff(folded, _net()) > 1e-2  # it did train
    big = _net()
    run_stream(big, FoldedAccumSGDM(big.parameters(), lr=0.3, beta=0.9, k=1, weight_decay=wd),
               X, y, stream, k=K, mode="batch")
    assert max_abs_diff(big, ref) < 1e-10
    assert opt.updates == UPDATES


def test_off_by_one_would_be_caught():
    """Decaying on the last micro-step instead of the first differs from the reference."""
    X, y = _data()
    stream = microbatch_stream(len(X), MB, K * 10, seed=4)
    ref = _net()
    _reference_sgdm(ref, X, y, stream, lr=0.3, beta=0.9, k=K)
    wrong = _net()
    ps = list(wrong.parameters())
    m = [torch.zeros_like(p) for p in ps]
    for t, idx in enumerate(stream, start=1):
        wrong.zero_grad()
        nn.functional.cross_entropy(wrong(X[idx]), y[idx]).backward()
        with torch.no_grad():
            for i, p in enumerate(ps):
                if t % K == 0:
                    m[i] *= 0.9
                m[i] += 0.1 / K * p.grad
                if t % K == 0:
                    p -= 0.3 * m[i]
    assert max_abs_diff(wrong, ref) > 1e-4


def test_ema_fold_is_plain_ema_with_sparse_updates():
    X, y = _data()
    stream = microbatch_stream(len(X), MB, K * 10, seed=5)
    b = tilde_beta(0.9, K)
    net = _net()
    opt = FoldedAccumSGDM(net.parameters(), lr=0.2, beta=b, k=K, fold="ema")
    run_stream(net, opt, X, y, stream, k=K, mode="folded")
    ref = _net()
    ps = list(ref.parameters())
    m = [torch.zeros_like(p) for p in ps]
    for t, idx in enumerate(stream, start=1):
        ref.zero_grad()
        nn.functional.cross_entropy(ref(X[idx]), y[idx]).backward()
        with torch.no_grad():
            for i, p in enumerate(ps):
                m[i] = b * m[i] + (1 - b) * p.grad
                if t % K == 0:
                    p -= 0.2 * m[i]
    assert max_abs_diff(net, ref) < 1e-12


def test_adam_k1_equals_torch_adam():
    X, y = _data()
    stream = microbatch_stream(len(X), 8, 60, seed=6)
    a, b = _net(), _net()
    run_stream(a, FoldedAccumAdam(a.parameters(), lr=0.01, k=1), X, y, stream, mode="folded")
    run_stream(b, torch.optim.Adam(b.parameters(), lr=0.01), X, y, stream, mode="folded")
    assert max_abs_diff(a, b) < 1e-10
    assert max_abs_diff(a, _net()) > 1e-2


def test_adam_exact_v_equals_explicit_accumulation_torch_adam():
    X, y = _data()
    stream = microbatch_stream(len(X), MB, K * UPDATES, seed=7)
    a, b = _net(), _net()
    run_stream(a, FoldedAccumAdam(a.parameters(), lr=0.01, k=K, exact_v=True), X, y, stream, k=K)
    run_stream(b, torch.optim.Adam(b.parameters(), lr=0.01), X, y, stream, k=K, mode="explicit")
    assert max_abs_diff(a, b) < 1e-10
    c = _net()
    run_stream(c, FoldedAccumAdam(c.parameters(), lr=0.01, k=K, exact_v=False), X, y, stream, k=K)
    assert max_abs_diff(c, b) > 1e-6  # the folded v is only an approximation


def test_adam_first_moment_folds_exactly_second_does_not():
    g = torch.Generator().manual_seed(8)
    grads = [[torch.randn(5, 3, generator=g, dtype=F64)] for _ in range(K * 20)]
    pa = torch.zeros(5, 3, dtype=F64, requires_grad=True)
    pb = torch.zeros(5, 3, dtype=F64, requires_grad=True)
    fa = FoldedAccumAdam([pa], lr=0.01, k=K, exact_v=False)
    fb = FoldedAccumAdam([pb], lr=0.01, k=K, exact_v=True)
    feed_gradients(fa, [pa], grads)
    feed_gradients(fb, [pb], grads)
    assert max_abs_diff([fa.state[pa]["m"]], [fb.state[pb]["m"]]) < 1e-12
    # v: mean of squares >= square of mean, elementwise
    assert bool((fa.state[pa]["v"] >= fb.state[pb]["v"] - 1e-15).all())
    assert max_abs_diff([pa], [pb]) > 1e-6
    # the explicit buffer costs one parameter-sized tensor more
    assert state_bytes(fb) - state_bytes(fa) == pa.numel() * 8


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_tiger_k1_equals_lion_with_equal_betas(wd):
    from lion_pytorch import Lion

    X, y = _data()
    stream = microbatch_stream(len(X), 8, 60, seed=9)
    a, b = _net(), _net()
    run_stream(a, FoldedAccumTiger(a.parameters(), lr=0.01, beta=0.965, weight_decay=wd), X, y, stream)
    run_stream(b, Lion(b.parameters(), lr=0.01, betas=(0.965, 0.965), weight_decay=wd), X, y, stream)
    assert max_abs_diff(a, b) < 1e-10
    assert max_abs_diff(a, _net()) > 1e-2


def test_tiger_folded_equals_explicit_and_true_batch():
    from lion_pytorch import Lion

    X, y = _data()
    stream = microbatch_stream(len(X), MB, K * UPDATES, seed=10)
    a, b, c = _net(), _net(), _net()
    run_stream(a, FoldedAccumTiger(a.parameters(), lr=0.01, beta=0.965, weight_decay=0.01, k=K),
               X, y, stream, k=K)
    run_stream(b, Lion(b.parameters(), lr=0.01, betas=(0.965, 0.965), weight_decay=0.01), X, y, stream,
               k=K, mode="explicit")
    run_stream(c, Lion(c.parameters(), lr=0.01, betas=(0.965, 0.965), weight_decay=0.01), X, y, stream,
               k=K, mode="batch")
    assert max_abs_diff(a, b) < 1e-10
    assert max_abs_diff(a, c) < 1e-10


def test_missing_grad_still_decays_on_cycle_start():
    p = torch.ones(3, dtype=F64, requires_grad=True)
    opt = FoldedAccumSGDM([p], lr=0.1, beta=0.5, k=2)
    p.grad = torch.ones(3, dtype=F64)
    opt.step()                       # t=1: m = 0.5*0 + 0.25
    opt.step()                       # t=2: m = 0.25 + 0.25 = 0.5, update
    p.grad = None
    opt.step()                       # t=3: decay: m = 0.25
    assert torch.allclose(opt.state[p]["m"], torch.full((3,), 0.25, dtype=F64))


def test_microbatch_stream_matches_fit_order():
    s = microbatch_stream(10, 4, 5, seed=0)
    rng = np.random.default_rng(0)
    flat = np.concatenate([rng.permutation(10), rng.permutation(10)])
    assert np.array_equal(np.concatenate(s), flat[:20])


def test_train_arm_large_batch_matches_folded():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 6, generator=g)
    y = (X[:, 0] > 0).long()
    data = dict(X_train=X[:64], y_train=y[:64], X_dev=X[64:80], y_dev=y[64:80], X_test=X[80:], y_test=y[80:])
    kw = dict(lr=0.2, seed=0, sizes=[6, 8, 2], micro_batch=4, k=4, epochs=3)
    a, b = train_arm("folded", data, **kw), train_arm("large_batch", data, **kw)
    assert a["steps"] == 4 * b["steps"]
    assert [h[0] for h in a["history"]] == [h[0] for h in b["history"]]  # same samples at each eval
    assert abs(a["test"] - b["test"]) < 1e-6
    for arm in ("every_step", "sparse", "ema_tilde", "adam_folded", "adam_explicit"):
        r = train_arm(arm, data, **kw)
        assert 0.0 <= r["test"] <= 1.0 and not r["diverged"]


def test_exactness_and_v_ratio_small():
    from kexue.optim.accum import exactness, v_ratio

    X, y = _data(n=96)
    out = exactness(X, y, sizes=[6, 8, 3], micro_batch=4, k=4, updates=20, seed=0, lr_sgdm=0.3,
                    lr_adam=0.01, lr_tiger=0.01)
    assert out["sgdm"]["folded_vs_explicit"] < 1e-10 and out["sgdm"]["folded_vs_batch"] < 1e-10
    assert out["sgdm"]["torch_sgd_vs_batch"] > 1e-6  # torch's undampened first buffer
    assert out["tiger"]["folded_vs_batch"] < 1e-10 and out["adam"]["exact_v_vs_explicit"] < 1e-10
    assert out["adam"]["folded_v_vs_explicit"] > 1e-6
    assert out["adam_fixed_grads"]["m_diff"] < 1e-12 and out["adam_fixed_grads"]["v_fold_ge_exact"]
    assert out["memory"]["accumulation_buffer_bytes"] == out["memory"]["folded_sgdm_state_bytes"]
    assert v_ratio(X, y, sizes=[6, 8, 3], micro_batch=4, k=1, cycles=5, seed=0) == pytest.approx(1.0)
    assert v_ratio(X, y, sizes=[6, 8, 3], micro_batch=4, k=4, cycles=5, seed=0) > 1.0
