"""Zero-shot classification with a pre-trained BERT's own heads: NSP prompts (NSP-BERT) and PET
(MLM cloze), with a prior calibration of the label scores.

- NSP: "曾被嫌弃的预训练任务NSP,做出了优秀的Zero Shot效果", https://kexue.fm/archives/8671 — score
  label c by log P(IsNext | A, B_c) with a label prompt B_c; predict argmax_c.
- PET: "必须要GPT3吗?不,BERT的MLM模型也能小样本学习", https://kexue.fm/archives/7764 — a cloze
  template with [MASK] slots; score = Σ_j log p(label char j at mask j).
Used by the chapter ``nsp-zero-shot`` and by the pre-training evaluations of :mod:`kexue.pretrain`.
"""
from __future__ import annotations

import numpy as np
import torch

THUCNEWS_PROMPT = "这是一则{label}新闻。"


def _batches_by_length(ids: list, types: list, batch_size: int, pad_id: int = 0):
    """Yield (indices, input_ids, token_type_ids, attention_mask), grouping sequences of similar
    length so that little padding is computed."""
    order = np.argsort([len(x) for x in ids], kind="stable")
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(ids[i]) for i in idx)
        inp = torch.full((len(idx), width), pad_id, dtype=torch.long)
        typ = torch.zeros((len(idx), width), dtype=torch.long)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(ids[i])
            inp[r, :n] = torch.as_tensor(ids[i])
            typ[r, :n] = torch.as_tensor(types[i])
            att[r, :n] = 1
        yield idx, inp, typ, att


@torch.no_grad()
def nsp_logprob(model, tok, firsts: list[str], seconds: list[str], *, batch_size: int = 256,
                max_length: int = 128) -> np.ndarray:
    """log P(IsNext | A=firsts[i], B=seconds[i]) from a ``BertForPreTraining``'s NSP head, for
    ``[CLS] A [SEP] B [SEP]`` with segment ids 0/1 (HF's label 0 = "B follows A")."""
    enc = tok(list(firsts), list(seconds), truncation=True, max_length=max_length)
    out = np.empty(len(firsts))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    for idx, inp, typ, att in _batches_by_length(enc["input_ids"], enc["token_type_ids"], batch_size,
                                                 tok.pad_token_id):
        pooled = model.bert(input_ids=inp.to(dev), token_type_ids=typ.to(dev),
                            attention_mask=att.to(dev))[1]
        logits = model.cls.seq_relationship(pooled).double()
        out[idx] = torch.log_softmax(logits, -1)[:, 0].cpu().numpy()
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
    lab = torch.as_tensor(lab_ids)  # (k, m)
    out = np.empty((len(texts), len(labels)))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    for idx, inp, typ, att in _batches_by_length(ids, types, batch_size, tok.pad_token_id):
        hidden = model.bert(input_ids=inp.to(dev), token_type_ids=typ.to(dev), attention_mask=att.to(dev))[0]
        pos = torch.as_tensor([starts[i] for i in idx])[:, None] + torch.arange(m)  # (b, m)
        h = hidden[torch.arange(len(idx))[:, None], pos.to(dev)]  # (b, m, d)
        logp = torch.log_softmax(model.cls.predictions(h).double(), -1).cpu()  # (b, m, V)
        # score[b, c] = sum_j logp[b, j, lab[c, j]]
        out[idx] = logp[:, torch.arange(m)[None, :], lab].sum(-1).numpy()
    model.train(was_training)
    return out


def calibrate(scores: np.ndarray) -> np.ndarray:
    """Prior correction: subtract each label's mean score over the evaluated inputs,
    s'_ic = s_ic − (1/n) Σ_i' s_i'c, so that no label wins by its prior alone (a simple form of
    the calibration discussed for PET/NSP zero-shot, https://kexue.fm/archives/8671)."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores - scores.mean(axis=0, keepdims=True)


def accuracy(scores: np.ndarray, labels) -> float:
    """Fraction of rows whose argmax equals the gold label index."""
    return float((np.asarray(scores).argmax(1) == np.asarray(labels)).mean())


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
