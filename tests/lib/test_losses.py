"""kexue.losses: InfoNCE / FlatNCE against slow per-row references (chapter flatnce, archive 8586)."""
import math

import numpy as np
import pytest
import torch

from kexue import losses as L


def _rows(n=6, K=9, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, K, generator=g, dtype=torch.float64) * scale
    pos = torch.randint(0, K, (n,), generator=g)
    return s, pos


def _ref_rows(s, pos):
    """Per-row loops with math.exp / math.log."""
    out = []
    for r, t in zip(s.tolist(), pos.tolist()):
        xi = sum(math.exp(v - r[t]) for i, v in enumerate(r) if i != t)
        lse = math.log(sum(math.exp(v) for v in r))
        lse_neg = math.log(sum(math.exp(v) for i, v in enumerate(r) if i != t))
        out.append((xi, lse - r[t], lse_neg - r[t]))
    return out


def test_values_match_reference():
    s, pos = _rows()
    ref = _ref_rows(s, pos)
    assert torch.allclose(L.xi(s, pos), torch.tensor([r[0] for r in ref], dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(L.infonce(s, pos, "none"), torch.tensor([r[1] for r in ref], dtype=torch.float64), rtol=1e-12)
    assert torch.allclose(L.flatnce(s, pos, "none"), torch.tensor([r[2] for r in ref], dtype=torch.float64), rtol=1e-12,
                          atol=1e-12)
    # log(1 + ξ) = CE, and the masked-logsumexp form equals log ξ
    assert torch.allclose(L.infonce(s, pos, "none"), torch.log1p(L.xi(s, pos)), rtol=1e-12)
    assert torch.allclose(L.flatnce(s, pos, "none"), torch.log(L.xi(s, pos)), rtol=1e-12, atol=1e-12)
    assert torch.allclose(L.infonce_naive(s, pos, "none"), L.infonce(s, pos, "none"), rtol=1e-10)
    assert torch.allclose(L.flatnce_sg(s, pos, "none"), torch.ones(len(s), dtype=torch.float64))


def test_reductions_and_errors():
    s, pos = _rows()
    assert torch.isclose(L.flatnce(s, pos), L.flatnce(s, pos, "none").mean())
    assert torch.isclose(L.flatnce(s, pos, "sum"), L.flatnce(s, pos, "none").sum())
    with pytest.raises(ValueError):
        L.flatnce(s, pos, "max")
    with pytest.raises(ValueError):
        L.infonce(s[:, :1], torch.zeros(len(s), dtype=torch.long))


def test_flatnce_gradient_is_rescaled_ce_gradient():
    for seed in range(5):
        s, pos = _rows(n=8, K=7, seed=seed)
        g_ce = L.score_grad(L.infonce, s, pos)
        g_f = L.score_grad(L.flatnce, s, pos)
        g_sg = L.score_grad(L.flatnce_sg, s, pos)
        x = L.xi(s, pos)
        assert torch.allclose(g_f, ((1 + x) / x)[:, None] * g_ce, rtol=1e-10, atol=1e-12)
        assert torch.allclose(g_sg, g_f, rtol=1e-10, atol=1e-12)
        cos = torch.nn.functional.cosine_similarity(g_f, g_ce, dim=1)
        assert float(cos.min()) > 1 - 1e-12
        # closed forms: CE: p - onehot; FlatNCE: -1 at t, softmax over the negatives elsewhere
        p = torch.softmax(s, 1)
        oh = torch.nn.functional.one_hot(pos, s.shape[1]).double()
        assert torch.allclose(g_ce, p - oh, atol=1e-14)
        q = torch.softmax(s.masked_fill(oh.bool(), float("-inf")), 1)
        assert torch.allclose(g_f, q - oh, atol=1e-14)


def test_in_batch_scores_against_loops():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    s, pos = L.in_batch_scores(z1, z2, tau=0.1)
    Z = torch.cat([z1, z2])
    assert s.shape == (6, 6) and pos.tolist() == [3, 4, 5, 0, 1, 2]
    for i in range(6):
        for j in range(6):
            if i == j:
                assert s[i, j] == float("-inf")
            else:
                c = float(Z[i] @ Z[j] / (Z[i].norm() * Z[j].norm()))
                assert abs(float(s[i, j]) - c / 0.1) < 1e-12
    # K = 2B - 1 candidates, 2B - 2 negatives: ξ sums over 4 finite terms
    ref = [sum(math.exp(float(s[i, j] - s[i, pos[i]])) for j in range(6) if j not in (i, int(pos[i]))) for i in range(6)]
    assert np.allclose(L.xi(s, pos).numpy(), ref, rtol=1e-12)
    # the masked diagonal gets no gradient
    assert torch.all(L.score_grad(L.flatnce, s, pos).diagonal() == 0)


def test_rounding_report_float32_failure_mode():
    K = 16
    gaps = [0.0, 5.0, 10.0, 22.0, 25.0, 30.0]
    s, pos = L.gap_scores(K, gaps)
    r = L.rounding_report(s, pos)
    assert torch.allclose(r["xi"], (K - 1) * torch.exp(-torch.tensor(gaps, dtype=torch.float64)), rtol=1e-12)
    big = torch.tensor(gaps) >= 22
    # float32: p_t rounds to 1 -> the positive's gradient is exactly 0 and the loss is exactly 0
    assert bool(r["pos_zero"][big].all()) and not bool(r["pos_zero"][~big].any())
    assert bool((r["loss32"][big] == 0).all()) and bool((r["gpos_err"][big] == 1).all())
    # ... while float64 keeps -ξ/(1+ξ)
    assert torch.allclose(r["gpos64"], -r["xi"] / (1 + r["xi"]), rtol=1e-10)
    # the float32 row sum of the CE gradient is then ξ, not 0
    assert torch.allclose(r["gsum32"][big], r["xi"][big], rtol=1e-6)
    # FlatNCE stays accurate in float32 at every gap
    assert float(r["flat_err"].max()) < 1e-5 and float(r["fneg_err"].max()) < 1e-5
    assert bool((r["fpos32"] == -1).all())


def test_rounding_report_float64_inputs_are_rounded_first():
    s, pos = _rows(n=4, K=5, seed=3)
    r = L.rounding_report(s, pos)
    r32 = L.rounding_report(s.float(), pos)
    for k in ("xi", "loss32", "loss64", "gpos32", "gpos64"):
        assert torch.equal(r[k], r32[k])


def test_rel_err():
    a = torch.tensor([1.0, 0.0, 2.0, 0.0], dtype=torch.float64)
    e = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    assert L.rel_err(a, e).tolist() == [0.0, 1.0, 1.0, 0.0]
