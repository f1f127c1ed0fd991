"""Gradient accumulation folded into momentum (https://kexue.fm/archives/8634, chapter
``momentum-grad-accum``; restated for Tiger in https://kexue.fm/archives/9512 and ``bojone/tiger``).

Plain k-step accumulation keeps a buffer ``acc += g_t / k`` and, every k micro-steps, does one
momentum step ``m <- β m + (1 − β) acc``, ``θ <- θ − α m``. Su's observation: the buffer is not
needed, because the momentum itself can accumulate. With the indicator χ_{t/k} = 1 when k | t
(micro-steps t = 1, 2, ...), the folded momentum

    m_t = [(β − 1) χ_{(t−1)/k} + 1] m_{t−1} + (1 − β)/k · g_t,      θ_t = θ_{t−1} − χ_{t/k} α m_t

decays by β on the *first* micro-step of each cycle, adds g/k on every micro-step and moves the
parameters on the *last* one: after k micro-steps it holds exactly β m + (1 − β) ḡ. So folded SGDM
is SGDM on the averaged (= the large-batch, for a mean loss) gradient, with one buffer fewer.

- :func:`chi`: the indicator; :func:`tilde_beta`: the constant-β̃ approximation 1 − (1 − β)/k;
- :class:`FoldedAccumSGDM`: the folded momentum (``fold="exact"``), or an ordinary EMA at every
  micro-step with parameters moved every k (``fold="ema"``: with ``beta=tilde_beta(β, k)`` the
  article's simpler approximation; with β unchanged, "just update less often");
- :class:`FoldedAccumAdam`: Adam whose first moment folds exactly; the second moment cannot (the mean
  of squares is not the square of the mean), so ``exact_v=False`` folds g² the same way (the
  article's approximation) and ``exact_v=True`` keeps a gradient buffer (exact accumulation);
- :class:`FoldedAccumTiger`: Tiger (sign of momentum plus decoupled weight decay, Lion with
  β₁ = β₂) with zero-memory accumulation, as ``bojone/tiger`` does it;
- :func:`microbatch_stream`, :func:`run_stream`, :func:`max_abs_diff`, :func:`state_bytes`,
  :func:`feed_gradients`: the exactness experiment; :func:`train_arm`: one training run via
  :func:`kexue.train.fit`.

Schedules, bias correction and weight decay count *updates* (t // k), not micro-steps. Parameters
whose ``grad`` is None still decay their momentum on a cycle start (their gradient counts as 0).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

__all__ = ["chi", "tilde_beta", "FoldedAccumSGDM", "FoldedAccumAdam", "FoldedAccumTiger",
           "microbatch_stream", "run_stream", "max_abs_diff", "state_bytes", "feed_gradients",
           "mlp", "train_arm"]


def chi(t: int, k: int) -> int:
    """χ_{t/k}: 1 when k divides the micro-step t, else 0 (https://kexue.fm/archives/8634, chapter
    ``momentum-grad-accum``). χ_{(t−1)/k} = 1 marks the first micro-step of a cycle (t counts from 1),
    χ_{t/k} = 1 its last."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return 1 if t % k == 0 else 0


def tilde_beta(beta: float, k: int) -> float:
    """β̃ = 1 − (1 − β)/k, the per-micro-step momentum whose k-th power is ≈ β (the article's simpler
    approximation of k-step accumulation; https://kexue.fm/archives/8634, chapter ``momentum-grad-accum``)."""
    return 1.0 - (1.0 - beta) / k


class _Folded(torch.optim.Optimizer):
    """Shared micro-step bookkeeping: ``self.t`` counts calls of ``step`` (micro-steps, from 1)."""

    def __init__(self, params, defaults, k: int):
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        super().__init__(params, defaults)
        self.k = int(k)
        self.t = 0

    @property
    def updates(self) -> int:
        """Parameter updates done so far (t // k): what schedules and bias correction count."""
        return self.t // self.k

    def _grad(self, p):
        return torch.zeros_like(p) if p.grad is None else p.grad

    def _tick(self) -> tuple[bool, bool]:
        self.t += 1
        return chi(self.t - 1, self.k) == 1, chi(self.t, self.k) == 1  # (cycle start, cycle end)


class FoldedAccumSGDM(_Folded):
    """SGD with momentum and k-step gradient accumulation folded into the momentum
    (https://kexue.fm/archives/8634, chapter ``momentum-grad-accum``). Call ``step()`` after every
    micro-batch's backward pass.

    ``fold="exact"``: m ← β m on the first micro-step of a cycle, m ← m + (1 − β)/k · g on every one,
    θ ← θ − lr (m + weight_decay · θ) on the last: exactly SGDM (m ← β m + (1 − β) ḡ, dampened, as
    Su writes it) on the mean of k micro-batch gradients. ``fold="ema"``: m ← β m + (1 − β) g on every
    micro-step, θ moved every k (the constant-β̃ approximation when ``beta=tilde_beta(β, k)``; "update
    less often" with β unchanged). ``k=1``: plain dampened SGDM for either fold. Weight decay is
    decoupled and applied on updates only."""

    def __init__(self, params, lr: float, beta: float = 0.9, k: int = 1, weight_decay: float = 0.0,
                 fold: str = "exact"):
        if fold not in ("exact", "ema"):
            raise ValueError(f"fold is 'exact' or 'ema', got {fold!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay), k)
        self.fold = fold

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        start, end = self._tick()
        for group in self.param_groups:
            b, lr, wd = group["beta"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                st = self.state[p]
                if "m" not in st:
                    st["m"] = torch.zeros_like(p)
                m, g = st["m"], self._grad(p)
                if self.fold == "exact":
                    if start:
                        m.mul_(b)
                    m.add_(g, alpha=(1.0 - b) / self.k)
                else:
                    m.mul_(b).add_(g, alpha=1.0 - b)
                if end:
                    if wd:
                        p.add_(p, alpha=-lr * wd)
                    p.add_(m, alpha=-lr)
        return loss


class FoldedAccumAdam(_Folded):
    """Adam with k-step gradient accumulation inside its moments (https://kexue.fm/archives/8634,
    chapter ``momentum-grad-accum``). Call ``step()`` after every micro-batch.

    The first moment folds exactly: m ← β₁ m on a cycle's first micro-step, m += (1 − β₁)/k · g on
    each. ``exact_v=False`` (the article's approximation, no extra buffer): v is folded the same way
    with g², so it averages the squares of the micro-batch gradients instead of squaring their mean.
    ``exact_v=True``: a gradient buffer accumulates ḡ and v ← β₂ v + (1 − β₂) ḡ² on the update, so the
    step is exactly ``torch.optim.Adam`` on the mean gradient. Updates on a cycle's last micro-step,
    θ ← θ − lr·m̂/(√v̂ + eps) with the bias corrections of n = t // k updates (torch's formula);
    decoupled weight decay (AdamW style) on updates only. ``k=1`` is ``torch.optim.Adam``."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, k: int = 1,
                 exact_v: bool = False, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay), k)
        self.exact_v = bool(exact_v)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        start, end = self._tick()
        n = self.updates
        for group in self.param_groups:
            (b1, b2), lr, eps, wd = group["betas"], group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                st = self.state[p]
                if "m" not in st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                    if self.exact_v:
                        st["acc"] = torch.zeros_like(p)
                m, v, g = st["m"], st["v"], self._grad(p)
                if start:
                    m.mul_(b1)
                m.add_(g, alpha=(1.0 - b1) / self.k)
                if self.exact_v:
                    st["acc"].add_(g, alpha=1.0 / self.k)
                    if end:
                        v.mul_(b2).addcmul_(st["acc"], st["acc"], value=1.0 - b2)
                        st["acc"].zero_()
                else:
                    if start:
                        v.mul_(b2)
                    v.addcmul_(g, g, value=(1.0 - b2) / self.k)
                if end:
                    if wd:
                        p.mul_(1.0 - lr * wd)
                    denom = (v.sqrt() / math.sqrt(1.0 - b2 ** n)).add_(eps)
                    p.addcdiv_(m, denom, value=-lr / (1.0 - b1 ** n))
        return loss


class FoldedAccumTiger(_Folded):
    """Tiger, "a tight-fisted optimizer" (https://kexue.fm/archives/9512, ``bojone/tiger``), with
    k-step accumulation folded into its one momentum (https://kexue.fm/archives/8634; chapter
    ``momentum-grad-accum``): m ← β m on a cycle's first micro-step, m += (1 − β)/k · g on each, and on
    its last θ ← θ − lr (sign(m) + weight_decay · θ). At k = 1 it is Lion with β₁ = β₂ = β
    (``lion_pytorch.Lion(betas=(β, β))``). Su's per-tensor RMS learning-rate scaling and NaN guard are
    left out (the plain sign optimizers live in :mod:`kexue.optim.sign`)."""

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.965, weight_decay: float = 0.01,
                 k: int = 1):
        super().__init__(params, dict(lr=lr, beta=beta, weight_decay=weight_decay), k)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        start, end = self._tick()
        for group in self.param_groups:
            b, lr, wd = group["beta"], group["lr"], group["weight_decay"]
            for p in group["params"]:
                st = self.state[p]
                if "m" not in st:
                    st["m"] = torch.zeros_like(p)
                m = st["m"]
                if start:
                    m.mul_(b)
                m.add_(self._grad(p), alpha=(1.0 - b) / self.k)
                if end:
                    p.add_(torch.sign(m) + wd * p, alpha=-lr)
        return loss


# -- the exactness experiment ---------------------------------------------------------------------
def microbatch_stream(n: int, batch: int, steps: int, seed: int) -> list[np.ndarray]:
    """``steps`` micro-batches of ``batch`` indices into ``n`` examples, epoch by epoch from
    permutations of a generator seeded by ``seed`` (the order :func:`kexue.train.fit` draws). Chapter
    ``momentum-grad-accum`` (https://kexue.fm/archives/8634)."""
    rng = np.random.default_rng(seed)
    queue: list = []
    out = []
    for _ in range(steps):
        if len(queue) < batch:
            queue.extend(rng.permutation(n).tolist())
        out.append(np.array(queue[:batch]))
        queue = queue[batch:]
    return out


def run_stream(model: nn.Module, opt, X: torch.Tensor, y: torch.Tensor, stream, *, k: int = 1,
               mode: str = "folded", loss_fn=None) -> list[float]:
    """Train ``model`` on the micro-batches ``stream`` with a mean loss; returns the losses.

    ``mode="folded"``: ``opt.step()`` after every micro-batch (a folded optimizer does the rest).
    ``"explicit"``: the textbook loop, gradients of loss/k summed in ``.grad`` over k micro-batches,
    then one step of an ordinary optimizer and ``zero_grad``. ``"batch"``: each group of k
    micro-batches concatenated into one batch, one step each (the true large batch). Chapter
    ``momentum-grad-accum`` (https://kexue.fm/archives/8634)."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    losses = []
    if mode == "batch":
        groups = [np.concatenate(stream[i:i + k]) for i in range(0, len(stream) - k + 1, k)]
        for idx in groups:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(X[idx]), y[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses
    if mode not in ("folded", "explicit"):
        raise ValueError(f"mode is 'folded', 'explicit' or 'batch', got {mode!r}")
    opt.zero_grad(set_to_none=True)
    for t, idx in enumerate(stream, start=1):
        loss = loss_fn(model(X[idx]), y[idx])
        if mode == "folded":
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            (loss / k).backward()
            if t % k == 0:
                opt.step()
                opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def max_abs_diff(a: nn.Module | list, b: nn.Module | list) -> float:
    """max |a − b| over all parameters (modules) or tensors (lists); chapter ``momentum-grad-accum``."""
    ta = list(a.parameters()) if isinstance(a, nn.Module) else list(a)
    tb = list(b.parameters()) if isinstance(b, nn.Module) else list(b)
    return max(float((x.detach() - z.detach()).abs().max()) for x, z in zip(ta, tb))


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes held by an optimizer's state tensors (momenta, second moments, accumulation buffers);
    chapter ``momentum-grad-accum`` (https://kexue.fm/archives/8634)."""
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if torch.is_tensor(v))


def feed_gradients(opt, params: list, grads: list) -> None:
    """Step ``opt`` over ``params`` with a fixed, θ-independent gradient sequence: ``grads[t][i]`` is
    parameter i's gradient at micro-step t. Separates what an optimizer does to its buffers from the
    trajectory (chapter ``momentum-grad-accum``, https://kexue.fm/archives/8634)."""
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


def mlp(sizes, *, seed: int, dtype=torch.float32, device=None) -> nn.Sequential:
    """A ReLU MLP with torch's default init, seeded (chapter ``momentum-grad-accum``,
    https://kexue.fm/archives/8634)."""
    g = torch.random.fork_rng(devices=[])
    with g:
        torch.manual_seed(seed)
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        net = nn.Sequential(*layers)
    return net.to(device=device, dtype=dtype)


ARMS = ("every_step", "folded", "sparse", "ema_tilde", "large_batch", "adam_folded", "adam_explicit",
        "adam_every_step")


def make_optimizer(arm: str, params, *, lr: float, k: int, beta: float = 0.9, betas=(0.9, 0.999)):
    """The optimizer of one training arm of chapter ``momentum-grad-accum``
    (https://kexue.fm/archives/8634): ``every_step`` dampened SGDM each micro-batch; ``folded``
    :class:`FoldedAccumSGDM` (exact, k); ``sparse`` the EMA at every micro-step with β unchanged,
    parameters moved every k; ``ema_tilde`` the same with β̃ = 1 − (1 − β)/k; ``large_batch``
    dampened SGDM (to be fed batches k times larger); ``adam_folded`` / ``adam_explicit``
    :class:`FoldedAccumAdam` with ``exact_v`` False / True; ``adam_every_step`` Adam each micro-batch."""
    if arm in ("every_step", "large_batch"):
        return FoldedAccumSGDM(params, lr=lr, beta=beta, k=1)
    if arm == "folded":
        return FoldedAccumSGDM(params, lr=lr, beta=beta, k=k)
    if arm == "sparse":
        return FoldedAccumSGDM(params, lr=lr, beta=beta, k=k, fold="ema")
    if arm == "ema_tilde":
        return FoldedAccumSGDM(params, lr=lr, beta=tilde_beta(beta, k), k=k, fold="ema")
    if arm == "adam_folded":
        return FoldedAccumAdam(params, lr=lr, betas=betas, k=k, exact_v=False)
    if arm == "adam_explicit":
        return FoldedAccumAdam(params, lr=lr, betas=betas, k=k, exact_v=True)
    if arm == "adam_every_step":
        return FoldedAccumAdam(params, lr=lr, betas=betas, k=1)
    raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")


def train_arm(arm: str, data: dict, *, lr: float, seed: int, sizes, micro_batch: int, k: int,
              epochs: float, evals_per_epoch: int = 2, beta: float = 0.9, device=None) -> dict:
    """One training run of chapter ``momentum-grad-accum`` (https://kexue.fm/archives/8634) through
    :func:`kexue.train.fit`: an MLP ``sizes`` seeded by ``seed``, the arm's optimizer, micro-batches of
    ``micro_batch`` (``large_batch``: batches of k · micro_batch, k times fewer steps, so every arm
    sees the same samples in the same order), ``epochs`` passes over ``data["X_train"]``, dev accuracy
    ``evals_per_epoch`` times an epoch (always on an update boundary), the best-dev parameters
    restored. ``data``: float tensors ``X_train, y_train, X_dev, y_dev, X_test, y_test`` on one device;
    the model goes to ``device`` (default: the data's). Returns ``{dev, test, best_step, history, samples}``."""
    from ..train import fit

    X, y = data["X_train"], data["y_train"]
    net = mlp(sizes, seed=seed, device=device if device is not None else X.device)
    n = len(X)
    batch = micro_batch * k if arm == "large_batch" else micro_batch
    steps = int(round(epochs * n / batch))
    per_eval = max(1, int(round(n / batch / evals_per_epoch)))
    if arm not in ("every_step", "large_batch", "adam_every_step"):
        per_eval = max(k, per_eval // k * k)
        steps = steps // k * k
    opt = make_optimizer(arm, net.parameters(), lr=lr, k=k, beta=beta)

    def loss_on(idx, rng):
        return nn.functional.cross_entropy(net(X[idx]), y[idx])

    @torch.no_grad()
    def acc(Xs, ys):
        return float((net(Xs).argmax(1) == ys).float().mean())

    out = fit(list(net.parameters()), loss_on, n, steps=steps, batch_size=batch,
              evaluate=lambda: acc(data["X_dev"], data["y_dev"]), eval_every=per_eval,
              optimizer=opt, seed=seed)
    return {"dev": out["best_dev"], "test": acc(data["X_test"], data["y_test"]),
            "best_step": out["best_step"], "steps": steps,
            "history": [(s * batch, l, d) for s, l, d in out["history"]],
            "diverged": not all(math.isfinite(l) for _, l, _ in out["history"])}


def image_split(name: str, *, n_train: int, n_dev: int, seed: int = 0, device=None) -> dict:
    """Tensors ``X_train, y_train, X_dev, y_dev, X_test, y_test`` (flattened, float32) for the
    training runs of chapter ``momentum-grad-accum`` (https://kexue.fm/archives/8634): ``n_train`` and
    ``n_dev`` disjoint images drawn (generator ``seed``) from the data set's training split, the whole
    test split for testing. ``name``: ``"fashion-mnist"`` or ``"digits"`` (:mod:`kexue.data.images`)."""
    from ..data.images import load_image_dataset

    d = load_image_dataset(name, flatten=True)
    n = len(d["X_train"])
    if n_train + n_dev > n:
        raise ValueError(f"{name} has {n} training images; asked for {n_train} + {n_dev}")
    perm = np.random.default_rng(seed).permutation(n)
    tr, dv = perm[:n_train], perm[n_train:n_train + n_dev]

    def t(a, dtype):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    return {"X_train": t(d["X_train"][tr], torch.float32), "y_train": t(d["y_train"][tr], torch.long),
            "X_dev": t(d["X_train"][dv], torch.float32), "y_dev": t(d["y_train"][dv], torch.long),
            "X_test": t(d["X_test"], torch.float32), "y_test": t(d["y_test"], torch.long)}


def tune_then_seeds(arm: str, data: dict, *, lrs, seeds, **kw) -> dict:
    """The chapter's fair budget for one arm (chapter ``momentum-grad-accum``,
    https://kexue.fm/archives/8634): every ``lrs`` value trained with ``seeds[0]``, the lr with the best
    dev accuracy kept (the first of ties), then the remaining seeds at that lr; :func:`train_arm`
    keyword arguments in ``kw``. Returns ``{lr, dev_by_lr, runs}`` with ``runs`` one per seed."""
    grid = [train_arm(arm, data, lr=lr, seed=seeds[0], **kw) for lr in lrs]
    best = int(np.argmax([r["dev"] for r in grid]))
    runs = [grid[best]] + [train_arm(arm, data, lr=lrs[best], seed=s, **kw) for s in seeds[1:]]
    return {"lr": lrs[best], "dev_by_lr": [r["dev"] for r in grid], "runs": runs,
            "edge": best in (0, len(lrs) - 1)}


def exactness(X: torch.Tensor, y: torch.Tensor, *, sizes, micro_batch: int, k: int, updates: int,
              seed: int, lr_sgdm: float, lr_adam: float, lr_tiger: float, beta: float = 0.9,
              beta_tiger: float = 0.965, wd_tiger: float = 0.01) -> dict:
    """The exactness experiment of chapter ``momentum-grad-accum`` (https://kexue.fm/archives/8634), in
    the dtype of ``X``: one fixed stream of ``k · updates`` micro-batches, networks from one seed, and
    max |Δθ| after training between (i) the folded optimizer, (ii) an ordinary optimizer on the
    explicitly accumulated ``.grad`` and (iii) the true batch of ``k · micro_batch``: for SGDM, Tiger
    (reference ``lion_pytorch.Lion(betas=(β, β))``) and Adam (reference ``torch.optim.Adam``; folded with
    ``exact_v`` False and True). Also ``torch.optim.SGD(momentum=β, dampening=1 − β)`` on the true
    batch, whose first buffer is undampened."""
    from lion_pytorch import Lion

    dt = X.dtype
    stream = microbatch_stream(len(X), micro_batch, k * updates, seed)

    def net():
        return mlp(sizes, seed=seed, dtype=dt, device=X.device)

    def run(make, mode):
        m = net()
        opt = make(m.parameters())
        run_stream(m, opt, X, y, stream, k=k, mode=mode)
        return m, opt

    out = {}
    f, fo = run(lambda p: FoldedAccumSGDM(p, lr=lr_sgdm, beta=beta, k=k), "folded")
    e, _ = run(lambda p: FoldedAccumSGDM(p, lr=lr_sgdm, beta=beta, k=1), "explicit")
    b, _ = run(lambda p: FoldedAccumSGDM(p, lr=lr_sgdm, beta=beta, k=1), "batch")
    ts, _ = run(lambda p: torch.optim.SGD(p, lr=lr_sgdm, momentum=beta, dampening=1 - beta), "batch")
    out["sgdm"] = {"folded_vs_explicit": max_abs_diff(f, e), "folded_vs_batch": max_abs_diff(f, b),
                   "torch_sgd_vs_batch": max_abs_diff(ts, b), "moved": max_abs_diff(f, net())}
    f, _ = run(lambda p: FoldedAccumTiger(p, lr=lr_tiger, beta=beta_tiger, weight_decay=wd_tiger, k=k), "folded")
    e, _ = run(lambda p: Lion(p, lr=lr_tiger, betas=(beta_tiger, beta_tiger), weight_decay=wd_tiger), "explicit")
    b, _ = run(lambda p: Lion(p, lr=lr_tiger, betas=(beta_tiger, beta_tiger), weight_decay=wd_tiger), "batch")
    out["tiger"] = {"folded_vs_explicit": max_abs_diff(f, e), "folded_vs_batch": max_abs_diff(f, b),
                    "moved": max_abs_diff(f, net())}
    fa, _ = run(lambda p: FoldedAccumAdam(p, lr=lr_adam, k=k, exact_v=False), "folded")
    fx, _ = run(lambda p: FoldedAccumAdam(p, lr=lr_adam, k=k, exact_v=True), "folded")
    e, _ = run(lambda p: torch.optim.Adam(p, lr=lr_adam), "explicit")
    b, _ = run(lambda p: torch.optim.Adam(p, lr=lr_adam), "batch")
    out["adam"] = {"exact_v_vs_explicit": max_abs_diff(fx, e), "exact_v_vs_batch": max_abs_diff(fx, b),
                   "folded_v_vs_explicit": max_abs_diff(fa, e), "moved": max_abs_diff(fa, net())}
    # Adam's buffers on one θ-independent gradient stream (the micro-batch gradients at θ0)
    m0 = net()
    grads = []
    for idx in stream:
        m0.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m0(X[idx]), y[idx]).backward()
        grads.append([p.grad.detach().clone() for p in m0.parameters()])
    pa, pb = [[p.detach().clone().requires_grad_() for p in m0.parameters()] for _ in range(2)]
    oa, ob = FoldedAccumAdam(pa, lr=lr_adam, k=k), FoldedAccumAdam(pb, lr=lr_adam, k=k, exact_v=True)
    feed_gradients(oa, pa, grads)
    feed_gradients(ob, pb, grads)
    va = torch.cat([oa.state[p]["v"].flatten() for p in pa])
    vb = torch.cat([ob.state[p]["v"].flatten() for p in pb])
    out["adam_fixed_grads"] = {
        "m_diff": max_abs_diff([oa.state[p]["m"] for p in pa], [ob.state[p]["m"] for p in pb]),
        "theta_diff": max_abs_diff(pa, pb), "v_ratio_median": float((va / vb.clamp_min(1e-300)).median()),
        "v_fold_ge_exact": bool((va >= vb * (1 - 1e-12)).all())}
    out["memory"] = {"params": sum(p.numel() for p in fo.param_groups[0]["params"]),
                     "folded_sgdm_state_bytes": state_bytes(fo),
                     "accumulation_buffer_bytes": sum(p.numel() * p.element_size()
                                                      for p in fo.param_groups[0]["params"])}
    return out


def v_ratio(X: torch.Tensor, y: torch.Tensor, *, sizes, micro_batch: int, k: int, cycles: int,
            seed: int, beta2: float = 0.999) -> float:
    """How far Adam's folded second moment sits from the exact one (chapter ``momentum-grad-accum``,
    https://kexue.fm/archives/8634): at the network's initial parameters, ``cycles`` cycles of k
    micro-batch gradients fed to :class:`FoldedAccumAdam` with ``exact_v`` False and True; returns
    the median over parameters of v_folded / v_exact (≥ 1: the mean of squares over the square of the
    mean, which grows with gradient noise, i.e. smaller micro-batches, and with k)."""
    net = mlp(sizes, seed=seed, dtype=X.dtype, device=X.device)
    stream = microbatch_stream(len(X), micro_batch, k * cycles, seed)
    ps = [[p.detach().clone().requires_grad_() for p in net.parameters()] for _ in range(2)]
    opts = [FoldedAccumAdam(ps[0], lr=0.0, betas=(0.9, beta2), k=k),
            FoldedAccumAdam(ps[1], lr=0.0, betas=(0.9, beta2), k=k, exact_v=True)]
    for idx in stream:
        net.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(X[idx]), y[idx]).backward()
        gs = [p.grad.detach().clone() for p in net.parameters()]
        for o, pp in zip(opts, ps):
            feed_gradients(o, pp, [gs])
    va = torch.cat([opts[0].state[p]["v"].flatten() for p in ps[0]])
    vb = torch.cat([opts[1].state[p]["v"].flatten() for p in ps[1]])
    keep = vb > 0
    return float((va[keep] / vb[keep]).median())
