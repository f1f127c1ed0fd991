"""kexue.regularization: the input/parameter gradient-penalty inequality (https://kexue.fm/archives/8796)."""
import math

import numpy as np
import pytest
import torch

from kexue import regularization as R

F64 = torch.float64


def _net(rng, depth=None, act=None, scale=None, seed=0):
    depth = depth or int(rng.integers(1, 7))
    sizes = [int(rng.integers(2, 12))] + [int(rng.integers(4, 33)) for _ in range(depth - 1)] + [int(rng.integers(1, 6))]
    act = act or str(rng.choice(list(R.ACTIVATIONS)))
    scale = scale or float(rng.choice([0.5, 1.0, 2.0]))
    return R.random_mlp(sizes, act, scale, seed=seed), sizes


def test_random_mlp_shapes_and_scale():
    m = R.random_mlp([3, 5, 2], "relu", init_scale=2.0, seed=1)
    assert [type(x).__name__ for x in m] == ["Linear", "ReLU", "Linear"]
    assert m[0].weight.abs().max() <= 2.0 / math.sqrt(3) + 1e-12
    assert m[0].weight.dtype == F64
    with pytest.raises(ValueError):
        R.random_mlp([3, 2], "swish")


def test_input_jacobians_match_finite_differences():
    rng = np.random.default_rng(0)
    for k in range(6):
        model, sizes = _net(rng, seed=k)
        x = torch.randn(4, sizes[0], dtype=F64)
        Js = R.input_jacobians(model, x, chunk=3)
        assert len(Js) == len(sizes) - 1
        assert torch.equal(Js[0], torch.eye(sizes[0], dtype=F64).expand(4, -1, -1))
        eps = 1e-6
        for t, lin in enumerate(R.linears(model)):
            def h_t(xx, t=t):
                hs = []
                hd = R.linears(model)[t].register_forward_hook(lambda m, i, o: hs.append(i[0]))
                model(xx)
                hd.remove()
                return hs[0]
            fd = torch.stack([(h_t(x + eps * e) - h_t(x - eps * e)) / (2 * eps)
                              for e in torch.eye(sizes[0], dtype=F64)], dim=2)
            assert Js[t].shape == (4, lin.in_features, sizes[0])
            assert torch.allclose(Js[t], fd, atol=1e-7), (k, t)


def test_spectral_norm_matches_numpy():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(7, 9, 4, generator=g, dtype=F64)
    ours = R.spectral_norm(A).numpy()
    ref = np.array([np.linalg.norm(a, ord=2) for a in A.numpy()])
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert abs(float(R.spectral_norm(A[0])) - np.linalg.norm(A[0].numpy(), ord=2)) < 1e-12


@pytest.mark.parametrize("norm", ["spectral", "fro"])
def test_inequality_is_a_theorem_over_many_random_nets(norm):
    rng = np.random.default_rng(1)
    worst, worst_w, worst_b = 0.0, 0.0, 0.0
    for k in range(120):
        model, sizes = _net(rng, seed=100 + k)
        x = torch.randn(8, sizes[0], dtype=F64) * float(rng.choice([0.3, 1.0, 3.0]))
        y = torch.as_tensor(rng.integers(0, sizes[-1], 8))
        f = R.true_logit if k % 2 else R.per_sample_loss
        t = R.gp_inequality_terms(model, x, f, y, matrix_norm=norm)
        worst = max(worst, float(np.max(t["ratio"])))
        for wl, wr, bl, br in zip(t["w_lhs"], t["w_rhs"], t["b_lhs"], t["b_rhs"]):
            assert np.all(wl[wr == 0] == 0) and np.all(bl[br == 0] == 0)  # dead units: 0 ≤ 0
            worst_w = max(worst_w, float(np.max(wl[wr > 0] / wr[wr > 0], initial=0.0)))
            worst_b = max(worst_b, float(np.max(bl[br > 0] / br[br > 0], initial=0.0)))
    assert worst <= 1 + 1e-9 and worst_w <= 1 + 1e-9 and worst_b <= 1 + 1e-9
    assert worst > 1e-3  # the bound is not vacuous on these nets


def test_one_linear_layer_is_tight():
    # l = 1, f linear in the output: ∇_x f = Wᵀc, ‖∇_W f‖² = ‖c‖²‖x‖²; with W of rank one along c
    # every step of the proof is an equality.
    c = torch.tensor([[1.0, 2.0]], dtype=F64)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2, dtype=F64))
    with torch.no_grad():
        model[0].weight.copy_(c.T @ torch.tensor([[0.5, -1.0, 2.0]], dtype=F64))
    x = torch.randn(5, 3, dtype=F64)
    t = R.gp_inequality_terms(model, x, lambda out, y: out @ c.reshape(-1))
    np.testing.assert_allclose(t["ratio"], 1.0, rtol=1e-12)


def test_frobenius_bound_is_looser_and_bracket_independent_of_f():
    rng = np.random.default_rng(2)
    model, sizes = _net(rng, depth=4, seed=3)
    x = torch.randn(10, sizes[0], dtype=F64)
    y = torch.zeros(10, dtype=torch.long)
    s = R.gp_inequality_terms(model, x, R.true_logit, y)
    fr = R.gp_inequality_terms(model, x, R.true_logit, y, matrix_norm="fro")
    assert np.all(fr["lhs"] <= s["lhs"] * (1 + 1e-12))
    s2 = R.gp_inequality_terms(model, x, R.per_sample_loss, y)
    np.testing.assert_allclose(s["bracket"], s2["bracket"], rtol=1e-12)
    with pytest.raises(ValueError):
        R.gp_inequality_terms(model, x, R.true_logit, y, matrix_norm="nuc")


def test_param_grad_norm_and_input_grad_against_per_sample_autograd():
    rng = np.random.default_rng(3)
    for k in range(5):
        model, sizes = _net(rng, seed=200 + k)
        x = torch.randn(6, sizes[0], dtype=F64)
        y = torch.as_tensor(rng.integers(0, sizes[-1], 6))
        t = R.gp_inequality_terms(model, x, R.per_sample_loss, y)
        np.testing.assert_allclose(t["gtheta2"], R.per_sample_param_grad_sq(model, x, R.per_sample_loss, y, chunk=4),
                                   rtol=1e-10)
        for n in range(6):  # one sample at a time: no batch coupling
            xn = x[n:n + 1].clone().requires_grad_(True)
            g, = torch.autograd.grad(R.per_sample_loss(model(xn), y[n:n + 1]).sum(), xn)
            assert abs(float(g.pow(2).sum()) - t["gx2"][n]) <= 1e-10 * max(1.0, t["gx2"][n])


def test_key_identity_holds_to_round_off():
    rng = np.random.default_rng(4)
    worst = 0.0
    for k in range(30):
        model, sizes = _net(rng, seed=300 + k)
        x = torch.randn(5, sizes[0], dtype=F64)
        y = torch.as_tensor(rng.integers(0, sizes[-1], 5))
        res = R.key_identity_residual(model, x, R.true_logit if k % 2 else R.per_sample_loss, y, chunk=2)
        assert res.shape == (len(sizes) - 1,)
        worst = max(worst, float(res.max()))
    assert worst < 1e-10


def test_residual_net_breaks_the_identity():
    torch.manual_seed(0)
    model = R.ResidualMLP(4, 8, 2, 3)
    x = torch.randn(5, 4, dtype=F64)
    y = torch.zeros(5, dtype=torch.long)
    res = R.key_identity_residual(model, x, R.true_logit, y)
    assert res[1] > 1e-6  # gradient flows around the block's Linear
    t = R.gp_inequality_terms(model, x, R.true_logit, y)  # runs; the bound is not guaranteed
    assert t["ratio"].shape == (5,)


def test_dirichlet_energy_against_a_loop():
    rng = np.random.default_rng(5)
    model, sizes = _net(rng, depth=3, seed=7)
    x = torch.randn(9, sizes[0], dtype=F64)
    ref = 0.0
    for n in range(9):
        J = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0)).squeeze(0), x[n])
        ref += float(J.pow(2).sum())
    assert abs(R.dirichlet_energy(model, x, chunk=4) - ref / 9) < 1e-10 * max(1, ref)
    y = torch.zeros(9, dtype=torch.long)
    ref_f = np.mean([float(torch.autograd.functional.jacobian(
        lambda v: model(v.unsqueeze(0))[0, 0], x[n]).pow(2).sum()) for n in range(9)])
    assert abs(R.dirichlet_energy(model, x, R.true_logit, y, chunk=4) - ref_f) < 1e-10 * max(1, ref_f)


def test_arc_length_closed_forms():
    from scipy.integrate import quad
    grid = torch.linspace(-1, 2, 2001, dtype=F64)
    assert abs(R.arc_length_1d(lambda g: 3 * g + 1, grid) - 3 * math.sqrt(10)) < 1e-10
    ref, _ = quad(lambda v: math.sqrt(1 + (2 * math.cos(2 * v)) ** 2), -1, 2)
    got = R.arc_length_1d(lambda g: torch.sin(2 * g), grid)
    assert got <= ref + 1e-12 and ref - got < 1e-5
    with pytest.raises(ValueError):
        R.arc_length_1d(lambda g: g, grid.flip(0))


def test_gd_to_loss_stops_at_the_threshold_and_penalty_gradient():
    torch.manual_seed(0)
    X = torch.randn(40, 3, dtype=F64)
    y = (X[:, 0] > 0).long()
    model = R.random_mlp([3, 16, 2], "tanh", seed=0)
    seen = []
    out = R.gd_to_loss(model, X, y, lr=0.5, stop_loss=0.3, max_steps=5000, record_steps=[0, 3],
                       on_record=lambda s, m: seen.append(s))
    assert out["reached"] and out["loss"] <= 0.3 and out["history"][-2][1] > 0.3
    assert seen == [0, 3, out["steps"]]
    # one penalised step equals a step on L + λ‖∇L‖² by finite differences (float64)
    lam, lr = 0.3, 0.1
    m1 = R.random_mlp([3, 5, 2], "tanh", seed=1)
    ps = [p.detach().clone() for p in m1.parameters()]
    R.gd_to_loss(m1, X, y, lr=lr, stop_loss=-1.0, max_steps=1, penalty=lam)
    step = [(p0 - p.detach()) / lr for p0, p in zip(ps, m1.parameters())]  # = ∇(L + λ‖∇L‖²)

    def obj(flat):
        m2 = R.random_mlp([3, 5, 2], "tanh", seed=1)
        torch.nn.utils.vector_to_parameters(flat, m2.parameters())
        L = torch.nn.functional.cross_entropy(m2(X), y)
        g = torch.autograd.grad(L, list(m2.parameters()))
        return float(L + lam * sum(gi.pow(2).sum() for gi in g))
    flat0 = torch.nn.utils.parameters_to_vector(ps)
    e = 1e-6
    for i in [0, 7, 20, len(flat0) - 1]:
        d = torch.zeros_like(flat0); d[i] = e
        fd = (obj(flat0 + d) - obj(flat0 - d)) / (2 * e)
        assert abs(fd - float(torch.cat([s.flatten() for s in step])[i])) < 1e-7


def test_random_matrix_spectral_norm_formula():
    g = torch.Generator().manual_seed(0)
    m, n = 256, 784
    W = (torch.rand(m, n, generator=g, dtype=F64) * 2 - 1) / math.sqrt(n)
    pred = R.random_matrix_spectral_norm(m, n, 1 / math.sqrt(3 * n))
    assert abs(float(R.spectral_norm(W)) / pred - 1) < 0.05


# -- the chapter's experiment helpers ---------------------------------------------------------------

def test_fast_spectral_norm_matches_numpy_and_identity():
    g = torch.Generator().manual_seed(1)
    for shape in [(5, 3, 9), (5, 9, 3), (4, 6, 6)]:
        A = torch.randn(*shape, generator=g, dtype=F64)
        ref = np.array([np.linalg.norm(a, ord=2) for a in A.numpy()])
        np.testing.assert_allclose(R.fast_spectral_norm(A).numpy(), ref, rtol=1e-12)
    eye = torch.eye(7, dtype=F64).expand(3, -1, -1)
    assert torch.equal(R.fast_spectral_norm(eye), torch.ones(3, dtype=F64))
    W = torch.randn(4, 11, generator=g, dtype=F64)
    assert abs(float(R.fast_spectral_norm(W)) - np.linalg.norm(W.numpy(), ord=2)) < 1e-12


def test_input_jacobians_forward_equals_reverse():
    rng = np.random.default_rng(8)
    for k in range(4):
        model, sizes = _net(rng, seed=400 + k)
        x = torch.randn(5, sizes[0], dtype=F64)
        for a, b in zip(R.input_jacobians(model, x, mode="fwd"), R.input_jacobians(model, x, mode="rev", chunk=2)):
            assert torch.allclose(a, b, atol=1e-13)
    with pytest.raises(ValueError):
        R.input_jacobians(model, x, mode="sideways")


def test_probe_terms_summaries_against_the_terms():
    model = R.random_mlp([6, 12, 12, 4], "relu", seed=3, dtype=torch.float32)
    x = torch.rand(20, 6)
    y = torch.as_tensor(np.random.default_rng(0).integers(0, 4, 20))
    P = R.probe_terms(model, x, y)
    T = R.gp_inequality_terms(R.float64_copy(model), x.double(), R.per_sample_loss, y)
    s = P["loss"]
    assert abs(s["log_gx2"] - np.mean(np.log(T["gx2"]))) < 1e-12
    assert abs(s["log_bracket"] - np.mean(np.log(T["bracket"]))) < 1e-12
    assert abs(P["logit"]["log_bracket"] - s["log_bracket"]) < 1e-12  # the bracket does not depend on f
    assert s["ratio_max"] <= 1 + 1e-9 and s["fro_ratio_median"] <= s["ratio_median"] * (1 + 1e-12)
    assert len(s["W_norm"]) == 3 and s["W_norm"][0] == pytest.approx(np.linalg.norm(model[0].weight.detach().double().numpy(), 2))
    assert -1 <= s["spearman"] <= 1
    np.testing.assert_allclose(P["raw"]["gtheta2"], T["gtheta2"], rtol=1e-12)
    assert R.log_range([0.0, -2.0, float("nan"), 1.5]) == 3.5


def test_random_net_scan_is_a_theorem_and_residual_scan_runs():
    out = R.random_net_scan(15, n_inputs=6, seed=0, max_width=24)
    assert out["ratio"].shape == (90,) and set(out["activation"]) == set(R.ACTIVATIONS)
    assert out["ratio"].max() <= 1 + 1e-9 and out["layer_max"] <= 1 + 1e-9
    assert np.all(out["ratio_fro"] <= out["ratio"] * (1 + 1e-12))
    assert out["identity_max"] < 1e-10
    res = R.random_net_scan(6, n_inputs=4, seed=1, residual=True, max_width=16)
    assert res["net_max"].shape == (6,) and "identity_max" not in res


def test_init_spectral_norms_against_random_matrix_theory():
    rows = R.init_spectral_norms([(256, 784), (256, 256)], seed=0)
    assert {r["init"] for r in rows} == set(R.INITS) and len(rows) == 10
    for r in rows:
        if r["init"] == "orthogonal":
            assert abs(r["measured"] - 1) < 1e-10
        else:
            assert abs(r["measured"] / r["predicted"] - 1) < 0.1, r


def test_gd_run_train_with_terms_and_arc_length_run_on_tiny_data():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(120, 5, generator=g)
    y = (X[:, 0] + X[:, 1] > 1).long()
    data = {"X_train": X[:80], "y_train": y[:80], "X_dev": X[80:100], "y_dev": y[80:100],
            "X_test": X[100:], "y_test": y[100:]}
    r = R.gd_run(data, sizes=[5, 16, 2], lr=0.5, stop_loss=0.6, max_steps=3000, seed=0, device="cpu")
    assert r["reached"] and r["loss"] <= 0.6 and r["dirichlet"] > 0 and 0 <= r["test"] <= 1
    rp = R.gd_run(data, sizes=[5, 16, 2], lr=0.5, stop_loss=0.6, max_steps=3000, seed=0, penalty=0.1, device="cpu")
    assert rp["reached"] and rp["dirichlet"] != r["dirichlet"]  # a different trajectory
    t = R.train_with_terms(data, sizes=[5, 8, 2], lr=0.1, batch_size=16, epochs=3, seed=0, n_probe=10, device="cpu")
    assert [h["epoch"] for h in t["history"]] == [0, 1, 2, 3]
    assert all(h["terms"]["loss"]["ratio_max"] <= 1 + 1e-9 for h in t["history"])
    assert 1 <= t["best_epoch"] <= 3 and "loss" in t["final"]
    a = R.arc_length_run(lr=0.05, seed=0, n_points=5, width=16, stop_loss=0.05, max_steps=20000)
    assert a["reached"] and a["arc"] >= 2.0 and a["curve"].shape == (2001,)
