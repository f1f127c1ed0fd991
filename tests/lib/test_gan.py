"""Tests of kexue.gan (https://kexue.fm/archives/8244, chapter wgan-critique)."""
import itertools

import numpy as np
import ot
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue import gan as Gn


# -- exact W1 -------------------------------------------------------------------------------------
def _brute_force_w1(a, b):
    """Equal-size uniform batches: the optimal coupling is a permutation (Birkhoff)."""
    n = len(a)
    cost = np.linalg.norm(a[:, None] - b[None], axis=2)
    return min(cost[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))


@given(st.integers(0, 10_000), st.integers(1, 6), st.integers(1, 5))
@settings(max_examples=20, deadline=None)
def test_exact_w1_matches_permutation_brute_force(seed, n, dim):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    assert Gn.exact_w1(a, b) == pytest.approx(_brute_force_w1(a, b), rel=1e-9, abs=1e-12)


def test_exact_w1_is_euclidean_not_squared_and_a_metric():
    a = np.array([[0.0, 0.0], [0.0, 0.0]])
    b = np.array([[3.0, 4.0], [3.0, 4.0]])
    assert Gn.exact_w1(a, b) == pytest.approx(5.0)
    rng = np.random.default_rng(1)
    x, y, z = (rng.normal(size=(8, 3)) for _ in range(3))
    assert Gn.exact_w1(x, x) == pytest.approx(0.0, abs=1e-12)
    assert Gn.exact_w1(x, y) == pytest.approx(Gn.exact_w1(y, x), rel=1e-12)
    assert Gn.exact_w1(x, z) <= Gn.exact_w1(x, y) + Gn.exact_w1(y, z) + 1e-12


def test_w1_to_point_equals_exact_w1_with_one_atom_and_weighted_atoms():
    rng = np.random.default_rng(2)
    a, m = rng.normal(size=(9, 4)), rng.normal(size=4)
    assert Gn.w1_to_point(a, m) == pytest.approx(Gn.exact_w1(a, m[None]), rel=1e-12)
    # two atoms with weights 1/3, 2/3 = three uniform atoms with one repeated
    c = rng.normal(size=(2, 4))
    b = rng.normal(size=(3, 4))
    weighted = Gn.exact_w1(b, c, b_weights=[1 / 3, 2 / 3])
    assert weighted == pytest.approx(_brute_force_w1(b, c[[0, 1, 1]]), rel=1e-9)


def test_kmeans_centres_weights_and_study_shapes():
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (10, 2))]).astype(np.float32)
    centres, w = Gn.kmeans_centres(X, 2, seed=0)
    order = np.argsort(centres[:, 0])
    assert np.allclose(w[order], [0.75, 0.25]) and np.allclose(centres[order], [[0, 0], [5, 5]], atol=0.1)
    out = Gn.minibatch_w1_study(X, centres, w, batch_size=4, trials=3, seed=0)
    assert {k: v.shape for k, v in out.items()} == {k: (3,) for k in ("real_real", "real_mean", "real_kmeans",
                                                                      "real_kmeans_uniform")}
    no_centres = Gn.minibatch_w1_study(X, batch_size=4, trials=3, seed=0)
    assert set(no_centres) == {"real_real", "real_mean"}
    assert np.array_equal(no_centres["real_real"], out["real_real"])
    rng = np.random.default_rng(0)  # the study's own draws, recomputed by hand
    for t in range(3):
        idx = rng.choice(len(X), size=8, replace=False)
        A, A2 = X[idx[:4]], X[idx[4:]]
        assert out["real_real"][t] == pytest.approx(_brute_force_w1(A.astype(float), A2.astype(float)), rel=1e-6)
        assert out["real_mean"][t] == pytest.approx(np.linalg.norm(A - X.mean(0), axis=1).mean(), rel=1e-6)
        assert out["real_kmeans"][t] == pytest.approx(Gn.exact_w1(A, centres, b_weights=w), rel=1e-12)
        # uniform weights on the 2 centres = a batch of 4 with each centre twice (Birkhoff, brute force)
        assert out["real_kmeans_uniform"][t] == pytest.approx(
            _brute_force_w1(A.astype(float), centres[[0, 0, 1, 1]].astype(float)), rel=1e-6)


# -- critics ------------------------------------------------------------------------------------------
def test_gradient_penalty_matches_autograd_of_a_known_function():
    torch.manual_seed(0)
    w = torch.randn(5, dtype=torch.float64)

    def critic(x):  # D(x) = w·x + ½||x||² + sum sin x  ->  ∇D = w + x + cos x
        return (x @ w + 0.5 * (x ** 2).sum(1) + torch.sin(x).sum(1)).unsqueeze(1)

    real, fake = torch.randn(7, 5, dtype=torch.float64), torch.randn(7, 5, dtype=torch.float64)
    eps = torch.rand(7, 1, dtype=torch.float64)
    x_hat = eps * real + (1 - eps) * fake
    grad_norm = (w + x_hat + torch.cos(x_hat)).norm(dim=1)
    for center in (1.0, 0.0):
        got = Gn.gradient_penalty(critic, real, fake, center=center, eps=eps)
        assert got.item() == pytest.approx(((grad_norm - center) ** 2).mean().item(), rel=1e-12)
    # WGAN-div's zero-centred ||∇D||^6, and an odd power of |·| with centre 1
    got = Gn.gradient_penalty(critic, real, fake, center=0.0, power=6, eps=eps)
    assert got.item() == pytest.approx((grad_norm ** 6).mean().item(), rel=1e-12)
    got = Gn.gradient_penalty(critic, real, fake, center=1.0, power=3, eps=eps)
    assert got.item() == pytest.approx(((grad_norm - 1).abs() ** 3).mean().item(), rel=1e-12)


def test_gradient_penalty_is_zero_for_unit_slope_and_trainable():
    torch.manual_seed(1)
    lin = torch.nn.Linear(6, 1, bias=True).double()
    with torch.no_grad():
        lin.weight /= lin.weight.norm()
    real, fake = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    assert Gn.gradient_penalty(lin, real, fake).item() == pytest.approx(0.0, abs=1e-20)
    with torch.no_grad():
        lin.weight *= 3.0
    gp = Gn.gradient_penalty(lin, real, fake)
    assert gp.item() == pytest.approx(4.0, rel=1e-12)  # (3 - 1)²
    gp.backward()  # create_graph: the penalty has a gradient w.r.t. the critic's weights
    expect = 2 * (3 - 1) * lin.weight / 3  # d/dW (||W|| - 1)² = 2(||W|| - 1) W/||W||
    assert torch.allclose(lin.weight.grad, expect, rtol=1e-10)


def test_c_transform_slow_reference():
    rng = np.random.default_rng(4)
    x, y, phi = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), rng.normal(size=5)
    slow = [min(np.linalg.norm(x[i] - y[j]) - phi[i] for i in range(5)) for j in range(4)]
    cost = torch.cdist(torch.tensor(x), torch.tensor(y))
    assert Gn.c_transform(torch.tensor(phi), cost).numpy() == pytest.approx(slow, rel=1e-12)


@given(st.integers(0, 10_000), st.integers(2, 7), st.integers(2, 7), st.integers(1, 4))
@settings(max_examples=20, deadline=None)
def test_c_transform_estimate_equals_emd2_at_the_optimal_dual(seed, n, m, dim):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, dim)), rng.normal(size=(m, dim))
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    cost = ot.dist(x, y, metric="euclidean")
    w1, log = ot.emd2(a, b, cost, log=True)
    est = Gn.c_transform_estimate(torch.tensor(log["u"]), torch.tensor(x), torch.tensor(y)).item()
    assert est == pytest.approx(w1, rel=1e-9, abs=1e-12)
    # weak duality: any other potential gives a lower bound
    for _ in range(5):
        phi = torch.tensor(rng.normal(size=n) * 3)
        assert Gn.c_transform_estimate(phi, torch.tensor(x), torch.tensor(y)).item() <= w1 + 1e-12


def test_c_transform_estimate_gradient_reaches_the_fake_batch():
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    Gn.c_transform_estimate(torch.zeros(2, dtype=torch.float64), x, y).backward()
    assert y.grad.numpy().ravel() == pytest.approx([1.0, 0.0])  # d||y - x_0||/dy, pulls y to its nearest real


def test_critic_estimate_kinds():
    x, y = torch.randn(6, 3), torch.randn(6, 3)
    zero = torch.nn.Linear(3, 1)
    torch.nn.init.zeros_(zero.weight), torch.nn.init.zeros_(zero.bias)
    assert Gn.critic_estimate("wgan_gp", zero, x, y) == 0.0
    w1 = Gn.exact_w1(x.numpy(), y.numpy())
    assert Gn.critic_estimate("ctransform", zero, x, y) <= w1 + 1e-6
    assert np.isnan(Gn.critic_estimate("sn_gan", zero, x, y))


# -- training -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", Gn.GAN_KINDS)
def test_train_gan_runs_and_logs(kind):
    X = np.random.default_rng(0).random((200, 16)).astype(np.float32)
    r = Gn.train_gan(kind, X, steps=6, batch_size=16, z_dim=4, hidden=16, n_critic=2, eval_every=3,
                     eval_batch=32, seed=0)
    assert list(r["log"]["step"]) == [0, 3, 6] and np.all(r["log"]["exact_w1"] > 0)
    assert np.all(np.isnan(r["log"]["estimate"])) == (kind in ("sn_gan", "gan"))
    assert np.any(np.isnan(r["log"]["estimate"])) == (kind in ("sn_gan", "gan"))  # all NaN or none
    s = Gn.sample(r["G"], 10, 4, seed=1)
    assert s.shape == (10, 16) and s.min() >= 0 and s.max() <= 1
    assert np.array_equal(s, Gn.sample(r["G"], 10, 4, seed=1))
    r2 = Gn.train_gan(kind, X, steps=6, batch_size=16, z_dim=4, hidden=16, n_critic=2, eval_every=3,
                      eval_batch=32, seed=0)
    assert np.array_equal(s, Gn.sample(r2["G"], 10, 4, seed=1))  # seeded: reproducible


def test_plain_gan_differs_from_sn_gan_only_by_the_spectral_norm():
    X = np.random.default_rng(0).random((100, 8)).astype(np.float32)
    kw = dict(steps=3, batch_size=8, z_dim=4, hidden=8, n_critic=1, eval_every=0, seed=0)
    plain, sn = Gn.train_gan("gan", X, **kw), Gn.train_gan("sn_gan", X, **kw)
    assert not any("parametrizations" in n for n, _ in plain["D"].named_parameters())
    assert any("parametrizations" in n for n, _ in sn["D"].named_parameters())


def test_wgan_div_critic_loss_is_the_zero_centred_penalty_of_order_6():
    torch.manual_seed(0)
    D = Gn.mlp_critic(5, 8).double()
    real, fake = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    torch.manual_seed(1)
    got = Gn._critic_loss("wgan_div", D, real, fake, gp_weight=10.0, div_weight=2.0, div_power=6.0)
    torch.manual_seed(1)  # the same interpolation weights
    eps = torch.rand(6, 1, dtype=torch.float64)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(D(x_hat).sum(), x_hat)
    expect = D(fake).mean() - D(real).mean() + 2.0 * (g.norm(dim=1) ** 6).mean()
    assert got.item() == pytest.approx(expect.item(), rel=1e-10)


def test_late_relative_error():
    log = {"step": np.array([0, 50, 100]), "estimate": np.array([9.0, 1.0, 3.0]), "exact_w1": np.array([1.0, 2.0, 4.0])}
    assert Gn.late_relative_error(log, 50) == pytest.approx((0.5 + 0.25) / 2)


def test_spectral_norm_critic_has_unit_top_singular_value():
    torch.manual_seed(0)
    D = Gn.mlp_critic(20, 32, spectral_norm=True)
    x = torch.randn(8, 20)
    for _ in range(30):  # power iterations run in training mode
        D(x)
    D.eval()
    for layer in (D[0], D[2], D[4]):
        assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, rel=1e-3)


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown GAN kind"):
        Gn.train_gan("wgan_clip", np.zeros((4, 2)), steps=1)


# -- sample quality -----------------------------------------------------------------------------------
def _slow_frechet(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@given(st.integers(0, 10_000), st.integers(1, 6))
@settings(max_examples=20, deadline=None)
def test_frechet_distance_matches_sqrtm_reference(seed, d):
    rng = np.random.default_rng(seed)
    f1, f2 = rng.normal(size=(40, d)), rng.normal(size=(50, d)) @ rng.normal(size=(d, d)) + 1
    stats1, stats2 = Gn.gaussian_stats(f1), Gn.gaussian_stats(f2)
    fast = Gn.frechet_distance(*stats1, *stats2)
    assert fast == pytest.approx(_slow_frechet(*stats1, *stats2), rel=1e-7, abs=1e-9)
    assert fast == pytest.approx(Gn.frechet_distance(*stats2, *stats1), rel=1e-7, abs=1e-9)


def test_frechet_distance_zero_for_identical_sets_and_closed_forms():
    f = np.random.default_rng(5).normal(size=(100, 8))
    assert Gn.frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-8)
    assert Gn.frechet_distance_features(f, f + 2.0) == pytest.approx(4.0 * 8, rel=1e-8)  # mean shift only
    # 1-D Gaussians: (μ1-μ2)² + (σ1-σ2)²
    assert Gn.frechet_distance(0.0, 4.0, 1.0, 9.0) == pytest.approx(1 + 1, rel=1e-12)
    # a singular covariance (a point mass) is allowed: tr Σ2
    assert Gn.frechet_distance(np.zeros(3), np.zeros((3, 3)), np.zeros(3), np.eye(3) * 2) == pytest.approx(6.0)


def test_nearest_distance_brute_force():
    rng = np.random.default_rng(6)
    S, R = rng.random((37, 5)), rng.random((101, 5))
    slow = np.linalg.norm(S[:, None] - R[None], axis=2).min(axis=1)
    assert Gn.nearest_distance(S, R, chunk=8) == pytest.approx(slow, rel=1e-5, abs=1e-6)
    assert np.allclose(Gn.nearest_distance(R[:10], R), 0.0, atol=1e-3)


def test_feature_classifier_learns_separable_data():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 3, 300)
    X = (np.eye(3)[y] * 3 + rng.normal(0, 0.3, (300, 3))).astype(np.float32)
    model = Gn.train_feature_classifier(X, y, epochs=20, feat_dim=8, seed=0)
    assert Gn.classifier_accuracy(model, X, y) > 0.95
    assert model.features(X).shape == (300, 8)


def test_tile_images_layout():
    imgs = np.arange(5 * 4, dtype=np.float32).reshape(5, 4) / 20
    canvas = Gn.tile_images(imgs, (2, 2), nrow=3)
    assert canvas.shape == (2 * 3 - 1, 3 * 3 - 1)
    assert np.array_equal(canvas[3:5, 3:5], imgs[4].reshape(2, 2))
    assert canvas[2, 0] == 1.0 and canvas[3:5, 6:8].min() == 1.0  # gaps and the empty slot are white


def test_sample_quality_of_the_reference_itself():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 200)
    X = (np.eye(3)[y] + rng.normal(0, 0.2, (200, 3))).astype(np.float32)
    clf = Gn.train_feature_classifier(X, y, epochs=2, feat_dim=4, seed=0)
    centres = X[:5]
    q = Gn.sample_quality(X, reference=X, train=X, centres=centres, classifier=clf, w1_size=200)
    assert q["fd"] == pytest.approx(0.0, abs=1e-8) and q["w1"] == pytest.approx(0.0, abs=1e-9)
    assert q["nn_train"] == pytest.approx(0.0, abs=1e-3)
    assert q["nn_centre"] == pytest.approx(Gn.nearest_distance(X, centres).mean(), rel=1e-6)
    far = Gn.sample_quality(X + 5, reference=X, train=X, centres=centres, classifier=clf, w1_size=200)
    assert far["w1"] == pytest.approx(5 * np.sqrt(3), rel=1e-6)  # a pure shift moves every point by |v|


# -- precision / recall, sharpness --------------------------------------------------------------------
def _slow_knn_radius(F_, k):
    out = []
    for i in range(len(F_)):
        d = sorted(np.linalg.norm(F_[i] - F_[j]) for j in range(len(F_)) if j != i)
        out.append(d[k - 1])
    return np.array(out)


def _slow_precision_recall(real, fake, k):
    rr, rf = _slow_knn_radius(real, k), _slow_knn_radius(fake, k)
    prec = np.mean([any(np.linalg.norm(f - r) <= rad for r, rad in zip(real, rr)) for f in fake])
    rec = np.mean([any(np.linalg.norm(r - f) <= rad for f, rad in zip(fake, rf)) for r in real])
    return prec, rec


@given(st.integers(0, 10_000), st.integers(1, 4))
@settings(max_examples=15, deadline=None)
def test_knn_precision_recall_matches_slow_loops(seed, k):
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(23, 3)), rng.normal(0.7, 1.3, size=(19, 3))
    assert Gn.knn_radii(real, k, chunk=5) == pytest.approx(_slow_knn_radius(real, k), rel=1e-12)
    assert Gn.knn_precision_recall(real, fake, k) == pytest.approx(_slow_precision_recall(real, fake, k))


def test_knn_precision_recall_limits():
    rng = np.random.default_rng(9)
    real = rng.normal(size=(200, 4))
    assert Gn.knn_precision_recall(real, real, 3) == (1.0, 1.0)
    far = Gn.knn_precision_recall(real, real + 100, 3)
    assert far == (0.0, 0.0)
    # a few centroids repeated: every ball has radius 0, so recall is 0 while precision can be 1
    centroids = real[:4].repeat(10, axis=0)
    p, r = Gn.knn_precision_recall(real, centroids, 3)
    assert p == 1.0 and r == pytest.approx(4 / 200)  # only the 4 real points that are the centroids


def test_laplacian_sharpness_slow_loop_and_limits():
    rng = np.random.default_rng(10)
    x = rng.random((3, 5, 6))
    slow = np.mean([(4 * im[i, j] - im[i - 1, j] - im[i + 1, j] - im[i, j - 1] - im[i, j + 1]) ** 2
                    for im in x for i in range(1, 4) for j in range(1, 5)])
    assert Gn.laplacian_sharpness(x.reshape(3, -1), (5, 6)) == pytest.approx(slow, rel=1e-12)
    ramp = np.add.outer(np.arange(5.0), 2 * np.arange(6.0))[None]  # linear images have zero Laplacian
    assert Gn.laplacian_sharpness(ramp, (5, 6)) == pytest.approx(0.0, abs=1e-20)
    assert Gn.laplacian_sharpness(x.mean(axis=0, keepdims=True), (5, 6)) < Gn.laplacian_sharpness(x, (5, 6))


def test_sample_quality_new_keys():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, 120)
    X = (np.repeat(np.eye(3)[y], 3, axis=1) + rng.normal(0, 0.2, (120, 9))).astype(np.float32)
    clf = Gn.train_feature_classifier(X, y, epochs=2, feat_dim=4, seed=0)
    q = Gn.sample_quality(X, reference=X, train=X, centres=X[:3], classifier=clf, w1_size=120, shape=(3, 3))
    assert q["precision"] == 1.0 and q["recall"] == 1.0 and q["sharpness"] == pytest.approx(1.0)
    blur = Gn.sample_quality(np.repeat(X.mean(0, keepdims=True), 120, axis=0), reference=X, train=X,
                             centres=X[:3], classifier=clf, w1_size=120, shape=(3, 3))
    assert blur["recall"] <= 1 / 120 and blur["sharpness"] < 0.2


def test_train_gans_in_two_processes_rebuilds_the_same_networks():
    """Spectral norm's parametrised critic cannot be pickled, so the workers send state dicts: the
    rebuilt networks must give the same samples and critic values as one-thread runs in this process."""
    X = np.random.default_rng(0).random((64, 16), dtype=np.float32)
    runs = [dict(kind="sn_gan", seed=0, n_critic=1), dict(kind="wgan_gp", seed=1, n_critic=2)]
    kw = dict(steps=3, batch_size=8, z_dim=4, hidden=8, eval_every=3, eval_batch=8)
    par = Gn.train_gans(runs, X, workers=2, **kw)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = Gn.train_gans(runs, X, workers=1, **kw)
    finally:
        torch.set_num_threads(threads)
    probe = torch.as_tensor(X[:5])
    for a, b in zip(par, seq):
        np.testing.assert_array_equal(Gn.sample(a["G"], 6, 4, seed=3), Gn.sample(b["G"], 6, 4, seed=3))
        with torch.no_grad():
            assert torch.equal(a["D"](probe), b["D"](probe))
        np.testing.assert_array_equal(a["log"]["exact_w1"], b["log"]["exact_w1"])
        assert not a["G"].training and not a["D"].training
