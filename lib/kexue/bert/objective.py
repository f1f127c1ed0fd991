"""BERT's pre-training objective (MLM + NSP) on real documents, as the book's BERT is trained
("曾被嫌弃的预训练任务NSP,做出了优秀的Zero Shot效果", https://kexue.fm/archives/8671):

- MLM: 15 % of the non-special tokens are selected; a selected token becomes [MASK] (80 %), a random
  ordinary token (10 %) or stays (10 %) (:func:`mask_tokens`, the book's one implementation of it,
  also used by P-tuning's auxiliary MLM loss, https://kexue.fm/archives/8295);
- NSP: sentence B is the genuinely following text of the same document (label 0, 50 %) or a span
  starting at a sentence of a random other document (label 1) (:func:`nsp_pair`, :func:`make_batch`);
- the loss: cross-entropy on the selected positions, with the MLM head applied to those positions
  only, plus the NSP cross-entropy (:func:`pretraining_loss`).

Which ids are special, and which id is [MASK] / [CLS] / [SEP], is read from the tokenizer
(:func:`vocab_of`), never assumed. Used by :mod:`kexue.pretrain` (the command that trains the
shipped model), the workbench page ``bert-zh-workbench`` and :mod:`kexue.ptuning`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100   # the label of a position that carries no loss (PyTorch's cross-entropy ignore_index)


@dataclass(frozen=True)
class Vocab:
    """What the objective needs to know about a tokenizer's vocabulary: its ``size``, every special
    id (``special_ids``, sorted) and the ids of [PAD], [CLS], [SEP], [MASK]. Built by :func:`vocab_of`
    (https://kexue.fm/archives/8671)."""

    size: int
    special_ids: tuple
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    @property
    def n_special(self) -> int:
        return len(self.special_ids)

    @property
    def ordinary_ids(self) -> np.ndarray:
        """The ids a random replacement may take: every id of the vocabulary that is not special."""
        return np.setdiff1d(np.arange(self.size), np.asarray(self.special_ids, dtype=np.int64))

    def is_special(self, ids: np.ndarray) -> np.ndarray:
        return np.isin(ids, np.asarray(self.special_ids, dtype=np.int64))


def vocab_of(tok) -> Vocab:
    """The :class:`Vocab` of a Hugging Face tokenizer: ``len(tok)`` ids (added tokens included), its
    special ids (``tok.all_special_ids``: for the book's vocabulary [PAD] [UNK] [CLS] [SEP] [MASK] =
    0..4, plus any added prompt tokens), and the ids of [PAD], [CLS], [SEP], [MASK]
    (https://kexue.fm/archives/8671)."""
    return Vocab(size=len(tok), special_ids=tuple(sorted(set(int(i) for i in tok.all_special_ids))),
                 pad_id=int(tok.pad_token_id), cls_id=int(tok.cls_token_id), sep_id=int(tok.sep_token_id),
                 mask_id=int(tok.mask_token_id))


def mask_tokens(ids, special, rng, *, mask_id: int, replace_ids, prob: float = 0.15):
    """BERT's corruption over the positions where ``special`` is False (``special=None``: every
    position is eligible): each is selected with probability ``prob``; a selected token becomes
    ``mask_id`` with prob. 0.8, ``replace_ids[u]`` for a uniform u (a random ordinary token) with
    prob. 0.1, and stays with prob. 0.1. Returns (inputs, labels), labels = :data:`IGNORE` where not
    selected (https://kexue.fm/archives/8671).

    ``rng`` is a ``numpy.random.Generator`` (NumPy arrays in and out) or a ``torch.Generator``
    (tensors in and out); either way the draws are: one uniform per position (selection), one per
    position (the 80/10/10 split), then one integer per random replacement."""
    if isinstance(rng, torch.Generator):
        uniform = lambda: torch.rand(ids.shape, generator=rng)
        integers = lambda n: torch.randint(0, len(replace_ids), (n,), generator=rng)
        inputs, where = ids.clone(), torch.where
        replace_ids = torch.as_tensor(np.asarray(replace_ids), dtype=ids.dtype)
        ignore = torch.full_like(ids, IGNORE)
    else:
        uniform = lambda: rng.random(ids.shape)
        integers = lambda n: rng.integers(len(replace_ids), size=n)
        inputs, where, ignore = ids.copy(), np.where, IGNORE
    sel = uniform() < prob
    if special is not None:
        sel = sel & ~special
    r = uniform()
    inputs[sel & (r < 0.8)] = mask_id
    rnd = sel & (r >= 0.8) & (r < 0.9)
    inputs[rnd] = replace_ids[integers(int(rnd.sum()))]
    return inputs, where(sel, ids, ignore)


# --------------------------------------------------------------------------------- documents


@dataclass
class TokenisedCorpus:
    """Documents as flat token-id arrays plus the offsets where their sentences start
    (``bounds[d]`` = [0, end of sentence 1, …, len]); built by :func:`tokenise_documents`."""

    tokens: list            # per document: np.int32 array of token ids (no special tokens)
    bounds: list            # per document: np.int64 array of sentence boundaries, first 0, last len
    boundary_doc: np.ndarray = field(default=None)   # every internal boundary: its document …
    boundary_pos: np.ndarray = field(default=None)   # … and its offset in that document

    def __post_init__(self):
        docs, pos = [], []
        for d, b in enumerate(self.bounds):
            docs.extend([d] * (len(b) - 2))
            pos.extend(b[1:-1])
        self.boundary_doc = np.asarray(docs, dtype=np.int64)
        self.boundary_pos = np.asarray(pos, dtype=np.int64)


def tokenise_documents(documents, tok) -> TokenisedCorpus:
    """Token ids of every sentence (no special tokens); empty sentences dropped; documents with
    fewer than two sentences dropped (they give no NSP positive) (https://kexue.fm/archives/8671)."""
    flat = [s for doc in documents for s in doc]
    # the Rust tokenizer directly: fast, and no "longer than model_max_length" warning
    ids = [e.ids for e in tok.backend_tokenizer.encode_batch(flat, add_special_tokens=False)] if flat else []
    tokens, bounds, i = [], [], 0
    for doc in documents:
        sents = [np.asarray(x, dtype=np.int32) for x in ids[i:i + len(doc)] if len(x)]
        i += len(doc)
        if len(sents) < 2:
            continue
        tokens.append(np.concatenate(sents))
        bounds.append(np.cumsum([0] + [len(s) for s in sents]))
    return TokenisedCorpus(tokens, bounds)


def nsp_pair(corpus: TokenisedCorpus, boundary: int, is_next: bool, seq_len: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sentence pair (A, B) around internal boundary number ``boundary``: A = the last
    ⌊(seq_len−3)/2⌋ tokens before the boundary (A ends where a sentence ends); B = the tokens right
    after it (``is_next``) or, for a negative, the tokens from a random sentence start of a random
    *other* document; B is cut so that [CLS] A [SEP] B [SEP] fits ``seq_len``
    (https://kexue.fm/archives/8671)."""
    d, p = corpus.boundary_doc[boundary], corpus.boundary_pos[boundary]
    room = seq_len - 3
    a = corpus.tokens[d][max(0, p - room // 2):p]
    if is_next:
        b = corpus.tokens[d][p:p + room - len(a)]
    else:
        n = len(corpus.tokens)
        o = int(rng.integers(n - 1))
        o += o >= d  # uniform over the other documents
        starts = corpus.bounds[o][:-1]
        s = starts[int(rng.integers(len(starts)))]
        b = corpus.tokens[o][s:s + room - len(a)]
    return a, b


def make_batch(corpus: TokenisedCorpus, batch: int, seq_len: int, vocab: Vocab,
               rng: np.random.Generator) -> dict:
    """One pre-training batch: ``batch`` NSP pairs (half positives in expectation) over boundaries
    drawn uniformly, packed as [CLS] A [SEP] B [SEP], padded to the longest, then masked with
    :func:`mask_tokens` (special tokens never selected, replacements drawn from
    ``vocab.ordinary_ids``). Returns CPU tensors input_ids, token_type_ids, attention_mask, labels,
    next_sentence_label (0 = B follows A) (https://kexue.fm/archives/8671)."""
    bnd = rng.integers(len(corpus.boundary_doc), size=batch)
    is_next = rng.random(batch) < 0.5
    pairs = [nsp_pair(corpus, int(b), bool(n), seq_len, rng) for b, n in zip(bnd, is_next)]
    width = max(len(a) + len(b) + 3 for a, b in pairs)
    ids = np.full((batch, width), vocab.pad_id, dtype=np.int64)
    typ = np.zeros((batch, width), dtype=np.int64)
    att = np.zeros((batch, width), dtype=np.int64)
    for i, (a, b) in enumerate(pairs):
        row = np.concatenate([[vocab.cls_id], a, [vocab.sep_id], b, [vocab.sep_id]])
        ids[i, :len(row)] = row
        typ[i, len(a) + 2:len(row)] = 1
        att[i, :len(row)] = 1
    inputs, labels = mask_tokens(ids, vocab.is_special(ids), rng, mask_id=vocab.mask_id,
                                 replace_ids=vocab.ordinary_ids)
    return {"input_ids": torch.from_numpy(inputs), "token_type_ids": torch.from_numpy(typ),
            "attention_mask": torch.from_numpy(att), "labels": torch.from_numpy(labels),
            "next_sentence_label": torch.from_numpy((~is_next).astype(np.int64))}


def pretraining_loss(model, batch: dict) -> dict:
    """MLM + NSP loss of ``BertForPreTraining`` with the MLM head applied to the labelled positions
    only: L = CE(cls.predictions(h[sel]), y[sel]) + CE(cls.seq_relationship(pooled), nsp).
    Equal to HF's full-head loss (tested); the batch is moved to the model's device. Returns the
    tensors loss, mlm_loss, nsp_loss and the counts mlm_correct, mlm_n, nsp_correct
    (https://kexue.fm/archives/8671)."""
    dev = next(model.parameters()).device
    batch = {k: v.to(dev) for k, v in batch.items()}
    hidden, pooled = model.bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                                attention_mask=batch["attention_mask"])[:2]
    labels = batch["labels"]
    sel = labels != IGNORE
    mlm_logits = model.cls.predictions(hidden[sel])
    mlm_loss = F.cross_entropy(mlm_logits, labels[sel])
    nsp_logits = model.cls.seq_relationship(pooled)
    nsp_loss = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
    with torch.no_grad():
        mlm_correct = int((mlm_logits.argmax(-1) == labels[sel]).sum())
        nsp_correct = int((nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum())
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_correct": mlm_correct, "mlm_n": int(sel.sum()), "nsp_correct": nsp_correct}
