"""GANs and Wasserstein-1 distances for "WGAN's success may have little to do with the Wasserstein
distance" (WGAN的成功,可能跟Wasserstein距离没啥关系, https://kexue.fm/archives/8244), which discusses
Stanczuk et al., "Wasserstein GANs Work Because They Fail (to Approximate the Wasserstein Distance)"
(arXiv 2103.01678). Used by the chapter ``wgan-critique``.

Pieces:

- exact empirical W1 with Euclidean ground cost through POT's network simplex (``ot.emd2``):
  :func:`exact_w1`, :func:`w1_to_point`, and the mini-batch study :func:`minibatch_w1_study`;
- the two critics' W1 estimates: WGAN-GP's :func:`gradient_penalty` and the c-transform estimate
  (Mallasto et al., arXiv 1910.03875) :func:`c_transform`, :func:`c_transform_estimate`;
- five GANs on the same small MLPs, :func:`train_gan` with ``kind`` in ``GAN_KINDS`` (WGAN-GP, the
  c-transform WGAN, WGAN-div with its zero-centred penalty, and the plain GAN with and without
  spectral normalisation);
- sample quality proxies: a Fréchet distance in the features of a classifier the chapter trains
  (:func:`frechet_distance`, *not* the Inception FID), k-NN precision and recall in the same
  features (:func:`knn_precision_recall`, Kynkäänniemi et al. 2019), a Laplacian sharpness score
  (:func:`laplacian_sharpness`) and nearest-neighbour distances (:func:`nearest_distance`).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import current_device, resolve_device

GAN_KINDS = ("wgan_gp", "ctransform", "wgan_div", "sn_gan", "gan")
GAN_NAMES = {"wgan_gp": "WGAN-GP", "ctransform": "c-transform WGAN", "wgan_div": "WGAN-div (zero-centred)",
             "sn_gan": "GAN + spectral norm", "gan": "GAN (no constraint)"}


# -- exact Wasserstein-1 --------------------------------------------------------------------------
def exact_w1(a, b, a_weights=None, b_weights=None) -> float:
    """Exact W1 between the discrete measures sum_i p_i δ(a_i) and sum_j q_j δ(b_j) (uniform weights
    by default) with Euclidean ground cost: min_π sum_ij π_ij ||a_i - b_j||_2 over couplings with
    marginals p, q, solved by POT's network simplex ``ot.emd2`` in float64.
    https://kexue.fm/archives/8244, chapter wgan-critique."""
    import ot
    from scipy.spatial.distance import cdist

    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    p = np.full(len(a), 1.0 / len(a)) if a_weights is None else np.asarray(a_weights, np.float64)
    q = np.full(len(b), 1.0 / len(b)) if b_weights is None else np.asarray(b_weights, np.float64)
    cost = cdist(a, b)  # direct differences: exact 0 for equal points (ot.dist goes through squares)
    return float(ot.emd2(p / p.sum(), q / q.sum(), cost, numItermax=1_000_000))


def w1_to_point(a, m) -> float:
    """W1 between the uniform measure on the rows a_i and a single point m: (1/n) sum_i ||a_i - m||
    (every coupling sends all mass to m). https://kexue.fm/archives/8244, chapter wgan-critique."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    return float(np.linalg.norm(a - np.asarray(m, np.float64).reshape(1, -1), axis=1).mean())


def kmeans_centres(x, k: int, seed: int = 0, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """k-means (Euclidean, scikit-learn's Lloyd, one k-means++ start) on the rows of ``x``: returns
    the k centres and their weights (cluster sizes / n), the discrete measure sum_c w_c δ(centre_c).
    Runs on one OpenMP thread: on a shared 2-core machine spin-waiting threads slow it down badly.
    https://kexue.fm/archives/8244, chapter wgan-critique."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        km = KMeans(n_clusters=k, n_init=1, max_iter=max_iter, random_state=seed).fit(np.asarray(x, np.float64))
    weights = np.bincount(km.labels_, minlength=k) / len(x)
    return km.cluster_centers_.astype(np.float32), weights


def minibatch_w1_study(X, centres=None, centre_weights=None, *, batch_size: int, trials: int,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """For ``trials`` pairs of independent real batches A, A' of ``batch_size`` rows of ``X``: exact
    W1(A, A') (``real_real``), W1(A, mean of X) (``real_mean``, :func:`w1_to_point`) and, when
    ``centres`` are given, W1(A, k-means centres weighted by cluster size) (``real_kmeans``) and
    W1(A, the same centres with uniform weights) (``real_kmeans_uniform``) (:func:`exact_w1`). The
    article's point: the averages are *closer*, so a generator that minimises batch W1 is pulled
    towards blurry averages. https://kexue.fm/archives/8244, chapter wgan-critique."""
    X = np.asarray(X, np.float32)
    rng = np.random.default_rng(seed)
    mean = X.mean(axis=0)
    keys = ["real_real", "real_mean"] + (["real_kmeans", "real_kmeans_uniform"] if centres is not None else [])
    out = {k: [] for k in keys}
    for _ in range(trials):
        idx = rng.choice(len(X), size=2 * batch_size, replace=False)
        A, A2 = X[idx[:batch_size]], X[idx[batch_size:]]
        out["real_real"].append(exact_w1(A, A2))
        out["real_mean"].append(w1_to_point(A, mean))
        if centres is not None:
            out["real_kmeans"].append(exact_w1(A, centres, b_weights=centre_weights))
            out["real_kmeans_uniform"].append(exact_w1(A, centres))
    return {k: np.array(v) for k, v in out.items()}


# -- the critics' W1 estimates -----------------------------------------------------------------------
def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, center: float = 1.0,
                     eps: torch.Tensor | None = None, power: float = 2.0) -> torch.Tensor:
    """The gradient penalty E_x̂ |‖∇D(x̂)‖_2 - center|^power at x̂ = ε x_real + (1-ε) x_fake,
    ε ~ U[0, 1] per row (``eps`` fixes it). ``center=1, power=2`` is WGAN-GP's; ``center=0,
    power=6`` is WGAN-div's zero-centred ‖∇D‖^p (Wu et al. 2018, arXiv 1712.01026, with k = 2,
    p = 6; https://kexue.fm/archives/6139). Built with ``create_graph=True`` so the critic can be
    trained through it. https://kexue.fm/archives/8244, chapter wgan-critique."""
    if eps is None:
        eps = torch.rand(len(real), *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    gap = grad.flatten(1).norm(dim=1) - center
    return (gap ** 2 if power == 2 else gap.abs() ** power).mean()


def c_transform(phi_real: torch.Tensor, cost: torch.Tensor) -> torch.Tensor:
    """φ^c(y_j) = min_i (c(x_i, y_j) - φ(x_i)) for a cost matrix ``cost[i, j]`` = c(x_i, y_j) and
    potentials ``phi_real[i]`` = φ(x_i). https://kexue.fm/archives/8244, chapter wgan-critique."""
    return (cost - phi_real.reshape(-1, 1)).min(dim=0).values


def c_transform_estimate(phi_real: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The c-transform estimate of W1 between the uniform batches ``real`` and ``fake`` (Mallasto et
    al. 2019): Ŵ = (1/n) sum_i φ(x_i) + (1/m) sum_j φ^c(y_j) with c(x, y) = ||x - y||_2.
    For any φ, Ŵ <= exact batch W1 (weak duality), with equality at an optimal dual potential.
    Differentiable in φ and in the fake batch (gradients flow through the min).
    https://kexue.fm/archives/8244, chapter wgan-critique."""
    cost = torch.cdist(real.flatten(1), fake.flatten(1))
    return phi_real.mean() + c_transform(phi_real, cost).mean()


# -- models -------------------------------------------------------------------------------------------
def mlp_generator(z_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Generator z (N(0, I), ``z_dim``) -> hidden -> hidden -> pixels in (0, 1) (ReLU, sigmoid output).
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    return nn.Sequential(nn.Linear(z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim), nn.Sigmoid())


def mlp_critic(in_dim: int, hidden: int, spectral_norm: bool = False) -> nn.Sequential:
    """Critic / discriminator pixels -> hidden -> hidden -> 1 (LeakyReLU 0.2), every linear layer
    optionally wrapped in spectral normalisation (W / σ_max(W), one power iteration per step).
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
    return nn.Sequential(wrap(nn.Linear(in_dim, hidden)), nn.LeakyReLU(0.2), wrap(nn.Linear(hidden, hidden)),
                         nn.LeakyReLU(0.2), wrap(nn.Linear(hidden, 1)))


def critic_estimate(kind: str, critic, real: torch.Tensor, fake: torch.Tensor) -> float:
    """The W1 estimate a trained critic reports on a pair of batches: E D(real) - E D(fake) for
    WGAN-GP and WGAN-div (for WGAN-div the critic is not held near 1-Lipschitz, so this gap is its
    objective, not a W1 estimate), the c-transform estimate for the c-transform WGAN, NaN for the
    plain GAN (its discriminator estimates no W1). Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    with torch.no_grad():
        if kind in ("wgan_gp", "wgan_div"):
            return float(critic(real).mean() - critic(fake).mean())
        if kind == "ctransform":
            return float(c_transform_estimate(critic(real).squeeze(1), real, fake))
    return math.nan


def _critic_loss(kind, D, real, fake, gp_weight, div_weight=2.0, div_power=6.0):
    if kind == "wgan_gp":  # minimise E D(fake) - E D(real) + λ GP
        return D(fake).mean() - D(real).mean() + gp_weight * gradient_penalty(D, real, fake)
    if kind == "wgan_div":  # minimise E D(fake) - E D(real) + k E ||∇D||^p (zero-centred)
        return D(fake).mean() - D(real).mean() + div_weight * gradient_penalty(D, real, fake, center=0.0,
                                                                              power=div_power)
    if kind == "ctransform":  # maximise Ŵ
        return -c_transform_estimate(D(real).squeeze(1), real, fake)
    # plain GAN: binary cross-entropy, real -> 1, fake -> 0
    return F.softplus(-D(real)).mean() + F.softplus(D(fake)).mean()


def _generator_loss(kind, D, real, fake):
    if kind in ("wgan_gp", "wgan_div"):
        return -D(fake).mean()
    if kind == "ctransform":
        with torch.no_grad():
            phi = D(real).squeeze(1)
        return c_transform(phi, torch.cdist(real, fake)).mean()
    return F.softplus(-D(fake)).mean()  # non-saturating loss -log D(G(z))


def train_gan(kind: str, X, *, steps: int, batch_size: int = 64, z_dim: int = 32, hidden: int = 256,
              n_critic: int = 5, lr: float = 1e-4, betas=(0.5, 0.9), gp_weight: float = 10.0,
              div_weight: float = 2.0, div_power: float = 6.0, eval_real=None, eval_every: int = 100,
              eval_batch: int = 256, seed: int = 0,
              device=None) -> dict:
    """Train one GAN on the rows of ``X`` (pixels in [0, 1]) for ``steps`` generator steps, each after
    ``n_critic`` critic steps on fresh batches, with Adam(lr, betas) for both networks:

    - ``wgan_gp``: critic loss E D(G(z)) - E D(x) + λ E(||∇D(x̂)|| - 1)^2, generator loss -E D(G(z));
    - ``ctransform``: critic maximises Ŵ = E φ(x) + E φ^c(G(z)) (no Lipschitz constraint needed),
      generator minimises E φ^c(G(z)) through the batch min;
    - ``wgan_div``: critic loss E D(G(z)) - E D(x) + k E ||∇D(x̂)||^p (the zero-centred penalty of
      WGAN-div, k = ``div_weight``, p = ``div_power``, x̂ on the same random segments as WGAN-GP),
      generator loss -E D(G(z));
    - ``sn_gan``: the plain (non-saturating) GAN with a spectrally normalised discriminator;
    - ``gan``: the same plain GAN without spectral normalisation (the control for the Lipschitz
      constraint).

    Every ``eval_every`` steps logs the critic's estimate (:func:`critic_estimate`) and the exact W1
    (:func:`exact_w1`) between a fresh batch of ``eval_real`` and one of generated samples
    (``eval_batch`` each). Returns ``{"G", "D", "log", "seconds", "step_seconds"}``. Models and
    batches live on ``device`` (default: :func:`kexue.current_device`); the data batches are drawn by CPU generators, so
    they are the same on every device.
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    if kind not in GAN_KINDS:
        raise ValueError(f"unknown GAN kind {kind!r}: use one of {GAN_KINDS}")
    torch.manual_seed(seed)
    device = resolve_device(device)
    X = torch.as_tensor(np.asarray(X, np.float32)).flatten(1).to(device)
    Xe = X if eval_real is None else torch.as_tensor(np.asarray(eval_real, np.float32)).flatten(1).to(device)
    dim = X.shape[1]
    G = mlp_generator(z_dim, hidden, dim).to(device)
    D = mlp_critic(dim, hidden, spectral_norm=(kind == "sn_gan")).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    data_gen = torch.Generator().manual_seed(seed + 1)
    eval_gen = torch.Generator().manual_seed(seed + 2)

    def batch(n, source=X, gen=data_gen):
        return source[torch.randint(len(source), (n,), generator=gen).to(device)]

    log = {"step": [], "estimate": [], "exact_w1": [], "g_loss": []}

    def evaluate(step):
        real = batch(eval_batch, Xe, eval_gen)
        with torch.no_grad():
            fake = G(torch.randn(eval_batch, z_dim, generator=eval_gen).to(device))
        log["step"].append(step)
        log["estimate"].append(critic_estimate(kind, D, real, fake))
        log["exact_w1"].append(exact_w1(real.cpu().numpy(), fake.cpu().numpy()))

    t0 = time.perf_counter()
    t_eval = 0.0
    for step in range(steps):
        if eval_every and step % eval_every == 0:
            te = time.perf_counter()
            evaluate(step)
            t_eval += time.perf_counter() - te
        for _ in range(n_critic):
            real = batch(batch_size)
            with torch.no_grad():
                fake = G(torch.randn(batch_size, z_dim, device=device))
            loss_d = _critic_loss(kind, D, real, fake, gp_weight, div_weight, div_power)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        real = batch(batch_size)
        loss_g = _generator_loss(kind, D, real, G(torch.randn(batch_size, z_dim, device=device)))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if eval_every and step % eval_every == 0:
            log["g_loss"].append(float(loss_g.detach()))
    if eval_every:
        te = time.perf_counter()
        evaluate(steps)
        t_eval += time.perf_counter() - te
    seconds = time.perf_counter() - t0
    G.eval()
    D.eval()
    return {"G": G, "D": D, "log": {k: np.array(v) for k, v in log.items()}, "seconds": seconds,
            "step_seconds": (seconds - t_eval) / max(steps, 1), "z_dim": z_dim}


def _train_gan_portable(**kw) -> dict:
    out = train_gan(**kw)
    out["G"], out["D"] = out["G"].state_dict(), out["D"].state_dict()  # a parametrised module cannot be pickled
    return out


def train_gans(runs: list[dict], X, *, workers: int = 1, **shared) -> list[dict]:
    """:func:`train_gan` for each keyword dict in ``runs`` (e.g. ``kind``, ``seed``, ``n_critic``),
    with ``X`` and the keywords in ``shared`` common to all, results in the order of ``runs``. With
    ``workers`` > 1 the runs go side by side to one-thread processes (:func:`kexue.parallel.run_many`,
    CPU only); the networks come back as state dicts (spectral normalisation's parametrised modules
    cannot be pickled) and are rebuilt on the CPU in eval mode, the same weights as a run in this
    process with one thread. Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    from .parallel import run_many

    if not any("device" in kw for kw in runs):   # workers never ran setup: name the device for them
        shared.setdefault("device", current_device())
    if workers == 1:
        return [train_gan(X=X, **shared, **kw) for kw in runs]
    outs = run_many(_train_gan_portable, runs, workers=workers, shared={"X": X, **shared})
    dim = int(np.prod(np.asarray(X).shape[1:]))
    for out, kw in zip(outs, runs):
        opts = {**shared, **kw}
        hidden = opts.get("hidden", 256)
        G = mlp_generator(out["z_dim"], hidden, dim)
        D = mlp_critic(dim, hidden, spectral_norm=(opts["kind"] == "sn_gan"))
        G.load_state_dict(out["G"])
        D.load_state_dict(out["D"])
        out["G"], out["D"] = G.eval(), D.eval()
    return outs


def sample(G, n: int, z_dim: int, seed: int = 0) -> np.ndarray:
    """``n`` samples G(z), z ~ N(0, I) from a fixed seed (drawn on the CPU, run on G's device), as a
    float32 array (n, pixels). Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    gen = torch.Generator().manual_seed(seed)
    device = next(G.parameters()).device
    with torch.no_grad():
        return G(torch.randn(n, z_dim, generator=gen).to(device)).cpu().numpy()


def late_relative_error(log: dict, from_step: float) -> float:
    """Mean over the logged evaluations at step >= ``from_step`` of |Ŵ - W1| / W1, the relative error
    of a critic's W1 estimate against the exact batch W1 (a :func:`train_gan` log).
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    late = np.asarray(log["step"]) >= from_step
    est, w1 = np.asarray(log["estimate"])[late], np.asarray(log["exact_w1"])[late]
    return float(np.mean(np.abs(est - w1) / w1))


# -- sample quality ----------------------------------------------------------------------------------
def nearest_distance(samples, reference, chunk: int = 512) -> np.ndarray:
    """For every sample s, min_r ||s - r||_2 over the rows r of ``reference`` (chunked torch.cdist);
    small = close to some real image (or centroid). Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    S = torch.as_tensor(np.asarray(samples, np.float32)).flatten(1)
    R = torch.as_tensor(np.asarray(reference, np.float32)).flatten(1)
    out = [torch.cdist(S[i:i + chunk], R).min(dim=1).values for i in range(0, len(S), chunk)]
    return torch.cat(out).numpy()


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of the rows of ``features``, in float64 (the Gaussian fit of the
    Fréchet distance). Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    f = np.asarray(features, np.float64)
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet (W2) distance between N(μ1, Σ1) and N(μ2, Σ2):
    ||μ1 - μ2||² + tr Σ1 + tr Σ2 - 2 tr (Σ1^½ Σ2 Σ1^½)^½, computed with symmetric eigendecompositions
    (eigenvalues clipped at 0), the formula of the FID without its Inception network.
    https://kexue.fm/archives/8244, chapter wgan-critique."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    w, V = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (V * np.sqrt(np.clip(w, 0, None))) @ V.T
    middle = root1 @ cov2 @ root1
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def frechet_distance_features(f1, f2) -> float:
    """:func:`frechet_distance` between Gaussians fitted to two feature sets (rows = samples).
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


class FeatureClassifier(nn.Module):
    """Image classifier pixels -> 256 -> ``feat_dim`` -> 10 (ReLU); :meth:`features` returns the
    ``feat_dim`` penultimate activations, the feature space of the chapter's Fréchet distance.
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""

    def __init__(self, in_dim: int, feat_dim: int = 64, n_classes: int = 10, hidden: int = 256):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, feat_dim), nn.ReLU())
        self.head = nn.Linear(feat_dim, n_classes)

    def forward(self, x):
        return self.head(self.body(x.flatten(1)))

    def features(self, X, chunk: int = 4096) -> np.ndarray:
        device = next(self.parameters()).device
        X = torch.as_tensor(np.asarray(X, np.float32)).flatten(1)
        with torch.no_grad():
            return torch.cat([self.body(X[i:i + chunk].to(device)).cpu() for i in range(0, len(X), chunk)]).numpy()


def train_feature_classifier(X, y, *, epochs: int, feat_dim: int = 64, lr: float = 1e-3,
                             batch_size: int = 128, seed: int = 0, device=None) -> FeatureClassifier:
    """Train :class:`FeatureClassifier` with Adam and cross-entropy on (X, y) (the training split only),
    on ``device`` (default: :func:`kexue.current_device`). Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    torch.manual_seed(seed)
    device = resolve_device(device)
    X = torch.as_tensor(np.asarray(X, np.float32)).flatten(1).to(device)
    y = torch.as_tensor(np.asarray(y, np.int64)).to(device)
    model = FeatureClassifier(X.shape[1], feat_dim).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).to(device).split(batch_size):
            loss = F.cross_entropy(model(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def classifier_accuracy(model: FeatureClassifier, X, y) -> float:
    """Fraction of rows of X the classifier labels correctly (argmax of the logits).
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        pred = model(torch.as_tensor(np.asarray(X, np.float32)).to(device)).argmax(dim=1).cpu().numpy()
    return float((pred == np.asarray(y)).mean())


def tile_images(images, shape, nrow: int) -> np.ndarray:
    """Arrange ``images`` (rows of pixels of ``shape``) into one 2-D array, ``nrow`` per row, 1-pixel
    white gaps, for ``imshow``. Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    imgs = np.asarray(images, np.float32).reshape(-1, *shape)
    h, w = shape
    ncol = math.ceil(len(imgs) / nrow)
    canvas = np.ones((ncol * (h + 1) - 1, nrow * (w + 1) - 1), np.float32)
    for k, im in enumerate(imgs):
        r, c = divmod(k, nrow)
        canvas[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = im
    return canvas


def knn_radii(features, k: int = 3, chunk: int = 1024) -> np.ndarray:
    """For every row f_i, the distance to its k-th nearest *other* row (duplicates count: a point
    repeated k+1 times has radius 0), the radius of its k-NN ball in the manifold estimate of
    Kynkäänniemi et al. 2019 (arXiv 1904.06991). Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    F_ = torch.as_tensor(np.asarray(features, np.float64)).flatten(1)
    out = []
    for i in range(0, len(F_), chunk):
        d = torch.cdist(F_[i:i + chunk], F_)
        d[torch.arange(len(d)), torch.arange(i, i + len(d))] = math.inf  # not its own neighbour
        out.append(d.kthvalue(k, dim=1).values)
    return torch.cat(out).numpy()


def _covered(points, centres, radii, chunk: int = 1024) -> np.ndarray:
    P = torch.as_tensor(np.asarray(points, np.float64)).flatten(1)
    C = torch.as_tensor(np.asarray(centres, np.float64)).flatten(1)
    r = torch.as_tensor(np.asarray(radii, np.float64))
    return torch.cat([(torch.cdist(P[i:i + chunk], C) <= r).any(dim=1) for i in range(0, len(P), chunk)]).numpy()


def knn_precision_recall(real_features, fake_features, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, arXiv 1904.06991): each set's manifold
    is the union of balls around its points with radius = distance to the k-th nearest neighbour
    in the same set (:func:`knn_radii`). Precision = fraction of fake points inside the real manifold
    (fidelity), recall = fraction of real points inside the fake manifold (coverage, diversity).
    A set of a few repeated centroids has balls of radius 0 and so a recall near 0, however close
    its points are to the real data's mean. Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    precision = float(_covered(fake, real, knn_radii(real, k)).mean())
    recall = float(_covered(real, fake, knn_radii(fake, k)).mean())
    return precision, recall


def laplacian_sharpness(images, shape) -> float:
    """Mean over images of the mean squared 4-neighbour discrete Laplacian over interior pixels,
    (4 x[i,j] - x[i-1,j] - x[i+1,j] - x[i,j-1] - x[i,j+1])^2: the high-frequency energy of an image,
    small for blurry averages (a mean image or a k-means centre), large for noise. Divided by the
    same score of real images it gives a sharpness ratio (1 = as sharp as the data).
    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    x = np.asarray(images, np.float64).reshape(-1, *shape)
    lap = (4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
    return float((lap ** 2).mean())


def sample_quality(images, *, reference, train, centres, classifier: FeatureClassifier,
                   reference_features=None, w1_size: int = 1000, shape=None, k: int = 3,
                   seed: int = 0) -> dict:
    """Sample-quality proxies of a set of images (rows of pixels), none of them the Inception FID:

    - ``fd``: Fréchet distance between Gaussians fitted to the ``classifier``'s features of
      ``images`` and of ``reference`` (held-out real images), :func:`frechet_distance`;
    - ``w1``: exact W1 (:func:`exact_w1`) between ``w1_size`` of the images and as many reference images;
    - ``nn_train``: mean distance to the nearest training image (small = realistic, or copied);
    - ``nn_centre``: mean distance to the nearest k-means centre (small = centroid-like, blurry);
    - ``precision``, ``recall``: :func:`knn_precision_recall` (k-NN manifolds, ``k``) between the
      features of the same ``w1_size`` images and reference images;
    - ``sharpness``: :func:`laplacian_sharpness` of the images divided by that of the reference
      (only when ``shape`` is given).

    Chapter wgan-critique (https://kexue.fm/archives/8244)."""
    images = np.asarray(images, np.float32).reshape(len(images), -1)
    reference = np.asarray(reference, np.float32).reshape(len(reference), -1)
    ref_f = classifier.features(reference) if reference_features is None else reference_features
    img_f = classifier.features(images)
    rng = np.random.default_rng(seed)
    n = min(w1_size, len(images), len(reference))
    i_img, i_ref = rng.choice(len(images), n, replace=False), rng.choice(len(reference), n, replace=False)
    w1 = exact_w1(images[i_img], reference[i_ref])
    precision, recall = knn_precision_recall(ref_f[i_ref], img_f[i_img], k=k)
    out = {"fd": frechet_distance_features(img_f, ref_f), "w1": w1,
           "nn_train": float(nearest_distance(images, train).mean()),
           "nn_centre": float(nearest_distance(images, centres).mean()),
           "precision": precision, "recall": recall}
    if shape is not None:
        out["sharpness"] = laplacian_sharpness(images, shape) / laplacian_sharpness(reference, shape)
    return out
