"""Tests of kexue.rnn (https://kexue.fm/archives/7888, chapter rnn-gradients)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue import rnn as R

F64 = torch.float64


# -- the closed-form bound ------------------------------------------------------------------------
def test_tanh_factor_bound_matches_a_dense_grid():
    c_star, peak = R.tanh_factor_bound()
    grid = np.linspace(-10, 10, 2_000_001)
    vals = np.abs((1 - np.tanh(grid) ** 2) * grid)
    assert peak == pytest.approx(vals.max(), abs=1e-10)
    assert c_star == pytest.approx(abs(grid[vals.argmax()]), abs=2e-5)
    assert 2 * c_star * math.tanh(c_star) == pytest.approx(1.0, abs=1e-14)  # stationarity
    assert 0.4477 < peak < 0.4478 and 0.7716 < c_star < 0.7718


@given(h=st.floats(0.05, 5.0), U=st.floats(-50, 50))
def test_tanh_gain_times_h_never_exceeds_the_bound(h, U):
    _, peak = R.tanh_factor_bound()
    assert abs(R.tanh_rnn_gain(U, h) * h) <= peak + 1e-12


def test_tanh_and_relu_gains_by_hand():
    assert R.tanh_rnn_gain(2.0, 0.5, 0.1) == pytest.approx((1 - math.tanh(1.1) ** 2) * 2.0)
    assert R.tanh_rnn_gain([3.0, -3.0], 1.0, act="relu") == pytest.approx([3.0, 0.0])
    assert R.tanh_step_factor(1.0) == pytest.approx((1 - math.tanh(1.0) ** 2))
    with pytest.raises(ValueError):
        R.tanh_rnn_gain(1.0, 1.0, act="gelu")


# -- gradient norms through time ------------------------------------------------------------------
def test_orthogonal_matrix_is_orthogonal():
    Q = R.orthogonal_matrix(7, torch.Generator().manual_seed(0))
    assert torch.allclose(Q @ Q.T, torch.eye(7, dtype=F64), atol=1e-12)


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_log10_jacobian_norms_match_autograd_of_the_unrolled_rnn(act):
    gen = torch.Generator().manual_seed(1)
    H, T = 5, 6
    U = 1.7 * R.orthogonal_matrix(H, gen)
    u = torch.randn(T, H, generator=gen, dtype=F64)
    h0 = 0.3 * torch.randn(H, generator=gen, dtype=F64)

    def unrolled(h, t):
        for k in range(t):
            pre = u[k] + U @ h
            h = torch.tanh(pre) if act == "tanh" else torch.relu(pre)
        return h

    got = R.log10_jacobian_norms(act, U, u, h0)
    ref = [math.log10(torch.linalg.matrix_norm(torch.autograd.functional.jacobian(
        lambda h: unrolled(h, t), h0), ord=2).item()) for t in range(1, T + 1)]
    assert got.numpy() == pytest.approx(ref, abs=1e-9)
    batched = R.log10_jacobian_norms(act, torch.stack([U, 0.5 * U]), torch.stack([u, u], dim=1),
                                     torch.stack([h0, h0]))
    assert batched[:, 0].numpy() == pytest.approx(got.numpy(), abs=1e-12)


def test_linear_regime_norm_is_rho_to_the_t():
    # relu with all pre-activations positive is linear: ∂h_t/∂h_0 = U^t, ‖(ρQ)^t‖₂ = ρ^t
    H, T, rho = 4, 50, 3.0
    U = rho * torch.eye(H, dtype=F64)
    got = R.log10_jacobian_norms("relu", U, torch.ones(T, H, dtype=F64), torch.ones(H, dtype=F64))
    assert got.numpy() == pytest.approx(np.arange(1, T + 1) * math.log10(rho), abs=1e-9)


def test_gradient_norms_shapes_and_relu_explodes():
    a = R.gradient_norms_through_time("relu", 3.0, hidden=16, T=40, draws=2)
    assert a.shape == (2, 40) and np.all(np.isfinite(a))
    assert a[:, -1].min() > 5
    assert R.gradient_norms_through_time("tanh", 0.5, hidden=16, T=40, draws=2)[:, -1].max() < -3


# -- cells against hand-written references -----------------------------------------------------------
def _sig(v):
    return 1 / (1 + torch.exp(-v))


def test_lstm_cell_by_hand():
    gen = torch.Generator().manual_seed(2)
    H, d = 3, 2
    p = R.init_cell_params("lstm", d, H, generator=gen, dtype=F64)
    x, h, c = (torch.randn(n, generator=gen, dtype=F64) for n in (d, H, H))
    W, U, b = p["W"], p["U"], p["b"]
    pre = [W[k * H:(k + 1) * H] @ x + U[k * H:(k + 1) * H] @ h + b[k * H:(k + 1) * H] for k in range(4)]
    f, i, o, g = _sig(pre[0]), _sig(pre[1]), _sig(pre[2]), torch.tanh(pre[3])
    h1, c1, gates = R.lstm_cell(x, h, c, p)
    assert torch.allclose(c1, f * c + i * g) and torch.allclose(h1, o * torch.tanh(f * c + i * g))
    assert torch.allclose(gates["f"], f)


def test_gru_cells_by_hand():
    gen = torch.Generator().manual_seed(3)
    H, d = 3, 2
    p = R.init_cell_params("gru", d, H, generator=gen, dtype=F64)
    x, h = torch.randn(d, generator=gen, dtype=F64), torch.randn(H, generator=gen, dtype=F64)
    W, U, b = p["W"], p["U"], p["b"]
    z = _sig(W[:H] @ x + U[:H] @ h + b[:H])
    r = _sig(W[H:2 * H] @ x + U[H:2 * H] @ h + b[H:2 * H])
    hh = torch.tanh(W[2 * H:] @ x + U[2 * H:] @ (r * h) + b[2 * H:])
    assert torch.allclose(R.gru_cell(x, h, p)[0], (1 - z) * h + z * hh)
    # merged: blocks z, ĥ only, r = z
    pm = R.init_cell_params("gru_merged", d, H, generator=gen, dtype=F64)
    W, U, b = pm["W"], pm["U"], pm["b"]
    z = _sig(W[:H] @ x + U[:H] @ h + b[:H])
    hh = torch.tanh(W[H:] @ x + U[H:] @ (z * h) + b[H:])
    assert torch.allclose(R.gru_cell(x, h, pm, merged=True)[0], (1 - z) * h + z * hh)
    # SuGRU: ĉ uses h, r applied to the output
    ps = R.init_cell_params("sugru", d, H, generator=gen, dtype=F64)
    c = torch.randn(H, generator=gen, dtype=F64)
    W, U, b = ps["W"], ps["U"], ps["b"]
    z = _sig(W[:H] @ x + U[:H] @ h + b[:H])
    r = _sig(W[H:2 * H] @ x + U[H:2 * H] @ h + b[H:2 * H])
    cc = torch.tanh(W[2 * H:] @ x + U[2 * H:] @ h + b[2 * H:])
    h1, c1, _ = R.su_gru_cell(x, h, c, ps)
    assert torch.allclose(c1, (1 - z) * c + z * cc) and torch.allclose(h1, r * c1)


def test_init_params_shapes_and_ranges():
    gen = torch.Generator().manual_seed(4)
    p = R.init_cell_params("lstm", 2, 8, scale=2.0, members=3, generator=gen)
    assert p["W"].shape == (3, 32, 2) and p["U"].shape == (3, 32, 8) and p["b"].shape == (3, 1, 32)
    assert p["U"].abs().max() <= 2 / math.sqrt(8) and p["U"].abs().max() > 1.5 / math.sqrt(8)
    assert not torch.equal(p["U"][0], p["U"][1])
    q = R.init_cell_params("irnn", 2, 8, members=2, generator=gen)
    assert torch.equal(q["U"][1], torch.eye(8)) and torch.count_nonzero(q["b"]) == 0
    with pytest.raises(ValueError):
        R.init_cell_params("transformer", 2, 8)


# -- Jacobians: jacrev/vmap against finite differences and the written-out formulas -------------------
def _fd_jacobian(fn, s, eps=1e-6):
    cols = []
    for j in range(s.numel()):
        e = torch.zeros_like(s)
        e[j] = eps
        cols.append((fn(s + e) - fn(s - e)) / (2 * eps))
    return torch.stack(cols, dim=-1)


@pytest.mark.parametrize("kind", ["lstm", "gru", "gru_merged", "sugru"])
def test_step_jacobians_match_central_differences(kind):
    gen = torch.Generator().manual_seed(5)
    H, d, T = 4, 3, 5
    p = R.init_cell_params(kind, d, H, scale=3.0, generator=gen, dtype=F64)
    xs = torch.randn(T, d, generator=gen, dtype=F64)
    r = R.step_jacobians(kind, xs, p, H)
    assert r["J"].shape == (T, H, H)
    for t in range(T):
        s, x, out = r["state_prev"][t], xs[t], r["out_prev"][t]
        if kind == "lstm":
            fn = lambda s_: R.lstm_cell(x, out * torch.tanh(s_), s_, p)[1]  # noqa: E731
        elif kind == "sugru":
            fn = lambda s_: R.su_gru_cell(x, out * s_, s_, p)[1]  # noqa: E731
        else:
            fn = lambda s_: R.gru_cell(x, s_, p, merged=kind == "gru_merged")[0]  # noqa: E731
        assert torch.allclose(r["J"][t], _fd_jacobian(fn, s), atol=1e-8)
    # the trajectory is the one the cell produces
    dominant = r["gates"]["f"] if kind == "lstm" else 1 - r["gates"]["z"]
    assert torch.equal(r["dominant"], dominant)


def test_lstm_secondary_terms_complete_the_jacobian():
    gen = torch.Generator().manual_seed(6)
    H = 5
    p = R.init_cell_params("lstm", H, H, scale=2.0, generator=gen, dtype=F64)
    r = R.step_jacobians("lstm", torch.randn(8, H, generator=gen, dtype=F64), p, H)
    terms = R.lstm_secondary_terms(r["gates"], r["state_prev"], r["out_prev"], p)
    total = torch.diag_embed(r["gates"]["f"]) + sum(terms.values())
    assert torch.allclose(total, r["J"], atol=1e-12)
    assert not torch.allclose(torch.diag_embed(r["gates"]["f"]), r["J"], atol=1e-3)  # the terms matter


def test_lstm_secondary_terms_reduce_to_the_articles_1d_formulas():
    gen = torch.Generator().manual_seed(7)
    p = R.init_cell_params("lstm", 1, 1, scale=3.0, generator=gen, dtype=F64)
    c_prev, o_prev, x = torch.tensor([0.8], dtype=F64), torch.tensor([0.6], dtype=F64), torch.tensor([0.3], dtype=F64)
    _, _, g = R.lstm_cell(x, o_prev * torch.tanh(c_prev), c_prev, p)
    f, i, ch = g["f"].item(), g["i"].item(), g["chat"].item()
    Uf, Ui, Uc = p["U"][0, 0].item(), p["U"][1, 0].item(), p["U"][3, 0].item()
    common = o_prev.item() * (1 - math.tanh(0.8) ** 2)
    t = R.lstm_secondary_terms(g, c_prev, o_prev, p)
    assert t["forget"].item() == pytest.approx(f * (1 - f) * common * 0.8 * Uf, rel=1e-12)
    assert t["input"].item() == pytest.approx(i * (1 - i) * common * ch * Ui, rel=1e-12)
    assert t["candidate"].item() == pytest.approx((1 - ch * ch) * common * i * Uc, rel=1e-12)


def test_gru_formula_matches_jacrev_and_the_articles_1d_formula():
    gen = torch.Generator().manual_seed(8)
    H = 5
    p = R.init_cell_params("gru", H, H, scale=2.0, generator=gen, dtype=F64)
    r = R.step_jacobians("gru", torch.randn(8, H, generator=gen, dtype=F64), p, H)
    assert torch.allclose(R.gru_jacobian_formula(r["gates"], r["state_prev"], p), r["J"], atol=1e-12)
    p1 = R.init_cell_params("gru", 1, 1, scale=3.0, generator=gen, dtype=F64)
    h = torch.tensor([0.4], dtype=F64)
    _, g = R.gru_cell(torch.tensor([0.2], dtype=F64), h, p1)
    z, rr, hh = g["z"].item(), g["r"].item(), g["hhat"].item()
    Uz, Ur, Uh = (p1["U"][k, 0].item() for k in range(3))
    article = (1 - z - z * (1 - z) * 0.4 * Uz + z * (1 - z) * hh * Uz
               + (1 - hh * hh) * rr * (1 + (1 - rr) * 0.4 * Ur) * z * Uh)
    assert R.gru_jacobian_formula(g, h, p1).item() == pytest.approx(article, rel=1e-12)


def test_secondary_ratio_by_hand():
    J = torch.tensor([[[0.5, 0.3], [0.0, 0.5]]], dtype=F64)
    d = torch.tensor([[0.5, 0.5]], dtype=F64)
    assert R.secondary_ratio(J, d).item() == pytest.approx(0.3 / math.sqrt(0.5), rel=1e-12)


def test_jacobian_table_small():
    tab = R.jacobian_table(["lstm", "gru"], [1.0, 4.0], hidden=6, T=5, draws=2)
    assert set(tab) == {("lstm", 1.0), ("lstm", 4.0), ("gru", 1.0), ("gru", 4.0)}
    assert tab[("lstm", 1.0)]["ratio"].shape == (2, 5)
    assert np.all(tab[("gru", 4.0)]["ratio"].mean() > tab[("gru", 1.0)]["ratio"].mean())


# -- adding problem and training ----------------------------------------------------------------------
def test_adding_problem_structure_and_baseline():
    x, y = R.adding_problem(20_000, 10, torch.Generator().manual_seed(9), dtype=F64)
    assert x.shape == (20_000, 10, 2) and y.shape == (20_000,)
    marks = x[..., 1]
    assert torch.all(marks.sum(dim=1) == 2)
    assert torch.all(marks[:, :5].sum(dim=1) == 1) and torch.all(marks[:, 5:].sum(dim=1) == 1)
    idx = marks.nonzero()[:, 1].view(-1, 2)
    ref = x[torch.arange(20_000), idx[:, 0], 0] + x[torch.arange(20_000), idx[:, 1], 0]
    assert torch.allclose(y, ref)
    assert ((y - 1) ** 2).mean().item() == pytest.approx(R.TRIVIAL_ADDING_MSE, rel=0.03)
    with pytest.raises(ValueError):
        R.adding_problem(3, 1)


def test_ensemble_members_are_independent_cells():
    gen = torch.Generator().manual_seed(10)
    model = R.RecurrentEnsemble("lstm", 2, 4, members=3, generator=gen).double()
    x = torch.randn(3, 5, 6, 2, generator=gen, dtype=F64)
    y = model(x)
    p1 = {k: v[1] for k, v in model.cell.items()}
    p1["b"] = p1["b"][0]
    h = c = torch.zeros(5, 4, dtype=F64)
    for t in range(6):
        h, c, _ = R.lstm_cell(x[1, :, t], h, c, p1)
    ref = (h @ model.readout[1] + model.readout_bias[1]).squeeze(-1)
    assert torch.allclose(y[1], ref)


@settings(max_examples=20, deadline=None)
@given(scales=st.lists(st.floats(0.01, 10.0), min_size=3, max_size=3), max_norm=st.floats(0.1, 5.0))
def test_per_member_clipping_matches_torch_on_each_member(scales, max_norm):
    gen = torch.Generator().manual_seed(11)
    a = torch.nn.Parameter(torch.zeros(3, 4, 2, dtype=F64))
    b = torch.nn.Parameter(torch.zeros(3, 5, dtype=F64))
    a.grad = torch.randn(3, 4, 2, generator=gen, dtype=F64) * torch.tensor(scales, dtype=F64).view(3, 1, 1)
    b.grad = torch.randn(3, 5, generator=gen, dtype=F64)
    ref = []
    for e in range(3):
        ga, gb = a.grad[e].clone().requires_grad_(), b.grad[e].clone().requires_grad_()
        pa, pb = torch.nn.Parameter(torch.zeros(4, 2, dtype=F64)), torch.nn.Parameter(torch.zeros(5, dtype=F64))
        pa.grad, pb.grad = ga.detach().clone(), gb.detach().clone()
        torch.nn.utils.clip_grad_norm_([pa, pb], max_norm)
        ref.append((pa.grad, pb.grad))
    R.clip_grad_norm_per_member([a, b], max_norm)
    for e in range(3):
        assert torch.allclose(a.grad[e], ref[e][0], atol=1e-9) and torch.allclose(b.grad[e], ref[e][1], atol=1e-9)


def test_train_adding_learns_a_short_sequence():
    out = R.train_adding("lstm", 4, members=2, hidden=16, steps=150, batch=32, lr=1e-2, eval_every=50,
                         eval_batch=256, seed=0)
    assert out["eval_mse"].shape == (4, 2) and out["train_mse"].shape == (150, 2)
    assert list(out["steps"]) == [0, 50, 100, 150]
    assert np.all(out["eval_mse"][-1] < 0.5 * R.TRIVIAL_ADDING_MSE)
    assert not out["diverged"].any()


def test_device_argument_keeps_the_cpu_numbers():
    """device="cpu" gives the default path's numbers (chapter rnn-gradients)."""
    a = R.gradient_norms_through_time("tanh", 1.5, hidden=8, T=10, draws=2, seed=1)
    b = R.gradient_norms_through_time("tanh", 1.5, hidden=8, T=10, draws=2, seed=1, device="cpu")
    assert np.array_equal(a, b)
    ta = R.jacobian_table(["lstm"], [1.0], hidden=4, T=3, draws=2)
    tb = R.jacobian_table(["lstm"], [1.0], hidden=4, T=3, draws=2, device="cpu")
    assert np.array_equal(ta[("lstm", 1.0)]["ratio"], tb[("lstm", 1.0)]["ratio"])
    kw = dict(members=2, hidden=8, steps=5, batch=8, lr=1e-2, eval_every=5, eval_batch=16, seed=0)
    assert np.array_equal(R.train_adding("gru", 4, **kw)["eval_mse"], R.train_adding("gru", 4, device="cpu", **kw)["eval_mse"])


# -- h_0 = 0 is given; long products; the split of the total gradient ------------------------------
def test_first_jacobian_has_no_path_through_the_given_h0():
    """h_0 = 0 does not depend on c_0, so ∂c_1/∂c_0 is exactly the gate term (LSTM: diag(f_1);
    the article's variant: diag(1 − z_1)); later steps do carry the path through h_{t-1}."""
    gen = torch.Generator().manual_seed(11)
    H = 6
    for kind in ("lstm", "sugru"):
        p = R.init_cell_params(kind, H, H, scale=2.0, generator=gen, dtype=F64)
        xs = torch.randn(4, H, generator=gen, dtype=F64)
        r = R.step_jacobians(kind, xs, p, H)
        assert torch.allclose(r["J"][0], torch.diag_embed(r["dominant"][0]), rtol=0, atol=1e-15)
        assert not torch.allclose(r["J"][1], torch.diag_embed(r["dominant"][1]))


def test_log10_product_norms_match_the_explicit_product():
    gen = torch.Generator().manual_seed(12)
    J = 0.6 * torch.randn(30, 5, 5, generator=gen, dtype=F64)
    got = R.log10_product_norms(J, [1, 7, 30])
    for t, g in zip([1, 7, 30], got):
        P = torch.eye(5, dtype=F64)
        for k in range(t):
            P = J[k] @ P
        assert g == pytest.approx(math.log10(torch.linalg.matrix_norm(P, ord=2).item()), abs=1e-9)
    with pytest.raises(ValueError):
        R.log10_product_norms(J, [0])
    assert R.log10_product_norms(torch.zeros(3, 2, 2, dtype=F64), [3])[0] == -math.inf


@pytest.mark.parametrize("kind", ["lstm", "gru", "sugru"])
def test_long_range_norms_match_autograd_of_the_unrolled_cell(kind):
    H, T = 4, 12
    got = R.long_range_norms(kind, T, [3, T], hidden=H, draws=2, seed=7, scale=2.0)
    gen = torch.Generator().manual_seed(7)
    for row in got:
        xs = torch.randn(T, H, generator=gen, dtype=F64)
        p = R.init_cell_params(kind, H, H, scale=2.0, generator=gen, dtype=F64)

        def unrolled(s0, t):
            h, c = torch.zeros(H, dtype=F64), s0  # h_0 = 0 is given
            if kind == "gru":
                h = s0
            for x in xs[:t]:
                if kind == "lstm":
                    h, c, _ = R.lstm_cell(x, h, c, p)
                elif kind == "sugru":
                    h, c, _ = R.su_gru_cell(x, h, c, p)
                else:
                    h, _ = R.gru_cell(x, h, p)
            return h if kind == "gru" else c

        for t, g in zip([3, T], row):
            J = torch.autograd.functional.jacobian(lambda s: unrolled(s, t), torch.zeros(H, dtype=F64))
            assert g == pytest.approx(math.log10(torch.linalg.matrix_norm(J, ord=2).item()), abs=1e-9)


def test_forget_bias_shifts_only_the_forget_gate():
    a = R.init_cell_params("lstm", 3, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    b = R.init_cell_params("lstm", 3, 4, generator=torch.Generator().manual_seed(1), dtype=F64, forget_bias=1.0)
    assert torch.equal(b["b"][:4], a["b"][:4] + 1) and torch.equal(b["b"][4:], a["b"][4:])
    assert torch.equal(a["W"], b["W"]) and torch.equal(a["U"], b["U"])
    with pytest.raises(ValueError, match="LSTM only"):
        R.init_cell_params("gru", 3, 4, forget_bias=1.0)


def test_weight_gradient_contributions_sum_to_the_autograd_gradient():
    H, T, draws = 5, 9, 2
    out = R.weight_gradient_contributions("tanh", 1.2, hidden=H, T=T, draws=draws, seed=4)
    gen = torch.Generator().manual_seed(4)
    Q = torch.stack([R.orthogonal_matrix(H, gen) for _ in range(draws)])
    W = torch.randn(draws, H, H, generator=gen, dtype=F64) / math.sqrt(H)
    xs = torch.randn(T, draws, H, 1, generator=gen, dtype=F64)
    v = torch.randn(draws, H, generator=gen, dtype=F64)
    v = v / v.norm(dim=-1, keepdim=True)
    U = (1.2 * Q).requires_grad_()
    h = torch.zeros(draws, H, dtype=F64)
    for t in range(T):
        h = torch.tanh((W @ xs[t])[..., 0] + (U @ h[..., None])[..., 0])
    (h * v).sum().backward()
    np.testing.assert_allclose(out["total"], torch.linalg.matrix_norm(U.grad).numpy(), rtol=1e-12)
    # early + late are the two halves of the same sum (triangle inequality, and exact for one half 0)
    assert (out["early"] + out["late"] >= out["total"] * (1 - 1e-12)).all()
    with pytest.raises(ValueError, match="split"):
        R.weight_gradient_contributions("tanh", 1.0, hidden=H, T=T, draws=1, split=T)
    assert out["per_step"].shape == (draws, T) and (out["per_step"][:, 0] == 0).all()  # h_0 = 0: no U-gradient at step 1


def test_train_adding_returns_member_params_in_unbatched_shapes():
    r = R.train_adding("lstm", 6, members=2, hidden=4, steps=2, batch=4, eval_every=1, eval_batch=8, seed=0)
    one = R.member_params(r["params"], 1)
    ref = R.init_cell_params("lstm", 2, 4)
    assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in ref.items()}


def test_adding_inputs_is_one_adding_problem_sequence():
    x = R.adding_inputs(torch.Generator().manual_seed(0), 10)
    ref, _ = R.adding_problem(1, 10, torch.Generator().manual_seed(0))
    assert torch.equal(x, ref[0]) and x.shape == (10, 2) and x[:, 1].sum() == 2


def test_scored_final_mse_puts_diverged_members_at_the_baseline():
    run = {"eval_mse": np.array([[1.0, 1.0, 1.0], [0.01, np.nan, 0.02]]), "diverged": np.array([False, True, False])}
    np.testing.assert_allclose(R.scored_final_mse(run), [0.01, 1 / 6, 0.02])
    run["eval_mse"][-1, 2] = np.inf
    np.testing.assert_allclose(R.scored_final_mse(run, 0.5), [0.01, 0.5, 0.5])


def test_recent_adding_problem_keeps_the_values_and_moves_the_markers():
    x, y = R.adding_problem(6, 9, torch.Generator().manual_seed(2))
    xr, yr = R.adding_problem(6, 9, torch.Generator().manual_seed(2), recent=True)
    assert torch.equal(x[..., 0], xr[..., 0])
    assert (xr[:, -2:, 1] == 1).all() and xr[:, :-2, 1].sum() == 0
    assert torch.allclose(yr, xr[:, -2:, 0].sum(1))


def test_mean_forget_gate_matches_a_loop_over_members():
    r = R.train_adding("lstm", 5, members=2, hidden=3, steps=1, batch=2, eval_every=1, eval_batch=4, seed=1)
    got = R.mean_forget_gate(r["params"], 5, n=3, seed=4)
    x, _ = R.adding_problem(2 * 3, 5, torch.Generator().manual_seed(4))
    x = x.view(2, 3, 5, 2)
    for e in range(2):
        p = R.member_params(r["params"], e)
        fs = []
        for b in range(3):
            h = c = torch.zeros(3)
            for t in range(5):
                h, c, g = R.lstm_cell(x[e, b, t], h, c, p)
                fs.append(g["f"])
        assert got[e] == pytest.approx(torch.stack(fs).double().mean().item(), rel=1e-6)


def test_train_adding_per_member_learning_rates_match_single_rate_runs():
    """Members are independent: with rates [a, b], member 0 follows the run at [a, a] and member 1 the
    run at [b, b]; [a, a] follows the plain scalar-rate run (chapter rnn-gradients)."""
    kw = dict(members=2, hidden=8, steps=30, batch=8, eval_every=10, eval_batch=16, seed=3)
    mixed = R.train_adding("lstm", 5, lr=[1e-2, 1e-3], **kw)
    aa = R.train_adding("lstm", 5, lr=[1e-2, 1e-2], **kw)
    bb = R.train_adding("lstm", 5, lr=[1e-3, 1e-3], **kw)
    scalar = R.train_adding("lstm", 5, lr=1e-2, **kw)
    np.testing.assert_allclose(mixed["eval_mse"][:, 0], aa["eval_mse"][:, 0], rtol=1e-4)
    np.testing.assert_allclose(mixed["eval_mse"][:, 1], bb["eval_mse"][:, 1], rtol=1e-4)
    np.testing.assert_allclose(aa["eval_mse"], scalar["eval_mse"], rtol=1e-4)
    assert not np.allclose(aa["eval_mse"][-1], bb["eval_mse"][-1])
    with pytest.raises(ValueError, match="one per member"):
        R.train_adding("lstm", 5, lr=[1e-2], **kw)
    with pytest.raises(ValueError, match="positive"):
        R.train_adding("lstm", 5, lr=[1e-2, 0.0], **kw)


def test_pick_lr_takes_the_lowest_score_ties_to_the_smaller_rate():
    assert R.pick_lr([1e-3, 1e-2, 3e-3], [0.05, 0.01, 0.02]) == 1e-2
    assert R.pick_lr([1e-2, 1e-3, 3e-3], [0.01, 0.01, 0.5]) == 1e-3  # tie
    assert R.pick_lr([1e-3, 1e-2], [np.nan, 0.2]) == 1e-2            # non-finite is worst
    with pytest.raises(ValueError, match="one validation score per rate"):
        R.pick_lr([1e-3, 1e-2], [0.1])


def test_choose_lr_is_the_argmin_of_the_per_member_rate_run():
    """The sweep is one train_adding run with one member per rate: the same scores, the obvious argmin."""
    kw = dict(hidden=8, steps=30, batch=8, eval_every=10, eval_batch=16)
    grid = [1e-3, 1e-2, 3e-2]
    got = R.choose_lr("lstm", 5, grid, seed=7, **kw)
    ref = R.scored_final_mse(R.train_adding("lstm", 5, members=3, lr=grid, seed=7, **kw))
    np.testing.assert_allclose(got["val_mse"], ref)
    assert got["lr"] == grid[int(np.argmin(ref))] and got["grid"] == grid
    with pytest.raises(ValueError, match="do not pass members"):
        R.choose_lr("lstm", 5, grid, seed=7, members=2, **kw)
