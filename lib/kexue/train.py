"""A compact, deterministic classifier training loop (minibatch SGD with momentum) and the small
real data set the book trains on when a chapter needs one that fits a 2-core CPU.

First used by https://kexue.fm/archives/8725 (chapter ``xavier-averaging``), whose exploratory
study trains deep non-square MLPs under each initialisation rule.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


def load_digits_split(split_seed: int = 0, test_size: float = 0.25, val_size: float = 0.2,
                      check: bool = True) -> dict:
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes), split once with a fixed seed.

    Stratified: ``test_size`` of the data is the test set, then ``val_size`` of the rest is the
    validation set (for choosing learning rates), the remainder the training set. Features are
    standardised with the *training* mean and std (constant pixels stay 0). Returns float32 ``X_*``
    and int64 ``y_*`` tensors for train, val, test. Data: ``sklearn.datasets.load_digits``
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    from sklearn.model_selection import train_test_split

    from .data.images import load_digits
    X, y = load_digits(check=check)
    X_rest, X_test, y_rest, y_test = train_test_split(X, y, test_size=test_size, stratify=y,
                                                      random_state=split_seed)
    X_train, X_val, y_train, y_val = train_test_split(X_rest, y_rest, test_size=val_size,
                                                      stratify=y_rest, random_state=split_seed)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1.0

    def f(a):
        return torch.tensor((a - mean) / std, dtype=torch.float32)

    def t(a):
        return torch.tensor(a, dtype=torch.int64)

    return {"X_train": f(X_train), "y_train": t(y_train), "X_val": f(X_val), "y_val": t(y_val),
            "X_test": f(X_test), "y_test": t(y_test)}


@torch.no_grad()
def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of rows whose arg-max logit is the label. Non-finite logits (a diverged model)
    count as wrong. Used by ``train_classifier`` (chapter ``xavier-averaging``,
    https://kexue.fm/archives/8725)."""
    p = next(model.parameters(), None)      # the batch follows the model (a no-op when it is there)
    if p is not None:
        X, y = X.to(p.device), y.to(p.device)
    logits = model(X)
    ok = torch.isfinite(logits).all(dim=1) & (logits.argmax(dim=1) == y)
    return ok.float().mean().item()


@dataclass
class TrainResult:
    """What one training run returns."""
    train_loss: list = field(default_factory=list)  # mean minibatch cross-entropy of each epoch
    final_train_loss: float = math.nan               # cross-entropy on the whole training set at the end
    test_acc: float = math.nan
    val_acc: float = math.nan
    init_test_acc: float = math.nan                  # the same model before any step (a control)
    diverged: bool = False                           # a non-finite loss stopped the run
    seconds: float = 0.0


def train_classifier(model: nn.Module, data: dict, *, lr: float, epochs: int, batch_size: int = 64,
                     momentum: float = 0.9, optimizer: str = "sgd", seed: int = 0) -> TrainResult:
    """Train ``model`` with cross-entropy and minibatch SGD + momentum (PyTorch's form:
    v ← μ·v + g, θ ← θ - lr·v; ``optimizer="adam"`` swaps in Adam with β1 = ``momentum``),
    reshuffling each epoch with a generator seeded by ``seed``.

    ``data`` holds ``X_train, y_train, X_test, y_test`` and optionally ``X_val, y_val``. No weight
    decay, clipping or schedule, so the initialisation is all that differs between runs of a study.
    A non-finite minibatch loss stops the run (``diverged``; the rest of the curve is NaN).
    Deterministic for a given model, data and seed on one machine
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    t0 = time.perf_counter()
    dev = next(model.parameters()).device   # the data follow the model (a no-op when they are there)
    X, y = data["X_train"].to(dev), data["y_train"].to(dev)
    gen = torch.Generator().manual_seed(seed)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(momentum, 0.999))
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
    loss_fn = nn.CrossEntropyLoss()
    res = TrainResult(init_test_acc=accuracy(model, data["X_test"], data["y_test"]))
    for _ in range(epochs):
        if res.diverged:
            res.train_loss.append(math.nan)
            continue
        order = torch.randperm(len(X), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(X), batch_size):
            idx = order[start:start + batch_size].to(dev)
            loss = loss_fn(model(X[idx]), y[idx])
            if not torch.isfinite(loss):
                res.diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        res.train_loss.append(math.nan if res.diverged else total / count)
    with torch.no_grad():
        final = loss_fn(model(X), y).item()
    res.final_train_loss = final if math.isfinite(final) else math.nan
    res.test_acc = accuracy(model, data["X_test"], data["y_test"])
    if "X_val" in data:
        res.val_acc = accuracy(model, data["X_val"], data["y_val"])
    res.seconds = time.perf_counter() - t0
    return res


def lr_seed_sweep(build, data: dict, *, lrs, seeds, epochs: int, batch_size: int = 64,
                  momentum: float = 0.9, optimizer: str = "sgd") -> list[dict]:
    """Train ``build(seed)`` (a fresh model per run) for every learning rate × seed.

    Returns one dict per run: lr, seed and the fields of ``TrainResult``
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    runs = []
    for lr in lrs:
        for s in seeds:
            r = train_classifier(build(s), data, lr=lr, epochs=epochs, batch_size=batch_size,
                                 momentum=momentum, optimizer=optimizer, seed=s)
            runs.append({"lr": lr, "seed": s, **vars(r)})
    return runs


def select_lr_by_validation(runs: list[dict]) -> float:
    """The learning rate with the highest mean validation accuracy over seeds (ties: the smaller
    lr). Test accuracy is never looked at (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    lrs = sorted({r["lr"] for r in runs})
    means = [np.mean([r["val_acc"] for r in runs if r["lr"] == lr]) for lr in lrs]
    return lrs[int(np.argmax(means))]


def summarize(runs: list[dict], key: str, lr: float | None = None) -> tuple[float, float, int]:
    """Mean, sample std (0 for one run) and count of ``key`` over the runs (at ``lr`` if given).

    https://kexue.fm/archives/8725, chapter ``xavier-averaging``."""
    vals = np.array([r[key] for r in runs if lr is None or r["lr"] == lr], dtype=float)
    std = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return float(vals.mean()), std, len(vals)


def fit(params: list, loss_on, n_train: int, *, steps: int, batch_size: int, evaluate,
        eval_every: int, optimizer=None, lr: float | None = None, seed: int = 0,
        patience: int | None = None) -> dict:
    """The book's one minibatch loop with early stopping on dev.

    ``loss_on(batch_indices, rng)`` returns the loss of a minibatch of the ``n_train`` training
    examples; minibatches are drawn epoch by epoch from permutations of a ``numpy`` generator seeded
    by ``seed`` (the same ``rng`` is passed on, e.g. for masking). Every ``eval_every`` steps and at
    the last one ``evaluate()`` (a dev score, higher is better) is recorded, and at the end the
    trainable parameters of the best evaluation are restored (the first of equal scores).

    ``optimizer`` is passed in, built over ``params``; without one, Adam with ``lr`` (no weight
    decay). ``patience``: stop early once that many evaluations in a row have not beaten the best
    dev score (``steps`` is then only a cap); None (the default) always runs all ``steps``.
    Returns ``{best_dev, best_step, steps_run, history: [(step, mean training loss since the last
    evaluation, dev score)]}``. Used by the few-shot runs of chapter ``p-tuning``
    (https://kexue.fm/archives/8295)."""
    params = [p for p in params if p.requires_grad]
    if optimizer is None:
        if lr is None:
            raise ValueError("fit needs an optimizer or a learning rate (lr) for Adam")
        optimizer = torch.optim.Adam(params, lr=lr)
    if steps < 1 or eval_every < 1 or batch_size < 1 or n_train < 1:
        raise ValueError(f"fit needs steps, eval_every, batch_size and n_train >= 1; got {steps}, "
                         f"{eval_every}, {batch_size}, {n_train}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience is None or >= 1 evaluations; got {patience}")
    rng = np.random.default_rng(seed)
    queue: list = []
    best, best_step, snap, hist, run_loss = -math.inf, 0, None, [], []
    stale, step = 0, 0
    for step in range(1, steps + 1):
        if len(queue) < batch_size:
            queue.extend(rng.permutation(n_train).tolist())
        idx, queue = queue[:batch_size], queue[batch_size:]
        loss = loss_on(idx, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        run_loss.append(loss.item())
        if step % eval_every == 0 or step == steps:
            score = evaluate()
            hist.append((step, float(np.mean(run_loss)), score))
            run_loss = []
            if score > best:
                best, best_step, snap, stale = score, step, [p.detach().clone() for p in params], 0
            else:
                stale += 1
                if patience is not None and stale >= patience:
                    break
    with torch.no_grad():
        for p, s in zip(params, snap):
            p.copy_(s)
    return {"best_dev": best, "best_step": best_step, "steps_run": step, "history": hist}
