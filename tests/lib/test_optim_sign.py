"""kexue.optim.sign against lion_pytorch (float64), its closed form and its underflow formula
(https://kexue.fm/archives/9736, chapter lion-tiger-embedding)."""
import math

import numpy as np
import pytest
import torch
from lion_pytorch import Lion as RefLion

from kexue.optim.sign import (Lion, Tiger, embedding_outlier_report, momentum_underflow_steps,
                              sign_drift_closed_form, underflow_horizon)


def _run(opt_cls, kw, steps=30, seed=0, zero_rows=()):
    torch.manual_seed(seed)
    W = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    opt = opt_cls([W, b], **kw)
    g = torch.Generator().manual_seed(seed + 1)
    for t in range(steps):
        opt.zero_grad()
        gw = torch.randn(6, 3, dtype=torch.float64, generator=g)
        for r in zero_rows:
            if t % 3:
                gw[r] = 0
        W.grad, b.grad = gw, torch.randn(3, dtype=torch.float64, generator=g)
        opt.step()
    return W.detach(), b.detach()


def test_lion_matches_lion_pytorch_float64():
    for kw in (dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1), dict(lr=3e-3, betas=(0.95, 0.98), weight_decay=0.0)):
        a = _run(Lion, kw)
        r = _run(RefLion, kw)
        assert torch.equal(a[0], r[0]) or torch.allclose(a[0], r[0], atol=1e-15, rtol=0)
        assert torch.allclose(a[1], r[1], atol=1e-15, rtol=0)


def test_tiger_is_lion_with_equal_betas():
    a = _run(Tiger, dict(lr=1e-2, beta=0.965, weight_decay=0.05))
    r = _run(RefLion, dict(lr=1e-2, betas=(0.965, 0.965), weight_decay=0.05))
    assert torch.allclose(a[0], r[0], atol=1e-15, rtol=0) and torch.allclose(a[1], r[1], atol=1e-15, rtol=0)


def test_lazy_rows_bit_identical_to_a_slow_reference():
    torch.manual_seed(3)
    V, d, lr, beta, wd = 8, 4, 0.01, 0.9, 0.1
    E0 = torch.randn(V, d, dtype=torch.float64)
    E = E0.clone().requires_grad_(True)
    opt = Tiger([E], lr=lr, beta=beta, weight_decay=wd, lazy_rows=True)
    ref, m = E0.clone(), torch.zeros(V, d, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    for t in range(40):
        grad = torch.randn(V, d, dtype=torch.float64, generator=g)
        grad[torch.rand(V, generator=g) < 0.6] = 0
        E.grad = grad.clone()
        opt.step()
        for r in range(V):  # the obvious loop: present rows get Tiger's step, absent rows nothing
            if grad[r].abs().sum() > 0:
                m[r] = beta * m[r] + (1 - beta) * grad[r]
                ref[r] = ref[r] - lr * wd * ref[r] - lr * torch.sign(m[r])
        assert torch.equal(E.detach(), ref), t
    # rows never present stay exactly where they started; a non-lazy Tiger moves them after they were seen
    E2 = E0.clone().requires_grad_(True)
    opt2 = Tiger([E2], lr=lr, beta=beta, weight_decay=wd, lazy_rows=False)
    grad = torch.zeros(V, d, dtype=torch.float64); grad[0] = 1.0
    E2.grad = grad; opt2.step(); E2.grad = torch.zeros_like(grad); opt2.step()
    assert torch.allclose(E2.detach()[1], E0[1] * (1 - lr * wd) ** 2, atol=1e-15, rtol=0)  # absent, zero momentum: decay only
    assert not torch.allclose(E2.detach()[0], E0[0] * (1 - lr * wd) ** 2)


def test_single_row_closed_form():
    lr, wd, s = 2e-3, 2.0, -1.0
    th = torch.tensor([0.1, -0.3], dtype=torch.float64, requires_grad=True)
    opt = Tiger([th], lr=lr, beta=0.965, weight_decay=wd)
    th.grad = torch.tensor([-1.0, -1.0], dtype=torch.float64)  # one gradient, then zeros: sign(m) = −1 forever
    traj = []
    opt.step(); traj.append(th.detach().clone())
    for _ in range(1999):
        th.grad = torch.zeros(2, dtype=torch.float64)
        opt.step(); traj.append(th.detach().clone())
    traj = torch.stack(traj).numpy()
    t = np.arange(1, 2001)[:, None]
    cf = sign_drift_closed_form(np.array([0.1, -0.3]), s, lr, wd, t)
    assert np.max(np.abs(traj - cf)) < 1e-9
    # after 5/(ηλ) steps the distance to the fixed point −s/λ has shrunk below 1 % of where it started (e^-5)
    assert np.all(np.abs(traj[int(5 / (lr * wd)) - 1] + s / wd) < 0.01 * np.abs(np.array([0.1, -0.3]) + s / wd))


def test_underflow_horizon_matches_its_formula():
    for beta in (0.965, 0.9, 0.5, 0.3):
        for m0 in (1e-3, 0.37):
            r = momentum_underflow_steps(m0, beta, torch.float32)
            assert abs(r["to_subnormal"] - underflow_horizon(m0, beta, torch.float32, to="normal")) <= 1.5
            if beta < 0.5:  # round-to-nearest reaches 0 at the subnormal horizon
                assert r["to_zero"] is not None
                assert abs(r["to_zero"] - underflow_horizon(m0, beta, torch.float32)) <= 2
    # β > 1/2: k·2^-149 · β rounds back to k·2^-149 for small k, so m never reaches 0 and sign(m) stays ±1
    r = momentum_underflow_steps(1e-3, 0.965, torch.float32)
    assert r["to_zero"] is None and r["final"] > 0 and r["stuck_at"] is not None
    assert r["stuck_at"] <= underflow_horizon(1e-3, 0.965, torch.float32) + 1
    rb = momentum_underflow_steps(1e-3, 0.965, torch.bfloat16)
    # bfloat16 rounds each product to 8 bits, so its decay drifts from β^t: within 1 %
    assert abs(rb["to_subnormal"] / underflow_horizon(1e-3, 0.965, torch.bfloat16, to="normal") - 1) < 0.01


def test_embedding_outlier_report():
    E = torch.zeros(10, 3)
    E[0, 1] = 50.0   # rarest seen row, at the fixed point of λ = 0.02
    E[9, 0] = -10.0
    counts = np.array([1, 2, 3, 4, 5, 6, 7, 8, 0, 100])
    r = embedding_outlier_report(E, counts, 0.02, rare_frac=0.25, frequent_frac=0.25)
    assert r["max_abs"] == 50.0 and math.isclose(r["max_abs_ratio"], 1.0)
    assert r["n_rare"] == 2 and r["share_rare"] == 0.5 and r["share_frequent"] == 0.0
    assert r["n_unseen"] == 1 and r["share_unseen"] == 0.0
    with pytest.raises(ValueError):
        embedding_outlier_report(E, counts[:5], 0.02)


def test_sparse_gradients_refused():
    emb = torch.nn.Embedding(5, 2, sparse=True)
    opt = Tiger(emb.parameters(), lr=1e-2)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(ValueError):
        opt.step()
