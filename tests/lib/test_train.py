"""Tests of kexue.train (https://kexue.fm/archives/8725, chapter xavier-averaging)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from kexue import train as T


def _blobs(n=240, seed=0):
    """Three well-separated Gaussian blobs in 5-D: a problem any working loop solves."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = 4 * torch.eye(3, 5)
    X = centres[y] + torch.randn(n, 5, generator=gen)
    cut, val = n * 2 // 3, n * 5 // 6
    return {"X_train": X[:cut], "y_train": y[:cut], "X_val": X[cut:val], "y_val": y[cut:val],
            "X_test": X[val:], "y_test": y[val:]}


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3))


def test_accuracy_against_manual_count_and_nonfinite_logits():
    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, X):
            return self.logits

    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [float("nan"), 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    # rows 0 and 1 right, row 2 wrong, row 3 non-finite -> wrong (argmax alone would say right)
    assert T.accuracy(Fixed(logits), None, y) == pytest.approx(0.5)


def test_training_learns_separable_blobs():
    data = _blobs()
    r = T.train_classifier(_model(), data, lr=0.05, epochs=15, batch_size=16, seed=0)
    assert len(r.train_loss) == 15 and not r.diverged
    assert r.train_loss[-1] < 0.3 * r.train_loss[0]
    assert r.test_acc >= 0.95 and r.val_acc >= 0.95
    assert r.final_train_loss < r.train_loss[0]
    assert 0.0 <= r.init_test_acc <= 1.0 and r.seconds > 0


def test_training_is_deterministic_for_a_seed():
    data = _blobs()
    a = T.train_classifier(_model(1), data, lr=0.05, epochs=4, batch_size=16, seed=3)
    b = T.train_classifier(_model(1), data, lr=0.05, epochs=4, batch_size=16, seed=3)
    c = T.train_classifier(_model(1), data, lr=0.05, epochs=4, batch_size=16, seed=4)
    assert a.train_loss == b.train_loss and a.final_train_loss == b.final_train_loss
    assert a.test_acc == b.test_acc
    assert a.train_loss != c.train_loss  # the shuffling follows the seed


def test_one_full_batch_step_is_plain_gradient_descent():
    data = _blobs(n=60)
    model = _model(2)
    ref = _model(2)
    X, y = data["X_train"], data["y_train"]
    loss = nn.functional.cross_entropy(ref(X), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    T.train_classifier(model, data, lr=0.1, epochs=1, batch_size=len(X), momentum=0.9, seed=0)
    for p, q, g in zip(model.parameters(), ref.parameters(), grads):
        assert torch.allclose(p, q - 0.1 * g, atol=1e-6)  # first step: v = g


def test_divergence_is_caught_and_the_curve_keeps_its_length():
    data = _blobs()
    model = _model()
    r_ok = T.train_classifier(_model(), data, lr=0.05, epochs=1, batch_size=16, seed=0)
    assert not r_ok.diverged
    with torch.no_grad():
        model[2].bias[0] = float("inf")  # an overflowed logit: the loss is NaN
    r = T.train_classifier(model, data, lr=0.05, epochs=5, batch_size=16, seed=0)
    assert r.diverged
    assert len(r.train_loss) == 5 and math.isnan(r.train_loss[-1])
    assert 0.0 <= r.test_acc <= 1.0


def test_adam_option_and_bad_optimizer():
    data = _blobs()
    r = T.train_classifier(_model(), data, lr=0.01, epochs=10, batch_size=16, optimizer="adam")
    assert r.test_acc >= 0.95
    with pytest.raises(ValueError):
        T.train_classifier(_model(), data, lr=0.01, epochs=1, optimizer="lbfgs")


def test_sweep_selection_and_summary():
    data = _blobs()
    runs = T.lr_seed_sweep(_model, data, lrs=[1e-5, 0.05], seeds=[0, 1], epochs=3, batch_size=16)
    assert [(r["lr"], r["seed"]) for r in runs] == [(1e-5, 0), (1e-5, 1), (0.05, 0), (0.05, 1)]
    assert {"train_loss", "val_acc", "test_acc", "diverged"} <= set(runs[0])
    assert T.select_lr_by_validation(runs) == 0.05
    mean, std, count = T.summarize(runs, "test_acc", lr=0.05)
    vals = [r["test_acc"] for r in runs if r["lr"] == 0.05]
    assert count == 2 and mean == pytest.approx(np.mean(vals)) and std == pytest.approx(np.std(vals, ddof=1))
    assert T.summarize(runs[:1], "test_acc") == (runs[0]["test_acc"], 0.0, 1)


def test_selection_never_looks_at_test_accuracy():
    runs = [{"lr": 0.1, "val_acc": 0.9, "test_acc": 0.1}, {"lr": 0.01, "val_acc": 0.5, "test_acc": 1.0},
            {"lr": 0.03, "val_acc": 0.9, "test_acc": 0.2}]
    assert T.select_lr_by_validation(runs) == 0.03  # tie on val -> the smaller lr


def test_load_digits_split_is_fixed_stratified_and_standardised():
    a, b = T.load_digits_split(), T.load_digits_split()
    sizes = [len(a[f"y_{s}"]) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797 and sizes[2] == 450
    for key in a:
        assert torch.equal(a[key], b[key])
    assert a["X_train"].dtype == torch.float32 and a["y_train"].dtype == torch.int64
    assert a["X_train"].mean(dim=0).abs().max() < 1e-5
    nonconst = a["X_train"].std(dim=0) > 0
    assert torch.allclose(a["X_train"].std(dim=0, unbiased=False)[nonconst], torch.ones(1), atol=1e-4)
    counts = torch.bincount(a["y_test"], minlength=10)
    totals = counts + torch.bincount(a["y_train"], minlength=10) + torch.bincount(a["y_val"], minlength=10)
    assert (counts - 0.25 * totals).abs().max() <= 1  # stratified: a quarter of every class
    other = T.load_digits_split(split_seed=1)
    assert not torch.equal(other["y_test"], a["y_test"])


def test_load_digits_checks_the_checksum(monkeypatch):
    import kexue.data.images as images
    monkeypatch.setattr(images, "DIGITS_SHA256", "0" * 64)
    with pytest.raises(images.MissingDataError, match="checksum"):
        T.load_digits_split()
    assert len(T.load_digits_split(check=False)["y_test"]) == 450


def slow_fit(w0, X, y, steps, batch, lr, eval_every, seed):
    """The same loop written out by hand: Adam on squared error, batches from numpy permutations."""
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    rng = np.random.default_rng(seed)
    order = []
    best, best_w, best_step = -np.inf, None, 0
    for step in range(1, steps + 1):
        if len(order) < batch:
            order += rng.permutation(len(X)).tolist()
        idx, order = order[:batch], order[batch:]
        loss = ((X[idx] @ w - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            score = -((X @ w - y) ** 2).mean().item()
            if score > best:
                best, best_w, best_step = score, w.detach().clone(), step
    return best, best_w, best_step


def test_fit_equals_a_hand_written_loop_and_restores_the_best_dev_step():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(37, 3, generator=g), torch.randn(37, generator=g)
    w0 = torch.randn(3, generator=g)
    w = w0.clone().requires_grad_(True)
    dev = lambda: -((X @ w - y) ** 2).mean().item()  # noqa: E731
    out = T.fit([w], lambda idx, rng: ((X[idx] @ w - y[idx]) ** 2).mean(), len(X), steps=23,
                batch_size=8, lr=0.3, evaluate=dev, eval_every=5, seed=4)
    best, best_w, best_step = slow_fit(w0, X, y, 23, 8, 0.3, 5, 4)
    assert out["best_step"] == best_step and out["best_dev"] == best
    assert torch.equal(w.detach(), best_w)                      # the best dev step's weights
    assert [h[0] for h in out["history"]] == [5, 10, 15, 20, 23]
    w2 = w0.clone().requires_grad_(True)
    opt = torch.optim.SGD([w2], lr=0.05)
    out2 = T.fit([w2], lambda idx, rng: ((X[idx] @ w2 - y[idx]) ** 2).mean(), len(X), steps=5,
                 batch_size=8, optimizer=opt, evaluate=lambda: 0.0, eval_every=5)
    assert out2["best_step"] == 5
    with pytest.raises(ValueError, match="optimizer or a learning rate"):
        T.fit([w2], None, 1, steps=1, batch_size=1, evaluate=None, eval_every=1)


def slow_fit_patience(w0, X, y, steps, batch, lr, eval_every, seed, patience):
    """The hand-written loop with early stopping: after each evaluation count the evaluations in a
    row that did not beat the best; stop when that count reaches ``patience``."""
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    rng = np.random.default_rng(seed)
    order, evals = [], []
    best, best_w, best_step, last = -np.inf, None, 0, 0
    for step in range(1, steps + 1):
        if len(order) < batch:
            order += rng.permutation(len(X)).tolist()
        idx, order = order[:batch], order[batch:]
        loss = ((X[idx] @ w - y[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        last = step
        if step % eval_every == 0 or step == steps:
            score = -((X @ w - y) ** 2).mean().item()
            evals.append(score)
            if score > best:
                best, best_w, best_step = score, w.detach().clone(), step
            if len(evals) >= patience and all(s <= max([-np.inf] + evals[:-patience]) for s in evals[-patience:]):
                break
    return best, best_w, best_step, last, len(evals)


@pytest.mark.parametrize("patience,lr", [(1, 0.3), (2, 0.3), (3, 1.5), (2, 0.02)])
def test_fit_patience_equals_a_hand_written_early_stopping_loop(patience, lr):
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(41, 3, generator=g), torch.randn(41, generator=g)
    w0 = 3 * torch.randn(3, generator=g)
    w = w0.clone().requires_grad_(True)
    out = T.fit([w], lambda idx, rng: ((X[idx] @ w - y[idx]) ** 2).mean(), len(X), steps=200,
                batch_size=8, lr=lr, evaluate=lambda: -((X @ w - y) ** 2).mean().item(), eval_every=3,
                seed=2, patience=patience)
    best, best_w, best_step, last, n_evals = slow_fit_patience(w0, X, y, 200, 8, lr, 3, 2, patience)
    assert (out["best_dev"], out["best_step"], out["steps_run"]) == (best, best_step, last)
    assert len(out["history"]) == n_evals
    assert torch.equal(w.detach(), best_w)
    # it stopped because of patience (or at the cap), never earlier than patience evaluations after the best
    assert last == 200 or last >= best_step + patience * 3 - 2


def test_fit_default_and_unreached_patience_are_bit_identical_to_no_early_stopping():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(37, 3, generator=g), torch.randn(37, generator=g)
    w0 = torch.randn(3, generator=g)
    outs, ws = [], []
    for kw in ({}, {"patience": None}, {"patience": 10_000}):
        w = w0.clone().requires_grad_(True)
        outs.append(T.fit([w], lambda idx, rng: ((X[idx] @ w - y[idx]) ** 2).mean(), len(X), steps=23,
                          batch_size=8, lr=0.3, evaluate=lambda: -((X @ w - y) ** 2).mean().item(),
                          eval_every=5, seed=4, **kw))
        ws.append(w.detach().clone())
    best, best_w, best_step = slow_fit(w0, X, y, 23, 8, 0.3, 5, 4)
    for out, w in zip(outs, ws):
        assert (out["best_dev"], out["best_step"], out["steps_run"]) == (best, best_step, 23)
        assert out["history"] == outs[0]["history"]
        assert torch.equal(w, best_w)
    with pytest.raises(ValueError, match="patience"):
        T.fit([w0.clone().requires_grad_(True)], None, 1, steps=1, batch_size=1, lr=0.1, evaluate=None,
              eval_every=1, patience=0)
