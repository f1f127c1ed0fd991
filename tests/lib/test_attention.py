"""Tests of kexue.attention (chapter linear-attention-infinite, https://kexue.fm/archives/8601):
the feature maps against their kernels exactly, Performer's estimator unbiased by Monte Carlo, linear
attention against the explicit normalised matrix product, the rank diagnostics, the tasks and the model."""
import itertools
import math

import numpy as np
import pytest
import torch

from kexue import attention as A
from kexue.bert.objective import IGNORE


def _qk(n=7, d=4, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale,
            torch.randn(n, d, generator=g, dtype=torch.float64) * scale)


def test_tensor_power_is_the_brute_force_outer_product():
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    for m in range(4):
        brute = [math.prod(x[0, i].item() for i in idx) for idx in itertools.product(range(3), repeat=m)]
        assert torch.allclose(A.tensor_power(x, m)[0], torch.tensor(brute, dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4, 5])
def test_taylor_features_inner_product_is_the_truncated_series(order):
    q, k = _qk()
    fq, fk = A.taylor_features(q, order), A.taylor_features(k, order)
    assert fq.shape[-1] == A.taylor_dim(4, order) == sum(4 ** m for m in range(order + 1))
    s = q @ k.T
    series = sum(s ** m / math.factorial(m) for m in range(order + 1))
    assert torch.allclose(fq @ fk.T, series, rtol=1e-10, atol=0)
    assert torch.allclose(A.taylor_kernel(s, order), series, rtol=1e-12, atol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_explimit_features_inner_product_is_the_power(n):
    q, k = _qk()
    fq, fk = A.explimit_features(q, n), A.explimit_features(k, n)
    assert fq.shape[-1] == A.explimit_dim(4, n) == 5 ** n
    exact = (1 + (q @ k.T) / n) ** n
    assert torch.allclose(fq @ fk.T, exact, rtol=1e-10, atol=0)
    assert torch.allclose(A.explimit_kernel(q @ k.T, n), exact, rtol=1e-12, atol=0)


def test_both_kernels_converge_to_the_exponential():
    s = torch.linspace(-2, 2, 9, dtype=torch.float64)
    assert torch.allclose(A.taylor_kernel(s, 25), s.exp(), rtol=1e-12)
    assert torch.allclose(A.explimit_kernel(s, 10 ** 6), s.exp(), rtol=1e-5)


@pytest.mark.parametrize("orthogonal", [False, True])
def test_performer_estimator_is_unbiased_by_monte_carlo(orthogonal):
    """Mean of φ(q)·φ(k) over many independent ω draws → e^{q·k}, within 4 standard errors."""
    q, k = _qk(n=3, d=4, scale=0.4)
    target = (q @ k.T).exp()
    ests = []
    for s in range(400):
        om = A.draw_omegas(64, 4, orthogonal=orthogonal, seed=s)
        ests.append(A.performer_features(q, om) @ A.performer_features(k, om).T)
    ests = torch.stack(ests)
    se = ests.std(0) / math.sqrt(len(ests))
    assert ((ests.mean(0) - target).abs() <= 4 * se + 1e-12).all()


def test_orthogonal_omegas_are_orthogonal_in_blocks_with_gaussian_norms():
    om = A.draw_omegas(10, 4, orthogonal=True, seed=3)
    assert om.shape == (10, 4)
    for block in (om[:4], om[4:8]):
        u = block / block.norm(dim=1, keepdim=True)
        assert torch.allclose(u @ u.T, torch.eye(4, dtype=torch.float64), atol=1e-12)
    norms2 = torch.cat([A.draw_omegas(400, 4, orthogonal=True, seed=s).norm(dim=1) ** 2 for s in range(5)])
    assert abs(norms2.mean().item() - 4) < 0.2  # E‖ω‖² = d for ω ~ N(0, I_d)


def test_orthogonal_features_lower_the_variance():
    q, k = _qk(n=4, d=8, scale=0.35, seed=1)
    var = {}
    for orth in (False, True):
        ests = torch.stack([A.performer_features(q, om) @ A.performer_features(k, om).T
                            for om in (A.draw_omegas(16, 8, orthogonal=orth, seed=s) for s in range(300))])
        var[orth] = ests.var(0).mean().item()
    assert var[True] < var[False]


def test_linear_attention_equals_the_explicit_normalised_matrix_product():
    g = torch.Generator().manual_seed(0)
    fq = torch.rand(2, 3, 9, 5, generator=g, dtype=torch.float64) + 0.1
    fk = torch.rand(2, 3, 9, 5, generator=g, dtype=torch.float64) + 0.1
    v = torch.randn(2, 3, 9, 4, generator=g, dtype=torch.float64)
    s = fq @ fk.transpose(-1, -2)
    brute = torch.einsum("bhij,bhjc->bhic", s / s.sum(-1, keepdim=True), v)
    assert torch.allclose(A.linear_attention(fq, fk, v), brute, atol=1e-13)
    assert torch.allclose(A.linear_attention_matrix(fq, fk) @ v, brute, atol=1e-13)


def test_softmax_and_kernel_attention_matrices():
    q, k = _qk()
    a = A.softmax_attention_matrix(q, k)
    e = (q @ k.T).exp()
    assert torch.allclose(a, e / e.sum(1, keepdim=True), atol=1e-15)
    assert torch.allclose(A.kernel_attention_matrix(q, k, torch.exp), a, atol=1e-14)
    # the kernel form equals linear attention with the explicit features (order 3)
    t = A.kernel_attention_matrix(q, k, lambda s: A.taylor_kernel(s, 3))
    assert torch.allclose(t, A.linear_attention_matrix(A.taylor_features(q, 3), A.taylor_features(k, 3)), atol=1e-12)


def test_attention_errors():
    a = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    b = torch.tensor([[0.7, 0.3], [1.0, 0.0]])
    e = A.attention_errors(b, a)
    assert e["tv"] == pytest.approx(0.1) and e["max_abs"] == pytest.approx(0.2)


def test_gaussian_qk_has_the_requested_logit_std():
    q, k = A.gaussian_qk(4000, 16, 1.5, seed=0)
    assert (q * k).sum(1).std().item() == pytest.approx(1.5, rel=0.05)


def test_approximation_errors_rows_and_convergence():
    q, k = A.gaussian_qk(32, 4, 1.0, seed=0)
    rows = A.approximation_errors(q, k, orders=[2, 8], ms=[16, 4096], seed=0)
    get = {(r["scheme"], r["order"] or r["dim"]): r for r in rows}
    assert get[("taylor", 2)]["dim"] == 21 and get[("explimit", 8)]["dim"] == 5 ** 8
    assert get[("taylor", 8)]["tv"] < get[("taylor", 2)]["tv"] and get[("taylor", 8)]["tv"] < 1e-3
    assert get[("explimit", 8)]["tv"] < get[("explimit", 2)]["tv"]
    assert get[("performer", 4096)]["tv"] < get[("performer", 16)]["tv"]


def test_rank_diagnostics():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(20, 3, generator=g, dtype=torch.float64)
    assert A.numerical_rank(u @ u.T) == 3
    assert A.effective_rank(torch.eye(6)) == pytest.approx(6.0)
    assert A.effective_rank(torch.ones(5, 5)) == pytest.approx(1.0)
    # linear attention's matrix has rank <= the feature dimension; softmax's is not capped
    q, k = A.gaussian_qk(64, 4, 3.0, seed=1)
    assert A.numerical_rank(A.linear_attention_matrix(A.elu_features(q), A.elu_features(k))) <= 4
    assert A.numerical_rank(A.softmax_attention_matrix(q, k)) > 4


def test_attention_flops_and_timing_ratio():
    assert A.attention_flops(10, 4) == 4 * 10 * 10 * 4
    assert A.attention_flops(10, 4, 21) == 4 * 10 * 21 * 4 + 4 * 10 * 21
    out = A.timing_ratio(16, 4, "taylor", 2, heads=1, repeats=2)
    assert out["dim"] == 21 and out["t_softmax"] > 0 and out["ratio"] == pytest.approx(out["t_linear"] / out["t_softmax"])


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_multihead_attention_matches_a_per_head_reference(kind):
    torch.manual_seed(0)
    att = A.MultiHeadAttention(8, 2, kind=kind, qk_dim=6).double()
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    outs = []
    for h in range(2):
        q = att.q(x)[..., h * 6:(h + 1) * 6] / 6 ** 0.25
        k = att.k(x)[..., h * 6:(h + 1) * 6] / 6 ** 0.25
        v = att.v(x)[..., h * 4:(h + 1) * 4]
        if kind == "softmax":
            w = torch.softmax(q @ k.transpose(-1, -2), -1)
        else:
            s = A.elu_features(q) @ A.elu_features(k).transpose(-1, -2)
            w = s / s.sum(-1, keepdim=True)
        outs.append(w @ v)
    ref = att.o(torch.cat(outs, -1))
    assert torch.allclose(att(x), ref, atol=1e-12)
    assert att.attention_matrices(x).shape == (3, 2, 5, 5)
    with pytest.raises(ValueError):
        A.MultiHeadAttention(8, 2, kind="other")


def test_mirror_and_topic_sequences():
    m = A.mirror_sequences(5, 8, 10, seed=0)
    assert m.shape == (5, 8) and (m == m[:, ::-1]).all() and m.max() < 10
    t = A.topic_sequences(50, 12, 16, 4, seed=0)
    assert ((t // 4) == (t[:, :1] // 4)).all() and len(np.unique(t[:, 0] // 4)) == 4
    with pytest.raises(ValueError):
        A.mirror_sequences(2, 7, 10, seed=0)


def test_task_data_and_a_short_training_run():
    data = A.task_data("mirror", n_train=64, n_dev=16, n_test=16, length=8, vocab=6, seed=0)
    inp, lab = data["dev"]
    assert inp.shape == (16, 8) and (lab != IGNORE).any() and data["mask_id"] == 6
    assert ((lab == IGNORE) | (lab == torch.from_numpy(A.mirror_sequences(96, 8, 6, 0)[64:80]))).all()
    runs = [A.train_arm(data, kind=kind, qk_dim=None, d=8, heads=2, ffn=16, layers=1, lr=lr, steps=20, batch=8,
                        eval_every=10, patience=None, seed=s) for kind in ("softmax", "linear") for lr in (1e-3, 1e-2)
            for s in (0, 1)]
    assert all(r["steps_run"] == 20 and 0 <= r["test_acc"] <= 1 for r in runs)
    # the best dev checkpoint is restored: the dev CE returned is the best evaluation's
    lr, best = A.select_by_dev([r for r in runs if r["kind"] == "softmax"])
    assert lr in (1e-3, 1e-2) and [r["seed"] for r in best] == [0, 1]
    ranks = A.attention_ranks(runs[0]["model"], inp[:3])
    assert ranks.shape == (1, 3, 2) and (ranks >= 1 - 1e-9).all() and (ranks <= 8 + 1e-9).all()


def test_run_arms_build_model_and_needed_order():
    data = A.task_data("topic", n_train=32, n_dev=8, n_test=8, length=8, vocab=8, topics=2, seed=0)
    kw = dict(d=8, heads=2, ffn=16, layers=1, steps=10, batch=8, eval_every=5, patience=None)
    out = A.run_arms(data, {"soft": ("softmax", None), "lin4": ("linear", 8)}, lrs=[1e-3, 1e-2], seeds=[0, 1], **kw)
    assert set(out) == {"soft", "lin4"} and len(out["lin4"]["all"]) == 4 and len(out["lin4"]["runs"]) == 2
    assert out["lin4"]["runs"][0]["qk_dim"] == 8
    m0 = A.build_model(data, kind="softmax", qk_dim=None, d=8, heads=2, ffn=16, layers=1, seed=0)
    m1 = A.build_model(data, kind="softmax", qk_dim=None, d=8, heads=2, ffn=16, layers=1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters()))
    rows = [{"scheme": "taylor", "order": n, "dim": 5 ** n, "tv": 1.0 / n} for n in (1, 2, 3)]
    assert A.needed_order(rows, "taylor", 0.5) == (2, 25, True)
    assert A.needed_order(rows, "taylor", 0.1) == (3, 125, False)


def test_max_numerical_rank_of_linear_models_is_capped():
    data = A.task_data("mirror", n_train=8, n_dev=4, n_test=4, length=16, vocab=6, seed=0)
    inp = data["test"][0]
    lin = A.build_model(data, kind="linear", qk_dim=3, d=8, heads=2, ffn=16, layers=2, seed=0)
    soft = A.build_model(data, kind="softmax", qk_dim=3, d=8, heads=2, ffn=16, layers=2, seed=0)
    with torch.no_grad():
        for m in (lin, soft):
            for layer in m.encoder.layers:
                layer.attn.q.weight.mul_(20)
    assert A.max_numerical_rank(lin, inp) <= 3
    assert A.max_numerical_rank(soft, inp) > 3
    assert len(A.attention_matrices(lin, inp)) == 2


def test_tv_at():
    rows = [{"scheme": "taylor", "dim": 5, "tv": 0.3}, {"scheme": "performer", "dim": 5, "tv": 0.2}]
    assert A.tv_at(rows, "performer", 5) == 0.2
