"""A small character language model on the book's Chinese corpus.

``ContextMLPLM`` predicts the next character from the previous ``context`` characters: an input
embedding E (V × d), the concatenated context embeddings through a one-hidden-layer MLP back to d, and a
softmax over the vocabulary, either untied (its own V × d matrix and bias) or tied to E. The tied variant
can swap the two halves of the output features before the product with E (``half_swap``), Su's fix for
tied embeddings (https://kexue.fm/archives/9698): with logits = h E^T the model is pulled towards
predicting its own input token; swapping halves pairs the first half of the output features with the
second half of each embedding. First used by chapter ``lion-tiger-embedding``
(https://kexue.fm/archives/9736), where the tied softmax makes the embedding's gradient dense.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

BOS = 2  # [CLS] of the bert-zh vocabulary: the left padding of the first characters of a line
UNK = 1


def load_vocab(path=None) -> tuple[dict[str, int], int]:
    """Character → id of bert-zh's vocabulary (``lib/kexue/models/bert-zh/vocab.txt``; 5,778 entries;
    returns (lookup, vocabulary size); ``##c`` entries never match a single character)."""
    path = Path(path) if path else Path(__file__).parent / "models" / "bert-zh" / "vocab.txt"
    vocab = path.read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab = vocab[:-1]
    return {tok: i for i, tok in enumerate(vocab)}, len(vocab)


def char_windows(lines, vocab: dict, context: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(X, y): for every character of every line, its ``context`` previous characters (left-padded with
    [CLS] at the start of a line) and its id; characters outside the vocabulary map to [UNK]. The slow,
    obvious version is a Python loop over positions (tested)."""
    xs, ys = [], []
    for line in lines:
        ids = [vocab.get(c, UNK) for c in line]
        if not ids:
            continue
        padded = np.array([BOS] * context + ids, dtype=np.int64)
        n = len(ids)
        win = np.lib.stride_tricks.sliding_window_view(padded[:-1], context)[:n]
        xs.append(win)
        ys.append(padded[context:])
    if not xs:
        return np.zeros((0, context), np.int64), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys)


def swap_halves(h: torch.Tensor) -> torch.Tensor:
    """[a, b] → [b, a] along the last axis (d even)."""
    d = h.shape[-1]
    if d % 2:
        raise ValueError(f"half_swap needs an even width, got {d}")
    return torch.cat([h[..., d // 2:], h[..., : d // 2]], dim=-1)


class ContextMLPLM(nn.Module):
    """Next-character model: logits = out(MLP([E x_1; …; E x_k])). ``tied=False``: its own output
    matrix and bias; ``tied=True``: logits = s(h) E^T + b with s = :func:`swap_halves` when
    ``half_swap`` (Su's tied variant, https://kexue.fm/archives/9698) else the identity. The embedding
    is ``self.embedding`` (a dense ``nn.Embedding``, so absent tokens get exact zero gradient rows),
    initialised N(0, ``emb_std``²) (GPT-2's 0.02); the linear layers U(±1/√fan_in), biases 0.
    Chapter ``lion-tiger-embedding`` (https://kexue.fm/archives/9736)."""

    def __init__(self, vocab_size: int, dim: int = 64, context: int = 4, hidden: int = 128,
                 tied: bool = False, half_swap: bool = True, seed: int = 0, emb_std: float = 0.02):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.vocab_size, self.dim, self.context, self.tied, self.half_swap = vocab_size, dim, context, tied, half_swap
        self.embedding = nn.Embedding(vocab_size, dim)
        self.fc1 = nn.Linear(context * dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.out = None if tied else nn.Linear(dim, vocab_size)
        self.out_bias = nn.Parameter(torch.zeros(vocab_size)) if tied else None
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, emb_std, generator=g)
            for lin in (self.fc1, self.fc2) + ((self.out,) if self.out is not None else ()):
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.uniform_(-bound, bound, generator=g)
                lin.bias.zero_()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedding(x).reshape(x.shape[0], -1)
        return self.fc2(torch.tanh(self.fc1(e)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.tied:
            if self.half_swap:
                h = swap_halves(h)
            return h @ self.embedding.weight.T + self.out_bias
        return self.out(h)


@torch.no_grad()
def token_nll(model: nn.Module, X, y, batch: int = 4096, device=None) -> np.ndarray:
    """Per-position negative log-likelihood (nats) of ``y`` given ``X`` (numpy arrays), computed on
    ``device`` (default: the model's device)."""
    device = device if device is not None else next(model.parameters()).device
    model.eval()
    out = []
    for i in range(0, len(y), batch):
        xb = torch.as_tensor(X[i:i + batch], device=device)
        yb = torch.as_tensor(y[i:i + batch], device=device)
        out.append(F.cross_entropy(model(xb), yb, reduction="none").float().cpu().numpy())
    model.train()
    return np.concatenate(out) if out else np.zeros(0)


def context_counts(X: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each token occurs in the context windows (the rows of E a batch reads)."""
    return np.bincount(X.ravel(), minlength=vocab_size)


ARMS = ("tiger", "lion", "adamw", "lazy_tiger", "tied_tiger", "adamw_emb_tiger")
"""The optimizer arms of chapter ``lion-tiger-embedding``: Tiger, Lion, AdamW, lazy Tiger (lazy rows on
the embedding), Tiger on the tied half-swapped model, AdamW on the embedding with Tiger elsewhere."""


def optimizer_for(arm: str, model: ContextMLPLM, lr: float, weight_decay: float,
                  tiger_beta: float = 0.965, lion_betas=(0.9, 0.99)):
    """The optimizer of one arm of :data:`ARMS`, every arm with the same step η and decoupled decay λ
    inside the bracket (AdamW: θ ← θ − η(λθ + m̂/(√v̂+ε)), the same decay) on every parameter
    (https://kexue.fm/archives/9736, chapter ``lion-tiger-embedding``)."""
    from kexue.optim.sign import Lion, Tiger

    emb = [model.embedding.weight]
    rest = [p for n, p in model.named_parameters() if n != "embedding.weight"]
    if arm in ("tiger", "tied_tiger"):
        return Tiger(model.parameters(), lr=lr, beta=tiger_beta, weight_decay=weight_decay)
    if arm == "lazy_tiger":
        return Tiger([{"params": emb, "lazy_rows": True}, {"params": rest}], lr=lr, beta=tiger_beta,
                     weight_decay=weight_decay)
    if arm == "lion":
        return Lion(model.parameters(), lr=lr, betas=lion_betas, weight_decay=weight_decay)
    if arm == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if arm == "adamw_emb_tiger":
        return _Mixed([torch.optim.AdamW(emb, lr=lr, weight_decay=weight_decay),
                       Tiger(rest, lr=lr, beta=tiger_beta, weight_decay=weight_decay)])
    raise ValueError(f"unknown arm {arm!r}; arms: {', '.join(ARMS)}")


class _Mixed:
    """Several optimizers stepped together (the Lion authors' mixed recipe)."""

    def __init__(self, opts):
        self.opts = opts

    def zero_grad(self, set_to_none: bool = True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()


def train_arm(arm: str, data: dict, *, vocab_size: int, dim: int, hidden: int, context: int, steps: int,
              batch: int, lr: float, weight_decay: float, eval_every: int, seed: int,
              device=None) -> dict:
    """Train one arm with :func:`kexue.train.fit` (minibatches of ``batch`` windows, dev NLL every
    ``eval_every`` steps, no early stop: drift is read at the run's end, the NLL at the best dev
    checkpoint). ``data``: ``{"train": (X, y), "dev": (X, y), "test": (X, y)}`` numpy arrays. Returns
    the final embedding table (CPU), per-position test NLL at the best dev checkpoint, the
    history and the best step (https://kexue.fm/archives/9736, chapter ``lion-tiger-embedding``).
    ``device``: where the model and batches live (default: kexue's current device, as after
    :func:`kexue.setup`)."""
    from kexue import resolve_device
    from kexue.train import fit

    device = resolve_device(device)
    torch.manual_seed(seed)
    model = ContextMLPLM(vocab_size, dim=dim, context=context, hidden=hidden,
                         tied=(arm == "tied_tiger"), half_swap=True, seed=seed).to(device)
    Xtr = torch.as_tensor(data["train"][0], device=device)
    ytr = torch.as_tensor(data["train"][1], device=device)
    Xdv, ydv = data["dev"]
    opt = optimizer_for(arm, model, lr, weight_decay)
    last = {}

    def loss_on(idx, rng):
        ix = torch.as_tensor(np.asarray(idx), device=device)
        return F.cross_entropy(model(Xtr[ix]), ytr[ix])

    def evaluate():
        last["E"] = model.embedding.weight.detach().cpu().clone()
        others = [p.detach().abs().max().item() for n, p in model.named_parameters() if n != "embedding.weight"]
        last["max_other"] = max(others)
        return -float(token_nll(model, Xdv, ydv, device=device).mean())

    out = fit(list(model.parameters()), loss_on, len(ytr), steps=steps, batch_size=batch, evaluate=evaluate,
              eval_every=eval_every, optimizer=opt, seed=seed)
    Xte, yte = data["test"]
    return {"E": last["E"], "max_other": last["max_other"], "test_nll": token_nll(model, Xte, yte, device=device),
            "best_dev_nll": -out["best_dev"], "best_step": out["best_step"], "history": out["history"]}
