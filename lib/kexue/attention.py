"""Standard attention as an infinite-dimensional linear attention: feature maps whose inner product
approximates the exponential kernel, linear attention built from them, the rank of attention matrices,
and a small bidirectional (masked-token) task on which the rank cap of linear attention can bite.

Source: "Transformer升级之路：5、作为无限维的线性Attention", https://kexue.fm/archives/8601
(chapter ``linear-attention-infinite``). Notation (scores already scaled: fold 1/√d into q):

- softmax attention  a_ij = e^{q_i·k_j} / Σ_j e^{q_i·k_j}
- linear attention   a_ij = φ(q_i)·φ(k_j) / Σ_j φ(q_i)·φ(k_j), computed as
  (φ(Q)(φ(K)ᵀV)) / (φ(Q)(φ(K)ᵀ1)) in O(n·D·d) instead of O(n²·d)
- Performer          e^{q·k} = E_{ω~N(0,I)}[e^{ω·q−‖q‖²/2} e^{ω·k−‖k‖²/2}],
                     φ(x) = m^{-1/2}(e^{ω_r·x−‖x‖²/2})_{r≤m}                    (:func:`performer_features`)
- Taylor, order n    Σ_{m≤n}(q·k)^m/m! = φ(q)·φ(k), φ(x) = (1, x, ⊗²x/√2!, …, ⊗ⁿx/√n!),
                     dimension Σ_{m≤n} d^m                                      (:func:`taylor_features`)
- exp-limit, n       (1+q·k/n)^n = φ(q)·φ(k), φ(x) = ⊗ⁿ(1, x/√n), dimension (d+1)^n (:func:`explimit_features`)
- rank               φ(Q)φ(K)ᵀ has rank ≤ D (the feature dimension); e^{QKᵀ} is not capped by d
                     (:func:`effective_rank`, :func:`numerical_rank`)

The deterministic feature maps' inner products equal their truncated kernels exactly
(:func:`taylor_kernel`, :func:`explimit_kernel`; tested), so attention errors at orders whose feature
dimension is too large to build are computed from the kernels (:func:`kernel_attention_matrix`).
"""
from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .bert.objective import IGNORE, mask_tokens

URL = "https://kexue.fm/archives/8601"


# -- kernels and their feature maps ----------------------------------------------------------------
def taylor_kernel(s: torch.Tensor, order: int) -> torch.Tensor:
    """Σ_{m=0}^{order} s^m/m!: the Taylor truncation of e^s (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    out, term = torch.ones_like(s), torch.ones_like(s)
    for m in range(1, order + 1):
        term = term * s / m
        out = out + term
    return out


def explimit_kernel(s: torch.Tensor, n: int) -> torch.Tensor:
    """(1 + s/n)^n, the exponential's limit definition at finite n (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    return (1 + s / n) ** n


def taylor_dim(d: int, order: int) -> int:
    """Feature dimension Σ_{m=0}^{order} d^m of :func:`taylor_features` (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    return sum(d ** m for m in range(order + 1))


def explimit_dim(d: int, n: int) -> int:
    """Feature dimension (d+1)^n of :func:`explimit_features` (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    return (d + 1) ** n


def tensor_power(x: torch.Tensor, m: int) -> torch.Tensor:
    """vec(x ⊗ … ⊗ x) (m factors) over the last axis: shape (…, d) → (…, d^m); m = 0 gives ones
    (…, 1). (⊗^m q)·(⊗^m k) = (q·k)^m (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    out = torch.ones(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
    for _ in range(m):
        out = (out.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)
    return out


def taylor_features(x: torch.Tensor, order: int) -> torch.Tensor:
    """φ(x) = (1, x, ⊗²x/√2!, …, ⊗ⁿx/√n!): φ(q)·φ(k) = Σ_{m≤n}(q·k)^m/m! (a polynomial kernel);
    dimension :func:`taylor_dim` (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    return torch.cat([tensor_power(x, m) / math.sqrt(math.factorial(m)) for m in range(order + 1)], -1)


def explimit_features(x: torch.Tensor, n: int) -> torch.Tensor:
    """φ(x) = ⊗ⁿ(1, x/√n): φ(q)·φ(k) = (1 + q·k/n)^n; dimension (d+1)^n
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    u = torch.cat([torch.ones_like(x[..., :1]), x / math.sqrt(n)], -1)
    return tensor_power(u, n)


def draw_omegas(m: int, d: int, orthogonal: bool = True, seed: int = 0,
                dtype=torch.float64) -> torch.Tensor:
    """m projection vectors ω_r ∈ R^d, shape (m, d). Plain: i.i.d. N(0, I). ``orthogonal``: blocks of
    d mutually orthogonal directions (QR of a Gaussian matrix), each row rescaled by the norm of an
    independent N(0, I_d) draw, so that every ω_r is still marginally N(0, I) (Performer's
    orthogonal random features; https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    g = torch.Generator().manual_seed(seed)
    if not orthogonal:
        return torch.randn(m, d, generator=g, dtype=dtype)
    blocks = []
    for _ in range(-(-m // d)):
        qmat, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        qmat = qmat * torch.sign(torch.diagonal(r))  # a Haar-distributed orthogonal matrix
        blocks.append(qmat.T)
    w = torch.cat(blocks)[:m]
    norms = torch.randn(m, d, generator=g, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (w * norms).to(dtype)


def performer_features(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Performer's positive random features φ(x) = m^{-1/2}(e^{ω_r·x − ‖x‖²/2})_r, ``omega`` of shape
    (m, d): E_ω[φ(q)·φ(k)] = e^{q·k} for ω_r ~ N(0, I) (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    m = omega.shape[0]
    return torch.exp(x @ omega.T - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)


def elu_features(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = elu(x) + 1 (Katharopoulos et al.'s positive map): the usual linear attention of the same
    dimension as x (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    return F.elu(x) + 1


# -- attention -------------------------------------------------------------------------------------
def softmax_attention_matrix(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """A = softmax(QKᵀ) over the last axis (scores pre-scaled) (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1)


def kernel_attention_matrix(q: torch.Tensor, k: torch.Tensor, kernel) -> torch.Tensor:
    """A_ij = κ(q_i·k_j) / Σ_j κ(q_i·k_j) for a scalar kernel κ (e.g. ``functools.partial(taylor_kernel,
    order=2)``): the linear attention of a feature map whose inner product is κ, without building the
    features (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    s = kernel(q @ k.transpose(-1, -2))
    return s / s.sum(-1, keepdim=True)


def linear_attention_matrix(fq: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
    """The explicit n×n matrix of linear attention, φ(Q)φ(K)ᵀ with rows normalised to sum 1
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    s = fq @ fk.transpose(-1, -2)
    return s / s.sum(-1, keepdim=True)


def linear_attention(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(φ(Q)(φ(K)ᵀV)) / (φ(Q)(φ(K)ᵀ1)): linear attention in O(n·D·d_v), never forming the n×n matrix;
    equal to ``linear_attention_matrix(fq, fk) @ v`` (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    kv = fk.transpose(-1, -2) @ v
    den = fq @ fk.sum(-2).unsqueeze(-1)
    return (fq @ kv) / den


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ)V, the O(n²·d) standard attention (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    return softmax_attention_matrix(q, k) @ v


def attention_errors(a_hat: torch.Tensor, a: torch.Tensor) -> dict:
    """How far an approximate attention matrix is from the exact one: ``tv`` the mean over rows of
    the total-variation distance ½Σ_j|â_ij − a_ij|, ``max_abs`` max|â − a| (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    diff = (a_hat - a).abs()
    return {"tv": float(0.5 * diff.sum(-1).mean()), "max_abs": float(diff.max())}


def gaussian_qk(n: int, d: int, logit_std: float, seed: int, dtype=torch.float64):
    """Queries and keys q, k ~ N(0, σ²I_d) with σ² = logit_std/√d, so that the (pre-scaled) score q·k
    has standard deviation ``logit_std`` (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``). Returns (q, k), each (n, d)."""
    g = torch.Generator().manual_seed(seed)
    sigma = math.sqrt(logit_std / math.sqrt(d))
    return (torch.randn(n, d, generator=g, dtype=dtype) * sigma,
            torch.randn(n, d, generator=g, dtype=dtype) * sigma)


def approximation_errors(q: torch.Tensor, k: torch.Tensor, *, orders, ms, seed: int,
                         orthogonal: bool = True) -> list[dict]:
    """Attention error (:func:`attention_errors`) against softmax attention of the Taylor and exp-limit
    maps at each order in ``orders`` (computed from their kernels), and of Performer at each feature
    count in ``ms`` (ω drawn with ``seed``). Rows: scheme, order (None for Performer), dim, tv, max_abs
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    d = q.shape[-1]
    a = softmax_attention_matrix(q, k)
    rows = []
    for n in orders:
        for scheme, kern, dim in (("taylor", taylor_kernel, taylor_dim), ("explimit", explimit_kernel, explimit_dim)):
            a_hat = kernel_attention_matrix(q, k, functools.partial(kern, **({"order": n} if scheme == "taylor" else {"n": n})))
            rows.append({"scheme": scheme, "order": n, "dim": dim(d, n), **attention_errors(a_hat, a)})
    for m in ms:
        om = draw_omegas(m, d, orthogonal=orthogonal, seed=seed * 100_003 + m, dtype=q.dtype)
        a_hat = linear_attention_matrix(performer_features(q, om), performer_features(k, om))
        rows.append({"scheme": "performer", "order": None, "dim": m, **attention_errors(a_hat, a)})
    return rows


# -- rank ------------------------------------------------------------------------------------------
def effective_rank(m: torch.Tensor) -> float:
    """exp of the entropy of the normalised singular values p_i = σ_i/Σσ (Roy & Vetterli): between 1
    (one direction) and min(shape) (all equal) (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    s = torch.linalg.svdvals(m.double())
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def numerical_rank(m: torch.Tensor, rtol: float = 1e-10) -> int:
    """Number of singular values above ``rtol`` × the largest (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    s = torch.linalg.svdvals(m.double())
    return int((s > rtol * s[0]).sum())


# -- cost ------------------------------------------------------------------------------------------
def time_call(fn, repeats: int = 5, device=None) -> float:
    """Median wall time in seconds of ``fn()`` over ``repeats`` calls, after one warm-up call; on a
    CUDA ``device`` each call is timed between two synchronisations (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    cuda = device is not None and torch.device(device).type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def attention_flops(n: int, d: int, feature_dim: int | None = None) -> int:
    """Multiply-adds ×2 of one head: softmax attention 4n²d (QKᵀ and AV); linear attention with D
    features 4nDd + 4nD (φ(K)ᵀV, φ(Q)·(φ(K)ᵀV), and the normaliser), feature construction excluded
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    if feature_dim is None:
        return 4 * n * n * d
    return 4 * n * feature_dim * d + 4 * n * feature_dim


def timing_ratio(n: int, d: int, scheme: str, order: int, *, heads: int = 4, repeats: int = 5,
                 seed: int = 0, dtype=torch.float32, device=None) -> dict:
    """Wall time of linear attention with the ``scheme`` ('taylor' or 'explimit') features of ``order``
    (feature construction included) against softmax attention, ``heads`` heads of length n and size d.
    Returns t_softmax, t_linear (median seconds), ratio = t_linear/t_softmax, dim. Timed on
    ``device`` (default kexue's current device; the inputs are drawn on the CPU and moved)
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    from . import resolve_device

    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    q, k, v = ((torch.randn(heads, n, d, generator=g, dtype=dtype) / d ** 0.25).to(dev) for _ in range(3))
    feat = taylor_features if scheme == "taylor" else explimit_features
    t_s = time_call(lambda: softmax_attention(q, k, v), repeats, dev)
    t_l = time_call(lambda: linear_attention(feat(q, order), feat(k, order), v), repeats, dev)
    dim = (taylor_dim if scheme == "taylor" else explimit_dim)(d, order)
    return {"t_softmax": t_s, "t_linear": t_l, "ratio": t_l / t_s, "dim": dim}


# -- a model with either attention -----------------------------------------------------------------
class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with ``kind`` 'softmax' (softmax(QKᵀ/√d_qk)V) or 'linear' (elu+1
    features of the scaled q and k, :func:`linear_attention`). ``qk_dim`` is the per-head size of q
    and k (default d/heads): raising it raises linear attention's rank cap without changing the value
    size. A drop-in ``attn`` sublayer for :class:`kexue.transformer.EncoderLayer`
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""

    def __init__(self, d: int, heads: int, kind: str = "softmax", qk_dim: int | None = None):
        super().__init__()
        if kind not in ("softmax", "linear"):
            raise ValueError(f"kind must be 'softmax' or 'linear', got {kind!r}")
        if d % heads:
            raise ValueError(f"d={d} is not a multiple of heads={heads}")
        self.kind, self.heads, self.d_v = kind, heads, d // heads
        self.d_qk = qk_dim or self.d_v
        self.q, self.k = nn.Linear(d, heads * self.d_qk), nn.Linear(d, heads * self.d_qk)
        self.v, self.o = nn.Linear(d, d), nn.Linear(d, d)

    def _split(self, y: torch.Tensor, size: int) -> torch.Tensor:
        b, t, _ = y.shape
        return y.view(b, t, self.heads, size).transpose(1, 2)

    def _qk(self, x: torch.Tensor):
        scale = self.d_qk ** -0.25  # 1/√d_qk folded into q and k alike
        q, k = self._split(self.q(x), self.d_qk) * scale, self._split(self.k(x), self.d_qk) * scale
        if self.kind == "linear":
            q, k = elu_features(q), elu_features(k)
        return q, k

    def attention_matrices(self, x: torch.Tensor) -> torch.Tensor:
        """The (batch, heads, n, n) attention matrices this layer applies to ``x``."""
        q, k = self._qk(x)
        if self.kind == "softmax":
            return torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        return linear_attention_matrix(q, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k = self._qk(x)
        v = self._split(self.v(x), self.d_v)
        out = softmax_attention(q, k, v) if self.kind == "softmax" else linear_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(b, t, d))


def attention_builder(kind: str, qk_dim: int | None = None):
    """``attn(d, heads)`` building a :class:`MultiHeadAttention` of ``kind`` and ``qk_dim``, for
    :class:`kexue.transformer.BertMLM` (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    return functools.partial(MultiHeadAttention, kind=kind, qk_dim=qk_dim)


# -- the tasks ------------------------------------------------------------------------------------
def mirror_sequences(n: int, length: int, vocab: int, seed: int) -> np.ndarray:
    """Sequences x_1…x_L whose second half is the first half reversed (x_{L+1−i} = x_i), first half
    uniform over ``vocab`` tokens: a masked token is recovered from its mirror position only, an
    attention pattern of full rank L (an anti-diagonal permutation). (n, length) int64
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    if length % 2:
        raise ValueError("mirror sequences need an even length")
    half = np.random.default_rng(seed).integers(0, vocab, size=(n, length // 2))
    return np.concatenate([half, half[:, ::-1]], 1).astype(np.int64)


def topic_sequences(n: int, length: int, vocab: int, topics: int, seed: int) -> np.ndarray:
    """Each sequence draws its tokens uniformly from one of ``topics`` disjoint groups of vocab/topics
    tokens: a masked token is predicted from the sequence's group, which a uniform (rank-1) average
    over the sequence reveals, so the rank cap should not matter. (n, length) int64
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    if vocab % topics:
        raise ValueError(f"vocab={vocab} is not a multiple of topics={topics}")
    rng = np.random.default_rng(seed)
    size = vocab // topics
    topic = rng.integers(0, topics, size=(n, 1))
    return (topic * size + rng.integers(0, size, size=(n, length))).astype(np.int64)


def task_data(task: str, *, n_train: int, n_dev: int, n_test: int, length: int, vocab: int,
              topics: int = 8, mask_prob: float = 0.15, seed: int = 0) -> dict:
    """Train / dev / test sequences of a task ('mirror' or 'topic'), drawn with ``seed`` (the data are
    fixed across model seeds); dev and test carry fixed BERT corruptions (15 %, 80/10/10,
    :func:`kexue.bert.objective.mask_tokens`); training batches are re-masked at every step. Mask id =
    ``vocab`` (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    n = n_train + n_dev + n_test
    if task == "mirror":
        ids = mirror_sequences(n, length, vocab, seed)
    elif task == "topic":
        ids = topic_sequences(n, length, vocab, topics, seed)
    else:
        raise ValueError(f"task must be 'mirror' or 'topic', got {task!r}")
    rng = np.random.default_rng(seed + 1)
    out = {"task": task, "vocab": vocab, "mask_id": vocab, "length": length, "mask_prob": mask_prob,
           "train": torch.from_numpy(ids[:n_train])}
    for name, part in (("dev", ids[n_train:n_train + n_dev]), ("test", ids[n_train + n_dev:])):
        inp, lab = mask_tokens(part, None, rng, mask_id=vocab, replace_ids=np.arange(vocab), prob=mask_prob)
        out[name] = (torch.from_numpy(inp), torch.from_numpy(lab))
    return out


@torch.no_grad()
def masked_eval(model, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> dict:
    """Cross-entropy (nats) and accuracy over the labelled (masked) positions
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    model.eval()
    dev = next(model.parameters()).device
    nll, correct, count = 0.0, 0, 0
    for i in range(0, len(inputs), batch):
        logits = model(inputs[i:i + batch].to(dev))
        lab = labels[i:i + batch].to(dev)
        sel = lab != IGNORE
        lg = logits[sel]
        nll += float(F.cross_entropy(lg, lab[sel], reduction="sum"))
        correct += int((lg.argmax(-1) == lab[sel]).sum())
        count += int(sel.sum())
    model.train()
    return {"ce": nll / count, "acc": correct / count}


def build_model(data: dict, *, kind: str, qk_dim: int | None, d: int, heads: int, ffn: int,
                layers: int, seed: int):
    """The task's :class:`kexue.transformer.BertMLM` (Pre-LN, tied head without transform) with
    :class:`MultiHeadAttention` of ``kind`` and ``qk_dim``, initialised from ``torch.manual_seed(seed)``
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    from .transformer import BertMLM

    from . import resolve_device

    torch.manual_seed(seed)                     # initialised on the CPU, then moved: same weights anywhere
    return BertMLM(data["vocab"] + 1, layers, d, heads, ffn, max_len=data["length"], norm="pre",
                   head_transform=False, eps=1e-5, attn=attention_builder(kind, qk_dim)).to(resolve_device())


def train_arm(data: dict, *, kind: str, qk_dim: int | None, d: int, heads: int, ffn: int,
              layers: int, lr: float, steps: int, batch: int, eval_every: int, patience: int,
              seed: int) -> dict:
    """Train a :class:`kexue.transformer.BertMLM` whose attention is :class:`MultiHeadAttention`
    (``kind``, ``qk_dim``) on the task's masked-token objective with Adam (``lr``), early stopping on
    dev cross-entropy (:func:`kexue.train.fit`), the best dev checkpoint restored. Returns dev and
    test CE / accuracy, best_step, steps_run, seconds, n_params and the model
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``). The model is built on
    kexue's current device (:func:`build_model`)."""
    from .train import fit

    model = build_model(data, kind=kind, qk_dim=qk_dim, d=d, heads=heads, ffn=ffn, layers=layers, seed=seed)
    train, vocab, mask_id = data["train"], data["vocab"], data["mask_id"]
    g = torch.Generator().manual_seed(seed)     # the masks are drawn on the CPU, the batches moved
    dev = next(model.parameters()).device

    def loss_on(idx, rng):
        inp, lab = mask_tokens(train[idx], None, g, mask_id=mask_id, replace_ids=np.arange(vocab),
                               prob=data["mask_prob"])
        return model.mlm_loss(inp.to(dev), lab.to(dev))

    def evaluate():
        return -masked_eval(model, *data["dev"])["ce"]

    t0 = time.perf_counter()
    out = fit(list(model.parameters()), loss_on, len(train), steps=steps, batch_size=batch,
              evaluate=evaluate, eval_every=eval_every, lr=lr, seed=seed, patience=patience)
    dev, test = masked_eval(model, *data["dev"]), masked_eval(model, *data["test"])
    return {"kind": kind, "qk_dim": qk_dim or d // heads, "lr": lr, "seed": seed,
            "dev_ce": dev["ce"], "dev_acc": dev["acc"], "test_ce": test["ce"], "test_acc": test["acc"],
            "best_step": out["best_step"], "steps_run": out["steps_run"],
            "seconds": time.perf_counter() - t0, "n_params": sum(p.numel() for p in model.parameters()),
            "model": model}


def run_arms(data: dict, arms: dict, *, lrs, seeds, **kw) -> dict:
    """Every arm (name → (kind, qk_dim)) at every lr of the grid and every seed (:func:`train_arm` with
    ``kw``), the lr chosen per arm by :func:`select_by_dev`. Returns name → {lr, runs (the chosen lr's,
    by seed), all (every run)} (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    out = {}
    for name, (kind, qk_dim) in arms.items():
        runs = [train_arm(data, kind=kind, qk_dim=qk_dim, lr=lr, seed=s, **kw) for lr in lrs for s in seeds]
        lr, best = select_by_dev(runs)
        out[name] = {"lr": lr, "runs": best, "all": runs}
    return out


def tv_at(rows: list[dict], scheme: str, dim: int) -> float:
    """The TV error of ``scheme`` at feature dimension ``dim`` in :func:`approximation_errors` rows
    (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    return next(r["tv"] for r in rows if r["scheme"] == scheme and r["dim"] == dim)


def needed_order(rows: list[dict], scheme: str, tol: float) -> tuple[int, int, bool]:
    """From :func:`approximation_errors` rows: the smallest order of ``scheme`` whose TV ≤ ``tol``,
    its dimension, and whether it was reached (if not: the largest order tried and its dimension, a
    lower bound) (https://kexue.fm/archives/8601, chapter ``linear-attention-infinite``)."""
    cand = sorted((r for r in rows if r["scheme"] == scheme), key=lambda r: r["order"])
    for r in cand:
        if r["tv"] <= tol:
            return r["order"], r["dim"], True
    return cand[-1]["order"], cand[-1]["dim"], False


def select_by_dev(runs: list[dict]) -> tuple[float, list[dict]]:
    """The learning rate whose mean dev cross-entropy over seeds is lowest, and its runs ordered by
    seed: the grid is searched the same way for every arm (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    lrs = sorted({r["lr"] for r in runs})
    best = min(lrs, key=lambda lr: np.mean([r["dev_ce"] for r in runs if r["lr"] == lr]))
    return best, sorted((r for r in runs if r["lr"] == best), key=lambda r: r["seed"])


@torch.no_grad()
def attention_matrices(model, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The attention matrices every layer of a :func:`build_model` model applies to ``inputs``: one
    (batch, heads, n, n) tensor per layer, in the model's dtype (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    enc = model.encoder
    inputs = inputs.to(enc.tok_emb.weight.device)
    pos = torch.arange(inputs.shape[1], device=inputs.device)
    x = enc.emb_ln(enc.tok_emb(inputs) + enc.pos_emb(pos))
    out = []
    for layer in enc.layers:
        h = layer.ln1(x) if layer.norm == "pre" else x
        out.append(layer.attn.attention_matrices(h))
        x = layer(x)
    return out


@torch.no_grad()
def attention_ranks(model, inputs: torch.Tensor) -> np.ndarray:
    """Effective rank (:func:`effective_rank`) of every attention matrix the model's layers apply to
    ``inputs``: array (layers, batch, heads) (https://kexue.fm/archives/8601, chapter
    ``linear-attention-infinite``)."""
    return np.array([[[effective_rank(a[b, j]) for j in range(a.shape[1])] for b in range(a.shape[0])]
                     for a in attention_matrices(model, inputs)])


@torch.no_grad()
def max_numerical_rank(model, inputs: torch.Tensor, rtol: float = 1e-10) -> int:
    """The largest :func:`numerical_rank` over every attention matrix of a float64 copy of ``model``
    on ``inputs``: at most the feature dimension for linear attention (https://kexue.fm/archives/8601,
    chapter ``linear-attention-infinite``)."""
    import copy

    m64 = copy.deepcopy(model).double()
    return max(numerical_rank(a[b, j], rtol) for a in attention_matrices(m64, inputs)
               for b in range(a.shape[0]) for j in range(a.shape[1]))
