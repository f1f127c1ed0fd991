"""Two-view contrastive learning with in-batch negatives (SimCLR's NT-Xent), with the loss's float32
rounding watched at every step.

From https://kexue.fm/archives/8586 (chapter ``flatnce``): InfoNCE or FlatNCE (:mod:`kexue.losses`)
on two augmented views of each image, a small MLP encoder, early stopping on the dev kNN accuracy
and a linear probe on held-out images. The training loop, the probes and the augmentations are
those of :mod:`kexue.ssl`; this module adds the contrastive objective, a float32 / float64 switch for
the whole run, and the diagnostics: at every step :func:`kexue.losses.rounding_report` on the
batch's own scores (how often p_t rounds to 1, how far the float32 loss and the positive's
gradient are from float64), and at every evaluation the cosine between the parameter gradient
computed in float32 and in float64 on one probe batch.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from . import losses as L
from .ssl import augment_images, encode, knn_accuracy, linear_probe, mlp, train_two_view

DIAG_KEYS = ("loss", "loss64", "flat64", "pos_lost", "loss_zero", "log10_xi", "gsum")


class ContrastiveNet(nn.Module):
    """Encoder ``in_dim → hidden → feat`` (ReLU, no BatchNorm, so that batch size acts only through
    the loss) and projector ``feat → proj``; the probes read the encoder's output, the loss the
    projection. Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""

    def __init__(self, in_dim: int, hidden: int = 256, feat: int = 128, proj: int = 64):
        super().__init__()
        self.encoder = mlp([in_dim, hidden, feat], bn=False, last_relu=True)
        self.projector = mlp([feat, feat, proj], bn=False)

    def features(self, x):
        return self.encoder(x)

    def forward(self, x):
        return self.projector(self.encoder(x))


def contrastive_loss(model: nn.Module, v1: torch.Tensor, v2: torch.Tensor, loss: str, tau: float):
    """(loss, scores, pos) of one batch of view pairs: NT-Xent scores (:func:`kexue.losses.in_batch_scores`)
    and ``loss`` in :data:`kexue.losses.LOSSES`. Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    s, pos = L.in_batch_scores(model(v1), model(v2), tau)
    return L.LOSSES[loss](s, pos), s, pos


def grad_cosine(model: nn.Module, v1: torch.Tensor, v2: torch.Tensor, loss: str, tau: float) -> dict:
    """The parameter gradient of one batch computed by a float32 copy and by a float64 copy of
    ``model`` (same parameters, same views): ``{"cos": cosine, "norm64": its float64 norm}``.
    Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    grads = {}
    for dt in (torch.float32, torch.float64):
        m = copy.deepcopy(model).to(dt)
        lv, _, _ = contrastive_loss(m, v1.to(dt), v2.to(dt), loss, tau)
        g = torch.autograd.grad(lv, [p for p in m.parameters()])
        grads[dt] = torch.cat([x.reshape(-1).double() for x in g])
    a, b = grads[torch.float32], grads[torch.float64]
    den = float(a.norm() * b.norm())
    return {"cos": float(a @ b) / den if den > 0 else float("nan"), "norm64": float(b.norm())}


def run_contrastive(data: dict, *, loss: str, batch_size: int, steps: int, tau: float, lr: float,
                    optimizer: str = "adam", dtype: torch.dtype = torch.float32, eval_every: int = 100,
                    aug: dict | None = None, seed: int = 0, hidden: int = 256, feat: int = 128, proj: int = 64,
                    k: int = 20, probe_steps: int = 300, patience: int | None = None, diag_every: int = 1,
                    probe_init: bool = False) -> dict:
    """Train one arm on ``data["X_train"]`` (flattened 8 × 8 images; labels unused in training) and
    probe it. ``loss``: ``"infonce"`` or ``"flatnce"``; ``dtype``: float32 or float64 for the whole
    run (model, views, loss); ``optimizer``: ``"adam"`` (PyTorch's defaults besides ``lr``) or
    ``"sgd"`` (momentum 0.9). The initialisation (``seed``), the minibatches and the augmentation
    draws are the same for every loss, dtype and optimizer: the views are drawn in float32 and cast.

    Every ``eval_every`` steps: the dev kNN accuracy (k, cosine, bank = training images; the best
    state is kept, :func:`kexue.ssl.train_two_view`) and :func:`grad_cosine` on a probe batch. At
    every ``diag_every``-th step (1: every step) the batch's scores go through :func:`kexue.losses.rounding_report`; ``diag`` holds per
    step the training loss, InfoNCE and FlatNCE at those scores in float64 (``loss64``, ``flat64``),
    the share of rows whose float32 ∂ℓ_CE/∂s_t is off by half or more (``pos_lost``; p_t rounded to 1),
    the share whose float32 InfoNCE value is exactly 0 (``loss_zero``), the median log10 ξ and the
    mean absolute float32 row sum of ∂ℓ_CE/∂s (``gsum``, 0 in exact arithmetic).

    ``probe_init``: also probe the encoder at initialisation (``probe_init`` in the result, else None).
    Returns ``{probe, probe_dev, probe_init, knn, best_dev, best_step, steps_run, history, diag}`` (``probe``:
    linear-probe test accuracy on the best-dev encoder, :func:`kexue.ssl.linear_probe`; ``knn``: its
    test kNN accuracy). Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    if loss not in L.LOSSES:
        raise ValueError(f"unknown loss {loss!r}; use one of {tuple(L.LOSSES)}")
    aug = dict(max_shift=1, noise_std=0.1, erase_size=0) if aug is None else dict(aug)
    X = data["X_train"].float()
    dev = X.device
    side = int(round(X.shape[1] ** 0.5))
    torch.manual_seed(seed)
    model = ContrastiveNet(X.shape[1], hidden, feat, proj).to(dev, dtype)
    g = torch.Generator(device=dev).manual_seed(10_000 + seed)
    gp = torch.Generator(device=dev).manual_seed(20_000 + seed)
    probe_rng = np.random.default_rng(30_000 + seed)
    diag = {key: [] for key in DIAG_KEYS}
    state = {"step": 0}

    def views(x, gen):
        return (augment_images(x, (side, side), generator=gen, **aug).to(dtype),
                augment_images(x, (side, side), generator=gen, **aug).to(dtype))

    def loss_on(idx, rng):
        v1, v2 = views(X[torch.as_tensor(idx, device=dev)], g)
        lv, s, pos = contrastive_loss(model, v1, v2, loss, tau)
        state["step"] += 1
        if (state["step"] - 1) % diag_every:
            return lv
        r = L.rounding_report(s.detach(), pos)
        lost = (r["gpos_err"] >= 0.5) & (r["gpos64"] != 0)
        for key, val in (("loss", float(lv.detach())), ("loss64", float(r["loss64"].mean())),
                         ("flat64", float(r["flat64"].mean())), ("pos_lost", float(lost.double().mean())),
                         ("loss_zero", float((r["loss32"] == 0).double().mean())),
                         ("log10_xi", float(torch.log10(r["xi"]).median())), ("gsum", float(r["gsum32"].abs().mean()))):
            diag[key].append(val)
        return lv

    def evaluate():
        with torch.no_grad():
            return knn_accuracy(encode(model.features, X.to(dtype)).float(), data["y_train"],
                                encode(model.features, data["X_dev"].to(dtype)).float(), data["y_dev"], k=k)

    def monitor():
        idx = torch.as_tensor(probe_rng.choice(len(X), size=min(batch_size, len(X)), replace=False), device=dev)
        v1, v2 = views(X[idx], gp)
        return grad_cosine(model, v1, v2, loss, tau)

    init = None
    if probe_init:
        with torch.no_grad():
            f0 = {s: encode(model.features, data[f"X_{s}"].to(dtype)).float() for s in ("train", "dev", "test")}
        init = linear_probe(f0["train"], data["y_train"], f0["dev"], data["y_dev"], f0["test"], data["y_test"],
                            steps=probe_steps, seed=seed)["test_acc"]
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}: use 'adam' or 'sgd'")
    out = train_two_view(model, loss_on, len(X), steps=steps, batch_size=batch_size, optimizer=opt,
                         evaluate=evaluate, eval_every=eval_every, seed=seed, patience=patience, monitor=monitor)
    with torch.no_grad():
        feats = {s: encode(model.features, data[f"X_{s}"].to(dtype)).float() for s in ("train", "dev", "test")}
    lp = linear_probe(feats["train"], data["y_train"], feats["dev"], data["y_dev"], feats["test"], data["y_test"],
                      steps=probe_steps, seed=seed)
    return {"probe": lp["test_acc"], "probe_dev": lp["dev_acc"], "probe_init": init,
            "knn": knn_accuracy(feats["train"], data["y_train"], feats["test"], data["y_test"], k=k),
            "best_dev": out["best_dev"], "best_step": out["best_step"], "steps_run": out["steps_run"],
            "history": out["history"], "diag": {key: np.asarray(v) for key, v in diag.items()}}


def late(diag: dict, key: str, frac: float = 0.5) -> float:
    """Mean of ``diag[key]`` over the last ``frac`` of the steps (the regime after the loss has
    fallen). Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    v = np.asarray(diag[key], dtype=float)
    if v.size == 0:
        raise ValueError(f"no values for {key!r}")
    return float(v[int(len(v) * (1 - frac)):].mean())


def late_grad_cos(history: list, frac: float = 0.5) -> float:
    """Mean float32-vs-float64 gradient cosine over the evaluations in the last ``frac`` of the run.
    Chapter ``flatnce`` (https://kexue.fm/archives/8586)."""
    steps = np.array([h["step"] for h in history])
    cos = np.array([h["cos"] for h in history])
    return float(np.nanmean(cos[steps > steps.max() * (1 - frac)]))


def tuned_runs(data: dict, *, lrs, seeds, **kw) -> dict:
    """The fair budget for one arm: every lr of ``lrs`` trained with ``seeds[0]``, the one with the
    best dev kNN accuracy kept (the first of ties), then the other seeds at that lr
    (:func:`run_contrastive` keywords in ``kw``). Returns ``{lr, dev_by_lr, runs}``. Chapter ``flatnce``
    (https://kexue.fm/archives/8586)."""
    grid = [run_contrastive(data, lr=lr, seed=seeds[0], **kw) for lr in lrs]
    best = int(np.argmax([r["best_dev"] for r in grid]))
    runs = [grid[best]] + [run_contrastive(data, lr=lrs[best], seed=s, **kw) for s in seeds[1:]]
    return {"lr": lrs[best], "dev_by_lr": [r["best_dev"] for r in grid], "runs": runs}


def run_grid(data: dict, arms: dict, batch_sizes, seeds, **common) -> dict:
    """``{arm: {batch_size: [run per seed]}}`` for ``arms`` (name → :func:`run_contrastive` keywords,
    e.g. ``{"loss": "infonce", "dtype": torch.float64}``), the ``common`` keywords shared by all; a
    ``diag_every`` of ``"auto"`` takes max(1, batch_size // 32). Chapter ``flatnce``
    (https://kexue.fm/archives/8586)."""
    out = {}
    for name, kw in arms.items():
        out[name] = {}
        for B in batch_sizes:
            args = {**common, **kw}
            if args.get("diag_every") == "auto":
                args["diag_every"] = max(1, B // 32)
            out[name][B] = [run_contrastive(data, batch_size=B, seed=s, **args) for s in seeds]
    return out
