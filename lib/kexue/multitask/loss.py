r"""Weighting the losses of a multi-task model, after 多任务学习漫谈（一）：以损失之名
(https://kexue.fm/archives/8870), used by chapter ``multitask-loss``.

A multi-task objective is a weighted sum :math:`L = \sum_i \alpha_i L_i`; the question is how to
choose :math:`\alpha_i` when the tasks' losses live on different scales. The schemes of
:class:`LossCombiner`:

- ``sum``: :math:`\alpha_i = 1`.
- ``fixed``: weights given by the caller (the chapter's random Dirichlet control).
- ``init`` (initial state): :math:`\alpha_i = 1/L_i^{(0)}`, the loss on the first batch.
- ``prior`` (prior state): :math:`\alpha_i = 1/L_i^{\text{prior}}`, the loss of the best
  input-independent predictor: the entropy of the label marginal for cross-entropy
  (:func:`prior_loss_ce`), the target variance for squared error (:func:`prior_loss_mse`), the mean
  Bernoulli entropy for multi-label BCE (:func:`prior_loss_bce`). It does not depend on the model.
- ``realtime`` (real-time state): :math:`L = \sum_i L_i / (\mathrm{sg}[L_i] + \epsilon)`. The
  forward value is ≈ n, the gradient :math:`\sum_i \nabla L_i / L_i = \nabla \sum_i \log L_i`: the
  geometric mean of the losses is minimised, so the update is invariant to :math:`L_i \to c L_i`
  but not to :math:`L_i \to L_i + c`.
- ``uncertainty`` (Kendall, Gal & Cipolla 2018): learnable :math:`s_i = \log\sigma_i^2`,
  :math:`L = \sum_i \tfrac12 e^{-s_i} L_i + \tfrac12 s_i` (:class:`UncertaintyWeighting`); at its
  optimum :math:`\sigma_i^2 = L_i`, where the objective is :math:`\tfrac12\sum_i \log L_i` + const,
  the real-time scheme again.
- ``gradnorm`` (the article's gradient normalisation, not Chen et al.'s GradNorm):
  :math:`L = \sum_i L_i/\mathrm{sg}[\lVert\nabla_\theta L_i\rVert]`, whose gradient
  :math:`\sum_i \nabla_\theta L_i/\lVert\nabla_\theta L_i\rVert` is a sum of unit vectors,
  invariant to both scaling and shifting a loss. The norm is taken over the tensors passed as
  ``shared``: the chapter passes all the model's parameters (the article's :math:`\theta`, the
  default of :func:`train_arm`); the shared representation ``h`` is a cheaper stand-in whose
  norm sits on another scale (a per-token mean makes :math:`\nabla_h L_i` tiny, so its weights are
  large).
- ``mgda`` (Sener & Koltun 2018, the min-norm direction of 多任务学习漫谈（二）：行梯度之事,
  https://kexue.fm/archives/8896, chapter ``multitask-gradient``): not a combination of the losses
  but a routing of their gradients. The shared encoder receives :math:`\sum_i w_i\nabla L_i` with
  :math:`w` the min-norm weights of the per-task gradients over the encoder's parameters, each head
  its own full :math:`\nabla L_i` (:func:`mgda_loss`, used by :func:`train_arm`; :class:`LossCombiner`
  does not take it, since it sees only the losses).

The second half is the chapter's experiment: a convolutional character tagger with one head per
task (segmentation, POS, NER on People's Daily 1998), trained with :func:`kexue.train.fit`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEMES = ("sum", "fixed", "init", "prior", "realtime", "uncertainty", "gradnorm", "mgda")


# ------------------------------------------------------------------------------------ priors

def prior_loss_ce(labels, n_classes: int) -> float:
    """Cross-entropy (nats) of the best constant predictor, the label marginal p̃: −Σ p̃_c log p̃_c.
    ``labels``: integer class ids. https://kexue.fm/archives/8870, chapter ``multitask-loss``."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.size == 0:
        raise ValueError("prior_loss_ce needs at least one label")
    p = np.bincount(y, minlength=n_classes)[:n_classes] / y.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def prior_loss_mse(y) -> float:
    """Mean squared error of the best constant predictor (the mean): the variance (ddof 0),
    averaged over output columns. https://kexue.fm/archives/8870, chapter ``multitask-loss``."""
    y = np.asarray(y, dtype=np.float64)
    y = y.reshape(len(y), -1)
    return float(y.var(axis=0).mean())


def prior_loss_bce(Y) -> float:
    """Binary cross-entropy (nats) of the best constant predictor of 0/1 labels ``Y`` (n × k): the
    Bernoulli entropy of each label's rate, averaged over labels. https://kexue.fm/archives/8870,
    chapter ``multitask-loss``."""
    Y = np.asarray(Y, dtype=np.float64)
    q = Y.reshape(len(Y), -1).mean(axis=0)
    h = np.zeros_like(q)
    m = (q > 0) & (q < 1)
    h[m] = -(q[m] * np.log(q[m]) + (1 - q[m]) * np.log(1 - q[m]))
    return float(h.mean())


# ------------------------------------------------------------------------------ the combiners

class UncertaintyWeighting(nn.Module):
    r"""Kendall et al.'s homoscedastic-uncertainty weighting with :math:`s_i = \log\sigma_i^2`
    (initialised at 0): ``forward(losses) = Σ ½ exp(−s_i) L_i + ½ s_i``. Its minimiser over
    :math:`s_i` is :math:`\sigma_i^2 = L_i`. https://kexue.fm/archives/8870, chapter
    ``multitask-loss``."""

    def __init__(self, n_tasks: int):
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(n_tasks))

    def forward(self, losses) -> torch.Tensor:
        L = torch.stack(list(losses))
        s = self.log_var.to(L.dtype)
        return (0.5 * torch.exp(-s) * L + 0.5 * s).sum()

    @property
    def sigma2(self) -> np.ndarray:
        return torch.exp(self.log_var.detach()).cpu().numpy()


class LossCombiner:
    """One scalar from the per-task losses, by ``scheme`` (see the module docstring).

    ``combiner(losses, shared=None)``: ``losses`` a sequence of scalar tensors; ``shared`` a tensor or
    a list of tensors that every task depends on (needed by ``gradnorm``: its weights are
    1/(‖∇_shared L_i‖ + eps), computed with retained graphs). ``priors`` (for ``prior``): the tasks'
    prior losses; ``weights`` (for ``fixed``). ``parameters()`` are the learnable weights
    (``uncertainty``) to hand to the optimizer. After each call ``last_weights`` holds the effective
    weight of each task (∂L/∂L_i, detached). https://kexue.fm/archives/8870, chapter
    ``multitask-loss``."""

    def __init__(self, scheme: str, n_tasks: int, *, eps: float = 1e-8, priors=None, weights=None):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if scheme == "mgda":
            raise ValueError("scheme 'mgda' routes each head's gradient apart from the encoder's; "
                             "use mgda_loss (or train_arm), not LossCombiner")
        self.scheme, self.n, self.eps = scheme, n_tasks, eps
        self.init_losses = None
        self.uncertainty = UncertaintyWeighting(n_tasks) if scheme == "uncertainty" else None
        if scheme == "prior":
            if priors is None or len(priors) != n_tasks:
                raise ValueError("scheme 'prior' needs one prior loss per task")
            self.fixed = [1.0 / float(p) for p in priors]
        elif scheme == "fixed":
            if weights is None or len(weights) != n_tasks:
                raise ValueError("scheme 'fixed' needs one weight per task")
            self.fixed = [float(w) for w in weights]
        else:
            self.fixed = None
        self.last_weights = np.ones(n_tasks)

    def parameters(self) -> list:
        return list(self.uncertainty.parameters()) if self.uncertainty is not None else []

    def to(self, device):
        if self.uncertainty is not None:
            self.uncertainty.to(device)
        return self

    def __call__(self, losses, shared=None) -> torch.Tensor:
        losses = list(losses)
        if len(losses) != self.n:
            raise ValueError(f"expected {self.n} losses, got {len(losses)}")
        sc = self.scheme
        if sc == "sum":
            w = [1.0] * self.n
        elif sc in ("prior", "fixed"):
            w = self.fixed
        elif sc == "init":
            if self.init_losses is None:
                self.init_losses = [float(L.detach()) for L in losses]
            w = [1.0 / (L0 + self.eps) for L0 in self.init_losses]
        elif sc == "realtime":
            w = [1.0 / (L.detach() + self.eps) for L in losses]
        elif sc == "gradnorm":
            if shared is None:
                raise ValueError("scheme 'gradnorm' needs the shared tensor(s)")
            sh = [shared] if torch.is_tensor(shared) else list(shared)
            w = []
            for L in losses:
                g = torch.autograd.grad(L, sh, retain_graph=True, allow_unused=True)
                sq = sum((gi.detach() ** 2).sum() for gi in g if gi is not None)
                w.append(1.0 / (torch.sqrt(torch.as_tensor(sq, dtype=L.dtype)) + self.eps))
        else:  # uncertainty
            s = self.uncertainty.log_var.detach()
            self.last_weights = (0.5 * torch.exp(-s)).cpu().numpy()
            return self.uncertainty(losses)
        self.last_weights = np.array([float(x) for x in w])
        return sum(wi * L for wi, L in zip(w, losses))


# ------------------------------------------------------------------ the chapter's experiment

TASKS = ("seg", "pos", "ner")
SEG_TAGS = ("B", "M", "E", "S")


def encode_tagging(rows: dict, max_chars: int | None = None) -> dict:
    """Integer tensors for :class:`ConvTagger` from ``{split: [(chars, seg, pos, ner)]}``
    (:func:`kexue.data.chinese.peoples_daily_tagged`): the character vocabulary comes from the train
    split (0 pad, 1 unknown), the tag sets from all splits' labels. Lines longer than ``max_chars``
    are dropped (never cut, so no word or entity is split). Returns ``{vocab, tags: {task: names},
    split: {ids, mask, seg, pos, ner, rows}}``; padded label positions hold −100."""
    if max_chars:
        rows = {s: [r for r in v if len(r[0]) <= max_chars] for s, v in rows.items()}
    chars = sorted({c for r in rows["train"] for c in r[0]})
    vocab = {c: i + 2 for i, c in enumerate(chars)}
    tags = {"seg": list(SEG_TAGS),
            "pos": sorted({t for v in rows.values() for r in v for t in r[2]}),
            "ner": sorted({t for v in rows.values() for r in v for t in r[3]}, key=lambda t: (t != "O", t))}
    index = {k: {t: i for i, t in enumerate(v)} for k, v in tags.items()}
    out = {"vocab": vocab, "tags": tags}
    for s, v in rows.items():
        n, T = len(v), max((len(r[0]) for r in v), default=1)
        ids = torch.zeros(n, T, dtype=torch.long)
        lab = {k: torch.full((n, T), -100, dtype=torch.long) for k in TASKS}
        for j, (cs, seg, pos, ner) in enumerate(v):
            ids[j, :len(cs)] = torch.tensor([vocab.get(c, 1) for c in cs])
            for k, seq in zip(TASKS, (seg, pos, ner)):
                lab[k][j, :len(seq)] = torch.tensor([index[k][t] for t in seq])
        out[s] = {"ids": ids, "mask": ids > 0, **lab, "rows": v}
    return out


class ConvTagger(nn.Module):
    """Character embedding, ``layers`` same-padded 1-D convolutions (ReLU, residual from the second
    on), and one linear head per task over the shared representation. ``forward(ids)`` returns
    ``(h, {task: logits})`` with ``h`` the shared representation (B × T × width).
    https://kexue.fm/archives/8870, chapter ``multitask-loss``."""

    def __init__(self, n_chars: int, heads: dict, *, emb: int = 128, width: int = 128,
                 layers: int = 3, kernel: int = 3, seed: int = 0):
        super().__init__()
        g = torch.random.fork_rng()
        with g:
            torch.manual_seed(seed)
            self.emb = nn.Embedding(n_chars, emb, padding_idx=0)
            self.convs = nn.ModuleList(nn.Conv1d(emb if i == 0 else width, width, kernel,
                                                 padding=kernel // 2) for i in range(layers))
            self.heads = nn.ModuleDict({k: nn.Linear(width, n) for k, n in heads.items()})

    def forward(self, ids):
        x = self.emb(ids).transpose(1, 2)
        for i, conv in enumerate(self.convs):
            y = F.relu(conv(x))
            x = y if i == 0 else x + y
        h = x.transpose(1, 2)
        return h, {k: head(h) for k, head in self.heads.items()}

    def shared_parameters(self) -> list:
        return [*self.emb.parameters(), *self.convs.parameters()]


def task_losses(model: ConvTagger, part: dict, idx, tasks, device=None):
    """The shared representation and each task's mean token cross-entropy on rows ``idx``."""
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    T = int(part["mask"][idx].sum(1).max())
    dev = device or next(model.parameters()).device
    h, logits = model(part["ids"][idx, :T].to(dev))
    losses = [F.cross_entropy(logits[k].reshape(-1, logits[k].shape[-1]),
                              part[k][idx, :T].reshape(-1).to(dev), ignore_index=-100) for k in tasks]
    return h, losses


def batch_labels(part: dict, idx, tasks, device=None) -> list:
    """Each task's label tensor (B × T, −100 on padding) of rows ``idx``, cut to the batch's longest
    line as in :func:`task_losses`. https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    T = int(part["mask"][idx].sum(1).max())
    return [part[k][idx, :T].to(device) if device is not None else part[k][idx, :T] for k in tasks]


def head_loss(model: ConvTagger, h: torch.Tensor, labels: torch.Tensor, task: str) -> torch.Tensor:
    """Head ``task``'s mean token cross-entropy (−100 ignored) computed from a given shared
    representation ``h`` (B × T × width), the same formula as :func:`task_losses`.
    https://kexue.fm/archives/8896, chapter ``multitask-gradient``."""
    logits = model.heads[task](h)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                           ignore_index=-100)


def mgda_loss(model: ConvTagger, part: dict, idx, tasks, *, normalize=None):
    r"""The MGDA surrogate of one batch (Sener & Koltun 2018; https://kexue.fm/archives/8896, chapter
    ``multitask-gradient``): the per-task gradients :math:`g_i` of the losses of :func:`task_losses`
    with respect to ``model.shared_parameters()``
    (:func:`kexue.multitask.gradient.per_task_grads`, one backward pass through the encoder per task),
    their min-norm weights :math:`w` (:func:`kexue.multitask.gradient.mgda_direction`, ``normalize``
    as there; None: α = w, Frank–Wolfe for three tasks), and the surrogate
    :math:`\sum_i L_i(\mathrm{head}_i(w_ih+(1-w_i)\,\mathrm{sg}[h]))`
    (:func:`kexue.multitask.gradient.weighted_repr`). Its value is the plain sum of the losses; one
    backward pass gives the encoder :math:`\sum_i w_ig_i` and each head its own full
    :math:`\nabla L_i`. Returns ``(surrogate, losses, w)`` (``losses`` the per-task tensors, ``w``
    float64 numpy)."""
    from .gradient import mgda_direction, per_task_grads, weighted_repr
    tasks = list(tasks)
    h, losses = task_losses(model, part, idx, tasks)
    G = per_task_grads(losses, model.shared_parameters(), "params")
    _, _, w = mgda_direction(G, normalize, [L.detach() for L in losses])
    labels = batch_labels(part, idx, tasks, h.device)
    sur = sum(head_loss(model, weighted_repr(h, wi), y, k) for k, y, wi in zip(tasks, labels, w))
    return sur, losses, np.asarray(w, dtype=np.float64)


@torch.no_grad()
def predict(model: ConvTagger, part: dict, tasks, batch_size: int = 256) -> dict:
    """Tag names predicted for every row of a split: ``{task: [list of tags per row]}``."""
    model.eval()
    dev = next(model.parameters()).device
    out = {k: [] for k in tasks}
    n = len(part["rows"])
    for a in range(0, n, batch_size):
        idx = torch.arange(a, min(n, a + batch_size))
        lens = part["mask"][idx].sum(1)
        T = int(lens.max())
        _, logits = model(part["ids"][idx, :T].to(dev))
        for k in tasks:
            am = logits[k].argmax(-1).cpu()
            out[k].extend(am[j, :int(lens[j])].tolist() for j in range(len(idx)))
    model.train()
    return out


def span_f1(gold: list, pred: list) -> float:
    """Micro F1 of exact spans over a corpus: ``gold``/``pred`` lists of sets of spans per line."""
    tp = sum(len(g & p) for g, p in zip(gold, pred))
    ng, np_ = sum(map(len, gold)), sum(map(len, pred))
    if ng == 0 and np_ == 0:
        return 1.0
    return 0.0 if tp == 0 else 2 * tp / (ng + np_)


def bmes_words(tags: list[str]) -> set:
    """Word spans ``(start, end)`` from BMES tags; an ill-formed sequence closes a word at every
    ``E``/``S`` and opens one at every ``B``/``S`` (or at an ``M``/``E`` after a closed word)."""
    spans, start = set(), None
    for i, t in enumerate(tags):
        if t in ("B", "S") and start is not None:
            spans.add((start, i))
        if t in ("B", "S") or start is None:
            start = i
        if t in ("E", "S"):
            spans.add((start, i + 1))
            start = None
    if start is not None:
        spans.add((start, len(tags)))
    return spans


def task_scores(pred: dict, part: dict, tags: dict) -> dict:
    """Segmentation word F1, POS character accuracy, NER entity F1 (exact typed spans)."""
    from ..data.chinese import entity_spans
    rows, out = part["rows"], {}
    col = {"seg": 1, "pos": 2, "ner": 3}
    for k, p in pred.items():
        names = [[tags[k][i] for i in seq] for seq in p]
        gold = [r[col[k]] for r in rows]
        if k == "seg":
            out[k] = span_f1([bmes_words(g) for g in gold], [bmes_words(q) for q in names])
        elif k == "ner":
            out[k] = span_f1([set(entity_spans(g)) for g in gold], [set(entity_spans(q)) for q in names])
        else:
            n = sum(len(g) for g in gold)
            out[k] = sum(a == b for g, q in zip(gold, names) for a, b in zip(g, q)) / n
    return out


def train_arm(data: dict, *, tasks=TASKS, scheme: str = "sum", weights=None, optimizer: str = "sgd",
              lr: float, steps: int, batch_size: int, eval_every: int, patience: int | None,
              seed: int, model_cfg: dict, momentum: float = 0.9, eps: float = 1e-8,
              gradnorm_wrt: str = "params", mgda_normalize=None, device=None) -> dict:
    r"""Train one arm with :func:`kexue.train.fit` (early stopping on the mean dev score of
    ``tasks``) and score it on test. ``optimizer``: ``sgd`` (with ``momentum``) or ``adam``.
    ``prior`` weights come from the train labels (:func:`prior_loss_ce`). Returns dev and test
    scores per task, the best step, the raw per-task training losses at each evaluation and the
    final effective weights (σ² for ``uncertainty``). ``gradnorm_wrt``: the tensors whose gradient
    norm ``gradnorm`` divides by, ``"params"`` (all the model's parameters, the article's
    :math:`\nabla_\theta`) or ``"h"`` (the shared representation). https://kexue.fm/archives/8870,
    chapter ``multitask-loss``.

    ``scheme="mgda"`` (https://kexue.fm/archives/8896, chapter ``multitask-gradient``): each step's
    loss is the surrogate of :func:`mgda_loss` (min-norm weights of the per-task gradients over the
    shared encoder, ``mgda_normalize`` as ``normalize`` there): the encoder receives Σ w_i ∇L_i and each
    head its own ∇L_i. Its ``weights`` are the min-norm weights averaged over all the steps run (the
    last step's in ``weights_last``), ``weights_by_eval`` their mean over each evaluation interval
    (aligned with ``raw_losses``)."""
    from .. import resolve_device
    from ..train import fit
    if gradnorm_wrt not in ("params", "h"):
        raise ValueError(f"gradnorm_wrt must be 'params' or 'h', got {gradnorm_wrt!r}")
    tasks = list(tasks)
    tr, dv = data["train"], data["dev"]
    heads = {k: len(data["tags"][k]) for k in tasks}
    model = ConvTagger(len(data["vocab"]) + 2, heads, seed=seed, **model_cfg)
    model.to(resolve_device(device))    # default: kexue's current device (as after kexue.setup)
    priors = [prior_loss_ce(tr[k][tr[k] >= 0].numpy(), heads[k]) for k in tasks]
    mgda = scheme == "mgda"
    comb = None if mgda else LossCombiner(scheme, len(tasks), eps=eps,
                                          priors=priors if scheme == "prior" else None,
                                          weights=weights).to(next(model.parameters()).device)
    params = [*model.parameters(), *(comb.parameters() if comb is not None else [])]
    opt = (torch.optim.SGD(params, lr=lr, momentum=momentum) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr))
    raw, acc = [], []
    w_all, w_acc, w_by_eval = [], [], []

    def loss_on(idx, rng):
        if mgda:
            sur, losses, w = mgda_loss(model, tr, idx, tasks, normalize=mgda_normalize)
            acc.append([float(L.detach()) for L in losses])
            w_all.append(w)
            w_acc.append(w)
            return sur
        h, losses = task_losses(model, tr, idx, tasks)
        acc.append([float(L.detach()) for L in losses])
        return comb(losses, shared=list(model.parameters()) if gradnorm_wrt == "params" else h)

    def evaluate():
        raw.append(np.mean(acc, axis=0).tolist())
        acc.clear()
        if mgda:
            w_by_eval.append(np.mean(w_acc, axis=0).tolist())
            w_acc.clear()
        sc = task_scores(predict(model, dv, tasks), dv, data["tags"])
        return float(np.mean([sc[k] for k in tasks]))

    res = fit(params, loss_on, len(tr["rows"]), steps=steps, batch_size=batch_size, evaluate=evaluate,
              eval_every=eval_every, optimizer=opt, seed=seed, patience=patience)
    test = task_scores(predict(model, data["test"], tasks), data["test"], data["tags"])
    dev = task_scores(predict(model, dv, tasks), dv, data["tags"])
    out = {"tasks": tasks, "scheme": scheme, "dev": dev, "test": test, "best_step": res["best_step"],
           "steps_run": res["steps_run"], "raw_losses": raw, "priors": priors}
    if mgda:
        return {**out, "weights": np.mean(w_all, axis=0).tolist(), "weights_last": w_all[-1].tolist(),
                "weights_by_eval": w_by_eval}
    return {**out, "weights": (comb.uncertainty.sigma2.tolist() if comb.uncertainty is not None
                               else comb.last_weights.tolist())}


def dirichlet_weights(n_tasks: int, seed: int) -> list:
    """n × a Dirichlet(1) draw (mean weight 1, as the plain sum), the random-weights control."""
    return (n_tasks * np.random.default_rng(seed).dirichlet(np.ones(n_tasks))).tolist()


def normalised_gap(multi: dict, single: dict, tasks=TASKS) -> float:
    """Mean over tasks of (single-task score − multi-task score) / single-task score; a task whose
    single-task score is 0 (nothing learned, e.g. at smoke scale) is left out (nan when all are)."""
    g = [(single[k] - multi[k]) / single[k] for k in tasks if single[k] > 0]
    return float(np.mean(g)) if g else math.nan


def sgd_trajectory(model: nn.Module, batches, loss_fn, combiner: LossCombiner, *, lr: float,
                   shared_fn=None) -> list:
    """Plain SGD on a fixed stream of batches; returns the flattened parameters after each step.
    ``loss_fn(model, batch) -> (h, losses)``; ``shared_fn(model, h)`` picks the shared tensor for
    ``gradnorm`` (default ``h``). Used by the invariance checks of chapter ``multitask-loss``."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for b in batches:
        h, losses = loss_fn(model, b)
        shared = h if shared_fn is None else shared_fn(model, h)
        L = combiner(losses, shared=shared)
        grads = torch.autograd.grad(L, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
        out.append(torch.cat([p.detach().reshape(-1) for p in params]).clone())
    return out


ARMS = {  # the chapter's arms: tasks, scheme, optimizer
    "sum": dict(tasks=TASKS, scheme="sum", optimizer="sgd"),
    "prior": dict(tasks=TASKS, scheme="prior", optimizer="sgd"),
    "realtime": dict(tasks=TASKS, scheme="realtime", optimizer="sgd"),
    "gradnorm": dict(tasks=TASKS, scheme="gradnorm", optimizer="sgd"),
    "random": dict(tasks=TASKS, scheme="fixed", optimizer="sgd"),
    "init": dict(tasks=TASKS, scheme="init", optimizer="sgd"),
    "uncertainty": dict(tasks=TASKS, scheme="uncertainty", optimizer="sgd"),
    "single_seg": dict(tasks=("seg",), scheme="sum", optimizer="sgd"),
    "single_pos": dict(tasks=("pos",), scheme="sum", optimizer="sgd"),
    "single_ner": dict(tasks=("ner",), scheme="sum", optimizer="sgd"),
    "adam_sum": dict(tasks=TASKS, scheme="sum", optimizer="adam"),
    "adam_realtime": dict(tasks=TASKS, scheme="realtime", optimizer="adam"),
    "mgda": dict(tasks=TASKS, scheme="mgda", optimizer="sgd"),   # chapter multitask-gradient (archives/8896)
}


def tune_and_run(data: dict, arm: str, *, lrs, seeds, lr_seed: int, **common) -> dict:
    """One arm of :data:`ARMS`: the learning rate with the best mean dev score at ``lr_seed``
    (ties: the first), then one run per seed at that rate. The ``random`` arm draws its weights with
    :func:`dirichlet_weights` from each run's seed; the ``mgda`` arm (https://kexue.fm/archives/8896,
    chapter ``multitask-gradient``) trains with :func:`mgda_loss`. Returns ``{lr, dev_by_lr, runs}``.
    https://kexue.fm/archives/8870, chapter ``multitask-loss``."""
    spec = ARMS[arm]

    def one(lr, seed):
        w = dirichlet_weights(len(spec["tasks"]), seed) if spec["scheme"] == "fixed" else None
        return train_arm(data, tasks=spec["tasks"], scheme=spec["scheme"], optimizer=spec["optimizer"],
                         weights=w, lr=lr, seed=seed, **common)

    dev_by_lr = {}
    for lr in lrs:
        r = one(lr, lr_seed)
        dev_by_lr[lr] = float(np.mean([r["dev"][k] for k in spec["tasks"]]))
    best = max(lrs, key=lambda lr: (dev_by_lr[lr], -lrs.index(lr)))
    return {"lr": best, "dev_by_lr": dev_by_lr, "runs": [one(best, s) for s in seeds]}


def invariance_gap(scheme: str, *, scale: float = 1.0, shift: float = 0.0, task: int = 1, steps: int = 200,
                   lr: float = 0.05, eps: float = 1e-8, seed: int = 0) -> float:
    """max |Δθ| after ``steps`` plain-SGD steps in float64 on a tiny random tagging problem between
    the run with task ``task``'s loss mapped to ``scale · L + shift`` and the unperturbed run (same
    initialisation and batches; ``gradnorm`` normalises over all the parameters, as the chapter). Fixed by algebra: 0 up to rounding for ``realtime`` under a scale and
    for ``gradnorm`` under a scale or a shift. Chapter ``multitask-loss``."""
    def loss_fn(sc, sh):
        def f(model, b):
            ids, ys = b
            h, logits = model(ids)
            losses = [F.cross_entropy(logits[k].reshape(-1, logits[k].shape[-1]), y.reshape(-1))
                      for k, y in zip(TASKS, ys)]
            losses[task] = losses[task] * sc + sh
            return h, losses
        return f

    def run(sc, sh):
        model = ConvTagger(30, {"seg": 4, "pos": 6, "ner": 3}, emb=8, width=8, layers=2, seed=seed).double()
        g = torch.Generator().manual_seed(seed + 1)
        batches = [(torch.randint(2, 30, (4, 7), generator=g),
                    [torch.randint(0, n, (4, 7), generator=g) for n in (4, 6, 3)]) for _ in range(steps)]
        return sgd_trajectory(model, batches, loss_fn(sc, sh), LossCombiner(scheme, 3, eps=eps), lr=lr,
                              shared_fn=lambda m, h: list(m.parameters()))[-1]

    d = (run(1.0, 0.0) - run(scale, shift)).abs()
    return float(torch.nan_to_num(d, nan=math.inf).max())


def marginal_normalised_losses(data: dict, tasks=TASKS, split: str = "train") -> dict:
    """Cross-entropy of the constant predictor that outputs each task's label marginal (of
    ``split``), divided by :func:`prior_loss_ce` of the same labels: 1 by construction."""
    part, out = data[split], {}
    for k in tasks:
        y = part[k][part[k] >= 0]
        n = len(data["tags"][k])
        p = torch.bincount(y, minlength=n).double() / len(y)
        logits = torch.log(p.clamp_min(1e-300)).expand(len(y), n)
        out[k] = float(F.cross_entropy(logits, y)) / prior_loss_ce(y.numpy(), n)
    return out


def load_tagging(n_train: int, n_dev: int, n_test: int | None, max_chars: int, seed: int = 0) -> dict:
    """:func:`encode_tagging` of a seeded subset of :func:`kexue.data.chinese.peoples_daily_tagged`:
    lines of at most ``max_chars`` characters (never cut), ``n_*`` of them per split in corpus order
    (``n_test`` None: every test line that short). Chapter ``multitask-loss``."""
    from ..data.chinese import peoples_daily_tagged
    rng, rows = np.random.default_rng(seed), {}
    for s, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        r = [x for x in peoples_daily_tagged(s) if len(x[0]) <= max_chars]
        rows[s] = r if n is None or n >= len(r) else [r[i] for i in sorted(rng.choice(len(r), n, replace=False))]
    return encode_tagging(rows)


def arm_table(results: dict) -> dict:
    """Per arm: ``{lr, test: {task: [per seed]}, gap: [per seed] or None}``; the gap to the
    single-task arms (``single_<task>``, paired by seed) for the arms that train all tasks."""
    single = {k: results[f"single_{k}"]["runs"] for k in TASKS if f"single_{k}" in results}
    out = {}
    for arm, r in results.items():
        tasks = r["runs"][0]["tasks"]
        test = {k: [run["test"][k] for run in r["runs"]] for k in tasks}
        gap = None
        if len(tasks) == len(TASKS) and len(single) == len(TASKS):
            gap = [normalised_gap(run["test"], {k: single[k][j]["test"][k] for k in TASKS})
                   for j, run in enumerate(r["runs"])]
        out[arm] = {"lr": r["lr"], "test": test, "gap": gap,
                    "best_step": [run["best_step"] for run in r["runs"]]}
    return out
