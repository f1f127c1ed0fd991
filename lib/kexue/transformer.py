"""A small BERT-style encoder for studying signal propagation: Post-LN or Pre-LN blocks, BERT's
truncated-normal init (or any other std), an MLM head with or without BERT's Dense+LN transform,
and probes of the identity (residual) path and of per-layer gradient norms.

Source: "模型优化漫谈:BERT的初始标准差为什么是0.02?", https://kexue.fm/archives/8747
(chapter ``bert-init-std``). Equation numbers refer to that chapter's Method section:

- (1) Post-LN sublayer  x_{l+1} = LN(x_l + F_l(x_l))
- (2) Pre-LN sublayer   x_{l+1} = x_l + F_l(LN(x_l)), with a final LN after the last block
- (3) branch ratio      s_l = std(x_l + F_l) / std(x_l) ≈ sqrt(1 + σ_l²)
- (4) identity path     ρ_l = ∏_{k<l} 1/s_k (predicted), ρ̂_l = <N(x_l), x̃_0> / ||x̃_0||² (measured)
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import resolve_device
from .init import trunc_normal_

NORMS = ("post", "pre")


class SelfAttention(nn.Module):
    """Multi-head self-attention, softmax(QKᵀ/√d_h)V then an output projection (as BERT)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} is not a multiple of heads={heads}")
        self.heads, self.d_head = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d_head), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    """Position-wise FFN, W2·GELU(W1·x) with the exact (erf) GELU that BERT uses."""

    def __init__(self, d: int, ffn: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    """One Transformer block, Post-LN (eq. 1, BERT's) or Pre-LN (eq. 2).

    With ``trace`` (a list), each of the two sublayers appends ``(x_in, branch, x_out)``: the
    stream entering it, its branch output F(·), and the stream leaving it
    (https://kexue.fm/archives/8747, chapter ``bert-init-std``).

    ``attn`` (optional) builds the attention sublayer as ``attn(d, heads)``; None is the softmax
    :class:`SelfAttention`. Chapter ``linear-attention-infinite`` (https://kexue.fm/archives/8601)
    passes linear-attention modules from :mod:`kexue.attention`."""

    def __init__(self, d: int, heads: int, ffn: int, norm: str = "post", eps: float = 1e-12,
                 attn=None):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.attn = SelfAttention(d, heads) if attn is None else attn(d, heads)
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.ffn, self.ln2 = FeedForward(d, ffn), nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, trace: list | None = None) -> torch.Tensor:
        for branch, ln in ((self.attn, self.ln1), (self.ffn, self.ln2)):
            if self.norm == "post":
                f = branch(x)
                out = ln(x + f)          # eq. (1)
            else:
                f = branch(ln(x))
                out = x + f              # eq. (2)
            if trace is not None:
                trace.append((x, f, out))
            x = out
        return x


class TransformerEncoder(nn.Module):
    """Token + position embeddings, embedding LN (as BERT), ``n_layers`` blocks, and for Pre-LN
    a final LN. Returns the last hidden states (https://kexue.fm/archives/8747, chapter
    ``bert-init-std``). ``attn``: the attention builder of :class:`EncoderLayer` (None: softmax)."""

    def __init__(self, vocab: int, n_layers: int, d: int, heads: int, ffn: int,
                 max_len: int = 512, norm: str = "post", eps: float = 1e-12, attn=None):
        super().__init__()
        self.norm = norm
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.emb_ln = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(EncoderLayer(d, heads, ffn, norm, eps, attn) for _ in range(n_layers))
        self.final_ln = nn.LayerNorm(d, eps=eps) if norm == "pre" else None

    def forward(self, ids: torch.Tensor, trace: list | None = None) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.emb_ln(self.tok_emb(ids) + self.pos_emb(pos))
        for layer in self.layers:
            x = layer(x, trace)
        return self.final_ln(x) if self.final_ln is not None else x

    def encoder_layer_norms(self) -> list[nn.LayerNorm]:
        """Every LN of the encoder in forward order (embedding LN, ln1/ln2 of each block, final)."""
        lns = [self.emb_ln] + [ln for layer in self.layers for ln in (layer.ln1, layer.ln2)]
        return lns + ([self.final_ln] if self.final_ln is not None else [])


class MLMHead(nn.Module):
    """BERT's MLM head: optional transform Dense→GELU→LN (``cls/predictions/transform``), then
    logits = h·Eᵀ + b with E the tied token-embedding matrix (https://kexue.fm/archives/8747,
    chapter ``bert-init-std``: the transform's LN is where the large gamma goes)."""

    def __init__(self, embedding: nn.Embedding, transform: bool = True, eps: float = 1e-12):
        super().__init__()
        vocab, d = embedding.weight.shape
        self.embedding = embedding  # tied: shares the encoder's parameter
        self.dense = nn.Linear(d, d) if transform else None
        self.ln = nn.LayerNorm(d, eps=eps) if transform else None
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            h = self.ln(F.gelu(self.dense(h)))
        return h @ self.embedding.weight.T + self.bias


class BertMLM(nn.Module):
    """Encoder + MLM head with a tied decoder. ``mlm_loss`` evaluates the head only at the
    labelled positions (labels != -100), which gives the same loss at a fraction of the cost
    (https://kexue.fm/archives/8747, chapter ``bert-init-std``). ``attn``: the attention builder
    of :class:`EncoderLayer` (None: softmax; chapter ``linear-attention-infinite``)."""

    def __init__(self, vocab: int, n_layers: int, d: int, heads: int, ffn: int,
                 max_len: int = 512, norm: str = "post", head_transform: bool = True,
                 eps: float = 1e-12, attn=None):
        super().__init__()
        self.encoder = TransformerEncoder(vocab, n_layers, d, heads, ffn, max_len, norm, eps, attn)
        self.head = MLMHead(self.encoder.tok_emb, head_transform, eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(ids))

    def mlm_loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy −log p(label | corrupted input) over positions with a label."""
        h = self.encoder(ids)
        sel = labels != -100
        return F.cross_entropy(self.head(h[sel]), labels[sel])

    def layer_norm_gammas(self) -> dict[str, float]:
        """Mean LN gamma of every encoder LN (forward order) and of the head's LN if any."""
        enc = self.encoder
        names = ["emb"] + [f"L{i + 1}.{s}" for i in range(len(enc.layers)) for s in ("ln1", "ln2")]
        names += ["final"] if enc.final_ln is not None else []
        out = {n: ln.weight.detach().mean().item() for n, ln in zip(names, enc.encoder_layer_norms())}
        if self.head.ln is not None:
            out["head"] = self.head.ln.weight.detach().mean().item()
        return out


@torch.no_grad()
def init_bert_(model: nn.Module, std: float = 0.02, trunc: bool = True,
               generator: torch.Generator | None = None) -> nn.Module:
    """BERT's init: every Linear and Embedding weight ~ N(0, std²), truncated to ±2·std when
    ``trunc`` (TF-BERT; the actual std is then 0.8796·std, 0.0176 for 0.02), biases 0, LN γ=1,
    β=0. ``trunc=False`` is HF-PyTorch BERT's plain normal (https://kexue.fm/archives/8747,
    chapter ``bert-init-std``)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            if trunc:
                trunc_normal_(m.weight, std=std, generator=generator)
            else:
                m.weight.normal_(0.0, std, generator=generator)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
    for name, p in model.named_parameters():  # free biases too (the MLM head's output bias)
        if name.endswith("bias") and p.ndim == 1:
            p.zero_()
    return model


def standardize(x: torch.Tensor) -> torch.Tensor:
    """N(x): each token vector shifted to mean 0 and scaled to (population) std 1 — what an LN
    with γ=1, β=0 computes, and how eq. (4) puts Pre-LN's growing stream on the Post-LN scale."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt()


@torch.no_grad()
def residual_profile(encoder: TransformerEncoder, ids: torch.Tensor,
                     generator: torch.Generator | None = None) -> dict:
    """Identity-path profile of an encoder on ``ids``, one entry per sublayer (2 per block):

    - ``s``: s_l = std(x_l + F_l) / std(x_l), eq. (3); ``branch_var``: σ_l² = Var F_l / Var x_l
    - ``rho_pred``: ∏_{k≤l} 1/s_k, eq. (4), the predicted weight of x_0 in the (normalised)
      stream after sublayer l
    - ``rho_meas``: <N(x_{l+1}), x̃_0> / ||x̃_0||², the measured weight, where x̃_0 is x_0 minus
      its mean over the batch at each position: the position embeddings are shared by every
      sequence, so the batch-centred x̃_0 keeps only the token-specific part, to which branch
      outputs are nearly orthogonal when the tokens are random (needs a batch of ≥ 2)
    - ``noise``: the same projection onto a batch-centred Gaussian z instead of x̃_0 (after the
      last sublayer): how large a projection arises by chance — the control; ``floor`` =
      1/||x̃_0||, its expected size (the std of <R, x̃_0>/||x̃_0||² for unit-variance noise R)
    - ``branch_weight``: the predicted weight of each branch F_k in the final stream,
      ∏_{j>k} 1/s_j for Post-LN and ∏_j 1/s_j for every branch in Pre-LN.
    https://kexue.fm/archives/8747, chapter ``bert-init-std``."""
    if ids.shape[0] < 2:
        raise ValueError("residual_profile needs a batch of at least 2 sequences")
    trace: list = []
    encoder(ids, trace=trace)
    x0 = trace[0][0].double()
    xc = x0 - x0.mean(0, keepdim=True)
    s, var, meas = [], [], []
    for x, f, out in trace:
        x, f = x.double(), f.double()
        s.append(((x + f).std() / x.std()).item())
        var.append((f.var() / x.var()).item())
        meas.append(((standardize(out.double()) * xc).sum() / xc.pow(2).sum()).item())
    pred = torch.cumprod(1.0 / torch.tensor(s, dtype=torch.float64), 0)
    z = torch.randn(x0.shape, dtype=torch.float64, generator=generator).to(x0.device)
    z = z - z.mean(0, keepdim=True)
    noise = ((standardize(trace[-1][2].double()) * z).sum() / z.pow(2).sum()).item()
    inv = 1.0 / torch.tensor(s, dtype=torch.float64)
    if encoder.norm == "post":  # weight of F_k = product of 1/s_j over the later sublayers j > k
        later = torch.flip(torch.cumprod(torch.flip(inv, [0]), 0), [0])
        weights = (later / inv).tolist()
    else:
        weights = [pred[-1].item()] * len(s)
    return {"s": s, "branch_var": var, "rho_pred": pred.tolist(), "rho_meas": meas,
            "noise": noise, "floor": 1.0 / xc.norm().item(), "branch_weight": weights}


def identity_path_error(profile: dict, min_snr: float = 10.0) -> tuple[float, int]:
    """Largest relative error |ρ̂_l/ρ_l − 1| of eq. (4) over the sublayers whose predicted ρ_l is
    at least ``min_snr`` × the projection's noise floor (below it no projection can resolve ρ);
    returns (error, number of sublayers compared) (https://kexue.fm/archives/8747, chapter
    ``bert-init-std``)."""
    pairs = [(m, p) for m, p in zip(profile["rho_meas"], profile["rho_pred"])
             if p >= min_snr * profile["floor"]]
    if not pairs:
        return float("nan"), 0
    return max(abs(m / p - 1) for m, p in pairs), len(pairs)


def layer_grad_norms(encoder: TransformerEncoder) -> list[float]:
    """After ``backward``: for each block, ‖∇W‖ over its weight matrices (Q, K, V, O, FFN in/out)
    concatenated — the per-layer gradient norms of https://kexue.fm/archives/8747 (chapter
    ``bert-init-std``). Raises if no gradient is present."""
    out = []
    for layer in encoder.layers:
        grads = [p.grad for p in layer.parameters() if p.ndim == 2]
        if any(g is None for g in grads):
            raise RuntimeError("no gradient: call loss.backward() first")
        out.append(math.sqrt(sum(g.double().pow(2).sum().item() for g in grads)))
    return out


def random_target_mlm_loss(model: BertMLM, ids: torch.Tensor, mask_prob: float = 0.15,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """An MLM loss with random targets at a random ``mask_prob`` of positions: at init it probes
    how the gradient reaches each layer without any data (https://kexue.fm/archives/8747,
    chapter ``bert-init-std``)."""
    vocab = model.encoder.tok_emb.num_embeddings
    sel = torch.rand(ids.shape, generator=generator) < mask_prob  # CPU draws: same on every device
    labels = torch.full(ids.shape, -100, dtype=ids.dtype)
    labels[sel] = torch.randint(0, vocab, (int(sel.sum()),), generator=generator)
    return model.mlm_loss(ids, labels.to(ids.device))


def probe_init(ids: torch.Tensor, *, norm: str, std: float, trunc: bool, n_layers: int = 12,
               d: int = 768, heads: int = 12, ffn: int = 3072, vocab: int = 2000,
               generator: torch.Generator | None = None, device=None) -> dict:
    """Build a :class:`BertMLM` (BERT-base shapes by default), initialise it with
    :func:`init_bert_`, and return its :func:`residual_profile` on ``ids`` plus ``grad_norms``
    (:func:`layer_grad_norms` of a :func:`random_target_mlm_loss`) and that ``loss``: the
    at-init analysis of https://kexue.fm/archives/8747 (chapter ``bert-init-std``). The weights
    are drawn on the CPU (``generator``) and the model and ``ids`` moved to ``device`` (default:
    :func:`kexue.current_device`)."""
    model = BertMLM(vocab, n_layers, d, heads, ffn, max_len=ids.shape[1], norm=norm)
    init_bert_(model, std, trunc, generator=generator)
    device = resolve_device(device)
    model.to(device)
    ids = ids.to(device)
    out = residual_profile(model.encoder, ids, generator=generator)
    loss = random_target_mlm_loss(model, ids, generator=generator)
    loss.backward()
    out["grad_norms"] = layer_grad_norms(model.encoder)
    out["loss"] = loss.item()
    return out


def init_grad_norms(ids: torch.Tensor, *, norm: str, std: float, trunc: bool, seeds: list[int],
                    n_layers: int = 12, d: int = 768, heads: int = 12, ffn: int = 3072,
                    vocab: int = 2000, device=None) -> np.ndarray:
    """Per-layer weight-gradient norms at initialisation over independent init draws: for each
    seed a fresh :class:`BertMLM` is initialised with :func:`init_bert_` and a
    :func:`random_target_mlm_loss` on ``ids`` is back-propagated (weights and targets drawn on the
    CPU from ``torch.Generator().manual_seed(seed)``). Returns an array (len(seeds), n_layers) of
    :func:`layer_grad_norms`: the statement "越靠近输入的层梯度越小" of
    https://kexue.fm/archives/8747 measured over draws (chapter ``bert-init-std``)."""
    rows = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        model = BertMLM(vocab, n_layers, d, heads, ffn, max_len=ids.shape[1], norm=norm)
        init_bert_(model, std, trunc, generator=gen)
        model.to(resolve_device(device))
        loss = random_target_mlm_loss(model, ids.to(resolve_device(device)), generator=gen)
        loss.backward()
        rows.append(layer_grad_norms(model.encoder))
    return np.array(rows)
