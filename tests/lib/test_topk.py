"""kexue.topk: smooth approximations of Top-k (https://kexue.fm/archives/10373, chapter topk-smooth)."""
import math

import numpy as np
import pytest
import torch

from kexue import topk as T

F64 = torch.float64


def _x(rows, n, scale=1.0, seed=0):
    return scale * torch.randn(rows, n, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_hard_topk_example():
    assert T.hard_topk(torch.tensor([3.0, 2, 1, 4]), 2).tolist() == [1, 0, 0, 1]


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9])
def test_grad_topk_matches_brute_force(k):
    x = _x(6, 10, seed=k)
    bf = torch.tensor(np.stack([T.grad_topk_bruteforce(r, k) for r in x.numpy()]))
    # the recursion loses digits as k nears n (the article's warning): 1e-9 at k = 9 of 10
    assert torch.allclose(T.grad_topk(x, k), bf, atol=1e-12 if k <= 5 else 1e-7, rtol=0)
    assert torch.allclose(T.grad_topk_dp(x, k), bf, atol=1e-13, rtol=0)


def test_bruteforce_is_gradient_of_log_z():
    x = _x(1, 7, seed=3)[0].requires_grad_(True)
    import itertools
    s = torch.stack([x[list(c)].sum() for c in itertools.combinations(range(7), 3)])
    (g,) = torch.autograd.grad(torch.logsumexp(s, 0), x)
    assert np.allclose(g.numpy(), T.grad_topk_bruteforce(x.detach().numpy(), 3), atol=1e-14)


def test_grad_topk_dp_stable_at_large_scale():
    x = _x(20, 100, scale=50, seed=1)
    for k in (10, 50, 90):
        p = T.grad_topk_dp(x, k)
        assert torch.isfinite(p).all()
        assert torch.allclose(p.sum(-1), torch.full((20,), float(k), dtype=F64), atol=1e-9)
        assert p.min() >= 0 and p.max() <= 1 + 1e-9


def test_grad_topk_recursion_breaks_at_large_scale():
    p = T.grad_topk(_x(50, 100, scale=50, seed=2), 10)
    assert T.failure_mask(p, 10, T.grad_topk_dp(_x(50, 100, scale=50, seed=2), 10)).mean() > 0.5


@pytest.mark.parametrize("fn", [T.thre_topk_exp, T.grad_topk, T.grad_topk_dp])
def test_k1_is_softmax(fn):
    x = _x(20, 13, scale=3, seed=4)
    assert torch.allclose(fn(x, 1), torch.softmax(x, -1), atol=1e-12, rtol=0)


def test_smooth_k1_is_softmax_only_while_the_top_weight_is_at_most_half():
    """The article says the smooth-f ThreTopK at k = 1 is softmax. With m = 0 entries above λ it is
    (λ = logsumexp x − log 2), and that m is valid iff max softmax ≤ 1/2. Otherwise m = 1:
    λ = (x_1 + log S)/2 with S = Σ_{i>1} e^{x_i}, and p_i = e^{x_i} / (2√(S e^{x_1})) for i > 1."""
    x = _x(400, 13, scale=3, seed=4)
    sm = torch.softmax(x, -1)
    p, lam, _ = T.thre_topk_smooth(x, 1, return_info=True)
    low = sm.max(-1).values <= 0.5
    assert low.any() and (~low).any()
    assert torch.allclose(p[low], sm[low], atol=1e-12, rtol=0)
    xs = x[~low].sort(-1, descending=True).values
    log_s = torch.logsumexp(xs[:, 1:], -1)
    assert torch.allclose(lam[~low], (xs[:, 0] + log_s) / 2, atol=1e-12)
    clear = sm.max(-1).values > 0.55
    assert ((p[clear] - sm[clear]).abs().max(-1).values > 1e-4).all()


@pytest.mark.parametrize("fn", [T.thre_topk_exp, T.thre_topk_smooth, T.thre_topk_sigmoid, T.grad_topk_dp,
                                T.iterative_soft_kmax])
def test_sum_k_and_shift_invariance(fn):
    for k in (1, 3, 6, 9):
        x = _x(30, 10, scale=4, seed=k)
        p = fn(x, k)
        assert torch.allclose(p.sum(-1), torch.full((30,), float(k), dtype=F64), atol=1e-9)
        assert torch.allclose(fn(x + 11.5, k), p, atol=1e-9)


@pytest.mark.parametrize("fn", [T.thre_topk_exp, T.thre_topk_smooth, T.thre_topk_sigmoid])
def test_threshold_equation_and_properties(fn):
    for k in (1, 4, 7):
        c = T.check_properties(fn, _x(200, 10, scale=20, seed=k), k)
        assert not any(c[key].any() for key in ("sum_bad", "bound_bad", "order_bad", "shift_bad"))


def test_smooth_f_is_c1_and_s_shaped():
    t = torch.tensor([-1e-7, 0.0, 1e-7], dtype=F64)
    f = T.smooth_f(t)
    assert abs(f[1] - 0.5) < 1e-15 and abs(f[2] - f[0] - 1e-7) < 1e-12   # slope 1/2 both sides
    tt = torch.linspace(-30, 30, 601, dtype=F64)
    assert (T.smooth_f(tt).diff() > 0).all() and T.smooth_f(tt)[0] < 1e-13 and 1 - T.smooth_f(tt)[-1] < 1e-13


def test_smooth_lambda_below_every_entry_when_k_over_half():
    x = torch.zeros(1, 4, dtype=F64)
    p, lam, nv = T.thre_topk_smooth(x, 3, return_info=True)
    assert nv.item() >= 1 and abs(lam.item() + math.log(2)) < 1e-12
    assert torch.allclose(p, torch.full_like(p, 0.75))


def test_closed_forms_solve_their_equations_by_bisection():
    x = _x(10, 12, scale=3, seed=7)
    for k in (2, 5):
        for fn, f in ((T.thre_topk_exp, lambda t: torch.clamp(torch.exp(t), max=1)), (T.thre_topk_smooth, T.smooth_f)):
            _, lam, _ = fn(x, k, return_info=True)
            lo, hi = x.min(-1).values - 50, x.max(-1).values + 50
            for _ in range(200):
                mid = (lo + hi) / 2
                big = f(x - mid[:, None]).sum(-1) > k
                lo, hi = torch.where(big, mid, lo), torch.where(big, hi, mid)
            assert torch.allclose(lam, (lo + hi) / 2, atol=1e-10)


def test_ties_pick_a_valid_threshold():
    x = torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=F64)
    for fn in (T.thre_topk_exp, T.thre_topk_smooth):
        for k in (1, 2, 3, 4):
            p, _, nv = fn(x, k, return_info=True)
            assert (nv >= 1).all()
            assert torch.allclose(p.sum(-1), torch.full((2,), float(k), dtype=F64), atol=1e-12)
            assert torch.allclose(p[:, 0], p[:, 1]) and torch.allclose(p[:, 1], p[:, 2])
    assert torch.allclose(T.thre_topk_exp(x[1:], 2), torch.full((1, 5), 0.4, dtype=F64))


def test_sigmoid_implicit_gradient_gradcheck():
    x = _x(3, 8, scale=2, seed=5).requires_grad_(True)
    for k in (1, 3, 6):
        assert torch.autograd.gradcheck(lambda v: T.thre_topk_sigmoid(v, k, iters=80), (x,), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_sigmoid_gradient_modes():
    x = _x(4, 9, scale=2, seed=6)
    w = _x(4, 9, seed=8)
    grads = {}
    for mode in ("implicit", "sg", "detach", "straight_through"):
        xx = x.clone().requires_grad_(True)
        (T.thre_topk_sigmoid(xx, 3, grad=mode) * w).sum().backward()
        grads[mode] = xx.grad
    assert torch.allclose(grads["implicit"], grads["sg"], atol=1e-12)
    assert torch.allclose(grads["implicit"], grads["straight_through"], atol=1e-12)   # linear objective
    assert torch.allclose(grads["implicit"].sum(-1), torch.zeros(4, dtype=F64), atol=1e-12)   # shift invariance
    assert not torch.allclose(grads["implicit"], grads["detach"], atol=1e-3)
    assert T.thre_topk_sigmoid(x, 3, grad="straight_through").tolist() == T.hard_topk(x, 3).tolist()
    with pytest.raises(ValueError):
        T.thre_topk_sigmoid(x, 9)


def test_exp_gradient_matches_finite_differences_off_the_kink():
    x = _x(2, 8, scale=2, seed=9).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: T.thre_topk_exp(v, 3), (x,), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradcheck(lambda v: T.thre_topk_smooth(v, 3), (x,), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradcheck(lambda v: T.grad_topk_dp(v, 3), (x,), eps=1e-7, atol=1e-6)


def test_weighted_softmax_exact_agrees_and_shows_the_flaw():
    x = np.array([3.0, 2, 1, 4])
    for tau in (1.0, 0.3):
        a = T.weighted_softmax_topk(torch.tensor(x / tau), 2).numpy()
        assert np.allclose(a, T.weighted_softmax_topk_exact(x / tau, 2), atol=1e-12)
    ex = T.weighted_softmax_topk_exact(x / 0.01, 2)
    assert np.allclose(ex, [0.5, 0, 0, 1.5], atol=1e-6)
    assert np.allclose(T.weighted_softmax_topk(torch.tensor(x / 0.01), 2).numpy(), [1, 0, 0, 1])  # float64 underflow


def test_iterative_soft_kmax_can_leave_the_box():
    p = T.iterative_soft_kmax(torch.tensor([[10.0, 0.01, 0.0]], dtype=F64), 2)
    assert p.max() > 1.2 and abs(p.sum() - 2) < 1e-12


def test_check_properties_flags():
    x = torch.tensor([[0.0, 1.0, 2.0]], dtype=F64)
    c = T.check_properties(lambda v, k: torch.tensor([[0.5, 0.4, 1.1]], dtype=F64), x, 2)
    assert c["order_viol"][0] == pytest.approx(0.1) and c["bound_viol"][0] == pytest.approx(0.1)
    assert c["order_bad"][0] and c["bound_bad"][0] and not c["sum_bad"][0]
    assert T.failure_mask(torch.tensor([[float("nan"), 1.0]]), 1)[0]
    assert T.failure_mask(torch.tensor([[0.5, 0.5]]), 1, ref=torch.tensor([[0.6, 0.4]]))[0]


def test_l1_to_hard_and_scan():
    x = _x(5, 20, seed=10)
    assert (T.l1_to_hard(T.thre_topk_exp, x, 4, 1e-3) < 1e-6).all()
    rows = T.stability_scan({"exp": T.thre_topk_exp, "rec": T.grad_topk}, [1.0, 50.0], [5], n=30, draws=20,
                            refs={"rec": T.grad_topk_dp})
    d = {(r["method"], r["scale"]): r for r in rows}
    assert d[("exp", 50.0)]["failure"] == 0 and d[("exp", 50.0)]["no_valid"] == 0
    assert d[("rec", 1.0)]["failure"] == 0 and d[("rec", 50.0)]["failure"] > 0.5


def test_selection_task_runs_and_learns():
    out = T.run_selection(["ThreTopK σ, implicit ∇λ", "GradTopK (recursion)"], [0.03], [0, 1], steps=60, n_eval=100,
                          eval_every=20)
    r = out["ThreTopK σ, implicit ∇λ"]
    assert r["lr"] == 0.03 and r["test"].shape == (2,) and (r["test"] > 5 / 30 + 0.2).all()
    run = r["runs"][0.03][0]
    assert run["history"][0][0] == 0 and run["history"][-1][0] == 60 and run["diverged"] is None


# -- the chapter's summary helpers -----------------------------------------------------------------
def test_self_checks_pass():
    chk = T.self_checks(0)
    assert chk["err_bf"] < 1e-12 and chk["err_sm"] < 1e-12 and chk["gradcheck"] and chk["sg_same"]
    assert chk["imp_sg"] < 1e-12 and chk["imp_det"] > 1e-3
    rows = T.self_check_rows(chk)
    assert len(rows) == 3 and all(ok for _, ok, _ in rows)


def test_property_scan_and_summary_match_a_loop():
    scales, ks = [1.0, 10.0], [2, 5]
    methods = {"it": T.iterative_soft_kmax, "exp": T.thre_topk_exp}
    props = T.property_scan(scales, ks, n=12, draws=30, seed=3, methods=methods)
    for si, s in enumerate(scales):  # the same draws, by hand
        x = s * torch.randn(30, 12, dtype=F64, generator=torch.Generator().manual_seed(3000 + si))
        assert np.array_equal(props["it", s, 5]["order_viol"], T.check_properties(T.iterative_soft_kmax, x, 5, tol=1e-6)["order_viol"])
    share, worst = T.property_summary(props, scales, ks, methods)
    for name in methods:
        for key in T.PROPERTY_KEYS:
            ref = sum(props[name, s, k][key].sum() / 30 for s in scales for k in ks) / 4
            assert share[name][key] == pytest.approx(ref, abs=1e-15)
        assert worst[name]["bound_viol"] == max(props[name, s, k]["bound_viol"].max() for s in scales for k in ks)
    assert all(v == 0 for v in share["exp"].values())
    viol = T.violation_by_cell(props, "it", scales, ks)
    for (s, k), v in viol.items():
        p = props["it", s, k]
        assert v == pytest.approx(sum(b or o for b, o in zip(p["bound_bad"], p["order_bad"])) / 30)
    header, rows = T.property_table(share, worst)
    assert len(header) == 7 and [r[0] for r in rows] == ["it", "exp"] and rows[1][1:5] == ["0.0%"] * 4
    header, rows = T.cell_table({(1.0, 2): 0.5, (1.0, 5): 0.25}, [1.0], [2, 5])
    assert header == ["scale", "k = 2", "k = 5"] and rows == [[1.0, "50.0%", "25.0%"]]


def test_l1_curves_and_weighted_rows():
    x = _x(4, 10, seed=5)
    l1 = T.l1_curves(x, 3, [1.0, 1e-3], {"exp": T.thre_topk_exp})
    assert l1["exp"][0] == pytest.approx(float(T.l1_to_hard(T.thre_topk_exp, x, 3, 1.0).mean())) and l1["exp"][1] < 1e-6
    rows = T.weighted_softmax_rows([3.0, 2, 1, 4], 2, [0.01])
    assert rows[0][0] == 0.01 and rows[0][1] == [1.0, 0.0, 0.0, 1.0] and rows[0][2] == [0.5, 0.0, 0.0, 1.5]


def test_stability_summaries():
    scan = T.stability_scans([1.0, 50.0], [5], n=30, draws=20, dtypes=(torch.float64,))
    assert {r["method"] for r in scan} == set(T.STABILITY_METHODS)
    fail = T.stability_fail(scan)
    assert fail["GradTopK (recursion)", "float64", 50.0, 5] > 0.5 and fail["ThreTopK exp", "float64", 1.0, 5] == 0
    pooled = T.stability_pooled(fail, ["GradTopK (recursion)"], [1.0, 50.0], [5], dtypes=("float64",))
    ref = (fail["GradTopK (recursion)", "float64", 1.0, 5] + fail["GradTopK (recursion)", "float64", 50.0, 5]) / 2
    assert pooled["GradTopK (recursion)", "float64"] == pytest.approx(ref)
    assert T.scan_mean(scan, "GradTopK (DP)", "float64") == 0
    assert T.max_no_valid(scan) == max(r["no_valid"] for r in scan if r["method"] in ("ThreTopK exp", "ThreTopK smooth f"))


def test_smooth_k1_gap():
    sk = T.smooth_k1_gap(0, draws=200, n=20)
    assert 0 < sk["low_share"] < 1 and sk["dev_low"] < 1e-12 and sk["dev_high"] > 1e-3
    header, rows = T.smooth_k1_table(sk)
    assert len(header) == 3 and len(rows) == 2


def test_selection_summaries():
    hist = [(0, 0.2), (25, 0.5), (50, 0.5), (75, 0.4)]
    assert T.best_step(hist) == 25  # the first best
    runs = [{"history": hist, "diverged": None, "seconds": 1.0, "best_dev": 0.5, "test": 0.4},
            {"history": hist[:3], "diverged": 30, "seconds": 3.0, "best_dev": 0.5, "test": 0.6}]
    R = {"m": {"lr": 0.1, "test": np.array([0.4, 0.6]), "dev": np.array([0.5, 0.5]), "runs": {0.1: runs, 0.3: runs[:1]}}}
    assert T.diverged_share(R["m"]) == pytest.approx(1 / 3)
    header, rows = T.selection_table(R, ["m"])
    assert len(header) == len(rows[0]) == 8
    assert rows[0][5] == "1 of 3" and rows[0][6] == "25" and rows[0][7] == f"{5 / 3:.1f}"
    steps, mean = T.mean_dev_curve(runs)
    assert steps == [0, 25, 50] and np.allclose(mean, [0.2, 0.5, 0.5])
