"""kexue.multitask.gradient (chapter multitask-gradient, https://kexue.fm/archives/8896) and
kexue.data.images.multi_fashion: Frank–Wolfe against scipy's SLSQP and a grid, the KKT conditions, the
two-task closed form, per-task gradients against separate backward passes, the weighted surrogate, the
2-D toy, the composite images."""

import numpy as np
import pytest
import torch

from kexue.data import images
from kexue.multitask import gradient as mg


@pytest.mark.parametrize("n,P,rep,G", list(mg.random_gradient_sets(seed=0)))
def test_frank_wolfe_matches_slsqp_and_kkt(n, P, rep, G):
    a, info = mg.min_norm_element(G, max_iter=250, return_info=True)
    assert info["iters"] <= 250
    assert np.all(a >= 0) and abs(a.sum() - 1) < 1e-12
    _, f_ref = mg.min_norm_reference(G)
    f = info["objective"]
    scale = float((G ** 2).sum(1).max())
    assert f <= f_ref * (1 + 1e-6) + 1e-12 * scale, (f, f_ref)
    # KKT: <g_i, u*> >= ||u*||^2 - 1e-8 for every i
    u = a @ G
    assert np.all(G @ u >= u @ u - 1e-8)
    assert mg.kkt_residual(G, a) <= 1e-8


def test_grid_for_three_tasks():
    rng = np.random.default_rng(1)
    steps = np.linspace(0, 1, 401)
    for _ in range(5):
        G = rng.standard_normal((3, 20)) / np.sqrt(20) + 0.3 * rng.standard_normal(20) / np.sqrt(20)
        M = G @ G.T
        best = min(float(np.array([x, y, 1 - x - y]) @ M @ np.array([x, y, 1 - x - y]))
                   for x in steps for y in steps if x + y <= 1 + 1e-12)
        a = mg.min_norm_element(G)
        assert float(a @ M @ a) <= best + 1e-12


def test_plain_frank_wolfe_is_slow_but_monotone():
    rng = np.random.default_rng(2)
    G = rng.standard_normal((5, 10)) / np.sqrt(10)
    _, f_ref = mg.min_norm_reference(G)
    _, info_plain = mg.min_norm_element(G, variant="plain", max_iter=2000, return_info=True)
    assert f_ref <= info_plain["objective"] <= f_ref * (1 + 1e-2)       # close, but only like 1/k
    _, info = mg.min_norm_element(G, return_info=True)
    assert info["objective"] <= f_ref * (1 + 1e-9) + 1e-15 < info_plain["objective"]
    assert np.all(np.diff(info_plain["history"]) <= 1e-15)  # exact line search never goes up


def test_opposed_gradients_give_zero():
    rng = np.random.default_rng(3)
    g = rng.standard_normal(50)
    for c in (0.1, 1.0, 7.0):
        G = np.stack([g, -c * g])
        a = mg.min_norm_element(G)
        assert np.linalg.norm(a @ G) < 1e-8
        a2 = mg.two_task_min_norm(g, -c * g)
        assert np.linalg.norm(a2 * g - (1 - a2) * c * g) < 1e-8
        assert mg.is_pareto_stationary(G)
    assert not mg.is_pareto_stationary(np.stack([g, g + 0.1 * rng.standard_normal(50)]))


def test_two_task_closed_form_against_grid_and_fw():
    rng = np.random.default_rng(4)
    for _ in range(20):
        g1, g2 = rng.standard_normal(8) * rng.uniform(0.1, 3), rng.standard_normal(8) * rng.uniform(0.1, 3)
        a = mg.two_task_min_norm(g1, g2)
        grid = np.linspace(0, 1, 100001)
        vals = ((grid[:, None] * g1 + (1 - grid[:, None]) * g2) ** 2).sum(1)
        assert np.sum((a * g1 + (1 - a) * g2) ** 2) <= vals.min() + 1e-9
        fw = mg.min_norm_element(np.stack([g1, g2]))
        assert abs(fw[0] - a) < 1e-6 or abs(np.sum((fw @ np.stack([g1, g2])) ** 2) - vals.min()) < 1e-10
    assert mg.two_task_min_norm(np.ones(3), np.ones(3)) == 0.5


def test_mgda_direction_normalisations():
    rng = np.random.default_rng(5)
    G = torch.tensor(rng.standard_normal((3, 30)))
    u, a, w = mg.mgda_direction(G)
    assert torch.allclose(u, (torch.tensor(w)[:, None] * G).sum(0))
    u1, a1, w1 = mg.mgda_direction(G, "unit")
    Gn = G / G.norm(dim=1, keepdim=True)
    assert np.allclose(a1, mg.min_norm_element(Gn.numpy()), atol=1e-9)
    assert torch.allclose(u1, (torch.tensor(a1)[:, None] * Gn).sum(0))
    L = [2.0, 0.5, 1.0]
    _, a2, w2 = mg.mgda_direction(G, "loss+", L)
    assert np.allclose(w2, a2 / (np.array(L) * G.norm(dim=1).numpy()))
    with pytest.raises(ValueError):
        mg.mgda_direction(G, "loss")
    # the common descent direction decreases every (normalised) task to first order
    assert torch.all(Gn @ u1 >= 0)


def test_per_task_grads_and_weighted_surrogate():
    torch.manual_seed(0)
    model = mg.MultiLeNet().double()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (6, 2))
    trunk = list(model.trunk.parameters())
    Z, logits = model(x)
    losses = [torch.nn.functional.cross_entropy(lg, y[:, t]) for t, lg in enumerate(logits)]
    G = mg.per_task_grads(losses, trunk, "params")
    for i in range(2):  # slow reference: one separate backward pass per task
        model.zero_grad()
        Zr, lr_ = model(x)
        torch.nn.functional.cross_entropy(lr_[i], y[:, i]).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in trunk])
        assert torch.allclose(G[i], ref, atol=1e-12)
    GZ = mg.per_task_grads(losses, Z, "repr")
    assert GZ.shape == (2, Z.numel())
    # surrogate: trunk gets w1 g1 + w2 g2, every head its own full gradient
    w = [0.3, 1.7]
    model.zero_grad()
    Z, _ = model(x)
    sur = sum(torch.nn.functional.cross_entropy(model.heads[t](mg.weighted_repr(Z, w[t])), y[:, t]) for t in range(2))
    sur.backward()
    got = torch.cat([p.grad.reshape(-1) for p in trunk])
    assert torch.allclose(got, w[0] * G[0] + w[1] * G[1], atol=1e-12)
    head_got = [p.grad.clone() for p in model.heads[0].parameters()]
    model.zero_grad()
    _, lg = model(x)
    torch.nn.functional.cross_entropy(lg[0], y[:, 0]).backward()
    for a, b in zip(head_got, model.heads[0].parameters()):
        assert torch.allclose(a, b.grad, atol=1e-12)


def test_toy_mgda_never_raises_a_loss_and_the_sum_does():
    mgda = mg.toy_trajectory("mgda", lr=0.01, steps=400)
    s = mg.toy_trajectory("sum", lr=0.01, steps=400)
    assert np.max(np.diff(mgda["losses"], axis=0)) <= 1e-6
    assert s["raised"].any(axis=1).mean() >= 0.2
    # MGDA ends (near) the Pareto set: the segment between a = (1, 0) and b = (0, 1)
    th = mgda["theta"][-1]
    assert abs(th.sum() - 1) < 0.05 and -0.05 <= th[0] <= 1.05


def test_stepper_records_and_frozen_needs_alpha():
    d = images.multi_fashion(64, 32, 32, source="digits", seed=0)
    r = mg.train_arm(d, "mgda", lr=0.05, seed=0, steps=6, batch_size=16, eval_every=3)
    assert len(r["raise_share_task"]) == 2 and 0 <= r["raise_share"] <= 1
    assert abs(sum(r["alpha_mean"]) - 1) < 1e-9
    r1 = mg.train_arm(d, "single", lr=0.05, seed=0, steps=4, batch_size=16, eval_every=2, tasks=(1,))
    assert len(r1["test"]) == 1 and np.isnan(r1["raise_share"])
    ub = mg.train_arm(d, "mgda_ub", lr=0.05, seed=0, steps=4, batch_size=16, eval_every=2, cos_every=2)
    assert len(ub["cosines"]) == 2 and all(-1 - 1e-9 <= c <= 1 + 1e-9 for c in ub["cosines"])
    with pytest.raises(ValueError):
        mg.train_arm(d, "frozen", lr=0.05, seed=0, steps=2, batch_size=16, eval_every=2)


def test_multi_fashion_digits_shapes_and_labels():
    d = images.multi_fashion(50, 20, 30, source="digits", seed=3, standardize=False)
    assert d["X_train"].shape == (50, 1, 28, 28) and d["y_train"].shape == (50, 2)
    assert d["X_test"].shape == (30, 1, 28, 28) and d["y_dev"].dtype == torch.int64
    assert int(d["y_train"].min()) >= 0 and int(d["y_train"].max()) <= 9
    # the composite's corners hold the two items: rebuild one without resizing and check labels
    X, y = images.load_digits_images()
    rng = np.random.default_rng(0)
    img, lab = images._compose_pairs(X, y, 5, 12, rng)
    rng = np.random.default_rng(0)
    ia, ib = rng.integers(0, len(X), 5), rng.integers(0, len(X), 5)
    assert np.array_equal(lab[:, 0], y[ia]) and np.array_equal(lab[:, 1], y[ib])
    assert np.array_equal(img[:, :4, :4], X[ia][:, :4, :4])            # only item A there
    assert np.array_equal(img[:, 8:, 8:], X[ib][:, 4:, 4:])            # only item B there
    assert np.array_equal(img[:, 4:8, 4:8], np.maximum(X[ia][:, 4:, 4:], X[ib][:, :4, :4]))
    ds = images.multi_fashion(50, 20, 30, source="digits", seed=3)
    assert abs(float(ds["X_train"].mean())) < 1e-5 and abs(float(ds["X_train"].std()) - 1) < 1e-4


@pytest.mark.skipif(not images.fashion_mnist_available(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) not installed")
def test_multi_fashion_fashion_shapes():
    d = images.multi_fashion(100, 50, 60, seed=0, standardize=False)
    assert d["X_train"].shape == (100, 1, 28, 28) and d["y_test"].shape == (60, 2)
    assert 0 <= float(d["X_dev"].min()) and float(d["X_dev"].max()) <= 1 + 1e-6


def test_smoothed_iteration_equals_simplified_frank_wolfe():
    rng = np.random.default_rng(6)
    G = rng.standard_normal((4, 30)) / np.sqrt(30) + 0.5 * rng.standard_normal(30) / np.sqrt(30)
    u, hist = mg.smoothed_min_iteration(G, 300)
    a, info = mg.min_norm_element(G, variant="simplified", max_iter=300, return_info=True)
    assert np.allclose(hist, info["history"], rtol=1e-10, atol=1e-14)
    assert np.allclose(u, a @ G, atol=1e-12)
    _, f_ref = mg.min_norm_reference(G)
    assert f_ref <= hist[-1] <= f_ref * 1.1 + 1e-12 and hist[-1] < hist[0]


def test_two_task_unit_sum_is_a_common_descent_direction():
    rng = np.random.default_rng(7)
    for _ in range(200):
        g1, g2 = rng.standard_normal(5) * rng.uniform(0.01, 10), rng.standard_normal(5) * rng.uniform(0.01, 10)
        u = g1 / np.linalg.norm(g1) + g2 / np.linalg.norm(g2)
        assert g1 @ u >= -1e-12 and g2 @ u >= -1e-12


def test_ub_counterexample():
    c = mg.ub_counterexample()
    assert c["xy"] < 0 < c["xMy"]
    assert np.allclose(c["v"], [1.0, 1.0])
    assert min(c["ub_inner"]) < 0                                    # the UB direction raises task 1
    assert min(c["full_inner"]) >= c["full_norm2"] - 1e-12 > 0        # the full MGDA direction does not


def test_direction_probe_equal_length_and_restores_exactly():
    # the 2-D toy at a point where the two gradients conflict: the sum's direction raises L1 for a
    # small step of a given length, the min-norm direction raises neither loss
    th = torch.tensor([0.2, 0.9], dtype=torch.float64, requires_grad=True)
    L = mg.toy_losses(th)
    G = torch.stack([torch.autograd.grad(L[i], th, retain_graph=True)[0] for i in range(2)])
    assert float(G[0] @ G.sum(0)) < 0                      # the sum's direction raises L1 to first order
    before = [float(v) for v in L.detach()]
    p = torch.nn.Parameter(th.detach().clone())
    orig = p.detach().clone()
    out = mg.direction_probe([p], G, before, lambda: [float(v) for v in mg.toy_losses(p)], lr=1e-3, length=1.0)
    assert out == {"mgda": False, "sum": True, "unit": False}
    assert torch.equal(p.detach(), orig)                   # bit-identical restore
    # a zero min-norm direction (opposed gradients) is a zero step: nothing rises
    Gz = torch.tensor([[1.0, 0.0], [-2.0, 0.0]], dtype=torch.float64)
    q = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    f = lambda: [float((q.detach()[0] - 1) ** 2), float((q.detach()[0] + 1) ** 2)]
    assert mg.direction_probe([q], Gz, f(), f, lr=0.1, length=1.0)["mgda"] is False


def test_train_arm_direction_probe_patience_and_timing():
    d = images.multi_fashion(64, 32, 32, source="digits", seed=0)
    r = mg.train_arm(d, "mgda", lr=0.05, seed=0, steps=8, batch_size=16, eval_every=2, dir_every=2)
    assert set(r["dir_raise"]) == set(mg.DIRECTIONS) and all(0 <= v <= 1 for v in r["dir_raise"].values())
    assert r["s_per_step"] > 0 and r["wall_s_per_step"] >= r["s_per_step"] * 0.5
    s = mg.train_arm(d, "sum", lr=0.05, seed=0, steps=6, batch_size=16, eval_every=2, dir_every=3)
    assert set(s["dir_raise"]) == set(mg.DIRECTIONS)
    one = mg.train_arm(d, "single", lr=0.05, seed=0, steps=4, batch_size=16, eval_every=2, tasks=(0,), dir_every=1)
    assert one["dir_raise"] == {}
    # patience stops early (lr 0 never improves the first dev score)
    st = mg.train_arm(d, "sum", lr=0.0, seed=0, steps=40, batch_size=16, eval_every=2, patience=2)
    assert st["steps"] == 6 and st["best_step"] == 2


def test_multilenet_stride_variant_shapes():
    x = torch.randn(3, 1, 28, 28)
    for ds in ("pool", "stride"):
        Z, lg = mg.MultiLeNet(downsample=ds)(x)
        assert Z.shape == (3, 50) and [t.shape for t in lg] == [(3, 10), (3, 10)]
    with pytest.raises(ValueError):
        mg.MultiLeNet(downsample="avg")


def test_solver_checks_suite():
    c = mg.solver_checks(seed=0, reps=2, max_iter=250)
    assert c["n_sets"] == 16 and c["worst_rel_gap"] <= 1e-6 and c["max_iters"] <= 250
    assert c["min_kkt"] >= -1e-8 and c["opposed_norm2"] < 1e-12 and c["unit_min_inner"] >= -1e-12
    assert c["smoothed_vs_simplified"] < 1e-10
    h = c["histories"]
    assert h["corrective"][-1] <= 1e-12 and h["simplified"][-1] > h["corrective"][-1]


def test_run_arms_frozen_reuses_mgda():
    d = images.multi_fashion(64, 32, 32, source="digits", seed=0)
    kw = dict(steps=4, batch_size=16, eval_every=2, downsample="stride")
    out = mg.run_arms(d, ["single1", "mgda", "frozen"], lrs=[0.05, 0.1], seeds=[0, 1], dir_every=2, **kw)
    assert out["frozen"]["lr"] == out["mgda"]["lr"] and out["frozen"]["dev_by_lr"] and len(out["frozen"]["runs"]) == 2
    assert out["single1"]["runs"][0]["tasks"] == [1]
    assert out["mgda"]["runs"][0]["dir_raise"]
    for r_f, r_m in zip(out["frozen"]["runs"], out["mgda"]["runs"]):
        assert np.allclose(r_f["alpha_mean"], np.asarray(r_m["alpha_mean"]) / np.sum(r_m["alpha_mean"]))
    assert mg.per_seed(out, "mgda", "test", 0).shape == (2,)
    with pytest.raises(ValueError):
        mg.run_arms(d, ["frozen", "mgda"], lrs=[0.05], seeds=[0], **kw)


def test_train_arm_gradient_relations():
    d = images.multi_fashion(64, 32, 32, source="digits", seed=0)
    r = mg.train_arm(d, "mgda", lr=0.05, seed=0, steps=6, batch_size=16, eval_every=3, downsample="stride")
    assert -1 <= r["grad_cos_mean"] <= 1 and 0 <= r["grad_conflict_share"] <= 1 and 0 <= r["sum_uphill_share"] <= 1
    # the sum can only point uphill for a task when the two gradients conflict
    assert r["sum_uphill_share"] <= r["grad_conflict_share"]
    s = mg.train_arm(d, "sum", lr=0.05, seed=0, steps=4, batch_size=16, eval_every=2)
    assert np.isnan(s["grad_cos_mean"]) and np.isnan(s["sum_uphill_share"])
