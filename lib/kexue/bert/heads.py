"""What is read off a ``BertForPreTraining``: the NSP head's log P(IsNext), the MLM head's scores of
label words at [MASK] positions (cloze scoring), and a linear classifier on the pooled [CLS] vector.

- NSP scoring: "曾被嫌弃的预训练任务NSP,做出了优秀的Zero Shot效果", https://kexue.fm/archives/8671;
- cloze scoring (PET): "必须要GPT3吗?不,BERT的MLM模型也能小样本学习", https://kexue.fm/archives/7764,
  and P-tuning's verbalizer, https://kexue.fm/archives/8295;
- the [CLS] classifier: the "few-shot direct fine-tune" row of https://kexue.fm/archives/8295.

Every function follows the model's device: inputs are moved to it, results come back as tensors
on it (or NumPy arrays for the batched scorers). Used by :mod:`kexue.zeroshot` and
:mod:`kexue.ptuning` (chapters ``nsp-zero-shot`` and ``p-tuning``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .batching import batches_by_length


def device_of(model) -> torch.device:
    """The device of the model's first parameter (where its inputs must go)."""
    return next(model.parameters()).device


def nsp_is_next_logprob(model, inp: torch.Tensor, typ: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """(b,) float64 log P(IsNext | [CLS] A [SEP] B [SEP]) from the NSP head on the pooled [CLS]
    vector; HF's NSP label 0 means "B follows A" (https://kexue.fm/archives/8671)."""
    dev = device_of(model)
    pooled = model.bert(input_ids=inp.to(dev), token_type_ids=typ.to(dev), attention_mask=att.to(dev))[1]
    return torch.log_softmax(model.cls.seq_relationship(pooled).double(), -1)[:, 0]


def cloze_label_logprobs(model, hidden: torch.Tensor, positions: torch.Tensor, label_ids) -> torch.Tensor:
    """(b, k) float64 cloze scores s_ic = Σ_j log softmax(MLM-head(h_i at positions[i, j]))[label_ids[c][j]]:
    each label is a word of m tokens, one per [MASK] slot, scored with the full-vocabulary MLM
    distribution at its slot. ``hidden``: (b, T, d) last-layer states; ``positions``: (b, m); ``label_ids``:
    (k, m) (https://kexue.fm/archives/7764)."""
    dev = hidden.device
    lab = torch.as_tensor(np.asarray(label_ids), device=dev)               # (k, m)
    m = lab.shape[1]
    h = hidden[torch.arange(len(hidden), device=dev)[:, None], positions.to(dev)]   # (b, m, d)
    logp = torch.log_softmax(model.cls.predictions(h).double(), -1)       # (b, m, V)
    return logp[:, torch.arange(m, device=dev)[None, :], lab].sum(-1)     # [b, c] = Σ_j logp[b, j, lab[c, j]]


def label_word_logits(model, hidden_at_mask: torch.Tensor, label_ids) -> torch.Tensor:
    """(b, k) MLM-head logits of the k one-token label words at the [MASK] (the verbalizer restricted to
    its words; a softmax over them gives p(y | x)) (https://kexue.fm/archives/8295)."""
    return model.cls.predictions(hidden_at_mask)[:, list(label_ids)]


class ClsHeadClassifier(nn.Module):
    """Plain fine-tuning's classifier: the BERT's pooled [CLS] vector → dropout → linear layer to k
    classes, all weights trainable; the head is initialised from ``seed`` on the encoder's device
    (the article's "few-shot direct fine-tune" row; chapter ``p-tuning``, https://kexue.fm/archives/8295)."""

    def __init__(self, bert_for_pretraining, n_classes: int = 2, dropout: float = 0.1, seed: int = 0):
        super().__init__()
        self.bert = bert_for_pretraining.bert
        self.drop = nn.Dropout(dropout)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.head = nn.Linear(self.bert.config.hidden_size, n_classes)
        p = next(self.bert.parameters())
        self.head.to(p.device, p.dtype)

    def forward(self, inp: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        dev = device_of(self.bert)
        inp, att = inp.to(dev), att.to(dev)
        pooled = self.bert(input_ids=inp, attention_mask=att, token_type_ids=torch.zeros_like(inp))[1]
        return self.head(self.drop(pooled))


@torch.no_grad()
def classifier_logits(clf: ClsHeadClassifier, ids: list, batch_size: int = 32, pad_id: int = 0) -> np.ndarray:
    """(n, k) float64 logits of :class:`ClsHeadClassifier` for token-id lists ``ids``, in eval mode,
    batched by length (https://kexue.fm/archives/8295)."""
    was = clf.training
    clf.eval()
    out = np.empty((len(ids), clf.head.out_features))
    types = [[0] * len(x) for x in ids]
    for idx, inp, _, att in batches_by_length(ids, types, batch_size, pad_id):
        out[idx] = clf(inp, att).double().cpu().numpy()
    clf.train(was)
    return out
