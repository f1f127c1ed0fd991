"""The encoder table: the same measurements for every encoder of :mod:`kexue.models.encoders`.

Used by the workbench page ``encoders-workbench`` (issue 18 §1), which the later Chinese NLP
chapters cite when they choose an encoder. Similarity: Chinese STS-B Spearman of the cosine,
raw mean pooling and after BERT-whitening fitted on STS-B *train* sentences
(https://kexue.fm/archives/8069), and after a short CoSENT fine-tune where the encoder has a torch
module (https://kexue.fm/archives/8847). Classification: logistic regression on frozen vectors,
C chosen on dev, test reported. Controls: the character-overlap score (similarity) and a
character-bag logistic regression (classification).
"""
from __future__ import annotations

import numpy as np

from . import sentemb, stats

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)


def sts_spearman(encoder, pairs, *, transform=None, batch_size: int = 64) -> float:
    """Spearman correlation between ``encoder.pair_scores`` of (s1, s2) and the gold scores of
    ``pairs`` = [(s1, s2, score), ...] (encoder chapter, https://kexue.fm/archives/8069)."""
    s1, s2, y = zip(*pairs)
    return stats.spearman(encoder.pair_scores(list(s1), list(s2), batch_size=batch_size,
                                              transform=transform), np.asarray(y, float))


def whitening_transform(encoder, sentences, *, dim=None, shrinkage=None, batch_size: int = 64):
    """The whitening map ``X -> (X - mu) W`` fitted on ``encoder.encode(sentences)`` with
    :func:`kexue.sentemb.fit_whitening` (https://kexue.fm/archives/8069)."""
    X = encoder.encode(list(dict.fromkeys(sentences)), batch_size=batch_size)
    mu, W = sentemb.fit_whitening(X, dim, shrinkage=shrinkage)
    return lambda Z: sentemb.apply_whitening(Z, mu, W)


def sts_rows(encoder, train, evals: dict, *, whiten: bool = True, shrinkage=None,
             batch_size: int = 64) -> dict:
    """{"raw/<split>": rho, "whitened/<split>": rho} for each split of ``evals`` (name -> pairs);
    whitening fitted on the sentences of ``train`` pairs only. Encoders without vectors (the
    char-overlap control) give the raw rows only (https://kexue.fm/archives/8069)."""
    out = {f"raw/{k}": sts_spearman(encoder, v, batch_size=batch_size) for k, v in evals.items()}
    if whiten and getattr(encoder, "dim", None) is not None:
        sents = [s for a, b, _ in train for s in (a, b)]
        tf = whitening_transform(encoder, sents, shrinkage=shrinkage, batch_size=batch_size)
        out.update({f"whitened/{k}": sts_spearman(encoder, v, transform=tf, batch_size=batch_size)
                    for k, v in evals.items()})
    return out


def _default_finetune(dev):
    if dev is None:
        def finetune(enc, s1, s2, y, seed, **kw):
            return sentemb.cosent_finetune(enc.torch_module(), enc.tokenizer, s1, s2, y, seed=seed, **kw)
    else:
        def finetune(enc, s1, s2, y, seed, dev, **kw):
            return sentemb.cosent_fit(enc.torch_module(), enc.tokenizer, (s1, s2, y), dev, seed=seed, **kw)
    return finetune


def _eval_mode(enc) -> None:
    mod = getattr(enc, "torch_module", None)
    try:
        m = mod() if mod else None
        if m is not None and hasattr(m, "eval"):
            m.eval()
    except NotImplementedError:
        pass


def cosent_seeds(make_encoder, train, evals: dict, seeds, *, finetune=None, dev=None, details=None,
                 **ft) -> dict:
    """Per-seed STS-B Spearman after a CoSENT fine-tune: for each seed, ``make_encoder(seed)`` gives
    a fresh encoder, ``finetune(encoder, s1, s2, y, seed=seed, **ft)`` trains it in place, then each
    split of ``evals`` is scored. Without ``dev`` the default is :func:`kexue.sentemb.cosent_finetune`
    (a fixed number of epochs); with ``dev`` (pairs held out of ``train``) it is
    :func:`kexue.sentemb.cosent_fit`, early-stopped on dev, and ``finetune`` receives
    ``dev=(d1, d2, dy)``. What ``finetune`` returns is appended to ``details`` when that is a list.
    Returns {split: [rho per seed]} (https://kexue.fm/archives/8847)."""
    finetune = finetune or _default_finetune(dev)
    if dev is not None:
        ft = {**ft, "dev": tuple(list(t) for t in zip(*dev))}
    s1, s2, y = (list(t) for t in zip(*train))
    out = {k: [] for k in evals}
    for seed in seeds:
        enc = make_encoder(seed)
        got = finetune(enc, s1, s2, np.asarray(y, float), seed=seed, **ft)
        if isinstance(details, list):
            details.append(got)
        _eval_mode(enc)
        for k, v in evals.items():
            out[k].append(sts_spearman(enc, v))
    return out


def cosent_choose_lr(make_encoder, train, dev, lr_grid, *, seed: int, evals=None, finetune=None, **ft) -> dict:
    """The CoSENT learning rate with the best early-stopped dev Spearman (the first of equal
    scores), one run per rate from a fresh ``make_encoder(seed)``; the chosen rate is then used for
    every seed (``../CHAPTER.md``). Returns ``{lr, dev: {lr: best dev}, best_step: {lr: step},
    details}`` (``details``: what the chosen run's fine-tune returned) and, with ``evals``,
    ``scores: {split: rho}`` of the chosen run, which is the run :func:`cosent_seeds` would make for
    ``seed`` at that rate."""
    if not lr_grid:
        raise ValueError("cosent_choose_lr needs a non-empty lr_grid")
    finetune = finetune or _default_finetune(dev)
    d = tuple(list(t) for t in zip(*dev))
    s1, s2, y = (list(t) for t in zip(*train))
    scores, steps, best = {}, {}, None
    for lr in lr_grid:
        enc = make_encoder(seed)
        got = finetune(enc, s1, s2, np.asarray(y, float), seed=seed, dev=d, lr=lr, **ft)
        scores[lr], steps[lr] = float(got["best_dev"]), int(got["best_step"])
        if best is None or scores[lr] > scores[best[0]]:
            best = (lr, enc, got)
        del enc
    out = {"lr": best[0], "dev": scores, "best_step": steps, "details": best[2]}
    if evals is not None:
        _eval_mode(best[1])
        out["scores"] = {k: sts_spearman(best[1], v) for k, v in evals.items()}
    return out


def _logreg(Xtr, ytr, Xdev, ydev, Xte, yte, c_grid=C_GRID, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    best = None
    for C in c_grid:
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(Xtr, ytr)
        dev = stats.accuracy(clf.predict(Xdev), ydev)
        if best is None or dev > best[0]:
            best = (dev, C, clf)
    dev, C, clf = best
    return {"C": C, "dev": dev, "test": stats.accuracy(clf.predict(Xte), yte)}


def _standardise(Xtr, *others):
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-8
    return [(X - mu) / sd for X in (Xtr, *others)]


def frozen_logreg(encoder, train, dev, test, *, c_grid=C_GRID, batch_size: int = 64,
                  seed: int = 0) -> dict:
    """Logistic regression on frozen, standardised ``encoder.encode`` vectors of (text, label)
    lists: C from ``c_grid`` chosen by dev accuracy, test accuracy of that C.
    Returns {"C", "dev", "test"} (encoder chapter)."""
    Xs = [encoder.encode([t for t, _ in d], batch_size=batch_size) for d in (train, dev, test)]
    ys = [np.asarray([l for _, l in d]) for d in (train, dev, test)]
    Xtr, Xdev, Xte = _standardise(*[np.asarray(X, np.float64) for X in Xs])
    return _logreg(Xtr, ys[0], Xdev, ys[1], Xte, ys[2], c_grid, seed)


def charbag_logreg(train, dev, test, *, c_grid=C_GRID, seed: int = 0) -> dict:
    """The classification control: logistic regression on character counts (vocabulary from the
    training texts), the same C search as :func:`frozen_logreg` (encoder chapter)."""
    from sklearn.feature_extraction.text import CountVectorizer
    vec = CountVectorizer(analyzer="char", lowercase=False).fit([t for t, _ in train])
    Xs = [vec.transform([t for t, _ in d]) for d in (train, dev, test)]
    ys = [np.asarray([l for _, l in d]) for d in (train, dev, test)]
    return _logreg(Xs[0], ys[0], Xs[1], ys[1], Xs[2], ys[2], c_grid, seed)


def labelled_subset(rows, n: int, seed: int = 0) -> list:
    """A fixed random subset of ``n`` rows (all of them when n >= len(rows)), in original order."""
    if n >= len(rows):
        return list(rows)
    idx = np.sort(np.random.default_rng(seed).choice(len(rows), n, replace=False))
    return [rows[i] for i in idx]


def disjoint_subsets(rows, sizes, seed: int = 0) -> list[list]:
    """Disjoint random subsets of ``rows`` of the given ``sizes`` (``None``: all rows left), drawn
    from one seeded permutation and each kept in original order; e.g. a CoSENT dev set and its
    training pairs from STS-B train. Raises when the sizes add up to more than ``len(rows)``."""
    perm = np.random.default_rng(seed).permutation(len(rows))
    fixed = sum(n for n in sizes if n is not None)
    if fixed > len(rows) or sum(n is None for n in sizes) > 1:
        raise ValueError(f"disjoint_subsets: sizes {sizes} do not fit {len(rows)} rows (at most one None)")
    out, at = [], 0
    for n in sizes:
        n = len(rows) - fixed if n is None else n
        out.append([rows[i] for i in np.sort(perm[at:at + n])])
        at += n
    return out


def findings(table: dict, controls: dict, digits: int = 3) -> list[str]:
    """Sentences, generated from the numbers, saying per task which encoders beat the task's
    controls and which scores best. ``table``: {encoder: {task: score}} (missing or nan = not run);
    ``controls``: {task: [control encoder names]}. An encoder beats the controls when its score is
    above every control's (higher is better) (encoder chapter)."""
    out = []
    for task, ctrl in controls.items():
        have = {e: r[task] for e, r in table.items() if task in r and r[task] == r[task]}
        cvals = {c: have[c] for c in ctrl if c in have}
        if not cvals:
            continue
        bar = max(cvals.values())
        cands = {e: v for e, v in have.items() if e not in ctrl}
        above = sorted((e for e, v in cands.items() if v > bar), key=lambda e: -cands[e])
        ctxt = ", ".join(f"{c} {v:.{digits}f}" for c, v in cvals.items())
        if above:
            btxt = ", ".join(f"**{e}** ({cands[e]:.{digits}f})" for e in above)
            out.append(f"*{task}*: above the controls ({ctxt}): {btxt}; use **{above[0]}**.")
        else:
            out.append(f"*{task}*: no encoder beats the controls ({ctxt}).")
    return out


def best_above_controls(table: dict, task: str, controls) -> str | None:
    """The highest-scoring non-control encoder on ``task`` if it beats every control, else None."""
    have = {e: r[task] for e, r in table.items() if task in r and r[task] == r[task]}
    bar = max((have[c] for c in controls if c in have), default=-np.inf)
    cands = {e: v for e, v in have.items() if e not in controls and v > bar}
    return max(cands, key=cands.get) if cands else None
