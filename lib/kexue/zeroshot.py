"""Zero-shot classification with a pre-trained BERT's own heads: NSP prompts (NSP-BERT) and PET
(MLM cloze), with a prior calibration of the label scores.

- NSP: "曾被嫌弃的预训练任务NSP,做出了优秀的Zero Shot效果", https://kexue.fm/archives/8671 — score
  label c by log P(IsNext | A, B_c) with a label prompt B_c; predict argmax_c.
- PET: "必须要GPT3吗?不,BERT的MLM模型也能小样本学习", https://kexue.fm/archives/7764 — a cloze
  template with [MASK] slots; score = Σ_j log p(label char j at mask j).
- The chapter's protocol: every prompt variant (:class:`PromptVariant`) is scored on a dev subset
  (:func:`sweep_variants`), the best per method and scoring is chosen there and only then scored on
  test (:func:`select_and_test`); a few-shot logistic regression on the model's features is the
  supervised reference (:func:`few_shot_accuracies`); :func:`stronger_control` picks the control a
  claim must beat (intervals: :mod:`kexue.stats`).
Used by the chapter ``nsp-zero-shot`` and by the pre-training evaluations of :mod:`kexue.pretrain`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import stats
from .bert.batching import batches_by_length
from .bert.heads import cloze_label_logprobs, nsp_is_next_logprob

THUCNEWS_PROMPT = "这是一则{label}新闻。"


@torch.no_grad()
def nsp_logprob(model, tok, firsts: list[str], seconds: list[str], *, batch_size: int = 256,
                max_length: int = 128) -> np.ndarray:
    """log P(IsNext | A=firsts[i], B=seconds[i]) from a ``BertForPreTraining``'s NSP head, for
    ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1 (HF's label 0 = "B follows A")."""
    enc = tok(list(firsts), list(seconds), truncation=True, max_length=max_length)
    out = np.empty(len(firsts))
    was_training = model.training
    model.eval()
    for idx, inp, typ, att in batches_by_length(enc["input_ids"], enc["token_type_ids"], batch_size,
                                                tok.pad_token_id):
        out[idx] = nsp_is_next_logprob(model, inp, typ, att).cpu().numpy()
    model.train(was_training)
    return out


def nsp_label_scores(model, tok, texts: list[str], labels: list[str], *,
                     prompt: str = THUCNEWS_PROMPT, order: str = "first", **kw) -> np.ndarray:
    """(n, k) scores s_ic = log P(IsNext) of the pair (prompt_c, text_i) when ``order="first"``
    (the prompt is sentence A) or (text_i, prompt_c) when ``order="second"``; prompt_c is
    ``prompt.format(label=labels[c])`` (https://kexue.fm/archives/8671)."""
    if order not in ("first", "second"):
        raise ValueError("order must be 'first' (prompt is sentence A) or 'second'")
    prompts = [prompt.format(label=lab) for lab in labels]
    a, b = [], []
    for t in texts:
        for p in prompts:
            a.append(p if order == "first" else t)
            b.append(t if order == "first" else p)
    return nsp_logprob(model, tok, a, b, **kw).reshape(len(texts), len(labels))


@torch.no_grad()
def pet_label_scores(model, tok, texts: list[str], labels: list[str], *,
                     template: str = "这是一则{mask}新闻。", text_first: bool = False,
                     batch_size: int = 256, max_length: int = 128) -> np.ndarray:
    """(n, k) PET scores: the input is ``[CLS] template text [SEP]`` (or ``text template`` with
    ``text_first``), ``{mask}`` replaced by m [MASK] tokens; s_ic = Σ_j log p(label_c's j-th token
    at the j-th mask). All labels must have the same number m of tokens
    (https://kexue.fm/archives/7764)."""
    lab_ids = [tok(lab, add_special_tokens=False)["input_ids"] for lab in labels]
    m = len(lab_ids[0])
    if any(len(x) != m for x in lab_ids):
        raise ValueError("PET needs labels of equal token length: " + ", ".join(labels))
    pre, post = template.split("{mask}")
    pre_ids = tok(pre, add_special_tokens=False)["input_ids"]
    post_ids = tok(post, add_special_tokens=False)["input_ids"]
    tmpl = pre_ids + [tok.mask_token_id] * m + post_ids
    room = max_length - 2 - len(tmpl)
    ids, starts = [], []
    for t in texts:
        t_ids = tok(t, add_special_tokens=False)["input_ids"][:room]
        seq = t_ids + tmpl if text_first else tmpl + t_ids
        starts.append(1 + (len(t_ids) if text_first else 0) + len(pre_ids))
        ids.append([tok.cls_token_id] + seq + [tok.sep_token_id])
    types = [[0] * len(x) for x in ids]
    out = np.empty((len(texts), len(labels)))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    for idx, inp, typ, att in batches_by_length(ids, types, batch_size, tok.pad_token_id):
        hidden = model.bert(input_ids=inp.to(dev), token_type_ids=typ.to(dev), attention_mask=att.to(dev))[0]
        pos = torch.as_tensor([starts[i] for i in idx])[:, None] + torch.arange(m)  # (b, m)
        out[idx] = cloze_label_logprobs(model, hidden, pos, lab_ids).cpu().numpy()
    model.train(was_training)
    return out


def calibrate(scores: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """Prior correction: subtract each label's mean score over the evaluated inputs,
    s'_ic = s_ic − (1/n) Σ_i' s_i'c, so that no label wins by its prior alone (a simple form of
    the calibration discussed for PET/NSP zero-shot, https://kexue.fm/archives/8671). With
    ``reference`` (scores of the same prompt on other, unlabelled inputs, e.g. the dev split) the
    label means are taken over ``reference`` instead: s'_ic = s_ic − mean_j reference_jc."""
    scores = np.asarray(scores, dtype=np.float64)
    ref = scores if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != scores.shape[1]:
        raise ValueError(f"reference scores must have {scores.shape[1]} columns, got shape {ref.shape}")
    return scores - ref.mean(axis=0, keepdims=True)


def accuracy(scores: np.ndarray, labels) -> float:
    """Fraction of rows whose argmax equals the gold label index (:func:`kexue.stats.accuracy` of the
    argmax predictions)."""
    return stats.accuracy(np.asarray(scores).argmax(1), labels)


def tie_split_accuracy(scores: np.ndarray, labels) -> float:
    """Expected accuracy of argmax when ties at the top are broken uniformly at random: item i
    counts 1/|{c: s_ic = max_c s_ic}| if its gold label is among the tied maxima, else 0. For
    integer scores with many ties (:func:`label_char_scores`) this is the fair reading; plain
    argmax would hand every tie to the first label."""
    return float(np.mean(tie_split_correct(scores, labels)))


def tie_split_correct(scores: np.ndarray, labels) -> np.ndarray:
    """Per item, the expected correctness behind :func:`tie_split_accuracy` (1/|tied maxima| or 0),
    for paired comparisons with other methods' 0/1 correctness."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    top = s == s.max(1, keepdims=True)
    return top[np.arange(len(y)), y] / top.sum(1)


def label_char_scores(texts: list[str], label_words) -> np.ndarray:
    """(n, k) integer scores of the character-overlap control of zero-shot classification: how many
    distinct characters of label word c occur in text i (e.g. a headline containing 体 and 育 scores
    2 for 体育). A rule with no model: what a prompt method must beat before its accuracy says
    anything about the model (https://kexue.fm/archives/8671, chapter ``nsp-zero-shot``)."""
    sets = [set(w) for w in label_words]
    return np.array([[len(c & set(t)) for c in sets] for t in texts], dtype=np.int64).reshape(len(texts), len(sets))


def char_rule_select_and_test(dev_texts, dev_labels, test_texts, test_labels, label_word_sets) -> dict:
    """The character-overlap rule with its label words chosen on dev like the prompts: for each set
    of label words (one per template), dev accuracy by :func:`tie_split_accuracy`; the best set
    (ties: the first) is scored on test. Returns {"words", "dev", "test", "dev_all", "correct"} (per
    test item, :func:`tie_split_correct`)."""
    sets = [tuple(w) for w in label_word_sets]
    dev = [tie_split_accuracy(label_char_scores(dev_texts, w), dev_labels) for w in sets]
    best = int(np.argmax(dev))
    correct = tie_split_correct(label_char_scores(test_texts, sets[best]), test_labels)
    return {"words": sets[best], "dev": dev[best], "dev_all": dev, "test": float(correct.mean()), "correct": correct}


def stratified_subsample(labels, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` examples of each class (all of a smaller class), drawn with
    ``seed``, sorted: a fixed, balanced evaluation subset."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pick = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        pick.append(rng.choice(idx, min(per_class, len(idx)), replace=False))
    return np.sort(np.concatenate(pick))


def fixed_subset(n_items: int, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``n`` of ``n_items`` items drawn without replacement with ``seed`` (all
    items when ``n`` is None or ≥ ``n_items``): a fixed evaluation subset that keeps the split's
    natural class mix (https://kexue.fm/archives/8671, chapter ``nsp-zero-shot``)."""
    if n is None or n >= n_items:
        return np.arange(n_items)
    return np.sort(np.random.default_rng(seed).choice(n_items, n, replace=False))


def shared_items(named: dict) -> list[tuple[str, str, int]]:
    """``(a, b, n)`` for every pair of the named collections in ``named`` = {name: items} (indices
    or texts), ``n`` the number of distinct items both hold, in the order the names are listed: the
    disjointness check of the splits a zero-shot number touches (checkpoint probes, prompt-selection
    dev subset, test; https://kexue.fm/archives/8671, chapter ``nsp-zero-shot``)."""
    names = list(named)
    sets = {k: set(named[k]) for k in names}
    return [(a, b, len(sets[a] & sets[b])) for i, a in enumerate(names) for b in names[i + 1:]]


# ----------------------------------------------------------------- prompt variants and selection

@dataclass(frozen=True)
class PromptVariant:
    """One zero-shot prompt (https://kexue.fm/archives/8671, chapter ``nsp-zero-shot``).

    ``method``: ``"nsp"`` (label prompt B_c = ``template`` with ``words[c]`` in its ``{}`` slot,
    scored by log P(IsNext)) or ``"pet"`` (the ``{}`` slot becomes [MASK]s, scored by the MLM
    log-probability of ``words[c]``; all words must have the same number of tokens).
    ``words``: one label word per class, in label-index order. ``order``: ``"first"`` = the prompt
    comes before the text (NSP: the prompt is sentence A; PET: template, then text), ``"second"`` =
    after it."""

    method: str
    template: str
    words: tuple
    order: str

    def __post_init__(self):
        if self.method not in ("nsp", "pet"):
            raise ValueError(f"method must be 'nsp' or 'pet', got {self.method!r}")
        if self.order not in ("first", "second"):
            raise ValueError(f"order must be 'first' or 'second', got {self.order!r}")
        if self.template.count("{}") != 1:
            raise ValueError(f"a template needs exactly one '{{}}' slot: {self.template!r}")

    @property
    def prompts(self) -> list[str]:
        """The NSP label prompts B_c (the template with each label word filled in)."""
        return [self.template.replace("{}", w) for w in self.words]

    @property
    def name(self) -> str:
        slot = "{" + "/".join(self.words) + "}"
        return f"{self.method.upper()} · {self.template.replace('{}', slot)} · prompt {self.order}"


def prompt_variants(templates, methods=("nsp", "pet"), orders=("first", "second")) -> list[PromptVariant]:
    """Every (method, template, order) combination of ``templates`` = [(template, words), ...], in
    the order method, template, order (https://kexue.fm/archives/8671)."""
    return [PromptVariant(m, t, tuple(w), o) for m in methods for t, w in templates for o in orders]


def variant_scores(model, tok, texts: list[str], variant: PromptVariant, **kw) -> np.ndarray:
    """(n, k) label scores of ``texts`` under one prompt variant: :func:`nsp_label_scores` with the
    prompts B_c, or :func:`pet_label_scores` with the template's slot as the mask
    (https://kexue.fm/archives/8671, https://kexue.fm/archives/7764)."""
    if variant.method == "nsp":
        return nsp_label_scores(model, tok, texts, variant.prompts, prompt="{label}", order=variant.order, **kw)
    return pet_label_scores(model, tok, texts, list(variant.words), template=variant.template.replace("{}", "{mask}"),
                            text_first=variant.order == "second", **kw)


def sweep_variants(model, tok, texts: list[str], labels, variants, **kw) -> list[dict]:
    """Score ``texts`` under every variant: rows ``{"variant", "scores", "raw", "calibrated"}``, with
    raw = accuracy(argmax_c s_ic) and calibrated = accuracy after :func:`calibrate` over these same
    (unlabelled) inputs. Meant for the dev split (https://kexue.fm/archives/8671)."""
    rows = []
    for v in variants:
        s = variant_scores(model, tok, texts, v, **kw)
        rows.append({"variant": v, "scores": s, "raw": accuracy(s, labels),
                     "calibrated": accuracy(calibrate(s), labels)})
    return rows


def best_row(rows: list[dict], method: str, scoring: str) -> dict:
    """The row of ``method`` with the highest ``rows[i][scoring]`` dev accuracy; on a tie the
    first in the list wins (https://kexue.fm/archives/8671)."""
    cand = [r for r in rows if r["variant"].method == method]
    if not cand:
        raise ValueError(f"no variant of method {method!r} among the rows")
    return max(cand, key=lambda r: r[scoring])  # max keeps the first maximum


def select_and_test(model, tok, dev_rows: list[dict], test_texts: list[str], test_labels, *,
                    scorings=("raw", "calibrated"), **kw) -> dict:
    """Choose on dev, then test (https://kexue.fm/archives/8671): for each method present in
    ``dev_rows`` and each scoring, take :func:`best_row` and score ``test_texts`` with its variant
    (each variant once). Raw test accuracy uses argmax_c s_ic; calibrated test accuracy subtracts
    the label means of that variant's DEV scores (:func:`calibrate` with ``reference``), so the test
    split is never used to choose or fit anything. Returns ``{(method, scoring): {"variant", "dev",
    "test", "scores", "prior", "pred"}}`` (``prior`` = the subtracted label means, zeros for raw)."""
    methods = list(dict.fromkeys(r["variant"].method for r in dev_rows))
    cache, out = {}, {}
    for m in methods:
        for sc in scorings:
            row = best_row(dev_rows, m, sc)
            v = row["variant"]
            if v not in cache:
                cache[v] = variant_scores(model, tok, test_texts, v, **kw)
            s = cache[v]
            prior = row["scores"].mean(0) if sc == "calibrated" else np.zeros(s.shape[1])
            adjusted = s - prior
            out[(m, sc)] = {"variant": v, "dev": row[sc], "test": accuracy(adjusted, test_labels),
                            "scores": s, "prior": prior, "pred": adjusted.argmax(1)}
    return out


# ------------------------------------------------------------------ references and statistics

def few_shot_accuracies(encode, train_texts: list[str], train_labels, test_features: np.ndarray,
                        test_labels, *, shots=(8, 32), seeds=(0, 1, 2, 3, 4), C: float = 1.0) -> dict:
    """The supervised few-shot reference: for each k in ``shots`` and each seed, draw k labelled
    examples per class from the train split (:func:`stratified_subsample`), standardise their
    features ``encode(texts)`` (fitted on those k·K examples), fit an L2 logistic regression
    (sklearn, ``C`` fixed, no tuning) and return ``{k: [test accuracy per seed]}``. ``encode`` is
    called once, on the union of all drawn examples (https://kexue.fm/archives/8671)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train_labels = np.asarray(train_labels)
    picks = {(k, s): stratified_subsample(train_labels, k, seed=s) for k in shots for s in seeds}
    union = np.unique(np.concatenate(list(picks.values())))
    feats = np.asarray(encode([train_texts[i] for i in union]), dtype=np.float64)
    row_of = {int(i): r for r, i in enumerate(union)}
    out = {k: [] for k in shots}
    for (k, s), idx in picks.items():
        X = feats[[row_of[int(i)] for i in idx]]
        scaler = StandardScaler().fit(X)
        clf = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(X), train_labels[idx])
        out[k].append(float((clf.predict(scaler.transform(test_features)) == np.asarray(test_labels)).mean()))
    return out


def dev_table_rows(dev_rows: list[dict], control_rows: list[dict] | None = None) -> list[list[str]]:
    """One table row per prompt variant of a dev sweep (:func:`sweep_variants`): method, prompt, order,
    raw and calibrated dev accuracy of ``dev_rows`` and (where the variant is among them) of
    ``control_rows`` (e.g. the random-init network; "—" elsewhere); ★ marks the variant
    :func:`best_row` chooses for each method and scoring (https://kexue.fm/archives/8671, chapter
    ``nsp-zero-shot``)."""
    def cell(rows, r, sc):
        return f"{r[sc]:.3f}" + (" ★" if best_row(rows, r["variant"].method, sc) is r else "")

    ctrl = {r["variant"]: r for r in (control_rows or [])}
    out = []
    for r in dev_rows:
        v = r["variant"]
        c = ctrl.get(v)
        out.append([v.method.upper(), v.name.split(" · ")[1], v.order, cell(dev_rows, r, "raw"),
                    cell(dev_rows, r, "calibrated"),
                    *((cell(control_rows, c, sc) if c is not None else "—") for sc in ("raw", "calibrated"))])
    return out


def stronger_control(controls: dict) -> tuple[str, np.ndarray]:
    """(name, per-item correctness) of the control with the highest accuracy among ``controls`` =
    {name: per-item 0/1 correctness on the same test items}; on a tie the first listed. The claim
    "method beats the controls" is then tested against this one, the most favourable to the
    controls (https://kexue.fm/archives/8671, chapter ``nsp-zero-shot``)."""
    name = max(controls, key=lambda k: float(np.mean(controls[k])))
    return name, np.asarray(controls[name], dtype=np.float64)
