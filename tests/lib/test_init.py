"""Tests of kexue.init: the dimension averages of https://kexue.fm/archives/8725 and the truncated
normal of https://kexue.fm/archives/8747."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from kexue.init import FAN_MODES, fan_average, init_dense_, trunc_normal_, truncated_normal_std

dims = st.integers(min_value=1, max_value=100_000)


@pytest.mark.parametrize("m,n", [(1, 1), (64, 256), (256, 64), (768, 3072), (3, 5)])
def test_fan_average_matches_formulas(m, n):
    assert fan_average(m, n, "fan_in") == m
    assert fan_average(m, n, "fan_out") == n
    assert fan_average(m, n, "arith") == pytest.approx((m + n) / 2, rel=1e-15)
    assert fan_average(m, n, "geo") == pytest.approx(math.sqrt(m * n), rel=1e-15)
    assert fan_average(m, n, "quad") == pytest.approx((m * m + n * n) / (m + n), rel=1e-15)


def test_fan_average_at_aspect_ratio_four():
    # the brief's table, m=64, n=256: forward gain m/d for each rule
    got = {mode: 64 / fan_average(64, 256, mode) for mode in FAN_MODES}
    assert got == pytest.approx({"fan_in": 1.0, "fan_out": 0.25, "arith": 0.4, "geo": 0.5,
                                 "quad": 320 / 1088}, rel=1e-12)


@given(m=dims, n=dims)
def test_symmetric_averages_do_not_depend_on_orientation(m, n):
    for mode in ("arith", "geo", "quad"):
        assert fan_average(m, n, mode) == pytest.approx(fan_average(n, m, mode), rel=1e-12)
    assert fan_average(m, n, "fan_in") == fan_average(n, m, "fan_out")


@given(m=dims, n=dims)
def test_inequality_chain(m, n):
    quad, arith, geo = (fan_average(m, n, k) for k in ("quad", "arith", "geo"))
    tol = 1e-12 * quad
    assert quad >= arith - tol and arith >= geo - tol
    # all three lie between min and max, and are equal exactly when m == n
    assert min(m, n) - tol <= geo and quad <= max(m, n) + tol
    if m != n:
        assert quad > arith > geo
    else:
        assert quad == pytest.approx(arith) == pytest.approx(geo)


@settings(max_examples=50)
@given(m=st.integers(1, 5000), n=st.integers(1, 5000))
def test_quad_minimises_per_layer_deviation(m, n):
    def deviation(t):
        return (m * t - 1) ** 2 + (n * t - 1) ** 2

    hi = 2.0 / min(m, n)
    found = optimize.minimize_scalar(deviation, bounds=(0.0, hi), method="bounded",
                                     options={"xatol": 1e-14 * hi}).x
    t_quad = 1.0 / fan_average(m, n, "quad")
    assert t_quad == pytest.approx(found, rel=1e-5)
    # and no other rule does better
    for mode in FAN_MODES:
        assert deviation(t_quad) <= deviation(1.0 / fan_average(m, n, mode)) + 1e-15


@pytest.mark.parametrize("mode", FAN_MODES)
def test_init_dense_empirical_variance_and_orientation(mode):
    m, n = 200, 600  # torch stores (out, in) = (n, m)
    w = torch.empty(n, m, dtype=torch.float64)
    init_dense_(w, mode, gain=1.5, generator=torch.Generator().manual_seed(0))
    target = 1.5 ** 2 / fan_average(m, n, mode)
    # 120k samples: relative std of the sample variance is sqrt(2/120000) = 0.4 %
    assert w.var().item() == pytest.approx(target, rel=0.02)
    assert abs(w.mean().item()) < 5 * math.sqrt(target / w.numel())
    if mode == "fan_in":
        assert w.var().item() == pytest.approx(1.5 ** 2 / m, rel=0.02)


def test_init_dense_is_seeded_and_rejects_bad_input():
    a = init_dense_(torch.empty(8, 4), "geo", generator=torch.Generator().manual_seed(3))
    b = init_dense_(torch.empty(8, 4), "geo", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        init_dense_(torch.empty(3), "geo")
    with pytest.raises(ValueError):
        fan_average(4, 4, "harmonic")
    with pytest.raises(ValueError):
        fan_average(0, 4, "geo")


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0, 3.0])
def test_truncated_normal_std_matches_scipy(k):
    assert truncated_normal_std(k) == pytest.approx(stats.truncnorm(-k, k).std(), rel=1e-12)


def test_truncated_normal_std_bert_value():
    assert 0.02 * truncated_normal_std(2.0) == pytest.approx(0.0176, abs=1e-4)


@pytest.mark.parametrize("std,k,mean", [(0.02, 2.0, 0.0), (1.0, 1.0, 0.5), (0.1, 3.0, -1.0)])
def test_trunc_normal_bounds_and_std(std, k, mean):
    t = torch.empty(200_000, dtype=torch.float64)
    trunc_normal_(t, std=std, k=k, mean=mean, generator=torch.Generator().manual_seed(1))
    assert (t - mean).abs().max().item() <= k * std * (1 + 1e-12)
    # the bounds are hit closely, so truncation really happens at mean ± k·std
    assert (t - mean).abs().max().item() >= 0.99 * k * std
    assert t.std().item() == pytest.approx(std * truncated_normal_std(k), rel=0.01)
    assert t.mean().item() == pytest.approx(mean, abs=5 * std / math.sqrt(t.numel()))


def test_torch_trunc_normal_default_bounds_do_not_truncate_small_std():
    # the pitfall trunc_normal_ exists for: torch's absolute bounds ±2 leave std 0.02 untouched
    t = torch.nn.init.trunc_normal_(torch.empty(200_000, dtype=torch.float64), std=0.02,
                                    generator=torch.Generator().manual_seed(0))
    assert t.std().item() == pytest.approx(0.02, rel=0.01)
    assert not np.isclose(t.std().item(), 0.02 * truncated_normal_std(2.0), rtol=0.01)


# -- the averaging rules in a Transformer's FFN (issue 17) ----------------------------------------
from kexue.init import build_mlm_ffn_rule, init_ffn_  # noqa: E402
from kexue.transformer import BertMLM, FeedForward  # noqa: E402


@pytest.mark.parametrize("mode", FAN_MODES)
def test_init_ffn_draws_exactly_what_init_dense_would(mode):
    model = BertMLM(20, 2, 8, 2, 32, max_len=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_ffn_(model, mode, gain=1.5, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # the slow reference: the same draws, layer by layer
    for layer in model.encoder.layers:
        for lin, (m, n) in ((layer.ffn.fc1, (8, 32)), (layer.ffn.fc2, (32, 8))):
            std = 1.5 / math.sqrt(fan_average(m, n, mode))
            ref = torch.randn(n, m, generator=g) * std
            assert torch.allclose(lin.weight, ref, rtol=1e-6, atol=1e-7)
            assert torch.count_nonzero(lin.bias) == 0
    for k, v in model.state_dict().items():  # nothing outside the FFNs moved
        if ".ffn." not in k:
            assert torch.equal(v, before[k]), k


def test_init_ffn_needs_an_ffn():
    with pytest.raises(ValueError, match="FeedForward"):
        init_ffn_(torch.nn.Linear(3, 4), "geo")


def test_build_mlm_ffn_rule_differs_only_in_the_ffn_scale():
    a = build_mlm_ffn_rule(30, mode="arith", n_layers=2, d=16, heads=2, ffn=64, seq_len=8, seed=5)
    b = build_mlm_ffn_rule(30, mode="quad", n_layers=2, d=16, heads=2, ffn=64, seq_len=8, seed=5)
    sa, sb = a.state_dict(), b.state_dict()
    ratio = math.sqrt(fan_average(16, 64, "quad") / fan_average(16, 64, "arith"))  # std_arith / std_quad
    for k in sa:
        if ".ffn." in k and k.endswith("weight"):
            assert torch.allclose(sa[k], sb[k] * ratio, rtol=1e-5, atol=1e-7), k
        else:
            assert torch.equal(sa[k], sb[k]), k
    # square matrices and embeddings are N(0, 1/d): the sample std of the big ones is near 1/4
    q = sa["encoder.layers.0.attn.q.weight"]
    assert abs(q.std().item() * 4 - 1) < 0.2
    assert isinstance(a.encoder.layers[0].ffn, FeedForward)
