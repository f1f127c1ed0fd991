"""Sentence embeddings from a BERT encoder and their evaluation on semantic similarity: pooling,
BERT-whitening, Spearman correlation, a plain character-overlap score (the lexical control every
such number needs, beside the random-init encoder :func:`kexue.models.bert_zh.random_init_like`), and
a short CoSENT fine-tune. Batching and pooling are :mod:`kexue.bert.batching`'s.

- Whitening: "你可能不需要BERT-flow:一个线性变换媲美BERT-flow", https://kexue.fm/archives/8069
- CoSENT: "CoSENT(一):比Sentence-BERT更有效的句向量方案", https://kexue.fm/archives/8847
Used by the chapters ``bert-whitening`` and ``cosent`` and by the pre-training evaluations of
:mod:`kexue.pretrain`.
"""
from __future__ import annotations

import numpy as np
import torch

from .bert.batching import batches_by_length, pool
from .stats import spearman


def _bert(model):
    return getattr(model, "bert", model)


@torch.no_grad()
def encode(model, tok, sentences: list[str], *, pooling: str = "mean", batch_size: int = 256,
           max_length: int = 64) -> np.ndarray:
    """(n, d) float64 sentence vectors. ``mean``: average of the last layer over all non-padding
    tokens ([CLS] and [SEP] included); ``first_last``: the same average of (first layer + last
    layer)/2; ``cls``: the last layer at [CLS] (https://kexue.fm/archives/8069)."""
    bert = _bert(model)
    enc = tok(list(sentences), truncation=True, max_length=max_length)
    out = np.empty((len(sentences), bert.config.hidden_size))
    was_training = bert.training
    bert.eval()
    dev = next(bert.parameters()).device
    for idx, inp, typ, att in batches_by_length(enc["input_ids"], enc["token_type_ids"], batch_size,
                                                tok.pad_token_id):
        o = bert(input_ids=inp.to(dev), token_type_ids=typ.to(dev), attention_mask=att.to(dev),
                 output_hidden_states=pooling == "first_last")
        hs = o.hidden_states if pooling == "first_last" else (o[0],)
        out[idx] = pool(hs, att.to(dev), pooling).double().cpu().numpy()
    bert.train(was_training)
    return out


def fit_whitening(X: np.ndarray, dim: int | None = None, *,
                  shrinkage: float | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """BERT-whitening: μ = mean(X), Σ = (X−μ)ᵀ(X−μ)/n = U Λ Uᵀ, W = U Λ^{−1/2} (first ``dim``
    columns), so that (X−μ)W has identity covariance (https://kexue.fm/archives/8069).

    With n samples Σ has rank at most n − 1, so keeping k = ``dim`` (or d) ≥ n directions would
    divide by eigenvalues that are zero up to rounding (weights of order 1e8): that raises
    ``ValueError`` unless ``shrinkage`` is given. ``shrinkage``: α ∈ (0, 1], or ``"ledoit-wolf"``
    for the α of Ledoit & Wolf (2004) (``sklearn.covariance.ledoit_wolf_shrinkage``); Σ is then
    replaced by (1 − α)Σ + α·(tr Σ / d)·I, a ridge toward the mean eigenvalue, and (X−μ)W has
    that shrunk matrix's whitening (identity covariance only in the limit α → 0)."""
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    k = dim or d
    mu = X.mean(0, keepdims=True)
    cov = (X - mu).T @ (X - mu) / n
    if shrinkage is None:
        if n <= k:
            raise ValueError(
                f"fit_whitening: {n} samples for {k} whitened dimensions; the covariance has rank at most "
                f"{n - 1}, so W would divide by zero eigenvalues. Fit on more sentences (n > {k}, e.g. "
                f"the train split's), keep fewer dimensions (dim < {n}), or ask for a stated shrinkage "
                "(shrinkage=0.1, or shrinkage='ledoit-wolf').")
    else:
        if shrinkage == "ledoit-wolf":
            from sklearn.covariance import ledoit_wolf_shrinkage
            alpha = float(ledoit_wolf_shrinkage(X))
        elif isinstance(shrinkage, str):
            raise ValueError("shrinkage must be a number in (0, 1] or 'ledoit-wolf'")
        else:
            alpha = float(shrinkage)
        if not 0 < alpha <= 1:
            raise ValueError(f"shrinkage must be in (0, 1], got {alpha}")
        cov = (1 - alpha) * cov + alpha * (np.trace(cov) / d) * np.eye(d)
    u, s, _ = np.linalg.svd(cov)
    W = u / np.sqrt(s)
    return mu, W[:, :dim] if dim else W


def apply_whitening(X: np.ndarray, mu: np.ndarray, W: np.ndarray) -> np.ndarray:
    """x ↦ (x − μ)W (https://kexue.fm/archives/8069)."""
    return (np.asarray(X, dtype=np.float64) - mu) @ W


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity aᵢ·bᵢ / (|aᵢ||bᵢ|)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-300)


def char_overlap(s1: list[str], s2: list[str], kind: str = "dice") -> np.ndarray:
    """The lexical-overlap control: with A, B the sets of non-space characters of the two sentences,
    Dice = 2|A∩B|/(|A|+|B|) or Jaccard = |A∩B|/|A∪B| (0 for two empty sentences)."""
    out = np.empty(len(s1))
    for i, (a, b) in enumerate(zip(s1, s2)):
        A, B = set(a) - {" ", "\t", "\n"}, set(b) - {" ", "\t", "\n"}
        inter = len(A & B)
        if kind == "dice":
            den = len(A) + len(B)
            out[i] = 2 * inter / den if den else 0.0
        elif kind == "jaccard":
            den = len(A | B)
            out[i] = inter / den if den else 0.0
        else:
            raise ValueError("kind must be 'dice' or 'jaccard'")
    return out


def sts_spearman(model, tok, s1: list[str], s2: list[str], scores, *, pooling: str = "mean",
                 whiten_sentences: list[str] | None = None, dim: int | None = None,
                 **kw) -> dict:
    """Spearman ρ between gold ``scores`` and cos(u_i, v_i) of the sentence vectors, raw and (when
    ``whiten_sentences`` is given, e.g. the train split's sentences) after whitening fitted on those
    (https://kexue.fm/archives/8069)."""
    u, v = encode(model, tok, s1, pooling=pooling, **kw), encode(model, tok, s2, pooling=pooling, **kw)
    out = {"raw": spearman(cosine(u, v), scores)}
    if whiten_sentences is not None:
        mu, W = fit_whitening(encode(model, tok, whiten_sentences, pooling=pooling, **kw), dim)
        out["whitened"] = spearman(cosine(apply_whitening(u, mu, W), apply_whitening(v, mu, W)), scores)
    return out


def cosent_loss(cos: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT: log(1 + Σ_{(i,j): y_i > y_j} exp(λ(cos_j − cos_i))), λ = ``scale``: every pair ranked
    more similar must have the higher cosine (https://kexue.fm/archives/8847)."""
    diff = scale * (cos[None, :] - cos[:, None])  # [i, j] = λ(cos_j − cos_i)
    keep = labels[:, None] > labels[None, :]
    diff = diff.masked_fill(~keep, float("-inf")).reshape(-1)
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), 0)


def _cosent_batch_loss(bert, tok, s1, s2, y, idx, *, pooling, max_length, scale):
    dev = next(bert.parameters()).device
    vecs = []
    for side in (s1, s2):
        enc = tok([side[i] for i in idx], truncation=True, max_length=max_length,
                  padding=True, return_tensors="pt").to(dev)
        o = bert(**enc)
        vecs.append(pool((o[0],), enc["attention_mask"], pooling))
    cos = torch.nn.functional.cosine_similarity(vecs[0], vecs[1], dim=-1)
    return cosent_loss(cos, y[idx].to(dev), scale)


def pair_spearman(model, tok, s1, s2, scores, *, pooling: str = "mean", max_length: int = 64,
                  batch_size: int = 256) -> float:
    """Spearman of cos(u_i, v_i) with ``scores``, each distinct sentence encoded once by
    :func:`encode` (the dev score of :func:`cosent_fit`)."""
    uniq = list(dict.fromkeys(list(s1) + list(s2)))
    pos = {t: i for i, t in enumerate(uniq)}
    X = encode(model, tok, uniq, pooling=pooling, max_length=max_length, batch_size=batch_size)
    return float(spearman(cosine(X[[pos[t] for t in s1]], X[[pos[t] for t in s2]]), np.asarray(scores, float)))


def cosent_fit(model, tok, train, dev, *, lr: float, steps: int, eval_every: int,
               patience: int | None = None, batch_size: int = 32, seed: int = 0,
               pooling: str = "mean", max_length: int = 64, scale: float = 20.0) -> dict:
    """CoSENT fine-tune of the encoder of ``model`` in place, with early stopping on ``dev``.

    ``train`` and ``dev`` are ``(s1, s2, scores)``. AdamW with constant ``lr`` for at most ``steps``
    minibatches drawn by :func:`kexue.train.fit` (seeded by ``seed``, which also seeds torch's global
    generator for dropout); every ``eval_every`` steps the
    dev Spearman (:func:`pair_spearman`) is taken, training stops after ``patience`` evaluations
    without a gain, and the best evaluation's weights are restored. Returns fit's
    ``{best_dev, best_step, history, ...}`` (https://kexue.fm/archives/8847)."""
    from . import train as _train

    bert = _bert(model)
    s1, s2, y = list(train[0]), list(train[1]), torch.as_tensor(np.asarray(train[2], dtype=np.float64))
    if not (len(s1) == len(s2) == len(y)) or len(s1) < 2:
        raise ValueError(f"cosent_fit needs >= 2 aligned training pairs; got {len(s1)}, {len(s2)}, {len(y)}")
    d1, d2, dy = (list(t) for t in dev)

    def loss_on(idx, rng):
        return _cosent_batch_loss(bert, tok, s1, s2, y, idx, pooling=pooling, max_length=max_length, scale=scale)

    def evaluate():
        score = pair_spearman(bert, tok, d1, d2, dy, pooling=pooling, max_length=max_length)
        bert.train()
        return score

    params = [p for p in bert.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    torch.manual_seed(seed)  # dropout: the same seed gives the same run
    bert.train()
    kw = {} if patience is None else {"patience": patience}
    out = _train.fit(params, loss_on, len(s1), steps=steps, batch_size=batch_size, evaluate=evaluate,
                     eval_every=eval_every, optimizer=opt, seed=seed, **kw)
    model.eval()
    return out


def cosent_finetune(model, tok, s1: list[str], s2: list[str], scores, *, epochs: int = 1,
                    batch_size: int = 32, lr: float = 2e-5, seed: int = 0, pooling: str = "mean",
                    max_length: int = 64, scale: float = 20.0) -> list[float]:
    """Fine-tune the encoder of ``model`` in place with :func:`cosent_loss` on the cosine of the
    pooled vectors (AdamW, constant ``lr``, shuffled with ``seed``); returns the per-step losses
    (https://kexue.fm/archives/8847)."""
    bert = _bert(model)
    bert.train()
    opt = torch.optim.AdamW(bert.parameters(), lr=lr)
    y = torch.as_tensor(np.asarray(scores, dtype=np.float64))
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(epochs):
        perm = rng.permutation(len(s1))
        for s in range(0, len(perm), batch_size):
            idx = perm[s:s + batch_size]
            loss = _cosent_batch_loss(bert, tok, s1, s2, y, idx, pooling=pooling,
                                      max_length=max_length, scale=scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.eval()
    return losses
