"""Models the book trains itself and ships with its weights (safetensors + sha256).

- :mod:`kexue.models.bert_zh`: the book's small Chinese character-level BERT (MLM + NSP), pre-trained
  on the 2-core CPU by ``python -m kexue.pretrain``; loaded by :func:`kexue.models.bert_zh.load`.
- :mod:`kexue.models.gemma`: Gemma-3-270M (optional package), frozen.
- :mod:`kexue.models.encoders`: one interface to sentence vectors from each encoder the book can
  use (the book's BERT, its random-init control, USE multilingual v3, Gemma-3-270M with an
  embedding cache) and the character-overlap control: ``get_encoder(name).encode(texts)``,
  ``pair_scores(encoder, s1, s2)``.
"""
