"""Models the book trains itself and ships with its weights (safetensors + sha256).

- :mod:`kexue.models.bert_zh`: the book's small Chinese character-level BERT (MLM + NSP), pre-trained
  on the 2-core CPU by ``python -m kexue.pretrain``; loaded by :func:`kexue.models.bert_zh.load`.
"""
