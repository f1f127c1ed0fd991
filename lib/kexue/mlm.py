"""Masked-language-model pre-training on a synthetic corpus whose true statistics are known:
a Zipfian unigram mixed with an additive order-k Markov chain, BERT's 15 % masking with the
80/10/10 split, the linear warm-up schedule, and a compact training loop that returns the loss
curves.

Source: "模型优化漫谈:BERT的初始标准差为什么是0.02?", https://kexue.fm/archives/8747
(chapter ``bert-init-std``), where warm-up and the MLM head are discussed. The synthetic corpus
stands in for real text (the book's Chinese corpus is prepared elsewhere); its known transition
table gives the floor of the MLM loss exactly.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import current_device, resolve_device
from .bert.objective import IGNORE, mask_tokens
from .optim import adamw_param_groups, warmup_linear  # noqa: F401 (kexue.mlm's API)


@dataclass
class MarkovCorpus:
    """Token chains drawn from P(x_t | x_{t-1..t-k}) = λ_0·u(x_t) + Σ_j λ_j·A_j[x_{t-j}, x_t].

    ``u`` is a Zipf law over the vocabulary, each row of A_j a sparse distribution over a few
    successors (themselves drawn from u). ``train`` and ``eval`` hold independent chains (rows)
    from the same process. Token ids are 0..vocab-1; ``mask_id`` = vocab is the [MASK] token.
    Built by :func:`markov_corpus` (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""

    vocab: int
    unigram: np.ndarray          # u, shape (V,)
    lags: list                   # A_1..A_k, dense (V, V) row-stochastic float32
    weights: np.ndarray          # λ_0..λ_k
    train: np.ndarray            # (chains, length) int64
    eval: np.ndarray             # (chains, length) int64

    @property
    def order(self) -> int:
        return len(self.lags)

    @property
    def mask_id(self) -> int:
        return self.vocab

    def next_probs(self, context: np.ndarray) -> np.ndarray:
        """P(· | context) for contexts of shape (n, k), oldest first: eq. of the class docstring."""
        k = self.order
        p = self.weights[0] * np.broadcast_to(self.unigram, (len(context), self.vocab))
        for j in range(1, k + 1):
            p = p + self.weights[j] * self.lags[j - 1][context[:, k - j]]
        return p

    def entropy_rate(self, tokens: np.ndarray | None = None) -> float:
        """Mean −log P(x_t | x_{t-k..t-1}) over ``tokens`` (default ``eval``), in nats: the
        entropy rate of the chain estimated on a sample — the loss of a left-to-right oracle."""
        x = self.eval if tokens is None else tokens
        k = self.order
        ctx = np.stack([x[:, i:x.shape[1] - k + i] for i in range(k)], -1).reshape(-1, k)
        p = self.next_probs(ctx)
        target = x[:, k:].reshape(-1)
        return float(-np.log(p[np.arange(len(target)), target]).mean())

    def unigram_entropy(self) -> float:
        """Cross-entropy of the train split's empirical unigram on the eval split (nats): the loss
        of a predictor that ignores the context — the trivial MLM baseline."""
        freq = np.bincount(self.train.reshape(-1), minlength=self.vocab) + 0.5
        logp = np.log(freq / freq.sum())
        return float(-logp[self.eval.reshape(-1)].mean())

    def mlm_floor(self, tokens: np.ndarray | None = None, max_positions: int = 20000) -> float:
        """Mean −log P(x_t | all other tokens) (nats), the Bayes loss of an MLM oracle that sees the
        whole Markov blanket x_{t-k..t+k} unmasked:
        P(x_t=v | rest) ∝ ∏_{j=0..k} P(x_{t+j} | x_{t+j-k..t+j-1}) with x_t = v. Real MLM inputs
        hide 15 % of the neighbours too, so this is a lower bound on any model's MLM loss."""
        x = self.eval if tokens is None else tokens
        k = self.order
        t_idx = np.arange(k, x.shape[1] - k)
        rows = np.repeat(np.arange(x.shape[0]), len(t_idx))
        cols = np.tile(t_idx, x.shape[0])
        if len(rows) > max_positions:
            pick = np.random.default_rng(0).choice(len(rows), max_positions, replace=False)
            rows, cols = rows[pick], cols[pick]
        nll = [self._blanket_nll(x, rows[i:i + 2048], cols[i:i + 2048])
               for i in range(0, len(rows), 2048)]
        return float(np.concatenate(nll).mean())

    def _blanket_nll(self, x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        k, lam = self.order, self.weights
        logp = np.zeros((len(rows), self.vocab))
        for j in range(k + 1):  # factor P(x_{t+j} | its k predecessors), one of which is x_t = v
            tgt = x[rows, cols + j]
            if j == 0:
                f = lam[0] * np.broadcast_to(self.unigram, logp.shape)
            else:
                f = np.broadcast_to((lam[0] * self.unigram[tgt])[:, None], logp.shape)
            for i in range(1, k + 1):
                prev = x[rows, cols + j - i]
                if j == 0:
                    f = f + lam[i] * self.lags[i - 1][prev]
                elif i == j:  # the predecessor at lag i is x_t itself: a column of A_i
                    f = f + lam[i] * self.lags[i - 1][:, tgt].T
                else:
                    f = f + lam[i] * self.lags[i - 1][prev, tgt][:, None]
            logp += np.log(f)
        logz = np.logaddexp.reduce(logp, axis=1)
        return logz - logp[np.arange(len(rows)), x[rows, cols]]


def zipf_unigram(vocab: int, a: float) -> np.ndarray:
    """u(r) ∝ r^(−a) for ranks r = 1..vocab (token id r−1 has rank r)."""
    p = np.arange(1, vocab + 1, dtype=np.float64) ** -a
    return p / p.sum()


def markov_corpus(vocab: int = 2000, order: int = 2, n_tokens: int = 1_000_000,
                  zipf_a: float = 1.1, seed: int = 0, *, successors: int = 8,
                  lag_weights: tuple | None = None, chain_length: int = 4096,
                  eval_tokens: int = 65_536, concentration: float = 0.5) -> MarkovCorpus:
    """Sample a :class:`MarkovCorpus`: Zipf(``zipf_a``) unigram u; for each lag j ≤ ``order`` and
    each token, ``successors`` candidates drawn from u with Dirichlet(``concentration``) weights;
    mixture weights λ (default λ_0 = 0.1 and the rest split 2:1:… toward the nearest lag). Chains
    of ``chain_length`` tokens are generated in parallel (all chains advance one step at a time)
    and start from u (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""
    if order < 1:
        raise ValueError("order must be >= 1")
    rng = np.random.default_rng(seed)
    u = zipf_unigram(vocab, zipf_a)
    if lag_weights is None:
        raw = np.array([2.0 ** -(j - 1) for j in range(1, order + 1)])
        lag_weights = (0.1, *(0.9 * raw / raw.sum()))
    lam = np.asarray(lag_weights, dtype=np.float64)
    if len(lam) != order + 1 or abs(lam.sum() - 1) > 1e-9 or (lam < 0).any():
        raise ValueError(f"lag_weights must be {order + 1} non-negative numbers summing to 1")
    cand, w, lags = [], [], []
    for _ in range(order):
        c = rng.choice(vocab, size=(vocab, successors), p=u)
        wt = rng.dirichlet(np.full(successors, concentration), size=vocab)
        dense = np.zeros((vocab, vocab))
        np.add.at(dense, (np.repeat(np.arange(vocab), successors), c.reshape(-1)), wt.reshape(-1))
        cand.append(c), w.append(np.cumsum(wt, 1)), lags.append(dense.astype(np.float32))
    cdf_u = np.cumsum(u)

    def sample(n_chains: int) -> np.ndarray:
        x = np.empty((n_chains, chain_length), dtype=np.int64)
        x[:, :order] = np.minimum(np.searchsorted(cdf_u, rng.random((n_chains, order))), vocab - 1)
        rows = np.arange(n_chains)
        for t in range(order, chain_length):
            comp = np.searchsorted(np.cumsum(lam), rng.random(n_chains) * lam.sum(), side="right")
            comp = np.minimum(comp, order)
            nxt = np.minimum(np.searchsorted(cdf_u, rng.random(n_chains)), vocab - 1)
            r = rng.random(n_chains)
            for j in range(1, order + 1):
                sel = comp == j
                prev = x[sel, t - j]
                m = (r[sel, None] > w[j - 1][prev]).sum(1).clip(max=successors - 1)
                nxt[sel] = cand[j - 1][prev, m]
            x[rows, t] = nxt
        return x

    train = sample(max(1, math.ceil(n_tokens / chain_length)))
    evals = sample(max(1, math.ceil(eval_tokens / chain_length)))
    return MarkovCorpus(vocab, u, lags, lam, train, evals)


def sample_windows(tokens: np.ndarray, batch: int, seq_len: int,
                   rng: np.random.Generator) -> torch.Tensor:
    """``batch`` random windows of ``seq_len`` consecutive tokens, each inside one chain."""
    r = rng.integers(0, tokens.shape[0], batch)
    c = rng.integers(0, tokens.shape[1] - seq_len + 1, batch)
    return torch.from_numpy(tokens[r[:, None], c[:, None] + np.arange(seq_len)])


def mlm_mask(ids: torch.Tensor, mask_id: int, vocab: int, mask_prob: float = 0.15,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: each position is selected with probability ``mask_prob``; a selected
    token becomes [MASK] with prob. 0.8, a uniform random token with prob. 0.1, and stays itself
    with prob. 0.1. Returns (inputs, labels) with labels = −100 at unselected positions. This is
    the book's one masking function, :func:`kexue.bert.objective.mask_tokens`, with every position
    eligible and the torch generator's draws (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""
    return mask_tokens(ids, None, generator if generator is not None else torch.default_generator,
                       mask_id=mask_id, replace_ids=np.arange(vocab), prob=mask_prob)


@torch.no_grad()
def mlm_eval_loss(model, corpus: MarkovCorpus, batches: list[tuple]) -> float:
    """Mean MLM loss over fixed (inputs, labels) batches, weighted by the number of labels."""
    model.eval()
    dev = next(model.parameters()).device
    tot, n = 0.0, 0
    for inputs, labels in batches:
        k = int((labels != IGNORE).sum())
        tot += model.mlm_loss(inputs.to(dev), labels.to(dev)).item() * k
        n += k
    model.train()
    return tot / n


def fixed_eval_batches(corpus: MarkovCorpus, n_batches: int, batch: int, seq_len: int,
                       seed: int) -> list[tuple]:
    """Masked batches from the eval chains, drawn once so every run is scored on the same ones."""
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    return [mlm_mask(sample_windows(corpus.eval, batch, seq_len, rng), corpus.mask_id,
                     corpus.vocab, generator=g) for _ in range(n_batches)]


def train_mlm(model, corpus: MarkovCorpus, *, steps: int, batch: int, seq_len: int, lr: float,
              warmup: int, weight_decay: float = 0.01, eps: float = 1e-6,
              betas: tuple = (0.9, 0.999), eval_batches: list | None = None,
              eval_every: int = 0, seed: int = 0, diverge_loss: float | None = None,
              track_every: int = 0) -> dict:
    """AdamW on the MLM loss with BERT's schedule (:func:`warmup_linear`), no gradient clipping.

    Returns ``{"loss": per-step train loss, "eval_step", "eval_loss", "diverged_at", "seconds"}``.
    A run that reaches a non-finite loss (or one above ``diverge_loss``) stops there; its
    remaining losses are NaN and ``diverged_at`` is that step. With ``track_every`` > 0 it also
    returns ``track_step`` (0, then every ``track_every`` steps), ``rel_change`` (one row per
    tracked step: :func:`block_relative_change` of every encoder block) and ``emb_norm`` (mean
    L2 norm of the token-embedding rows) (https://kexue.fm/archives/8747, chapter
    ``bert-init-std``: "越靠后的层学习得越快" and the embedding-versus-γ argument)."""
    opt = torch.optim.AdamW(adamw_param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_linear(s, warmup, steps))
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    losses = np.full(steps, np.nan)
    ev_step, ev_loss, diverged = [], [], None
    tracked = {"track_step": [], "rel_change": [], "emb_norm": []} if track_every > 0 else None
    init = [[p.detach().clone() for p in layer.parameters() if p.ndim == 2]
            for layer in model.encoder.layers] if tracked else None

    def track(step):
        tracked["track_step"].append(step)
        tracked["rel_change"].append(block_relative_change(model.encoder, init))
        tracked["emb_norm"].append(model.encoder.tok_emb.weight.detach().norm(dim=1).mean().item())

    t0 = time.perf_counter()
    model.train()
    if tracked:
        track(0)
    for step in range(steps):
        inputs, labels = mlm_mask(sample_windows(corpus.train, batch, seq_len, rng),
                                  corpus.mask_id, corpus.vocab, generator=g)
        loss = model.mlm_loss(inputs.to(dev), labels.to(dev))
        val = loss.item()
        if not math.isfinite(val) or (diverge_loss is not None and val > diverge_loss):
            diverged = step
            break
        losses[step] = val
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if tracked and (step + 1) % track_every == 0:
            track(step + 1)
        if eval_batches and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            ev_step.append(step + 1)
            ev_loss.append(mlm_eval_loss(model, corpus, eval_batches))
    out = {"loss": losses, "eval_step": ev_step, "eval_loss": ev_loss, "diverged_at": diverged,
           "seconds": time.perf_counter() - t0}
    if tracked:
        out.update(tracked, rel_change=np.array(tracked["rel_change"]))
    return out


def block_relative_change(encoder, init: list[list[torch.Tensor]]) -> list[float]:
    """For each encoder block: ‖W − W₀‖ / ‖W₀‖ over its weight matrices (Q, K, V, O, FFN in/out)
    taken together, against ``init`` (those matrices at initialisation, block by block). How far
    each layer has moved from its init: the per-layer learning speed of
    https://kexue.fm/archives/8747 (chapter ``bert-init-std``)."""
    out = []
    for layer, w0 in zip(encoder.layers, init):
        ws = [p.detach() for p in layer.parameters() if p.ndim == 2]
        num = sum((w.double() - v.double()).pow(2).sum().item() for w, v in zip(ws, w0))
        den = sum(v.double().pow(2).sum().item() for v in w0)
        out.append(math.sqrt(num / den))
    return out


def last_ln_gamma_ratio(gammas: dict) -> float:
    """Mean γ of the encoder's last LN over the mean of the mean γ of its other block LNs
    (embedding LN and MLM-head LN excluded). With BERT's small init the optimiser enlarges the
    γ feeding the tied MLM decoder; without the head's Dense+LN that is the last encoder LN
    (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""
    block = [v for k, v in gammas.items() if k.startswith("L")]
    return block[-1] / float(np.mean(block[:-1]))


def scored_final_loss(run: dict, diverged_loss: float) -> float:
    """The held-out MLM loss a claim scores for one :func:`train_mlm` / :func:`run_mlm` result: its
    last evaluation, or ``diverged_loss`` for a run that diverged or whose last evaluation is not
    finite (chapter ``bert-init-std`` scores those at the uniform guess ln V,
    https://kexue.fm/archives/8747)."""
    last = run["eval_loss"][-1] if run["eval_loss"] else math.nan
    if run["diverged_at"] is not None or not math.isfinite(last):
        return float(diverged_loss)
    return float(last)


def head_minus_last_gamma(gammas: dict) -> float:
    """Mean γ of the MLM head's LN minus the mean γ of the encoder's last block LN (the keys of
    :meth:`~kexue.transformer.BertMLM.layer_norm_gammas`): where the large γ of a small-init BERT
    sits (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""
    if "head" not in gammas:
        raise ValueError("this model has no head LN: build it with head_transform=True")
    block = [v for k, v in gammas.items() if k.startswith("L")]
    return float(gammas["head"] - block[-1])


def run_mlm(corpus: MarkovCorpus, *, n_layers: int, d: int, heads: int, ffn: int, seq_len: int,
            norm: str = "post", head_transform: bool = True, init_std: float = 0.02,
            trunc: bool = True, seed: int = 0, device=None, **train_kw) -> dict:
    """Build a :class:`~kexue.transformer.BertMLM` (vocabulary = corpus tokens + [MASK]),
    initialise it with :func:`~kexue.transformer.init_bert_` from ``seed`` (on the CPU, so the same
    weights on every device), move it to ``device`` (default: :func:`kexue.current_device`), train it with
    :func:`train_mlm` and return that result plus ``gammas`` (mean LN γ per LN) and
    ``gamma_ratio`` (:func:`last_ln_gamma_ratio`) (https://kexue.fm/archives/8747, chapter
    ``bert-init-std``)."""
    from .transformer import BertMLM, init_bert_

    torch.manual_seed(seed)
    model = BertMLM(corpus.vocab + 1, n_layers, d, heads, ffn, max_len=seq_len, norm=norm,
                    head_transform=head_transform)
    init_bert_(model, init_std, trunc, generator=torch.Generator().manual_seed(seed))
    model.to(resolve_device(device))
    out = train_mlm(model, corpus, seq_len=seq_len, seed=seed, **train_kw)
    out["gammas"] = model.layer_norm_gammas()
    out["gamma_ratio"] = last_ln_gamma_ratio(out["gammas"])
    return out


def run_mlm_many(corpus: MarkovCorpus, runs: list[dict], *, workers: int = 1) -> list[dict]:
    """:func:`run_mlm` for each keyword dict in ``runs``, in order. With ``workers`` > 1 the runs
    go to that many fresh processes with one torch thread each (on a small CPU several one-thread
    runs side by side finish sooner than one multi-threaded run after another; each run is seeded
    by its own ``seed``, so the outcome does not depend on which process runs it). Use
    ``workers=1`` on a GPU (https://kexue.fm/archives/8747, chapter ``bert-init-std``). A run
    that names no ``device`` gets :func:`kexue.current_device` here, so worker processes (which
    never ran ``setup``) compute where this process would."""
    from .parallel import run_many

    runs = [{"device": current_device(), **kw} for kw in runs]

    return run_many(run_mlm, runs, workers=workers, shared={"corpus": corpus})
