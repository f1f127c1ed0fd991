"""Optimisation building blocks shared by the book's parts: learning-rate schedules and optimizer
parameter groups here; sign-based optimizers (Lion, Tiger) in :mod:`kexue.optim.sign`; gradient
accumulation folded into momentum in :mod:`kexue.optim.accum`.

- :func:`warmup_linear`: BERT's warm-up then linear decay, as a multiplier for ``LambdaLR``;
- :func:`adamw_param_groups`: weight decay on matrices only.

First used by https://kexue.fm/archives/8747 (chapter ``bert-init-std``) and by the book's BERT
pre-training (``kexue.pretrain``).
"""
from __future__ import annotations

import torch


def warmup_linear(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier of BERT: step/warmup for step < warmup, then linear decay
    (total − step)/(total − warmup) to 0 at ``total``; ``warmup=0`` starts at full rate
    (https://kexue.fm/archives/8747, chapter ``bert-init-std``). ``step`` counts from 0; the
    multiplier of the first update is 1/warmup."""
    if not 0 <= warmup <= total:
        raise ValueError(f"need 0 <= warmup <= total, got warmup={warmup}, total={total}")
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def adamw_param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """BERT's grouping: weight decay on matrices, none on biases and LayerNorm gains, so that
    LN's gamma is free to grow (https://kexue.fm/archives/8747, chapter ``bert-init-std``)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
