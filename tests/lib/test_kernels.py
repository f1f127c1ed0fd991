"""Tests of kexue.kernels (https://kexue.fm/archives/8009, chapter sgd-kernel-machine)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue import kernels as Kn

F64 = torch.float64


def _model(widths, seed=0, act="tanh"):
    return Kn.NTKMLP(widths, act, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _loop_grads(model, xs):
    """The slow reference: one autograd.grad call per sample."""
    rows = []
    for x in xs:
        out = model(x[None]).reshape(())
        gs = torch.autograd.grad(out, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


# -- per-sample gradients and the tangent kernel ----------------------------------------------------
@pytest.mark.parametrize("widths,act", [([2, 5, 4, 1], "tanh"), ([1, 7, 1], "relu"), ([3, 1], "linear")])
def test_per_sample_grads_match_a_loop_of_autograd(widths, act):
    model = _model(widths, act=act)
    xs = torch.randn(6, widths[0], generator=torch.Generator().manual_seed(1), dtype=F64)
    g, f = Kn.per_sample_grads_and_outputs(model, xs)
    assert g.shape == (6, Kn.num_params(model))
    torch.testing.assert_close(g, _loop_grads(model, xs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f, model(xs).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Kn.per_sample_grads(model, xs, chunk_size=4), g, rtol=1e-12, atol=1e-12)


def test_empirical_ntk_matches_gram_of_loop_gradients():
    model = _model([2, 6, 5, 1])
    gen = torch.Generator().manual_seed(2)
    x1, x2 = torch.randn(4, 2, generator=gen, dtype=F64), torch.randn(3, 2, generator=gen, dtype=F64)
    ref = _loop_grads(model, x1) @ _loop_grads(model, x2).T
    torch.testing.assert_close(Kn.empirical_ntk(model, x1, x2), ref, rtol=1e-12, atol=1e-12)
    k11 = Kn.empirical_ntk(model, x1, chunk_size=2)
    torch.testing.assert_close(k11, k11.T)
    assert torch.linalg.eigvalsh(k11).min() > -1e-10  # a Gram matrix is PSD


def test_ntk_of_a_single_layer_is_the_closed_form():
    # f(x) = x·w/√d + b  ⇒  K(x, x') = x·x'/d + 1
    d = 4
    model = _model([d, 1])
    x = torch.randn(5, d, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(Kn.empirical_ntk(model, x), x @ x.T / d + 1, rtol=1e-12, atol=1e-12)


def test_ntk_parameterisation_keeps_the_kernel_order_one_across_widths():
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    diag = [Kn.empirical_ntk(_model([2, w, w, 1]), x).diagonal().mean().item() for w in (16, 256)]
    assert 0.5 < diag[1] / diag[0] < 2.0  # standard parameterisation would grow ~16×


def test_ntkmlp_rejects_bad_shapes():
    with pytest.raises(ValueError):
        Kn.NTKMLP([2, 3, 2])
    with pytest.raises(ValueError):
        Kn.NTKMLP([2, 3, 1], act="gelu")


# -- losses -----------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(f=st.floats(-20, 20), y=st.sampled_from([-1.0, 1.0]))
def test_loss_derivatives_match_autograd(f, y):
    ft, yt = torch.tensor([f], dtype=F64), torch.tensor([y], dtype=F64)
    for loss in (Kn.squared_loss, Kn.logistic_loss):
        fr = ft.clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(loss(fr, yt).sum(), fr)
        torch.testing.assert_close(Kn.loss_derivative(loss, ft, yt), ref, rtol=1e-12, atol=1e-15)
    cubic = lambda f, y: (f - y) ** 3 / 3  # noqa: E731  (falls back to autograd)
    torch.testing.assert_close(Kn.loss_derivative(cubic, ft, yt), (ft - yt) ** 2, rtol=1e-12, atol=1e-12)


# -- gradient descent with the path kernel ----------------------------------------------------------
def _sine():
    x, y = Kn.make_sine_regression(8, 0.1, seed=0)
    return x, y, torch.linspace(-1.2, 1.2, 15, dtype=F64)[:, None]


def test_gd_update_equals_autograd_gradient_descent():
    x, y, xp = _sine()
    a, b = _model([1, 6, 6, 1]), _model([1, 6, 6, 1])
    out = Kn.train_with_path_kernel(a, x, y, xp, lr=0.01, steps=25)
    hist = Kn.gradient_descent(b, x, y, lr=0.01, steps=25)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out["train_loss"][:25], hist, rtol=1e-10)
    torch.testing.assert_close(out["fT_probe"], a(xp).detach())


@pytest.mark.parametrize("loss,batch_size", [(Kn.squared_loss, None), (Kn.logistic_loss, None),
                                             (Kn.logistic_loss, 3)])
def test_reconstruction_is_exact_for_a_model_linear_in_its_parameters(loss, batch_size):
    # K does not move when f is linear in θ, so eq. (3) is exact at ANY step size; taking l'_i
    # after the update (an off-by-one) or forgetting the batch mask breaks it.
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(10, 3, generator=gen, dtype=F64)
    y = torch.sign(torch.randn(10, generator=gen, dtype=F64)) if loss is Kn.logistic_loss else x[:, 0] ** 2
    xp = torch.randn(7, 3, generator=gen, dtype=F64)
    model = _model([3, 1])
    out = Kn.train_with_path_kernel(model, x, y, xp, loss=loss, lr=0.15, steps=40, batch_size=batch_size)
    alpha = Kn.kernel_machine_weights(out["path_K"], out["path_alphaK"])
    f_hat = Kn.kernel_machine_predict(out["f0_probe"], out["path_K"], alpha)
    assert (out["fT_probe"] - out["f0_probe"]).abs().max() > 0.1  # training moved f
    torch.testing.assert_close(f_hat, out["fT_probe"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["K0"], out["KT"], rtol=1e-12, atol=1e-12)
    # with a constant kernel the frozen-kernel machine is the same machine
    torch.testing.assert_close(Kn.kernel_machine_predict(out["f0_probe"], out["K0"], out["alpha_sum"]), f_hat)


def test_reconstruction_error_is_first_order_in_the_step_size():
    x, y, xp = _sine()
    errs = []
    for lr in (0.04, 0.02, 0.01):
        out = Kn.train_with_path_kernel(_model([1, 8, 8, 1]), x, y, xp, lr=lr, steps=round(0.6 / lr))
        f_hat = out["f0_probe"] + out["path_alphaK"].sum(1)
        errs.append(Kn.reconstruction_error(out["fT_probe"], f_hat, out["f0_probe"]))
    assert errs[0] > errs[1] > errs[2] > 0
    ratios = np.array(errs[:-1]) / np.array(errs[1:])
    assert np.all((ratios > 1.7) & (ratios < 2.3)), ratios


def test_kernel_machine_form_is_an_identity():
    gen = torch.Generator().manual_seed(6)
    path_k = torch.rand(4, 5, generator=gen, dtype=F64) + 0.1
    path_ak = torch.randn(4, 5, generator=gen, dtype=F64)
    beta = torch.randn(4, generator=gen, dtype=F64)
    alpha = Kn.kernel_machine_weights(path_k, path_ak)
    torch.testing.assert_close(Kn.kernel_machine_predict(beta, path_k, alpha), beta + path_ak.sum(1))
    assert torch.isnan(Kn.kernel_machine_weights(torch.zeros(1, 1, dtype=F64), torch.ones(1, 1, dtype=F64))).all()
    # x-independent weights broadcast over the probes
    const = torch.arange(5, dtype=F64)
    torch.testing.assert_close(Kn.kernel_machine_predict(beta, path_k, const), beta + path_k @ const)


def test_recorder_masks_the_minibatch():
    rec = Kn.PathKernelRecorder(2, 3)
    g_probe, g_train = torch.eye(2, 4, dtype=F64), torch.eye(3, 4, dtype=F64)
    rec.record(0.5, g_probe, g_train, torch.tensor([1.0, -2.0, 3.0], dtype=F64), torch.tensor([1]))
    expect = torch.zeros(2, 3, dtype=F64)
    expect[1, 1] = 0.5
    torch.testing.assert_close(rec.path_K, expect)
    torch.testing.assert_close(rec.path_alphaK, expect * 2.0)
    torch.testing.assert_close(rec.alpha_sum, torch.tensor([0.0, 1.0, 0.0], dtype=F64))


# -- small helpers ----------------------------------------------------------------------------------
def test_metrics_and_retrieval():
    assert Kn.kernel_drift(torch.eye(3), torch.eye(3)) == 0.0
    assert Kn.kernel_drift(torch.eye(2), 2 * torch.eye(2)) == pytest.approx(1.0)
    f0, ft = torch.zeros(3), torch.tensor([1.0, 2.0, -4.0])
    assert Kn.reconstruction_error(ft, ft + torch.tensor([0.0, 0.4, 0.0]), f0) == pytest.approx(0.1)
    assert Kn.top_contributors(torch.tensor([0.1, -3.0, 2.0, 0.0]), k=2).tolist() == [1, 2]


def test_width_drift_runs_and_wide_nets_drift_less():
    d = Kn.make_moons_split(40, 30, seed=0)
    out = Kn.width_drift([8, 128], d["x_train"], d["y_train"], d["x_test"][:8], lr=0.02, steps=40, seeds=[0])
    assert set(out) == {8, 128} and all(len(v["drift"]) == 1 for v in out.values())
    assert out[128]["drift"][0] < out[8]["drift"][0]


def test_data_generators():
    x, y = Kn.make_sine_regression(20, 0.0, seed=1)
    assert x.shape == (20, 1) and torch.all(x[1:, 0] >= x[:-1, 0]) and x.abs().max() <= 1
    torch.testing.assert_close(y, torch.sin(3 * x[:, 0]))
    d = Kn.make_moons_split(50, 30, seed=0)
    assert d["x_train"].shape == (50, 2) and d["x_test"].shape == (30, 2)
    assert set(d["y_train"].tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(d["x_train"].mean(0), torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)


def test_eval_points_by_jvp_equal_the_pairwise_kernel_machine():
    # the forward-mode shortcut Σ_t ∇f_t(x)·Δθ_t must equal β + Σ_i α_i(x) K(x, x_i) built pair by pair
    x, y, xp = _sine()
    out = Kn.train_with_path_kernel(_model([1, 6, 6, 1]), x, y, xp, lr=0.05, steps=15, x_eval=xp)
    pairwise = Kn.kernel_machine_predict(out["f0_probe"], out["path_K"],
                                         Kn.kernel_machine_weights(out["path_K"], out["path_alphaK"]))
    torch.testing.assert_close(out["eval_fhat"], pairwise, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["eval_f0"], out["f0_probe"])
    torch.testing.assert_close(out["eval_fT"], out["fT_probe"])
    torch.testing.assert_close(out["eval_frozen"],
                               Kn.kernel_machine_predict(out["f0_probe"], out["K0"], out["alpha_sum"]))
    assert (out["eval_frozen"] - pairwise).abs().max() > 1e-4  # the kernel did move


def test_retrieval_summary_against_hand_computed_values():
    x_train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=F64)
    y_train = torch.tensor([1.0, -1.0, -1.0], dtype=F64)
    x_probe = torch.tensor([[0.0, 0.0]], dtype=F64)
    path_K = torch.tensor([[5.0, 1.0, 3.0]], dtype=F64)
    path_alphaK = torch.tensor([[2.0, -1.0, -0.5]], dtype=F64)
    assert Kn.most_similar(path_K[0], k=2).tolist() == [0, 2]
    out = Kn.retrieval_summary(path_K, path_alphaK, x_train, y_train, x_probe, torch.tensor([0.7], dtype=F64), k=2)
    assert out["label_match"] == pytest.approx(0.5)        # top-2 = points 0 (+1) and 2 (−1)
    assert out["distance_ratio"] == pytest.approx(1.5 / (4.0 / 3.0))
    assert out["cancellation"] == pytest.approx(3.5 / 0.5)


def test_x_dependence_is_zero_when_the_kernel_is_separable_in_time():
    # K_t(x, x_i) = c(x, i) g(t)  ⇒  α_i(x) = Σ_t g(t) α_i(t) / Σ_t g(t) for every x: no x-dependence
    gen = torch.Generator().manual_seed(5)
    c = torch.rand(7, 4, generator=gen, dtype=F64) + 0.1
    g = torch.rand(30, generator=gen, dtype=F64)
    alpha_t = torch.randn(30, 4, generator=gen, dtype=F64)
    path_K = c * g.sum()
    path_alphaK = c * (g[:, None] * alpha_t).sum(0)
    dep = Kn.x_dependence(path_K, path_alphaK, alpha_t)
    torch.testing.assert_close(dep["alpha_fixed"], (g[:, None] * alpha_t).sum(0) / g.sum())
    assert dep["rel_spread"] < 1e-12 and dep["time_ratio"] < 1e-12
    torch.testing.assert_close(dep["spread_t"], alpha_t.std(0, unbiased=False))


def test_x_dependence_against_hand_computed_values():
    path_K = torch.tensor([[1.0], [3.0]], dtype=F64)
    path_alphaK = torch.tensor([[2.0], [3.0]], dtype=F64)  # α(x_1) = 2, α(x_2) = 1; weights 1/4, 3/4
    alpha_t = torch.tensor([[0.0], [4.0]], dtype=F64)      # sd over time 2
    dep = Kn.x_dependence(path_K, path_alphaK, alpha_t)
    m = 0.25 * 2 + 0.75 * 1
    s = (0.25 * (2 - m) ** 2 + 0.75 * (1 - m) ** 2) ** 0.5
    assert dep["alpha_fixed"].item() == pytest.approx(m)
    assert dep["rel_spread"] == pytest.approx(s / m) and dep["time_ratio"] == pytest.approx(s / 2)


def test_alpha_t_records_the_loss_derivative_before_each_update():
    x, y = Kn.make_sine_regression(6, 0.1, seed=0)
    model = _model([1, 4, 1])
    f0 = model(x).detach()
    out = Kn.train_with_path_kernel(model, x, y, x[:2], lr=0.05, steps=3)
    assert out["alpha_t"].shape == (3, 6)
    torch.testing.assert_close(out["alpha_t"][0], -(f0 - y))
    torch.testing.assert_close(out["alpha_t"].sum(0) * 0.05, out["alpha_sum"])


def test_sign_agreement_and_drift_slopes():
    assert Kn.sign_agreement(torch.tensor([1.0, -2.0, 3.0, -1.0]), torch.tensor([2.0, -1.0, -3.0, 1.0])) == 0.5
    sweep = {w: {"drift": [w ** -0.5, 2 * w ** -1.0]} for w in (16, 64, 256)}
    np.testing.assert_allclose(Kn.drift_slopes(sweep), [-0.5, -1.0])


# -- issue 17: parameterisations, other optimizers, sharpness, retrieval baselines -------------------
def test_standard_parameterisation_is_pytorchs_default_linear():
    model = Kn.NTKMLP([3, 50, 1], generator=torch.Generator().manual_seed(0), parameterisation="standard")
    lin = model.layers[0]
    bound = 1 / np.sqrt(3)
    assert lin.scale == 1.0 and lin.weight.abs().max() <= bound and lin.bias.abs().max() <= bound
    assert lin.weight.abs().max() > 0.9 * bound  # uniform on the whole range, not a narrower law
    ref = torch.nn.Linear(3, 50, dtype=F64)
    with torch.no_grad():
        ref.weight.copy_(lin.weight)
        ref.bias.copy_(lin.bias)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(lin(x), ref(x))
    # nn.Linear's own init has the same variance 1 / (3 fan_in)
    big = Kn.NTKMLP([400, 400, 1], generator=torch.Generator().manual_seed(2), parameterisation="standard")
    assert big.layers[0].weight.var().item() == pytest.approx(1 / (3 * 400), rel=0.02)
    with pytest.raises(ValueError):
        Kn.NTKMLP([2, 1], parameterisation="mup")


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_momentum_and_adam_steps_equal_torch_optim(optimizer):
    x, y, xp = _sine()
    a, b = _model([1, 5, 5, 1]), _model([1, 5, 5, 1])
    out = Kn.train_with_path_kernel(a, x, y, xp, lr=0.01, steps=20, optimizer=optimizer, momentum=0.8)
    opt = (torch.optim.SGD(b.parameters(), lr=0.01, momentum=0.8) if optimizer == "momentum"
           else torch.optim.Adam(b.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-8))
    for _ in range(20):
        opt.zero_grad()
        Kn.squared_loss(b(x), y).sum().backward()
        opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-9, atol=1e-11)
    assert out["optimizer"] == optimizer and not out["diverged"]


@pytest.mark.parametrize("optimizer", ["gd", "momentum", "adam"])
def test_tangent_machine_is_exact_for_a_linear_model_and_frozen_matches(optimizer):
    # f linear in θ: f_T = f_0 + ∇f·(θ_T - θ_0) exactly, for any optimizer; the frozen kernel is the same
    gen = torch.Generator().manual_seed(3)
    x, xp = torch.randn(9, 2, generator=gen, dtype=F64), torch.randn(5, 2, generator=gen, dtype=F64)
    y = x[:, 0] - 2 * x[:, 1]
    out = Kn.train_with_path_kernel(_model([2, 1]), x, y, xp, lr=0.05, steps=30, optimizer=optimizer)
    assert (out["fT_probe"] - out["f0_probe"]).abs().max() > 0.05
    torch.testing.assert_close(out["tangent_probe"], out["fT_probe"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out["frozen_probe"], out["fT_probe"], rtol=1e-10, atol=1e-10)


def test_gd_tangent_and_full_sums_equal_the_pairwise_machine():
    x, y, xp = _sine()
    model = _model([1, 6, 6, 1])
    theta0 = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
    g0 = Kn.per_sample_grads(model, xp)
    out = Kn.train_with_path_kernel(model, x, y, xp, lr=0.05, steps=12)
    torch.testing.assert_close(out["tangent_probe"], out["f0_probe"] + out["path_alphaK"].sum(1))
    torch.testing.assert_close(out["full_alphaK"], out["path_alphaK"].sum(1))
    theta_t = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(out["frozen_probe"], out["f0_probe"] + g0 @ (theta_t - theta0))
    # SGD: the batch-restricted sums give the tangent machine; full_alphaK sums every point at every step
    sgd = Kn.train_with_path_kernel(_model([1, 6, 6, 1]), x, y, xp, lr=0.05, steps=12, batch_size=3, seed=1)
    torch.testing.assert_close(sgd["tangent_probe"], sgd["f0_probe"] + sgd["path_alphaK"].sum(1))
    g_slow = torch.zeros_like(sgd["full_alphaK"])
    m = _model([1, 6, 6, 1])
    params = {k: v.detach().clone() for k, v in m.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):  # a slow loop: full sum at θ_t, then the batch step
        g_tr, f_tr = Kn.per_sample_grads_and_outputs(m, x, params)
        g_pr = Kn.per_sample_grads(m, xp, params)
        d = f_tr - y
        g_slow += 0.05 * sum(-d[i] * (g_pr @ g_tr[i]) for i in range(x.shape[0]))
        b = torch.randperm(x.shape[0], generator=gen)[:3]
        step = 0.05 * (g_tr[b].T @ d[b])
        offset = 0
        for k in params:
            size = params[k].numel()
            params[k] = params[k] - step[offset:offset + size].reshape(params[k].shape)
            offset += size
    torch.testing.assert_close(sgd["full_alphaK"], g_slow, rtol=1e-10, atol=1e-12)


def test_divergence_is_flagged():
    x, y, xp = _sine()
    out = Kn.train_with_path_kernel(_model([1, 6, 6, 1]), x, y, xp, lr=5.0, steps=200)
    assert out["diverged"] and torch.isnan(out["fT_probe"]).all() and torch.isnan(out["tangent_probe"]).all()
    assert len(out["train_loss"]) < 201
    with pytest.raises(ValueError):
        Kn.train_with_path_kernel(_model([1, 3, 1]), x, y, xp, lr=0.1, steps=1, optimizer="lion")


@pytest.mark.parametrize("loss", [Kn.squared_loss, Kn.logistic_loss])
def test_hessian_top_eigenvalue_matches_the_dense_hessian(loss):
    x, y, _ = _sine()
    if loss is Kn.logistic_loss:
        y = torch.sign(y)
    model = _model([1, 4, 3, 1])
    params = {k: v.detach() for k, v in model.named_parameters()}
    shapes = [(k, v.shape, v.numel()) for k, v in params.items()]

    def flat_loss(vec):
        p, off = {}, 0
        for k, shape, size in shapes:
            p[k] = vec[off:off + size].reshape(shape)
            off += size
        return loss(torch.func.functional_call(model, p, (x,)), y).sum()

    h = torch.autograd.functional.hessian(flat_loss, torch.cat([v.reshape(-1) for v in params.values()]))
    ev = torch.linalg.eigvalsh(h)
    top = ev[ev.abs().argmax()].item()
    assert Kn.hessian_top_eigenvalue(model, x, y, loss=loss, iters=2000, tol=1e-13) == pytest.approx(top, rel=1e-6)


def test_constant_beta_error_and_retrieval_baselines():
    f0 = torch.tensor([1.0, 1.0, 1.0])
    assert Kn.constant_beta_error(f0, f0 + torch.tensor([1.0, -2.0, 0.0])) == 0.0
    assert Kn.constant_beta_error(torch.tensor([0.0, 2.0]), torch.tensor([4.0, 2.0])) == pytest.approx(0.25)
    x_train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=F64)
    y_train = torch.tensor([1.0, -1.0, -1.0], dtype=F64)
    x_probe = torch.tensor([[0.2, 0.0], [2.9, 0.0]], dtype=F64)
    sc = Kn.euclidean_scores(x_probe, x_train)
    torch.testing.assert_close(sc[0], -torch.tensor([0.2, 0.8, 2.8], dtype=F64))
    f = torch.tensor([0.5, -0.5], dtype=F64)
    # probe 0: nearest 2 = points 0 (+1), 1 (−1) vs call +1 → 1/2; probe 1: points 2, 1 (both −1) → 1
    assert Kn.retrieval_label_match(sc, y_train, f, k=2) == pytest.approx(0.75)
    path_K = torch.tensor([[5.0, 1.0, 3.0], [0.0, 2.0, 1.0]], dtype=F64)
    assert Kn.retrieval_label_match(path_K, y_train, f, k=1) == pytest.approx(1.0)
    # same ranking as most_similar
    assert set(torch.topk(path_K[0], 2).indices.tolist()) == set(Kn.most_similar(path_K[0], 2).tolist())


def test_step_size_sweep_and_tuned_run():
    x, y, xp = _sine()
    mk = lambda: _model([1, 6, 6, 1])  # noqa: E731
    template = mk()
    before = [p.detach().clone() for p in template.parameters()]
    rows = Kn.step_size_sweep(template, x, y, xp, lrs=[0.01, 0.05, 20.0], steps=30)
    assert [r["stable"] for r in rows] == [True, True, False]
    assert all(torch.equal(p, q) for p, q in zip(before, template.parameters()))  # template untouched
    single = Kn.train_with_path_kernel(mk(), x, y, xp, lr=0.05, steps=30)
    assert rows[1]["err"] == pytest.approx(Kn.reconstruction_error(single["fT_probe"], single["tangent_probe"], single["f0_probe"]))
    assert rows[1]["err_gd_form"] == pytest.approx(rows[1]["err"])  # GD: the same machine
    assert rows[1]["final_loss"] < rows[0]["final_loss"]
    assert Kn.tuned_run(rows)["lr"] == 0.05
    mom = Kn.step_size_sweep(mk(), x, y, xp, lrs=[0.01], steps=30, optimizer="momentum", momentum=0.5)
    ref = Kn.train_with_path_kernel(mk(), x, y, xp, lr=0.01, steps=30, optimizer="momentum", momentum=0.5)
    assert mom[0]["err_gd_form"] == pytest.approx(
        Kn.reconstruction_error(ref["fT_probe"], ref["f0_probe"] + 2.0 * ref["full_alphaK"], ref["f0_probe"]))
    assert np.isnan(Kn.step_size_sweep(mk(), x, y, xp, lrs=[0.01], steps=5, optimizer="adam")[0]["err_gd_form"])
    with pytest.raises(ValueError):
        Kn.tuned_run([{"stable": False, "final_loss": 1.0}])
