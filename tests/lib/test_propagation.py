"""Tests of kexue.propagation (https://kexue.fm/archives/8725, chapter xavier-averaging)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kexue import propagation as P
from kexue.init import FAN_MODES, fan_average


# -- closed forms ---------------------------------------------------------------------------------
def test_closed_form_gains_reproduce_the_briefs_table():
    # n/m = 4: forward, backward, m→n→m gain, deviation (computed by hand from the formulas)
    expect = {"fan_in": (1.0, 4.0, 4.0, 9.0), "geo": (0.5, 2.0, 1.0, 1.25),
              "arith": (0.4, 1.6, 0.64, 0.72), "fan_out": (0.25, 1.0, 0.25, 0.5625),
              "quad": (5 / 17, 20 / 17, 100 / 289, (5 / 17 - 1) ** 2 + (20 / 17 - 1) ** 2)}
    for mode, row in expect.items():
        g = P.closed_form_gains(768, 3072, mode)
        got = (g["forward"], g["backward"], g["composition"], g["deviation"])
        assert got == pytest.approx(row, rel=1e-12), mode
    assert P.closed_form_gains(768, 3072, "quad")["forward"] == pytest.approx(0.294, abs=5e-4)


@given(m=st.integers(1, 10_000), n=st.integers(1, 10_000))
def test_closed_form_identities(m, n):
    for mode in FAN_MODES:
        g = P.closed_form_gains(m, n, mode)
        assert g["composition"] == pytest.approx(g["forward"] * g["backward"], rel=1e-12)
        assert g["backward"] / g["forward"] == pytest.approx(n / m, rel=1e-12)
    assert P.closed_form_gains(m, n, "geo")["composition"] == pytest.approx(1.0, rel=1e-12)
    assert P.closed_form_gains(m, n, "arith")["composition"] == pytest.approx(
        4 * m * n / (m + n) ** 2, rel=1e-12)
    dev = {mode: P.closed_form_gains(m, n, mode)["deviation"] for mode in FAN_MODES}
    assert min(dev.values()) == pytest.approx(dev["quad"], rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("m,n", [(64, 256), (256, 64), (1, 16), (768, 3072), (100, 101)])
def test_grid_argmin_matches_closed_form(m, n):
    assert P.grid_argmin_variance(m, n) == pytest.approx((m + n) / (m * m + n * n), rel=1e-4)


def test_layer_deviation_vectorised():
    t = np.array([0.0, 1 / 64, 1 / 256])
    assert P.layer_deviation(64, 256, t) == pytest.approx([2.0, 9.0, (0.25 - 1) ** 2])


# -- builders -------------------------------------------------------------------------------------
def _var(layer):
    return layer.weight.detach().double().var().item()


@pytest.mark.parametrize("mode", FAN_MODES)
def test_composition_shared_and_own_variances(mode):
    m, n = 200, 800
    gen = torch.Generator().manual_seed(0)
    shared = P.composition(m, n, mode, "relu", shared=True, generator=gen)
    own = P.composition(m, n, mode, "linear", shared=False, generator=gen)
    assert isinstance(shared[1], nn.ReLU) and isinstance(own[1], nn.Identity)
    assert shared[0].weight.shape == (n, m) and shared[2].weight.shape == (m, n)
    t = 1 / fan_average(m, n, mode)
    assert _var(shared[0]) == pytest.approx(t, rel=0.03)
    assert _var(shared[2]) == pytest.approx(t, rel=0.03)
    assert _var(own[2]) == pytest.approx(1 / fan_average(n, m, mode), rel=0.03)


def test_alternating_widths_and_mlp_structure():
    w = P.alternating_widths(4, 8, 5)
    assert w == [4, 8, 4, 8, 4, 8]
    model = P.alternating_mlp(w + [3], "tanh", "fan_in", generator=torch.Generator().manual_seed(0))
    linears = [mod for mod in model if isinstance(mod, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == list(zip(w + [3], (w + [3])[1:]))
    assert sum(isinstance(mod, nn.Tanh) for mod in model) == len(linears) - 1
    assert isinstance(model[-1], nn.Linear)
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in linears)
    with pytest.raises(ValueError):
        P.alternating_mlp(w, "tanh", "xavier")
    with pytest.raises(ValueError):
        P.alternating_mlp(w, "swish", "geo")


@pytest.mark.parametrize("mode", FAN_MODES)
def test_alternating_mlp_layer_variances(mode):
    model = P.alternating_mlp([300, 900, 300], "linear", mode, gain=2.0, bias=False,
                              generator=torch.Generator().manual_seed(1))
    assert _var(model[0]) == pytest.approx(4.0 / fan_average(300, 900, mode), rel=0.03)
    assert _var(model[2]) == pytest.approx(4.0 / fan_average(900, 300, mode), rel=0.03)


def test_alternating_mlp_is_seeded():
    a = P.alternating_mlp([5, 7, 5], generator=torch.Generator().manual_seed(4))
    b = P.alternating_mlp([5, 7, 5], generator=torch.Generator().manual_seed(4))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# -- Monte-Carlo gains against brute force ----------------------------------------------------------
def test_variance_gain_matches_explicit_matrix_products():
    gen = torch.Generator().manual_seed(0)
    lin1 = nn.Linear(6, 9, bias=False).double()
    lin2 = nn.Linear(9, 6, bias=False).double()
    layers = nn.Sequential(lin1, lin2)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    g = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    W1, W2 = lin1.weight.detach().T, lin2.weight.detach().T  # the article's (in × out) matrices
    y = x @ W1 @ W2
    gx = g @ W2.T @ W1.T
    fwd = P.variance_gain(layers, x, "forward", g=g)
    bwd = P.variance_gain(layers, x, "backward", g=g)
    assert fwd == pytest.approx((y ** 2).mean().item() / (x ** 2).mean().item(), rel=1e-12)
    assert bwd == pytest.approx((gx ** 2).mean().item() / (g ** 2).mean().item(), rel=1e-12)
    with pytest.raises(ValueError):
        P.variance_gain(layers, x, "sideways")


@pytest.mark.parametrize("mode", FAN_MODES)
def test_monte_carlo_single_layer_gains_near_m_t_and_n_t(mode):
    m, n = 128, 512
    mc = P.monte_carlo_gains(lambda gen: P.make_linear(m, n, mode, generator=gen), m,
                             batch=2048, repeats=4, seed=0)
    cf = P.closed_form_gains(m, n, mode)
    assert mc["forward"].shape == (4,)
    assert mc["forward"].mean() == pytest.approx(cf["forward"], rel=0.03)
    assert mc["backward"].mean() == pytest.approx(cf["backward"], rel=0.03)


def test_monte_carlo_relu_composition_halves_the_gain():
    m, n = 128, 512
    mc = P.monte_carlo_gains(lambda gen: P.composition(m, n, "geo", "relu", generator=gen), m,
                             batch=2048, repeats=6, seed=1)
    assert mc["forward"].mean() == pytest.approx(0.5, rel=0.05)
    assert mc["backward"].mean() == pytest.approx(0.5, rel=0.05)


def test_monte_carlo_gains_are_seeded():
    def build(gen):
        return P.composition(16, 32, "arith", generator=gen)

    a = P.monte_carlo_gains(build, 16, batch=64, repeats=3, seed=5)
    b = P.monte_carlo_gains(build, 16, batch=64, repeats=3, seed=5)
    assert np.array_equal(a["forward"], b["forward"]) and np.array_equal(a["backward"], b["backward"])


# -- depth profiles -------------------------------------------------------------------------------
def test_moment_profile_matches_manual_backprop():
    gen = torch.Generator().manual_seed(2)
    model = P.alternating_mlp([4, 7, 4, 7], "tanh", "geo", generator=gen).double()
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(30, 7, generator=gen, dtype=torch.float64)
    fwd, bwd = P.moment_profile(model, x, g=g)
    lins = [mod for mod in model if isinstance(mod, nn.Linear)]
    # forward by hand: h_k = tanh(h_{k-1}) W_k + b_k (no tanh on the input)
    hs, a = [x], x
    for k, lin in enumerate(lins):
        h = a @ lin.weight.detach().T + lin.bias.detach()
        hs.append(h)
        a = torch.tanh(h)
    # backward by hand: ∂l/∂h_{k-1} = (∂l/∂h_k W_kᵀ) ⊙ tanh'(h_{k-1}), except at the input
    grads = [None] * len(hs)
    grads[-1] = g
    for k in range(len(lins), 0, -1):
        up = grads[k] @ lins[k - 1].weight.detach()
        grads[k - 1] = up if k == 1 else up * (1 - torch.tanh(hs[k - 1]) ** 2)
    assert fwd == pytest.approx([(h ** 2).mean().item() for h in hs], rel=1e-12)
    assert bwd == pytest.approx([(gr ** 2).mean().item() for gr in grads], rel=1e-12)


def test_linear_profile_fan_in_fan_out_geo_share_the_end_to_end_map():
    # with the same draws, each (64→256→64) block is scaled by 1/128 under all three rules
    w = P.alternating_widths(16, 64, 6)
    x = torch.randn(10, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    outs = [P.alternating_mlp(w, "linear", mode, bias=False,
                              generator=torch.Generator().manual_seed(9)).double()(x)
            for mode in ("fan_in", "fan_out", "geo")]
    for other in outs[1:]:
        assert ((other - outs[0]).norm() / outs[0].norm()).item() < 1e-5
    arith = P.alternating_mlp(w, "linear", "arith", bias=False,
                              generator=torch.Generator().manual_seed(9)).double()(x)
    assert ((arith - outs[0]).norm() / outs[0].norm()).item() > 0.3  # a symmetric mean ≠ 1/√(mn) does not


def test_profile_over_draws_linear_arith_decays_like_the_closed_form():
    w = P.alternating_widths(64, 256, 6)
    prof = P.profile_over_draws(w, "linear", "arith", batch=512, repeats=8, seed=0)
    assert prof["forward"].shape == (8, 7) and prof["backward"].shape == (8, 7)
    r = P.end_to_end_ratios(prof)
    assert r["forward"] == pytest.approx(0.64 ** 3, rel=0.1)
    assert r["backward"] == pytest.approx(0.64 ** 3, rel=0.1)
    # per-layer: the 64→256 layer scales forward by 0.4, the 256→64 one by 1.6
    f = prof["forward"].mean(axis=0)
    assert f[1] / f[0] == pytest.approx(0.4, rel=0.05) and f[2] / f[1] == pytest.approx(1.6, rel=0.1)


def test_end_to_end_ratios_reads_the_ends():
    prof = {"forward": np.array([[2.0, 1.0, 4.0], [2.0, 3.0, 8.0]]),
            "backward": np.array([[0.5, 9.0, 1.0], [1.5, 9.0, 1.0]])}
    assert P.end_to_end_ratios(prof) == {"forward": 3.0, "backward": 1.0}


def test_moment_profile_requires_linear_output():
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    with pytest.raises(ValueError):
        P.moment_profile(model, torch.randn(4, 3))
    assert math.isfinite(P.moment_profile(nn.Sequential(nn.Linear(3, 2)), torch.randn(4, 3))[0][1])


def test_device_argument_keeps_the_cpu_numbers():
    """device="cpu" is the default path: same draws, same gains and profiles (chapter xavier-averaging)."""
    build = lambda gen: P.composition(16, 32, "geo", generator=gen)  # noqa: E731
    a = P.monte_carlo_gains(build, 16, batch=32, repeats=2, seed=3)
    b = P.monte_carlo_gains(build, 16, batch=32, repeats=2, seed=3, device="cpu")
    assert np.array_equal(a["forward"], b["forward"]) and np.array_equal(a["backward"], b["backward"])
    w = P.alternating_widths(8, 16, 4)
    pa = P.profile_over_draws(w, "tanh", "arith", batch=16, repeats=2, seed=1)
    pb = P.profile_over_draws(w, "tanh", "arith", batch=16, repeats=2, seed=1, device="cpu")
    assert np.array_equal(pa["forward"], pb["forward"]) and np.array_equal(pa["backward"], pb["backward"])


# -- training studies (issue 17) --------------------------------------------------------------------
def test_alternating_mlp_io_mode_changes_only_the_outer_layers():
    widths = [2, 16, 64, 16, 3]
    a = P.alternating_mlp(widths, "tanh", "quad", gain=2.0, generator=torch.Generator().manual_seed(1))
    b = P.alternating_mlp(widths, "tanh", "quad", gain=2.0, io_mode="fan_in",
                          generator=torch.Generator().manual_seed(1))
    lin_a = [m for m in a if isinstance(m, torch.nn.Linear)]
    lin_b = [m for m in b if isinstance(m, torch.nn.Linear)]
    for k, (la, lb) in enumerate(zip(lin_a, lin_b)):
        m, n = widths[k], widths[k + 1]
        if k in (1, 2):
            assert torch.equal(la.weight, lb.weight)
        else:  # same draws, rescaled: first layer gain² / m, last layer 1 / m
            g = 2.0 if k == 0 else 1.0
            want = (g / math.sqrt(m)) / (2.0 / math.sqrt(fan_average(m, n, "quad")))
            assert torch.allclose(lb.weight, la.weight * want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError):
        P.alternating_mlp(widths, "tanh", "geo", io_mode="nope")


def test_two_spirals_geometry():
    X, y = P.two_spirals(2000, turns=3.0, noise=0.0, seed=4)
    assert X.shape == (2000, 2) and X.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == {0, 1} and abs(y.float().mean().item() - 0.5) < 0.05
    x = X.double().numpy()
    r = np.hypot(x[:, 0], x[:, 1]) / 2
    assert r.max() <= 1 + 1e-6
    # the angle is 2π·turns·r + π·y modulo 2π (slow reference: one point at a time)
    for i in range(0, 2000, 97):
        want = (2 * math.pi * 3.0 * r[i] + math.pi * y[i].item()) % (2 * math.pi)
        got = math.atan2(x[i, 1], x[i, 0]) % (2 * math.pi)
        d = abs(want - got)
        assert min(d, 2 * math.pi - d) < 1e-4
    assert abs(float((x ** 2).mean()) - 1.0) < 0.1
    X2, _ = P.two_spirals(2000, turns=3.0, noise=0.0, seed=4)
    assert torch.equal(X, X2)


def test_spirals_split_is_independent_draws():
    d = P.spirals_split(50, 20, 30, seed=7)
    assert d["X_train"].shape == (50, 2) and d["X_val"].shape == (20, 2) and d["X_test"].shape == (30, 2)
    assert torch.equal(d["X_val"], P.two_spirals(20, seed=8)[0])
    assert torch.equal(d["X_test"], P.two_spirals(30, seed=9)[0])


def test_train_early_stopped_restores_the_best_validation_checkpoint():
    from kexue.train import accuracy
    data = P.spirals_split(200, 100, 100, turns=0.5, seed=1)
    model = P.alternating_mlp([2, 16, 2], "tanh", "geo", generator=torch.Generator().manual_seed(0))
    r = P.train_early_stopped(model, data, lr=1e-2, steps=60, batch_size=32, eval_every=10, seed=0)
    assert r["val_acc"] == accuracy(model, data["X_val"], data["y_val"])
    assert r["test_acc"] == accuracy(model, data["X_test"], data["y_test"])
    assert r["best_step"] % 10 == 0 and 10 <= r["best_step"] <= 60
    assert r["val_acc"] > 0.6  # half a turn is nearly linear


def test_rule_lr_grid_and_the_lr_chosen_on_validation():
    data = P.spirals_split(100, 50, 50, turns=0.5, seed=2)
    runs = P.rule_lr_grid([2, 8, 4, 2], "relu", ("arith", "geo"), data, lrs=[1e-3, 1e-2], seeds=[0, 1],
                          steps=20, batch_size=25, eval_every=10)
    assert set(runs) == {"arith", "geo"} and all(len(v) == 4 for v in runs.values())
    lr, vals = P.at_chosen_lr(runs["geo"])
    means = {l: np.mean([r["val_acc"] for r in runs["geo"] if r["lr"] == l]) for l in (1e-3, 1e-2)}
    best = max(means.values())
    assert means[lr] == best and (lr == 1e-3 or means[1e-3] < best)  # ties go to the smaller lr
    assert vals == [r["test_acc"] for r in sorted((r for r in runs["geo"] if r["lr"] == lr), key=lambda r: r["seed"])]
    # the same seed gives the same draws under every rule, rescaled
    m1 = P.alternating_mlp([2, 8, 4, 2], "relu", "arith", generator=torch.Generator().manual_seed(0))
    m2 = P.alternating_mlp([2, 8, 4, 2], "relu", "geo", generator=torch.Generator().manual_seed(0))
    w1, w2 = m1[2].weight, m2[2].weight
    assert torch.allclose(w1 / w2, torch.full_like(w1, math.sqrt(fan_average(8, 4, "geo") / fan_average(8, 4, "arith"))),
                          rtol=1e-5)


def test_default_not_beaten_against_a_hand_computation():
    from scipy import stats as st
    vals = {"arith": [1.0, 1.2, 0.9, 1.1], "geo": [0.9, 1.0, 0.9, 1.0], "quad": [1.5, 1.6, 1.4, 1.7]}
    out = P.default_not_beaten(vals)
    for k in ("geo", "quad"):
        d = np.array(vals["arith"]) - np.array(vals[k])
        half = st.t.ppf(0.95, 3) * d.std(ddof=1) / 2
        assert out["gains"][k] == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    pooled = math.sqrt(np.mean([np.var(v, ddof=1) for v in vals.values()]))
    assert out["delta"] == pytest.approx(pooled)
    assert out["worst"] == "geo"
    assert out["excess"] == pytest.approx(out["gains"]["geo"][2] - pooled)
    with pytest.raises(ValueError):
        P.default_not_beaten({"geo": [1, 2]})
    with pytest.raises(ValueError):
        P.default_not_beaten({"arith": [1, 2], "geo": [1, 2, 3]})
