"""Self-supervised two-view learning: SimSiam, augmentations, probes and collapse metrics.

From https://kexue.fm/archives/7980 (chapter ``simsiam-dynamics``), which discusses SimSiam
(Chen & He, arXiv 2011.10566) and BYOL (arXiv 2006.07733). Later chapters (contrastive sentence
embeddings) reuse the two-view loop, the probes and the collapse metric.

SimSiam encodes two views of one input, ``z_i = f(T_i x)``, predicts ``p_i = h(z_i)`` and minimises

    L = ½ D(p_1, sg(z_2)) + ½ D(p_2, sg(z_1)),      D(p, z) = −cos(p, z)

The article's dynamics: with a loss ``l(h_φ(f_θ(T₁x)), f_θ(T₂x))`` gradient flow gives

    dφ/dt = −E[∂l/∂h ∂h/∂φ],
    dθ/dt = −E[∂l/∂h ∂h/∂f ∂f/∂θ  +  ∂l/∂f ∂f/∂θ],    the last term removed by stop-gradient.

Its scalar toy ``l = ½(φθ − θ)²`` (:func:`simsiam_toy_rhs`): dφ/dt = −(φθ−θ)θ and
dθ/dt = −(φθ−θ)φ [+ (φθ−θ)], the bracket being the term stop-gradient removes. Collapse is read
as in the SimSiam paper: the per-channel std of ``z/‖z‖`` is about ``1/√d`` for a healthy
representation and 0 for a collapsed one (:func:`collapse_std`).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TOY_VARIANTS = ("sg", "full", "direct_only")


# -- the article's scalar toy --------------------------------------------------------------------
def simsiam_toy_rhs(phi, theta, variant: str = "sg"):
    """The right-hand side ``(dφ/dt, dθ/dt)`` of gradient flow on the article's toy loss
    ``l = ½(φθ − θ)²`` (https://kexue.fm/archives/7980, chapter ``simsiam-dynamics``).

    ``variant``: ``"sg"`` (stop-gradient on the target θ: dθ/dt = −(φθ−θ)φ), ``"full"`` (the whole
    gradient: dθ/dt = −(φθ−θ)φ + (φθ−θ) = −(φθ−θ)(φ−1)), ``"direct_only"`` (only the term
    stop-gradient removes: dθ/dt = +(φθ−θ)). dφ/dt = −(φθ−θ)θ in all three. Works elementwise on
    floats, numpy arrays and tensors (e.g. a phase-portrait grid)."""
    r = phi * theta - theta
    dphi = -r * theta
    if variant == "sg":
        dtheta = -r * phi
    elif variant == "full":
        dtheta = -r * phi + r
    elif variant == "direct_only":
        dtheta = r
    else:
        raise ValueError(f"unknown toy variant {variant!r}; use one of {TOY_VARIANTS}")
    return dphi, dtheta


def integrate_ode(rhs, y0, t_end: float, dt: float = 1e-2):
    """Classical fourth-order Runge-Kutta for ``dy/dt = rhs(y)`` (autonomous) from ``y0`` over
    ``[0, t_end]`` with step ``dt``; returns ``(t, Y)``, ``Y`` of shape (steps + 1, len(y0)), float64.
    Chapter ``simsiam-dynamics`` (https://kexue.fm/archives/7980) integrates the toy with it."""
    n = int(round(t_end / dt))
    if n < 1:
        raise ValueError(f"t_end / dt must give at least one step; got {t_end} / {dt}")
    y = np.asarray(y0, dtype=np.float64).copy()
    Y = np.empty((n + 1, y.size))
    Y[0] = y
    f = lambda v: np.asarray(rhs(v), dtype=np.float64)  # noqa: E731
    for i in range(n):
        k1 = f(y)
        k2 = f(y + 0.5 * dt * k1)
        k3 = f(y + 0.5 * dt * k2)
        k4 = f(y + dt * k3)
        y = y + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        Y[i + 1] = y
    return np.linspace(0.0, n * dt, n + 1), Y


def toy_flow(phi0: float, theta0: float, variant: str = "sg", t_end: float = 20.0, dt: float = 1e-2):
    """(t, φ(t), θ(t)) of the toy under ``variant`` from (φ0, θ0), by :func:`integrate_ode`.
    Chapter ``simsiam-dynamics`` (https://kexue.fm/archives/7980)."""
    t, Y = integrate_ode(lambda y: simsiam_toy_rhs(y[0], y[1], variant), [phi0, theta0], t_end, dt)
    return t, Y[:, 0], Y[:, 1]


def toy_final(phi0, theta0, variant: str = "sg", t_end: float = 100.0, dt: float = 2e-2):
    """(φ(t_end), θ(t_end)) of the toy from many starts at once: ``phi0``, ``theta0`` arrays of one
    shape, classical RK4 with step ``dt`` (only the final state kept). For the phase-portrait share
    of starts that avoid θ → 0 in chapter ``simsiam-dynamics`` (https://kexue.fm/archives/7980)."""
    phi = np.array(phi0, dtype=np.float64)
    th = np.array(theta0, dtype=np.float64)
    f = lambda a, b: simsiam_toy_rhs(a, b, variant)  # noqa: E731
    for _ in range(int(round(t_end / dt))):
        k1 = f(phi, th)
        k2 = f(phi + 0.5 * dt * k1[0], th + 0.5 * dt * k1[1])
        k3 = f(phi + 0.5 * dt * k2[0], th + 0.5 * dt * k2[1])
        k4 = f(phi + dt * k3[0], th + dt * k3[1])
        phi = phi + dt / 6.0 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        th = th + dt / 6.0 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return phi, th


def toy_theta_limit(phi0, theta0, variant: str = "sg"):
    """θ(∞) of the toy from (φ0, θ0 > 0), in closed form from each variant's conserved quantity
    (chapter ``simsiam-dynamics``, https://kexue.fm/archives/7980). With ψ = φ − 1 the flow has
    φ̇ = −ψθ² in every variant and

    - ``sg``: θ̇ = −ψφθ, so θ² − φ² is conserved; φ moves monotonically toward 1, and θ reaches 0 first
      exactly when φ² would have to pass below −c = φ0² − θ0² on the way: θ(∞)² = 1 + c if that stays
      positive (φ0 ≥ 1: 1 + c > 0; 0 ≤ φ0 < 1: always; φ0 < 0: c > 0), else 0;
    - ``full``: θ̇ = −ψ²θ, θ² − ψ² conserved, both shrink: θ(∞)² = max(θ0² − ψ0², 0);
    - ``direct_only``: θ̇ = ψθ, θ² + 2ψ conserved: θ(∞)² = max(θ0² + 2ψ0, 0).

    Returns an array (0 where the start collapses)."""
    phi0 = np.asarray(phi0, dtype=np.float64)
    th2 = np.asarray(theta0, dtype=np.float64) ** 2
    psi0 = phi0 - 1.0
    if variant == "sg":
        c = th2 - phi0 ** 2
        ok = np.where(phi0 >= 1.0, 1.0 + c > 0, np.where(phi0 >= 0.0, True, c > 0))
        lim2 = np.where(ok, 1.0 + c, 0.0)
    elif variant == "full":
        lim2 = th2 - psi0 ** 2
    elif variant == "direct_only":
        lim2 = th2 + 2.0 * psi0
    else:
        raise ValueError(f"unknown toy variant {variant!r}; use one of {TOY_VARIANTS}")
    return np.sqrt(np.maximum(lim2, 0.0))


# -- augmentations -------------------------------------------------------------------------------
def augment_images(x: torch.Tensor, shape: tuple[int, int], *, generator: torch.Generator | None = None,
                   max_shift: int = 2, noise_std: float = 0.1, erase_size: int = 0,
                   erase_prob: float = 0.5) -> torch.Tensor:
    """One random view of each image of ``x`` ((n, H·W) or (n, H, W); returned in the same shape):
    a shift by up to ``max_shift`` pixels in each direction (zero fill), an ``erase_size`` square
    set to 0 with probability ``erase_prob``, then Gaussian noise of sd ``noise_std``. Draws from
    ``generator`` (on ``x``'s device). The augmentations of chapter ``simsiam-dynamics``
    (https://kexue.fm/archives/7980)."""
    H, W = shape
    n = x.shape[0]
    img = x.reshape(n, H, W)
    dev = x.device
    g = generator
    if max_shift > 0:
        s = max_shift
        pad = F.pad(img, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n,), generator=g, device=dev)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=g, device=dev)
        rows = dy[:, None] + torch.arange(H, device=dev)[None, :]
        cols = dx[:, None] + torch.arange(W, device=dev)[None, :]
        img = pad[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]
    if erase_size > 0 and erase_prob > 0:
        e = erase_size
        y0 = torch.randint(0, H - e + 1, (n,), generator=g, device=dev)
        x0 = torch.randint(0, W - e + 1, (n,), generator=g, device=dev)
        on = torch.rand(n, generator=g, device=dev) < erase_prob
        r = torch.arange(H, device=dev)[None, :]
        c = torch.arange(W, device=dev)[None, :]
        mr = (r >= y0[:, None]) & (r < y0[:, None] + e)
        mc = (c >= x0[:, None]) & (c < x0[:, None] + e)
        mask = mr[:, :, None] & mc[:, None, :] & on[:, None, None]
        img = img.masked_fill(mask, 0.0)
    if noise_std > 0:
        img = img + noise_std * torch.randn(img.shape, generator=g, device=dev, dtype=img.dtype)
    return img.reshape(x.shape)


def mean_view(x: torch.Tensor, augment, m: int = 8) -> torch.Tensor:
    """x̄ ≈ E_T[T(x)], the mean of ``m`` views ``augment(x)``: the article's centre of the
    augmentations (its F(x̄) target, chapter ``simsiam-dynamics``, https://kexue.fm/archives/7980)."""
    return torch.stack([augment(x) for _ in range(m)]).mean(0)


# -- the model -------------------------------------------------------------------------------------
def mlp(dims: list[int], *, bn: bool = True, last_bn: bool = False, last_relu: bool = False) -> nn.Sequential:
    """Linear layers ``dims[0] → … → dims[-1]`` with BatchNorm + ReLU between them (``last_bn`` /
    ``last_relu``: also after the last). Encoder, projector and predictor of chapter
    ``simsiam-dynamics`` (https://kexue.fm/archives/7980)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=not (bn and (not last or last_bn))))
        if bn and (not last or last_bn):
            layers.append(nn.BatchNorm1d(b))
        if not last or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = −mean cos(p, z) over the batch (SimSiam's D). Chapter ``simsiam-dynamics``."""
    return -F.cosine_similarity(p, z, dim=-1).mean()


class SimSiam(nn.Module):
    """SimSiam (arXiv 2011.10566) and its ablations, for chapter ``simsiam-dynamics``
    (https://kexue.fm/archives/7980).

    ``encoder`` (backbone; its output is what the probes read), ``projector`` (z = projector(encoder(x)),
    the output the collapse metric reads) and ``predictor`` (p = h(z)). ``stop_grad``: the target
    branch is detached; ``predictor=None``: p = z; ``freeze_predictor``: a fixed random predictor.
    ``loss(x1, x2)`` is the symmetric ½D(p₁, sg(z₂)) + ½D(p₂, sg(z₁)); ``mean_target_loss(x1, x2, xbar)``
    is the article's untested F(x̄) target, ½D(z₁, z̄) + ½D(z₂, z̄) with z̄ = F(x̄), without predictor
    and without stop-gradient."""

    def __init__(self, encoder: nn.Module, projector: nn.Module, predictor: nn.Module | None = None, *,
                 stop_grad: bool = True, freeze_predictor: bool = False):
        super().__init__()
        self.encoder, self.projector, self.predictor = encoder, projector, predictor
        self.stop_grad = stop_grad
        if freeze_predictor:
            if predictor is None:
                raise ValueError("freeze_predictor needs a predictor")
            for p in predictor.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """z = projector(encoder(x))."""
        return self.project(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output (what the probes read)."""
        return self.encoder(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """z = projector(encoder(x))."""
        return self.projector(self.encoder(x))

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.predictor is None else self.predictor(z)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.project(x1), self.project(x2)
        p1, p2 = self.predict(z1), self.predict(z2)
        t1, t2 = (z1.detach(), z2.detach()) if self.stop_grad else (z1, z2)
        return 0.5 * negative_cosine(p1, t2) + 0.5 * negative_cosine(p2, t1)

    def mean_target_loss(self, x1: torch.Tensor, x2: torch.Tensor, xbar: torch.Tensor) -> torch.Tensor:
        zbar = self.project(xbar)
        if self.stop_grad:
            zbar = zbar.detach()
        return 0.5 * negative_cosine(self.predict(self.project(x1)), zbar) + \
            0.5 * negative_cosine(self.predict(self.project(x2)), zbar)

    def param_groups(self, lr: float, predictor_lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer groups: encoder + projector at ``lr``, the predictor at ``lr · predictor_lr_mult``
        (the two-timescale knob of the article's argument); frozen parameters left out."""
        body = [p for m in (self.encoder, self.projector) for p in m.parameters() if p.requires_grad]
        groups = [{"params": body, "lr": lr, "weight_decay": weight_decay}]
        if self.predictor is not None:
            pred = [p for p in self.predictor.parameters() if p.requires_grad]
            if pred:
                groups.append({"params": pred, "lr": lr * predictor_lr_mult, "weight_decay": weight_decay})
        return groups


# -- metrics and probes ------------------------------------------------------------------------------
def collapse_std(z: torch.Tensor) -> float:
    """Mean over channels of the std (ddof 0) of ``z/‖z‖`` over the rows: ≈ 1/√d for a healthy
    d-dimensional representation, 0 for a collapsed one (the SimSiam paper's monitor; chapter
    ``simsiam-dynamics``, https://kexue.fm/archives/7980)."""
    zn = F.normalize(z.double(), dim=1)
    return float(zn.std(dim=0, unbiased=False).mean())


@torch.no_grad()
def encode(fn, X: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``fn`` applied to ``X`` in batches under ``no_grad`` (concatenated). Chapter ``simsiam-dynamics``."""
    return torch.cat([fn(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])


@torch.no_grad()
def knn_accuracy(train_feats, train_y, test_feats, test_y, k: int = 20, metric: str = "cosine",
                 batch_size: int = 1024) -> float:
    """Accuracy of the majority vote of the ``k`` nearest training features (``metric`` "cosine" or
    "euclidean"; a tied vote goes to the smallest label, as in scikit-learn). Tested against
    ``sklearn.neighbors.KNeighborsClassifier``; chapter ``simsiam-dynamics``
    (https://kexue.fm/archives/7980)."""
    A = torch.as_tensor(train_feats).float()
    B = torch.as_tensor(test_feats, device=A.device).float()
    ya = torch.as_tensor(train_y, device=A.device).long()
    yb = torch.as_tensor(test_y, device=A.device).long()
    n_cls = int(max(ya.max(), yb.max())) + 1
    if metric == "cosine":
        A = F.normalize(A, dim=1)
        B = F.normalize(B, dim=1)
    elif metric != "euclidean":
        raise ValueError(f"unknown metric {metric!r}: use 'cosine' or 'euclidean'")
    correct = 0
    for i in range(0, len(B), batch_size):
        b = B[i:i + batch_size]
        if metric == "cosine":
            score = b @ A.T
        else:
            score = -torch.cdist(b, A)
        idx = score.topk(k, dim=1).indices
        lab = ya[idx]
        votes = torch.zeros(len(lab), n_cls, dtype=torch.long, device=lab.device).scatter_add_(1, lab, torch.ones_like(lab))
        correct += int((votes.argmax(1) == yb[i:i + batch_size]).sum())
    return correct / len(B)


def linear_probe(train_feats, train_y, dev_feats, dev_y, test_feats, test_y, *, steps: int = 300,
                 lr: float = 0.01, weight_decay: float = 1e-4, batch_size: int = 1024,
                 eval_every: int = 25, seed: int = 0) -> dict:
    """A linear softmax classifier on frozen features (z-scored with the training mean and sd),
    trained by Adam through :func:`kexue.train.fit` with the checkpoint of best dev accuracy.
    Returns ``{dev_acc, test_acc, best_step}``. Chapter ``simsiam-dynamics``
    (https://kexue.fm/archives/7980)."""
    from .train import fit

    A = torch.as_tensor(train_feats).float()
    dev = A.device
    mu, sd = A.mean(0), A.std(0) + 1e-5
    Z = lambda X: (torch.as_tensor(X, device=dev).float() - mu) / sd  # noqa: E731
    A, D, T = Z(train_feats), Z(dev_feats), Z(test_feats)
    ya = torch.as_tensor(train_y, device=dev).long()
    yd = torch.as_tensor(dev_y, device=dev).long()
    yt = torch.as_tensor(test_y, device=dev).long()
    n_cls = int(max(ya.max(), yd.max(), yt.max())) + 1
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(A.shape[1], n_cls, generator=g) * 0.01).to(dev).requires_grad_()
    b = torch.zeros(n_cls, device=dev, requires_grad=True)
    opt = torch.optim.AdamW([W, b], lr=lr, weight_decay=weight_decay)

    def loss_on(idx, rng):
        i = torch.as_tensor(idx, device=dev)
        return F.cross_entropy(A[i] @ W + b, ya[i])

    def acc(X, y):
        with torch.no_grad():
            return float(((X @ W + b).argmax(1) == y).float().mean())

    out = fit([W, b], loss_on, len(A), steps=steps, batch_size=min(batch_size, len(A)),
              evaluate=lambda: acc(D, yd), eval_every=eval_every, optimizer=opt, seed=seed)
    return {"dev_acc": out["best_dev"], "test_acc": acc(T, yt), "best_step": out["best_step"]}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, X: torch.Tensor, batch_size: int = 512) -> None:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) from ``X``
    in training mode, without gradients; gives a randomly initialised network the normalisation a
    trained one has. Chapter ``simsiam-dynamics`` (https://kexue.fm/archives/7980)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was = model.training
    moms = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(X), batch_size):
        xb = X[i:i + batch_size]
        if len(xb) > 1:
            model(xb)
    for m, mo in zip(bns, moms):
        m.momentum = mo
    model.train(was)


# -- the two-view loop -------------------------------------------------------------------------------
def _param_vector(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def train_two_view(model: nn.Module, loss_on, n_train: int, *, steps: int, batch_size: int, optimizer,
                   evaluate, eval_every: int, seed: int = 0, patience: int | None = None,
                   monitor=None, groups: dict | None = None) -> dict:
    """Train a two-view model through :func:`kexue.train.fit`, keeping the *whole* state (parameters
    and BatchNorm buffers) of the best dev evaluation and of the last one.

    ``loss_on(idx, rng)`` is the loss of a minibatch (e.g. ``model.loss(view(x), view(x))``);
    ``evaluate()`` a dev score, higher is better, called in eval mode; ``monitor()`` (optional) more
    numbers logged at each evaluation (e.g. the dev collapse std); ``groups``: name → parameter list
    whose relative update speed ‖Δw‖/‖w‖ per evaluation interval is logged (the article's fast
    predictor and slow encoder). Returns ``{best_state, last_state, best_dev, best_step, steps_run,
    history}``, history rows dicts with step, loss, dev and the monitored values. Chapter
    ``simsiam-dynamics`` (https://kexue.fm/archives/7980); the sentence-embedding chapters reuse it."""
    from .train import fit

    groups = groups or {}
    state = {"best": -math.inf, "best_state": None, "last_state": None, "rows": []}
    prev = {k: _param_vector(v) for k, v in groups.items()}

    def wrapped():
        model.eval()
        score = float(evaluate())
        row = {"dev": score}
        if monitor is not None:
            row.update(monitor())
        for k, ps in groups.items():
            now = _param_vector(ps)
            row[f"speed_{k}"] = float((now - prev[k]).norm() / (prev[k].norm() + 1e-12))
            prev[k] = now
        model.train()
        snap = copy.deepcopy(model.state_dict())
        state["last_state"] = snap
        if score > state["best"]:
            state["best"], state["best_state"] = score, snap
        state["rows"].append(row)
        return score

    model.train()
    out = fit(list(model.parameters()), loss_on, n_train, steps=steps, batch_size=batch_size,
              evaluate=wrapped, eval_every=eval_every, optimizer=optimizer, seed=seed, patience=patience)
    hist = [dict(step=s, loss=l, **r) for (s, l, _), r in zip(out["history"], state["rows"])]
    model.load_state_dict(state["best_state"])
    model.eval()
    return {"best_state": state["best_state"], "last_state": state["last_state"], "best_dev": out["best_dev"],
            "best_step": out["best_step"], "steps_run": out["steps_run"], "history": hist}


def probe_report(model: SimSiam, data: dict, *, k: int = 20, probe_steps: int = 300, seed: int = 0) -> dict:
    """The probes of one encoder state on ``data`` (tensors ``X_train, y_train, X_dev, y_dev, X_test,
    y_test`` on one device): kNN accuracy (k, cosine; bank = train, queries = test), linear-probe test
    accuracy (checkpoint by dev), kNN accuracy on z (``knn_z``), collapse std of z on the test images (and its ratio to 1/√d), all
    in eval mode. Chapter ``simsiam-dynamics`` (https://kexue.fm/archives/7980)."""
    model.eval()
    htr, hdv, hte = (encode(model.features, data[f"X_{s}"]) for s in ("train", "dev", "test"))
    z = encode(model.project, data["X_test"])
    lp = linear_probe(htr, data["y_train"], hdv, data["y_dev"], hte, data["y_test"], steps=probe_steps, seed=seed)
    std = collapse_std(z)
    ztr = encode(model.project, data["X_train"])
    return {"knn": knn_accuracy(htr, data["y_train"], hte, data["y_test"], k=k), "linear": lp["test_acc"],
            "knn_z": knn_accuracy(ztr, data["y_train"], z, data["y_test"], k=k),
            "linear_dev": lp["dev_acc"], "std": std, "std_ratio": std * math.sqrt(z.shape[1]),
            "feat_std": collapse_std(hte)}


# -- one arm of the chapter's ablation -------------------------------------------------------------
SIMSIAM_VARIANTS = ("sg_pred", "no_sg", "no_pred", "fixed_pred", "mean_target")


def build_simsiam(variant: str, in_dim: int, *, hidden: int = 512, proj: int = 128, pred_hidden: int = 32,
                  proj_bn: bool = True, seed: int = 0) -> SimSiam:
    """The chapter's SimSiam and ablations, initialised from ``seed``: encoder in_dim → hidden → hidden
    (BN + ReLU), projector hidden → proj (BN on its output unless ``proj_bn=False``), predictor proj → pred_hidden → proj (BN + ReLU inside).
    ``variant`` in :data:`SIMSIAM_VARIANTS`: ``sg_pred`` (SimSiam), ``no_sg``, ``no_pred``,
    ``fixed_pred`` (a fixed random predictor), ``mean_target`` (the article's F(x̄) target, no predictor,
    no stop-gradient). The same seed gives the same encoder in every variant. Chapter
    ``simsiam-dynamics`` (https://kexue.fm/archives/7980)."""
    if variant not in SIMSIAM_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {SIMSIAM_VARIANTS}")
    torch.manual_seed(seed)
    enc = mlp([in_dim, hidden, hidden], last_bn=True, last_relu=True)
    projector = mlp([hidden, proj], last_bn=proj_bn)
    pred = mlp([proj, pred_hidden, proj])
    use_pred = variant in ("sg_pred", "no_sg", "fixed_pred")
    return SimSiam(enc, projector, pred if use_pred else None, stop_grad=variant in ("sg_pred", "no_pred", "fixed_pred"),
                   freeze_predictor=variant == "fixed_pred")


def run_simsiam(variant: str, data: dict, *, shape: tuple[int, int], epochs: int, batch_size: int = 256,
                lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 1e-4, predictor_lr_mult: float = 1.0,
                aug: dict | None = None, k: int = 20, patience: int | None = None, mean_views: int = 8,
                probe_steps: int = 300, probe_init: bool = True, seed: int = 0, **arch) -> dict:
    """Train one arm (``variant``, see :func:`build_simsiam`) on ``data["X_train"]`` (labels unused in
    training) with SGD + momentum, evaluating the dev kNN accuracy (bank = train) after every epoch;
    keeps the best-dev and the last state. Returns ``{init, best, last}`` probe reports
    (:func:`probe_report`; ``init`` is the same encoder at initialisation with its BatchNorm statistics
    re-estimated on the training images; ``None`` with ``probe_init=False``, e.g. for the arms whose
    initialisation another arm of the same seed already probed), ``best_step``, ``steps_run`` and
    ``history`` (dev kNN, dev collapse std, loss, relative update speeds of encoder and predictor).
    Chapter ``simsiam-dynamics`` (https://kexue.fm/archives/7980)."""
    aug = dict(aug or {})
    dev = data["X_train"].device
    model = build_simsiam(variant, data["X_train"].shape[1], seed=seed, **arch).to(dev)
    init = None
    if probe_init:
        init_model = copy.deepcopy(model)
        recalibrate_bn(init_model, data["X_train"])
        init = probe_report(init_model, data, k=k, probe_steps=probe_steps, seed=seed)
    g = torch.Generator(device=dev).manual_seed(10_000 + seed)
    view = lambda x: augment_images(x, shape, generator=g, **aug)  # noqa: E731
    X = data["X_train"]

    def loss_on(idx, rng):
        x = X[torch.as_tensor(idx, device=dev)]
        if variant == "mean_target":
            return model.mean_target_loss(view(x), view(x), mean_view(x, view, mean_views))
        return model.loss(view(x), view(x))

    def evaluate():
        return knn_accuracy(encode(model.features, X), data["y_train"], encode(model.features, data["X_dev"]),
                            data["y_dev"], k=k)

    groups = {"encoder": [p for p in model.encoder.parameters()]}
    if model.predictor is not None:
        groups["predictor"] = [p for p in model.predictor.parameters()]
    opt = torch.optim.SGD(model.param_groups(lr, predictor_lr_mult, weight_decay), lr=lr, momentum=momentum)
    steps_per_epoch = max(1, len(X) // batch_size)
    out = train_two_view(model, loss_on, len(X), steps=epochs * steps_per_epoch, batch_size=batch_size,
                         optimizer=opt, evaluate=evaluate, eval_every=steps_per_epoch, seed=seed, patience=patience,
                         monitor=lambda: {"std": collapse_std(encode(model.project, data["X_dev"]))}, groups=groups)
    best = probe_report(model, data, k=k, probe_steps=probe_steps, seed=seed)
    model.load_state_dict(out["last_state"])
    last = probe_report(model, data, k=k, probe_steps=probe_steps, seed=seed)
    return {"variant": variant, "seed": seed, "init": init, "best": best, "last": last,
            "best_step": out["best_step"], "steps_run": out["steps_run"], "steps_per_epoch": steps_per_epoch,
            "history": out["history"]}
