"""Tests of kexue.ssl (chapter simsiam-dynamics, https://kexue.fm/archives/7980)."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from sklearn.neighbors import KNeighborsClassifier

from kexue import ssl


@pytest.mark.parametrize("variant", ssl.TOY_VARIANTS)
def test_toy_rhs_matches_autograd_of_the_toy_loss(variant):
    rng = np.random.default_rng(0)
    for phi0, th0 in rng.normal(size=(20, 2)):
        phi = torch.tensor(phi0, dtype=torch.float64, requires_grad=True)
        th = torch.tensor(th0, dtype=torch.float64, requires_grad=True)
        if variant == "sg":        # l = ½(φθ − sg(θ))²
            loss = 0.5 * (phi * th - th.detach()) ** 2
        elif variant == "full":    # l = ½(φθ − θ)²
            loss = 0.5 * (phi * th - th) ** 2
        else:                      # only the direct term acts on θ; φ sees the usual gradient
            loss = 0.5 * (phi * th.detach() - th.detach()) ** 2 + 0.5 * (phi.detach() * th.detach() - th) ** 2
        gphi, gth = torch.autograd.grad(loss, (phi, th))
        dphi, dth = ssl.simsiam_toy_rhs(phi0, th0, variant)
        assert dphi == pytest.approx(-float(gphi), abs=1e-12)
        assert dth == pytest.approx(-float(gth), abs=1e-12)


def test_toy_rhs_rejects_unknown_variant():
    with pytest.raises(ValueError):
        ssl.simsiam_toy_rhs(0.6, 0.1, "nope")


@pytest.mark.parametrize("variant", ssl.TOY_VARIANTS)
def test_rk4_matches_solve_ivp(variant):
    t, phi, th = ssl.toy_flow(0.6, 0.1, variant, t_end=20.0, dt=1e-2)
    ref = solve_ivp(lambda _, y: ssl.simsiam_toy_rhs(y[0], y[1], variant), (0, 20), [0.6, 0.1],
                    t_eval=t, rtol=1e-11, atol=1e-13, method="DOP853")
    assert np.max(np.abs(ref.y[0] - phi)) < 1e-7
    assert np.max(np.abs(ref.y[1] - th)) < 1e-7


def test_toy_sg_fixed_point_is_the_conserved_quantity():
    # under sg, dθ/dφ = φ/θ, so θ² − φ² is conserved and θ(∞) = sqrt(θ0² − φ0² + 1) when φ → 1
    _, phi, th = ssl.toy_flow(0.6, 0.1, "sg", t_end=60.0)
    assert abs(phi[-1] - 1) < 1e-6
    assert th[-1] == pytest.approx(math.sqrt(0.1 ** 2 - 0.6 ** 2 + 1), abs=1e-6)


def test_integrate_ode_exponential():
    t, Y = ssl.integrate_ode(lambda y: -y, [1.0], 2.0, 0.01)
    assert abs(Y[-1, 0] - math.exp(-2.0)) < 1e-9


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_knn_matches_sklearn(metric):
    rng = np.random.default_rng(1)
    A = rng.normal(size=(300, 7)).astype(np.float32)
    ya = rng.integers(0, 4, 300)
    A += ya[:, None] * 0.5
    B = rng.normal(size=(120, 7)).astype(np.float32) + rng.integers(0, 4, 120)[:, None] * 0.5
    yb = rng.integers(0, 4, 120)
    for k in (1, 5, 20):
        ref = KNeighborsClassifier(n_neighbors=k, metric=metric, algorithm="brute").fit(A, ya).predict(B)
        ours = ssl.knn_accuracy(A, ya, B, yb, k=k, metric=metric, batch_size=50)
        assert ours == pytest.approx(float((ref == yb).mean()), abs=1e-12)


def test_knn_on_constant_features_is_one_class():
    A = np.ones((50, 3), np.float32)
    ya = np.repeat(np.arange(5), 10)
    yb = np.arange(5).repeat(2)
    assert ssl.knn_accuracy(A, ya, np.ones((10, 3), np.float32), yb, k=5) == pytest.approx(0.2)


def test_collapse_std_reference_values():
    torch.manual_seed(0)
    d = 64
    z = torch.randn(20000, d)
    assert ssl.collapse_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert ssl.collapse_std(torch.ones(100, d) + 1e-9 * torch.randn(100, d)) < 1e-8
    # slow reference: per-channel population std of the normalised rows
    zn = (z / z.norm(dim=1, keepdim=True)).numpy().astype(np.float64)
    assert ssl.collapse_std(z) == pytest.approx(float(zn.std(0).mean()), rel=1e-5)


def test_augment_images_shift_erase_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(200, 6, 6)
    x[:, 2:4, 2:4] = 1.0
    y = ssl.augment_images(x, (6, 6), generator=g, max_shift=1, noise_std=0.0, erase_size=0)
    assert y.shape == x.shape
    # a shift keeps the 2×2 square whole (it never touches the border) and moves it by at most 1
    assert torch.all(y.sum((1, 2)) == 4)
    for img in y[:20]:
        r, c = torch.nonzero(img, as_tuple=True)
        assert 1 <= int(r.min()) <= 3 and 1 <= int(c.min()) <= 3
    # flattened input keeps its shape; erasing with prob 1 removes a 6×6 square entirely
    flat = torch.ones(10, 36)
    e = ssl.augment_images(flat, (6, 6), generator=g, max_shift=0, noise_std=0.0, erase_size=6, erase_prob=1.0)
    assert e.shape == (10, 36) and float(e.abs().sum()) == 0.0
    n = ssl.augment_images(torch.zeros(50, 36), (6, 6), generator=g, max_shift=0, noise_std=0.1)
    assert float(n.std()) == pytest.approx(0.1, rel=0.1)
    # the same generator state gives the same view
    a = ssl.augment_images(x, (6, 6), generator=torch.Generator().manual_seed(3), erase_size=2)
    b = ssl.augment_images(x, (6, 6), generator=torch.Generator().manual_seed(3), erase_size=2)
    assert torch.equal(a, b)


def test_simsiam_stop_gradient_and_predictor():
    torch.manual_seed(0)
    x1, x2 = torch.randn(16, 10), torch.randn(16, 10)
    for variant in ssl.SIMSIAM_VARIANTS:
        m = ssl.build_simsiam(variant, 10, hidden=12, proj=6, pred_hidden=3, seed=0)
        m.train()
        loss = m.loss(x1, x2)
        assert -1.0 <= loss.item() <= 1.0
        loss.backward()
        if variant == "fixed_pred":
            assert all(p.grad is None for p in m.predictor.parameters())
        if variant in ("no_pred", "mean_target"):
            assert m.predictor is None
    # stop-gradient: the encoder gradient equals that of the loss with the targets detached by hand
    m = ssl.build_simsiam("sg_pred", 10, hidden=12, proj=6, pred_hidden=3, seed=0)
    m.train()
    g1 = torch.autograd.grad(m.loss(x1, x2), list(m.encoder.parameters()))
    z1, z2 = m.project(x1), m.project(x2)
    ref = 0.5 * ssl.negative_cosine(m.predictor(z1), z2.detach()) + 0.5 * ssl.negative_cosine(m.predictor(z2), z1.detach())
    g2 = torch.autograd.grad(ref, list(m.encoder.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2))
    # the same seed gives the same encoder in every variant
    a = ssl.build_simsiam("no_sg", 10, hidden=12, proj=6, pred_hidden=3, seed=5)
    b = ssl.build_simsiam("no_pred", 10, hidden=12, proj=6, pred_hidden=3, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.encoder.parameters(), b.encoder.parameters()))


def test_param_groups_predictor_lr():
    m = ssl.build_simsiam("sg_pred", 10, hidden=12, proj=6, pred_hidden=3, seed=0)
    gs = m.param_groups(0.1, predictor_lr_mult=10.0)
    assert [g["lr"] for g in gs] == [0.1, pytest.approx(1.0)]
    assert len(ssl.build_simsiam("fixed_pred", 10, hidden=12, proj=6, seed=0).param_groups(0.1)) == 1


def test_linear_probe_separable():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    X = rng.normal(size=(600, 5)).astype(np.float32) * 0.3
    X[np.arange(600), y] += 2.0
    out = ssl.linear_probe(X[:400], y[:400], X[400:500], y[400:500], X[500:], y[500:], steps=100, seed=0)
    assert out["test_acc"] > 0.95 and out["dev_acc"] > 0.95


def test_recalibrate_bn_sets_batch_statistics():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    X = torch.randn(1000, 4) * 3 + 1
    ssl.recalibrate_bn(net, X, batch_size=100)
    net.eval()
    with torch.no_grad():
        out = net(X)
    assert torch.allclose(out.mean(0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(out.std(0), torch.ones(3), atol=1e-2)


def test_run_simsiam_tiny_keeps_best_and_last():
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.random((120, 16)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, 120))
    data = {"X_train": X[:80], "y_train": y[:80], "X_dev": X[80:100], "y_dev": y[80:100],
            "X_test": X[100:], "y_test": y[100:]}
    out = ssl.run_simsiam("sg_pred", data, shape=(4, 4), epochs=2, batch_size=20, k=3, probe_steps=10,
                          aug=dict(max_shift=1, noise_std=0.1, erase_size=1), hidden=16, proj=8, pred_hidden=4, seed=0)
    assert out["steps_run"] == 8 and len(out["history"]) == 2
    for key in ("init", "best", "last"):
        assert 0 <= out[key]["knn"] <= 1 and out[key]["std"] >= 0
    assert {"speed_encoder", "speed_predictor", "std", "dev", "loss"} <= set(out["history"][0])
    again = ssl.run_simsiam("sg_pred", data, shape=(4, 4), epochs=2, batch_size=20, k=3, probe_steps=10, probe_init=False,
                            aug=dict(max_shift=1, noise_std=0.1, erase_size=1), hidden=16, proj=8, pred_hidden=4, seed=0)
    assert again["init"] is None and again["last"] == out["last"]  # skipping the init probe changes nothing else
    # knn_z is the same kNN on the projection z (bank = training images, queries = test images)
    m = ssl.build_simsiam("sg_pred", 16, hidden=16, proj=8, pred_hidden=4, seed=0)
    rep = ssl.probe_report(m, data, k=3, probe_steps=10)
    z = lambda X: ssl.encode(m.project, X)  # noqa: E731
    assert rep["knn_z"] == ssl.knn_accuracy(z(data["X_train"]), data["y_train"], z(data["X_test"]), data["y_test"], k=3)


def test_build_simsiam_proj_bn_switch():
    with_bn = ssl.build_simsiam("sg_pred", 16, hidden=16, proj=8, pred_hidden=4, seed=0)
    no_bn = ssl.build_simsiam("sg_pred", 16, hidden=16, proj=8, pred_hidden=4, proj_bn=False, seed=0)
    assert isinstance(with_bn.projector[-1], torch.nn.BatchNorm1d)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in no_bn.projector)
    # the same seed gives the same encoder either way
    for a, b in zip(with_bn.encoder.parameters(), no_bn.encoder.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ssl.TOY_VARIANTS)
def test_toy_final_equals_the_last_state_of_toy_flow(variant):
    phi0, th0 = np.array([0.6, 1.4, -0.3]), np.array([0.1, 0.8, 0.5])
    phi, th = ssl.toy_final(phi0, th0, variant, t_end=5.0, dt=1e-2)
    for i in range(3):
        _, p, t = ssl.toy_flow(phi0[i], th0[i], variant, t_end=5.0, dt=1e-2)
        assert phi[i] == pytest.approx(p[-1], abs=1e-12) and th[i] == pytest.approx(t[-1], abs=1e-12)


@pytest.mark.parametrize("variant", ssl.TOY_VARIANTS)
def test_toy_theta_limit_matches_long_integration_away_from_the_boundary(variant):
    rng = np.random.default_rng(1)
    phi0 = rng.uniform(-1.0, 2.5, 400)
    th0 = rng.uniform(0.05, 1.5, 400)
    lim = ssl.toy_theta_limit(phi0, th0, variant)
    _, th = ssl.toy_final(phi0, th0, variant, t_end=400.0, dt=2e-2)
    # the conserved quantity at the start, for staying away from the slow boundary
    c = {"sg": th0 ** 2 - phi0 ** 2 + np.where(phi0 >= 0, 1.0, 0.0), "full": th0 ** 2 - (phi0 - 1) ** 2,
         "direct_only": th0 ** 2 + 2 * (phi0 - 1)}[variant]
    far = np.abs(c) > 0.1
    assert far.sum() > 100
    np.testing.assert_allclose(th[far], lim[far], atol=2e-3)
    assert 0 < (lim > 0).mean() < 1


def test_toy_theta_limit_article_start():
    # φ0 = 0.6, θ0 = 0.1 (the article's start): sg keeps θ ≈ 0.806, the other two collapse
    assert ssl.toy_theta_limit(0.6, 0.1, "sg") == pytest.approx(math.sqrt(0.01 - 0.36 + 1))
    assert ssl.toy_theta_limit(0.6, 0.1, "full") == 0.0
    assert ssl.toy_theta_limit(0.6, 0.1, "direct_only") == 0.0
    with pytest.raises(ValueError):
        ssl.toy_theta_limit(0.6, 0.1, "nope")
