"""Tests of the BERT wing (kexue.bert): the objective (the vocabulary read from the tokenizer,
80/10/10 masking with its statistics and its equality with the synthetic-corpus harness's masking,
NSP pairs, batches, the masked-positions-only MLM loss), length-bucketed batching and pooling, and
the heads (NSP log-probability, cloze scores, the [CLS] classifier) against slow references."""
import dataclasses

import numpy as np
import pytest
import torch

from kexue import mlm
from kexue.bert import batching, heads, objective
from kexue.bert.objective import TokenisedCorpus
from kexue.models import bert_zh

pytestmark = pytest.mark.usefixtures("one_thread")

N_SPECIAL = len(bert_zh.SPECIAL_TOKENS)
# the book's vocabulary layout: [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4, then ordinary tokens
BOOK = objective.Vocab(size=0, special_ids=tuple(range(N_SPECIAL)), pad_id=0, cls_id=2, sep_id=3, mask_id=4)


def synthetic_documents(n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    chars = [chr(0x4E00 + i) for i in range(80)]
    return [["".join(rng.choice(chars, rng.integers(3, 15))) + "。" for _ in range(rng.integers(2, 6))]
            for _ in range(n_docs)]


@pytest.fixture(scope="module")
def micro(char_tokenizer):
    tok = char_tokenizer("这是一则体育新闻。财经科技今天球队赢了股市大涨很好不满意")
    cfg = bert_zh.config(len(tok), num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)
    return bert_zh.build_model(cfg, 0).double().eval(), tok


def test_vocab_read_from_the_tokenizer(char_tokenizer):
    tok = char_tokenizer("甲乙丙")
    v = objective.vocab_of(tok)
    assert v.size == N_SPECIAL + 3 and v.special_ids == tuple(range(N_SPECIAL)) and v.n_special == N_SPECIAL
    assert (v.pad_id, v.cls_id, v.sep_id, v.mask_id) == tuple(
        tok.convert_tokens_to_ids(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))
    assert v.ordinary_ids.tolist() == [5, 6, 7]
    assert v.is_special(np.array([0, 4, 5, 7])).tolist() == [True, True, False, False]


def test_numpy_draws_equal_the_shipped_models_masking():
    """The shipped model was trained with inputs[rnd] = rng.integers(n_special, V, n); drawing an
    index into the ordinary ids instead gives the same numbers (so its training replays bit for bit)."""
    V = 6000
    ids = np.random.default_rng(1).integers(N_SPECIAL, V, (64, 128))
    special = ids < N_SPECIAL + 20
    rng_old, rng_new = np.random.default_rng(7), np.random.default_rng(7)
    sel = (rng_old.random(ids.shape) < 0.15) & ~special
    r = rng_old.random(ids.shape)
    old = ids.copy()
    old[sel & (r < 0.8)] = 4
    rnd = sel & (r >= 0.8) & (r < 0.9)
    old[rnd] = rng_old.integers(N_SPECIAL, V, int(rnd.sum()))
    new, lab = objective.mask_tokens(ids, special, rng_new, mask_id=4, replace_ids=np.arange(N_SPECIAL, V))
    assert np.array_equal(new, old) and np.array_equal(lab, np.where(sel, ids, -100))


def _harness_mask_as_shipped(ids, mask_id, vocab, generator):
    """kexue.mlm.mlm_mask as it was written before it called mask_tokens (bert-init-std's runs)."""
    sel = torch.rand(ids.shape, generator=generator) < 0.15
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[sel & (r < 0.8)] = mask_id
    rand_pos = sel & (r >= 0.8) & (r < 0.9)
    inputs[rand_pos] = torch.randint(0, vocab, (int(rand_pos.sum()),), generator=generator)
    return inputs, labels


@pytest.mark.parametrize("seed", [0, 3])
def test_torch_draws_equal_the_synthetic_harness_masking(seed):
    """With a torch.Generator and every position eligible, mask_tokens (through kexue.mlm.mlm_mask)
    draws exactly what bert-init-std's harness drew before, so its numbers stay bit-identical."""
    vocab = 300
    ids = torch.randint(0, vocab, (16, 64), generator=torch.Generator().manual_seed(99))
    a = _harness_mask_as_shipped(ids, vocab, vocab, torch.Generator().manual_seed(seed))
    b = mlm.mlm_mask(ids, vocab, vocab, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def disjoint_corpus(seed=0):
    """Document d uses token ids 1000·(d+1) + position: every token says where it comes from."""
    rng = np.random.default_rng(seed)
    tokens, bounds = [], []
    for d in range(12):
        lens = rng.integers(1, 9, rng.integers(2, 6))
        tokens.append(np.arange(sum(lens), dtype=np.int32) + 1000 * (d + 1))
        bounds.append(np.cumsum([0, *lens]))
    return TokenisedCorpus(tokens, bounds)


def test_mask_statistics_80_10_10_and_never_special():
    rng = np.random.default_rng(0)
    V = 50
    ids = rng.integers(N_SPECIAL, V, (400, 500))
    special = rng.random(ids.shape) < 0.2
    ids[special] = rng.integers(0, N_SPECIAL, int(special.sum()))
    inputs, labels = objective.mask_tokens(ids, special, rng, mask_id=BOOK.mask_id,
                                           replace_ids=np.arange(N_SPECIAL, V))
    sel = labels != -100
    assert not sel[special].any()
    assert (inputs[special] == ids[special]).all()
    assert (labels[sel] == ids[sel]).all()
    n = (~special).sum()
    assert abs(sel.sum() / n - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    k = sel.sum()
    is_mask = inputs[sel] == BOOK.mask_id
    same = inputs[sel] == ids[sel]
    other = ~is_mask & ~same
    p_same = 0.1 + 0.1 / (V - N_SPECIAL)  # kept, or replaced by itself
    for frac, p in ((is_mask.mean(), 0.8), (same.mean(), p_same), (other.mean(), 0.1 - 0.1 / (V - N_SPECIAL))):
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / k)
    assert (inputs[sel][other] >= N_SPECIAL).all()  # random replacements are never special tokens
    assert (inputs[~sel] == ids[~sel]).all()


@pytest.mark.parametrize("seq_len", [16, 24, 64])
def test_nsp_pairs_positive_consecutive_negative_other_document(seq_len):
    c = disjoint_corpus()
    rng = np.random.default_rng(1)
    for _ in range(300):
        bnd = int(rng.integers(len(c.boundary_doc)))
        d, p = c.boundary_doc[bnd], c.boundary_pos[bnd]
        for is_next in (True, False):
            a, b = objective.nsp_pair(c, bnd, is_next, seq_len, rng)
            assert 1 <= len(a) <= (seq_len - 3) // 2 and len(b) >= 1
            assert len(a) + len(b) <= seq_len - 3
            assert (a // 1000 == d + 1).all() and a[-1] % 1000 == p - 1  # A ends at the boundary
            assert (np.diff(a) == 1).all() and (np.diff(b) == 1).all()
            if is_next:  # B is the text right after A, in the same document
                assert b[0] == a[-1] + 1
                assert len(b) == min(seq_len - 3 - len(a), len(c.tokens[d]) - p)
            else:  # B starts at a sentence start of another document
                o = b[0] // 1000 - 1
                assert o != d and (b // 1000 == o + 1).all()
                assert b[0] % 1000 in c.bounds[o][:-1]


def test_make_batch_layout():
    c = disjoint_corpus()
    # ids must fit a vocabulary: remap the positional ids into 5..V-1 keeping A/B structure checks simple
    rng = np.random.default_rng(3)
    V = 20000
    b = objective.make_batch(c, 64, 32, dataclasses.replace(BOOK, size=V), rng)
    ids, typ, att, lab, nsp = (b[k].numpy() for k in ("input_ids", "token_type_ids", "attention_mask",
                                                       "labels", "next_sentence_label"))
    cls, sep = BOOK.cls_id, BOOK.sep_id
    assert (ids[:, 0] == cls).all() and ids.shape[1] <= 32
    for i in range(64):
        n = att[i].sum()
        assert att[i, :n].all() and not att[i, n:].any()
        seps = np.flatnonzero(ids[i, :n] == sep)
        assert len(seps) == 2 and seps[1] == n - 1
        assert (typ[i, :seps[0] + 1] == 0).all() and (typ[i, seps[0] + 1:n] == 1).all()
        assert (lab[i, [0, *seps]] == -100).all() and (lab[i, n:] == -100).all()
    assert 0.25 < nsp.mean() < 0.75


def test_masked_only_mlm_loss_equals_full_head_loss_float64():
    docs = synthetic_documents()
    v = bert_zh.build_vocab(docs, 1)
    import tempfile, pathlib
    with tempfile.TemporaryDirectory() as d:
        bert_zh.write_vocab(v, pathlib.Path(d))
        tok = bert_zh.tokenizer(d)
        c = objective.tokenise_documents(docs, tok)
    cfg = bert_zh.config(len(v), num_hidden_layers=2, hidden_size=16, num_attention_heads=2,
                         intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = bert_zh.build_model(cfg, 0).double()
    batch = objective.make_batch(c, 16, 32, objective.vocab_of(tok), np.random.default_rng(0))
    fast = objective.pretraining_loss(m, batch)
    full = m(**batch)  # HF: MLM head on every position, CE ignoring -100, + NSP CE
    assert torch.allclose(fast["loss"], full.loss, rtol=0, atol=1e-12)
    lab = batch["labels"]
    ref = torch.nn.functional.cross_entropy(full.prediction_logits[lab != -100], lab[lab != -100])
    assert torch.allclose(fast["mlm_loss"], ref, rtol=0, atol=1e-12)
    # gradients agree too
    g1 = torch.autograd.grad(fast["loss"], m.bert.embeddings.word_embeddings.weight)[0]
    g2 = torch.autograd.grad(m(**batch).loss, m.bert.embeddings.word_embeddings.weight)[0]
    assert torch.allclose(g1, g2, atol=1e-12)


def test_batches_by_length_cover_every_sequence_once_and_pad():
    ids = [[1] * n for n in (5, 2, 7, 2, 3)]
    types = [[0] * (n - 1) + [1] for n in (5, 2, 7, 2, 3)]
    seen = []
    for idx, inp, typ, att in batching.batches_by_length(ids, types, 2, pad_id=9):
        seen += list(idx)
        for r, i in enumerate(idx):
            n = len(ids[i])
            assert att[r, :n].all() and not att[r, n:].any() and (inp[r, n:] == 9).all()
            assert typ[r, n - 1] == 1 and not typ[r, n:].any()
    assert sorted(seen) == list(range(5))
    inp, att = batching.pad_right(ids, [0, 1], pad_id=9)
    assert inp.tolist()[1] == [1, 1, 9, 9, 9] and att.sum().item() == 7


def test_pool_mean_cls_first_last():
    g = torch.Generator().manual_seed(0)
    h0, h1, h2 = (torch.randn(2, 4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    att = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.allclose(batching.pool((h0, h1, h2), att, "mean")[0], h2[0, :2].mean(0))
    assert torch.equal(batching.pool((h0, h1, h2), att, "cls"), h2[:, 0])
    assert torch.allclose(batching.pool((h0, h1, h2), att, "first_last")[1], ((h1[1] + h2[1]) / 2).mean(0))
    with pytest.raises(ValueError):
        batching.pool((h2,), att, "max")


def test_heads_match_the_full_model_outputs(micro):
    model, tok = micro
    enc = tok(["这是一则体育新闻。"], ["球队赢了"], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
        nsp = heads.nsp_is_next_logprob(model, enc["input_ids"], enc["token_type_ids"], enc["attention_mask"])
        assert torch.allclose(nsp, torch.log_softmax(out.seq_relationship_logits, -1)[:, 0], atol=1e-12)
        hidden = model.bert(**enc)[0]
        pos = torch.tensor([[1, 2]])
        lab = [tok("体育", add_special_tokens=False)["input_ids"], tok("财经", add_special_tokens=False)["input_ids"]]
        s = heads.cloze_label_logprobs(model, hidden, pos, lab)
        logp = torch.log_softmax(out.prediction_logits[0, 1:3], -1)
        ref = [sum(logp[j, w[j]] for j in range(2)) for w in lab]
        assert torch.allclose(s[0], torch.stack(ref), atol=1e-12)
        words = tok.convert_tokens_to_ids(["很", "不"])
        assert torch.allclose(heads.label_word_logits(model, hidden[:, 3], words), out.prediction_logits[:, 3, words])
