"""Weight initialisation: BERT's truncated normal and the dimension averages for non-square
matrices.

- ``trunc_normal_`` and ``truncated_normal_std``: https://kexue.fm/archives/8747
  (chapter ``bert-init-std``).
- ``fan_average`` and ``init_dense_``: https://kexue.fm/archives/8725 (chapter ``xavier-averaging``).
"""
from __future__ import annotations

import math

import torch

from . import resolve_device

FAN_MODES = ("fan_in", "fan_out", "arith", "geo", "quad")


def truncated_normal_std(k: float = 2.0) -> float:
    """Std of a standard normal truncated to [-k, k]: sqrt(1 - 2k·φ(k) / (2Φ(k) - 1)).

    For k = 2 this is 0.8796 = 1/1.1368472, so BERT's "std 0.02" is really 0.0176
    (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""
    phi = math.exp(-k * k / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(k / math.sqrt(2))  # 2Φ(k) - 1
    return math.sqrt(1 - 2 * k * phi / mass)


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 0.02, k: float = 2.0, mean: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` from N(mean, std²) truncated to mean ± k·std, as TF-BERT does.

    ``torch.nn.init.trunc_normal_`` takes *absolute* bounds (default ±2), so calling it with
    ``std=0.02`` alone truncates nothing; this wrapper scales the bounds with ``std``
    (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""
    return torch.nn.init.trunc_normal_(tensor, mean=mean, std=std, a=mean - k * std,
                                       b=mean + k * std, generator=generator)


def fan_average(m: int, n: int, mode: str) -> float:
    """The "averaged dimension" d of an m-input, n-output dense layer, with Var(w) = 1/d.

    fan_in: m · fan_out: n · arith (Xavier): (m+n)/2 · geo: sqrt(mn) · quad: (m²+n²)/(m+n).
    ``quad`` minimises (m·t-1)² + (n·t-1)² over the variance t; ``geo`` keeps an m→n→m
    composition variance-preserving (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    if m <= 0 or n <= 0:
        raise ValueError(f"dimensions must be positive, got m={m}, n={n}")
    if mode == "fan_in":
        return float(m)
    if mode == "fan_out":
        return float(n)
    if mode == "arith":
        return (m + n) / 2
    if mode == "geo":
        return math.sqrt(m * n)
    if mode == "quad":
        return (m * m + n * n) / (m + n)
    raise ValueError(f"unknown mode {mode!r}; use one of {FAN_MODES}")


@torch.no_grad()
def init_dense_(weight: torch.Tensor, mode: str, gain: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Normal init of a ``torch.nn.Linear`` weight with Var = gain² / fan_average(m, n, mode).

    torch stores the weight as (out, in) = (n, m); the article writes W as (in × out) with y = xW
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    n, m = weight.shape
    std = gain / math.sqrt(fan_average(m, n, mode))
    return weight.normal_(0.0, std, generator=generator)


# -- the averaging rules in a Transformer's FFN (chapter ``xavier-averaging``, issue 17) ------------
@torch.no_grad()
def init_ffn_(model: torch.nn.Module, mode: str, gain: float = 1.0,
              generator: torch.Generator | None = None) -> torch.nn.Module:
    """Re-initialise the two matrices of every position-wise FFN (``kexue.transformer.FeedForward``:
    fc1 d→ffn, fc2 ffn→d) with :func:`init_dense_` (each with its own fans, Var = gain²/fan_average)
    and their biases at 0; every other parameter is left alone. In order: fc1 then fc2 of each
    block, from ``generator``, so every rule scales the same standard-normal draws
    (https://kexue.fm/archives/8725, chapter ``xavier-averaging``)."""
    from .transformer import FeedForward

    found = 0
    for module in model.modules():
        if isinstance(module, FeedForward):
            for layer in (module.fc1, module.fc2):
                init_dense_(layer.weight, mode, gain, generator=generator)
                layer.bias.zero_()
            found += 1
    if not found:
        raise ValueError("the model has no kexue.transformer.FeedForward block")
    return model


def build_mlm_ffn_rule(vocab: int, *, mode: str, n_layers: int, d: int, heads: int, ffn: int,
                       seq_len: int, seed: int = 0, gain: float = 1.0, norm: str = "post"):
    """A :class:`kexue.transformer.BertMLM` whose square matrices and embeddings are N(0, 1/d)
    (:func:`kexue.transformer.init_bert_` with std 1/√d, untruncated: what every averaging rule
    gives a d×d matrix) and whose FFN matrices follow the rule ``mode`` (:func:`init_ffn_`). The
    base draws come from ``seed``, the FFN's from ``seed + 1`` (both CPU generators), so two rules
    at one seed differ only in the scale of the FFN weights (https://kexue.fm/archives/8725,
    chapter ``xavier-averaging``)."""
    from .transformer import BertMLM, init_bert_

    torch.manual_seed(seed)
    model = BertMLM(vocab, n_layers, d, heads, ffn, max_len=seq_len, norm=norm)
    init_bert_(model, 1.0 / math.sqrt(d), trunc=False, generator=torch.Generator().manual_seed(seed))
    init_ffn_(model, mode, gain, generator=torch.Generator().manual_seed(seed + 1))
    return model


def run_mlm_ffn_rule(corpus, *, mode: str, n_layers: int, d: int, heads: int, ffn: int,
                     seq_len: int, seed: int = 0, gain: float = 1.0, norm: str = "post",
                     device=None, **train_kw) -> dict:
    """Build :func:`build_mlm_ffn_rule` for ``corpus`` (vocabulary = its tokens + [MASK]), move it to
    ``device`` (default :func:`kexue.current_device`) and train it with :func:`kexue.mlm.train_mlm` (AdamW, BERT's warm-up schedule, data
    stream and masks from ``seed``); returns that result (https://kexue.fm/archives/8725, chapter
    ``xavier-averaging``)."""
    from .mlm import train_mlm

    model = build_mlm_ffn_rule(corpus.vocab + 1, mode=mode, n_layers=n_layers, d=d, heads=heads,
                               ffn=ffn, seq_len=seq_len, seed=seed, gain=gain, norm=norm)
    model.to(resolve_device(device))
    return train_mlm(model, corpus, seq_len=seq_len, seed=seed, **train_kw)
