"""kexue.entropy: entropy normalisation by the power transform (https://kexue.fm/archives/8829)."""
import math

import numpy as np
import pytest

from kexue import entropy as E


def _slow_entropy(p):
    return -sum(float(x) * math.log(float(x)) for x in p if x > 0)


def _slow_power(p, g):
    q = [float(x) ** g if x > 0 else 0.0 for x in p]
    s = sum(q)
    return [x / s for x in q]


def _rand_lp(n, count=1, seed=0):
    return E.log_normalize(np.log(np.random.default_rng(seed).random((count, n))))


def test_entropy_matches_loop_and_masks_zeros():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        p = rng.random(n)
        p[rng.random(n) < 0.3] = 0.0
        if p.sum() == 0:
            p[0] = 1.0
        p /= p.sum()
        assert E.entropy(p) == pytest.approx(_slow_entropy(p), abs=1e-12)
        with np.errstate(divide="ignore"):
            assert E.entropy_of_logp(np.log(p)) == pytest.approx(_slow_entropy(p), abs=1e-12)
    assert E.entropy(np.ones(10) / 10) == pytest.approx(math.log(10), abs=1e-12)
    assert E.entropy(np.eye(5)[2]) == 0.0


def test_log_normalize_and_moments():
    x = np.array([[1.0, 2.0, -np.inf, 0.5]])
    lp = E.log_normalize(x)
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-14)
    assert lp[0, 2] == -np.inf
    p = np.exp(lp[0])
    h, m2 = E.log_moments(lp)
    assert h[0] == pytest.approx(_slow_entropy(p), abs=1e-12)
    assert m2[0] == pytest.approx(sum(q * math.log(q) ** 2 for q in p if q > 0), abs=1e-12)
    assert E.entropy_slope(lp)[0] == pytest.approx(h[0] ** 2 - m2[0], abs=1e-12)


def test_power_transform_matches_loop_keeps_order_and_zeros():
    rng = np.random.default_rng(1)
    for k in range(20):
        n = int(rng.integers(2, 30))
        p = rng.random(n)
        p[rng.random(n) < 0.2] = 0.0
        p[0] = max(p[0], 0.1)
        p /= p.sum()
        g = float(rng.uniform(0.05, 8.0))
        with np.errstate(divide="ignore"):
            out = np.exp(E.power_transform(np.log(p), g))
        assert out == pytest.approx(_slow_power(p, g), abs=1e-12)
        assert np.all(out[p == 0] == 0)
        nz = p > 0
        assert np.array_equal(np.argsort(out[nz], kind="stable"), np.argsort(p[nz], kind="stable"))
    # gamma per row, broadcast; gamma = 0 gives the uniform distribution on the support
    lp = _rand_lp(6, count=3)
    out = E.power_transform(lp, np.array([0.0, 1.0, 2.0]))
    assert np.allclose(np.exp(out[0]), 1 / 6, atol=1e-15)
    assert np.allclose(out[1], lp[1], atol=1e-14)
    assert E.entropy_at(lp[:1], 0.0)[0] == pytest.approx(math.log(6), abs=1e-12)


def test_entropy_curve_decreasing_and_limits():
    lp = _rand_lp(100, count=20, seed=2)
    gs = np.linspace(0, 20, 401)
    H = np.stack([E.entropy_at(lp, g) for g in gs])
    assert np.allclose(H[0], math.log(100), atol=1e-12)
    assert np.all(np.diff(H, axis=0) <= 1e-12)
    assert np.all(E.entropy_at(lp, 1e7) < 1e-3)  # near-ties at the top need a large γ


def test_slope_matches_finite_differences_of_H():
    lp = _rand_lp(40, count=10, seed=3)
    eps = 1e-6
    fd = (E.entropy_at(lp, 1 + eps) - E.entropy_at(lp, 1 - eps)) / (2 * eps)
    assert np.allclose(E.entropy_slope(lp), fd, atol=1e-7)
    # the slope is -Var_p(log p)
    p = np.exp(lp)
    var = np.sum(p * lp**2, -1) - np.sum(p * lp, -1) ** 2
    assert np.allclose(E.entropy_slope(lp), -var, atol=1e-12)
    # first-order expansion at gamma = 1 is accurate to O((gamma - 1)^2)
    for d in (1e-2, 1e-3):
        err = np.abs(E.entropy_at(lp, 1 + d) - (E.entropy_of_logp(lp) + E.entropy_slope(lp) * d))
        assert np.all(err < 50 * d**2)
    # dH/dgamma at any gamma = -gamma Var_{p~}(log p) <= 0
    g = 2.5
    fd = (E.entropy_at(lp, g + eps) - E.entropy_at(lp, g - eps)) / (2 * eps)
    q = np.exp(E.power_transform(lp, g))
    varq = np.sum(q * lp**2, -1) - np.sum(q * lp, -1) ** 2
    assert np.allclose(fd, -g * varq, atol=1e-6)


def test_newton_is_sequential_su_iteration_and_newton_on_cumulative_gamma():
    lp = _rand_lp(100, count=1, seed=4)[0]
    target = math.log(30)
    # the article's loop, sequentially, on probabilities
    p = np.exp(lp)
    G = 1.0
    seq = []
    for _ in range(5):
        H = -(p * np.log(p)).sum()
        g = 1 + (target - H) / (H**2 - (p * np.log(p) ** 2).sum())
        p = p**g
        p /= p.sum()
        G *= g
        seq.append(-(p * np.log(p)).sum())
    out = E.newton_normalize(lp, target, iters=5)
    assert np.allclose(out["trace"][1:], seq, atol=1e-10)
    assert out["gamma"] == pytest.approx(G, rel=1e-10)
    assert np.allclose(np.exp(out["logp"]), p, atol=1e-12)
    # Newton's method on H(G) = H*: G_{k+1} = G_k + (H* - H(G_k)) / H'(G_k), H' by finite differences
    Gk, eps = 1.0, 1e-6
    one = E.newton_normalize(lp, target, iters=3)
    for k in range(3):
        h = E.entropy_at(lp, Gk)
        dh = (E.entropy_at(lp, Gk + eps) - E.entropy_at(lp, Gk - eps)) / (2 * eps)
        Gk = Gk + (target - h) / dh
    assert one["gamma"] == pytest.approx(Gk, rel=1e-6)


def test_newton_converges_to_the_bisection_reference_vectorised():
    lp = _rand_lp(100, count=8, seed=5)
    targets = np.log(np.array([5, 10, 20, 30, 40, 60, 80, 90.0]))
    ref = E.solve_gamma(lp, targets)
    assert np.allclose(E.entropy_at(lp, ref), targets, atol=1e-11)
    for variant in ("su", "safe"):
        out = E.newton_normalize(lp, targets, iters=12, variant=variant)
        assert np.allclose(out["gamma"], ref, rtol=1e-8)
        assert np.allclose(out["trace"][-1], targets, atol=1e-10)
        assert out["trace"].shape == (13, 8) and out["steps"].shape == (12, 8)


def test_safe_variant_steps_positive_and_converges_where_su_fails():
    lp = E.random_distributions("zipf", 1000, 6, seed=6)
    target = 0.95 * math.log(1000)
    su = E.newton_normalize(lp, target, iters=1)
    assert np.any(su["steps"] <= 0)  # Su's step overshoots past gamma = 0 for this far, rising target
    out = E.newton_normalize(lp, target, iters=30, variant="safe")
    assert np.all(out["steps"] > 0) and np.allclose(out["trace"][-1], target, atol=1e-9)
    # a near-one-hot row moved far up, and far down: no stall at G = 0
    peaked = E.log_normalize(np.array([[12.0, 0.0, -1.0, 0.5, 0.2, -3.0] + [0.0] * 94]))
    for t in (4.0, 0.001):
        o = E.newton_normalize(peaked, t, iters=60, variant="safe")
        assert np.all(o["steps"] > 0) and abs(o["trace"][-1, 0] - t) < 1e-8
        assert o["gamma"][0] == pytest.approx(E.solve_gamma(peaked, t)[0], rel=1e-6)
    # where Su's first step is valid (inside the open bracket), the first steps agree
    h = E.entropy_of_logp(lp)
    for d in (-0.5, 1e-4):
        a = E.newton_normalize(lp, h + d, iters=1)["steps"][0]
        b = E.newton_normalize(lp, h + d, iters=1, variant="safe")["steps"][0]
        assert np.allclose(a, b, rtol=1e-12)
    with pytest.raises(ValueError):
        E.newton_normalize(lp, 1.0, variant="halley")


def test_newton_with_zeros_and_degenerate_rows():
    p = np.array([0.5, 0.3, 0.0, 0.2, 0.0])
    with np.errstate(divide="ignore"):
        lp = np.log(p)
    out = E.newton_normalize(lp, 0.8, iters=10)
    assert np.all(np.exp(out["logp"])[p == 0] == 0)
    assert out["trace"][-1] == pytest.approx(0.8, abs=1e-10)
    # uniform row: slope 0, gamma stays 1, no nan
    u = np.log(np.full((1, 4), 0.25))
    o2 = E.newton_normalize(u, 1.0, iters=3)
    assert np.all(np.isfinite(o2["logp"])) and o2["gamma"][0] == 1.0


def test_bisection_control_halves_the_bracket():
    lp = _rand_lp(100, count=3, seed=7)
    target = math.log(30)
    ref = E.solve_gamma(lp, target)
    b = E.bisect_gamma(lp, target, iters=30)
    assert np.allclose(b["gamma"], ref, rtol=1e-6)
    b1 = E.bisect_gamma(lp, target, iters=1)
    assert np.allclose(b1["gamma"], 1.0) and b1["trace"].shape == (1, 3)
    # after k steps log G is within 20 * 2^-k (log 2) of the root
    for k in (2, 4, 8):
        bk = E.bisect_gamma(lp, target, iters=k)
        assert np.all(np.abs(np.log2(bk["gamma"]) - np.log2(ref)) <= 20 * 2.0 ** -k + 1e-12)


def test_truncations_match_loops():
    rng = np.random.default_rng(8)
    lp = E.log_normalize(rng.standard_normal((5, 30)) * 2)
    tk = E.truncate_top_k(lp, 4)
    for r in range(5):
        top = set(np.argsort(-lp[r])[:4])
        assert set(np.flatnonzero(np.isfinite(tk[r]))) == top
        assert np.exp(tk[r]).sum() == pytest.approx(1.0, abs=1e-12)
    tp = E.truncate_top_p(lp, 0.7)
    for r in range(5):
        order = np.argsort(-lp[r])
        p = np.exp(lp[r][order])
        m = int(np.searchsorted(np.cumsum(p), 0.7) + 1)  # smallest prefix with mass >= 0.7
        assert set(np.flatnonzero(np.isfinite(tp[r]))) == set(order[:m])
        kept = np.exp(lp[r][order[:m]])
        assert np.allclose(np.exp(tp[r][order[:m]]), kept / kept.sum(), atol=1e-12)
    assert np.all(np.isfinite(E.truncate_top_p(lp, 1e-9)).sum(-1) == 1)


def test_global_gamma_and_sampling():
    lp = E.log_normalize(np.random.default_rng(9).standard_normal((50, 20)) * 3)
    target = 1.5
    g = E.global_gamma_for_mean_entropy(lp, target)
    assert E.entropy_at(lp, g).mean() == pytest.approx(target, abs=1e-8)
    # sampling frequencies match the distribution
    q = E.log_normalize(np.log(np.array([[0.5, 0.3, 0.2]])))
    idx = E.sample(np.repeat(q, 20000, axis=0), seed=0)
    freq = np.bincount(idx, minlength=3) / 20000
    assert np.allclose(freq, [0.5, 0.3, 0.2], atol=0.015)
    ids, lpn = E.entropy_normalized_sample(np.random.default_rng(1).standard_normal((7, 40)), 2.0, iters=8, seed=1)
    assert ids.shape == (7,) and np.allclose(E.entropy_of_logp(lpn), 2.0, atol=1e-8)


def test_random_distributions_families():
    for fam in E.FAMILIES:
        lp = E.random_distributions(fam, 200, 5, seed=0)
        assert lp.shape == (5, 200)
        assert np.allclose(np.exp(lp).sum(-1), 1.0, atol=1e-12)
        assert np.all(np.isfinite(lp))
        h = E.entropy_of_logp(lp)
        assert np.all((h > 0) & (h < math.log(200)))
    assert np.array_equal(E.random_distributions("zipf", 10, 2, seed=3), E.random_distributions("zipf", 10, 2, seed=3))
    with pytest.raises(ValueError):
        E.random_distributions("cauchy", 10, 2)


def test_convergence_study_and_grid():
    lp = _rand_lp(100, count=6, seed=10)
    st = E.convergence_study(lp, math.log(30), iters=5)
    assert st["su"].shape == (6, 6) and st["bisect"].shape == (6, 6)
    assert np.allclose(st["su"][0], np.abs(E.entropy_of_logp(lp) - math.log(30)))
    assert np.allclose(st["su"][0], st["bisect"][0])
    ok = E.converged(st, "su", 5, 1e-3)
    assert ok.dtype == bool and ok.all()
    st["su_pos"][5, 0] = False  # a reversed order never counts as converged
    assert not E.converged(st, "su", 5, 1e-3)[0]
    cells = E.convergence_grid(["zipf", "uniform-random"], [10, 50], [1 / 3, 3.0], count=4, seed=0, iters=3)
    assert len(cells) == 8
    for c in cells:
        assert c["su"].shape == (4, c["rows"])
        assert np.all((c["target"] >= 0.05) & (c["target"] <= math.log(c["n"]) - 0.05))
        assert np.allclose(c["target"], c["h0"] + math.log(c["ratio"]))


def test_mlm_distributions_on_a_tiny_bert():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers import BertConfig, BertForPreTraining

    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    model = BertForPreTraining(cfg).eval()

    class Tok:
        all_special_ids = [0, 1, 2, 3, 4]
        mask_token_id = 4

        def __call__(self, text, truncation=True, max_length=64):
            return {"input_ids": [2] + [5 + (ord(c) % 25) for c in text][: max_length - 2] + [3]}

    texts = ["abc", "hello"]
    d = E.mlm_distributions(model, Tok(), texts, batch_size=3)
    assert d["logp"].shape == (8, 30) and d["logp"].dtype == np.float64
    assert np.allclose(np.exp(d["logp"]).sum(-1), 1.0)
    assert list(d["text"]) == [0, 0, 0, 1, 1, 1, 1, 1]
    # the first position of "abc", masked, scored by a direct forward pass
    ids = torch.tensor([[2, 4, 5 + ord("b") % 25, 5 + ord("c") % 25, 3]])
    with torch.no_grad():
        ref = torch.log_softmax(model(input_ids=ids).prediction_logits[0, 1].double(), -1).numpy()
    assert np.allclose(d["logp"][0], ref, atol=1e-5)
    assert d["true"][0] == 5 + ord("a") % 25


def test_grid_share_group_means_and_sampler_streams():
    cells = E.convergence_grid(["zipf"], [20], [1 / 3, 3.0], count=5, seed=1, iters=4)
    manual = np.concatenate([E.converged(c, "su", 4, 0.01) for c in cells]).mean()
    assert E.grid_share(cells, "su", 4, 0.01) == pytest.approx(manual)
    assert E.grid_share(cells, "su", 4, 0.01, ratios=[3.0]) == pytest.approx(E.converged(cells[1], "su", 4, 0.01).mean())
    assert 0.0 <= E.grid_nonpositive_share(cells) <= 1.0
    assert np.allclose(E.group_means([1, 2, 3, 5], [7, 7, 2, 2]), [4.0, 1.5])
    rng = np.random.default_rng(2)
    lp = E.log_normalize(rng.standard_normal((30, 60)) * 3)
    true = rng.integers(0, 60, 30)
    s = E.sampler_streams(lp, true, top_p=0.8, top_k=5, iters=10)
    assert np.allclose(s["raw"]["acc"], np.exp(lp[np.arange(30), true]))
    for name in ("top-p", "top-k"):
        h = s["targets"][name]["H"]
        assert h == pytest.approx(s[name]["H"].mean())
        assert np.allclose(s[f"entnorm@{name}"]["H"], h, atol=1e-8)
        assert s[f"temp@{name}"]["H"].mean() == pytest.approx(h, abs=1e-6)
    assert np.all(s["raw"]["tail"] <= 0.01 + 1e-12)  # outside the 0.99 nucleus: at most 1 % of the mass
    assert np.all(s["top-p"]["tail"] == 0)  # the 0.8 nucleus lies inside the 0.99 nucleus


def test_seed_shares_and_grouped_intervals():
    grids = [E.convergence_grid(["zipf"], [20], [3.0], count=4, seed=s, iters=3) for s in (0, 1)]
    assert np.allclose(E.seed_shares(grids, "su", 3, 0.01), [E.grid_share(g, "su", 3, 0.01) for g in grids])
    assert np.allclose(E.seed_nonpositive_shares(grids), [E.grid_nonpositive_share(g) for g in grids])
    x = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    grp = np.array([0, 0, 1, 1, 2, 2])
    m, lo, hi = E.grouped_interval(x, grp, n_resamples=200)
    assert m == pytest.approx(0.5) and lo <= m <= hi
    d, lo, hi = E.grouped_paired_interval(x, np.zeros(6), grp, n_resamples=200)
    assert d == pytest.approx(0.5) and lo <= d <= hi
