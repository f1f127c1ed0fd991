"""The BERT wing: the pieces every chapter on the book's Chinese BERT shares (parts 5-8).

- :mod:`kexue.bert.objective`: the pre-training objective — the vocabulary facts taken from the
  tokenizer (:class:`~kexue.bert.objective.Vocab`), BERT's 80/10/10 masking (the one
  ``mask_tokens``), NSP sentence pairs, pre-training batches and the MLM + NSP loss;
- :mod:`kexue.bert.batching`: length-bucketed padded batches and sentence pooling;
- :mod:`kexue.bert.heads`: what is read off the encoder — the NSP head's log P(IsNext), the MLM
  head's label-word scores at [MASK] positions (cloze scoring), and a linear classifier on [CLS].

Sources: "曾被嫌弃的预训练任务NSP,做出了优秀的Zero Shot效果", https://kexue.fm/archives/8671 (the
objective, the NSP head); "P-tuning:自动构建模版,释放语言模型潜能", https://kexue.fm/archives/8295 (cloze
scoring, the classifier). The pre-training command is :mod:`kexue.pretrain`; the model and its
tokenizer are :mod:`kexue.models.bert_zh`. Import the modules by their full names.
"""
