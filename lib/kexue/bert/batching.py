"""Batching and pooling for a BERT encoder: padded batches of token-id lists, grouped by length so
that little padding is computed, and the pooling of hidden states into one vector per sequence.

Used by :mod:`kexue.zeroshot` (NSP and PET scoring, https://kexue.fm/archives/8671),
:mod:`kexue.sentemb` (sentence vectors, https://kexue.fm/archives/8069) and :mod:`kexue.ptuning`
(https://kexue.fm/archives/8295). The tensors are built on the CPU; the callers move them to the
model's device.
"""
from __future__ import annotations

import numpy as np
import torch


def pad_right(ids: list, idx, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of the sequences ``ids[i]`` for i in ``idx``, right-padded to the
    longest with ``pad_id`` (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    width = max(len(ids[i]) for i in idx)
    inp = torch.full((len(idx), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(idx), width), dtype=torch.long)
    for r, i in enumerate(idx):
        inp[r, :len(ids[i])] = torch.as_tensor(ids[i])
        att[r, :len(ids[i])] = 1
    return inp, att


def batches_by_length(ids: list, types: list, batch_size: int, pad_id: int = 0):
    """Yield (indices, input_ids, token_type_ids, attention_mask) over all sequences, grouping those
    of similar length (a stable sort by length, then consecutive chunks of ``batch_size``) so that
    little padding is computed; ``types`` are per-token integers padded with 0 (segment ids, or any
    per-token code) (https://kexue.fm/archives/8671)."""
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


def pool(hidden_states, att: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence from the encoder's hidden states (a tuple, last layer last):
    ``mean`` = the average of the last layer over the positions where ``att`` is 1; ``first_last``
    = the same average of (first layer + last layer) / 2 (``hidden_states[1]`` is the first
    transformer layer's output); ``cls`` = the last layer at position 0
    (https://kexue.fm/archives/8069)."""
    m = att.unsqueeze(-1).to(hidden_states[-1].dtype)
    if pooling == "cls":
        return hidden_states[-1][:, 0]
    if pooling == "mean":
        h = hidden_states[-1]
    elif pooling == "first_last":
        h = (hidden_states[1] + hidden_states[-1]) / 2
    else:
        raise ValueError("pooling must be 'mean', 'cls' or 'first_last'")
    return (h * m).sum(1) / m.sum(1)
