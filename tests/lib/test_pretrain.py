"""Tests of kexue.pretrain: masking statistics, NSP pairs, the masked-positions-only MLM loss,
the stage schedule, checkpoint/resume bit-identity and extension, on synthetic documents."""
import json

import numpy as np
import pytest
import torch

from kexue import pretrain
from kexue.models import bert_zh
from kexue.pretrain import PretrainConfig, TokenisedCorpus

pytestmark = pytest.mark.usefixtures("one_thread")


N_SPECIAL = len(bert_zh.SPECIAL_TOKENS)


def synthetic_documents(n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    chars = [chr(0x4E00 + i) for i in range(80)]
    return [["".join(rng.choice(chars, rng.integers(3, 15))) + "。" for _ in range(rng.integers(2, 6))]
            for _ in range(n_docs)]


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
    inputs, labels = pretrain.mask_tokens(ids, special, V, N_SPECIAL, rng)
    sel = labels != -100
    assert not sel[special].any()
    assert (inputs[special] == ids[special]).all()
    assert (labels[sel] == ids[sel]).all()
    n = (~special).sum()
    assert abs(sel.sum() / n - 0.15) < 4 * np.sqrt(0.15 * 0.85 / n)
    k = sel.sum()
    is_mask = inputs[sel] == pretrain.SPECIAL_ID["[MASK]"]
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
            a, b = pretrain.nsp_pair(c, bnd, is_next, seq_len, rng)
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
    b = pretrain.make_batch(c, 64, 32, V, rng)
    ids, typ, att, lab, nsp = (b[k].numpy() for k in ("input_ids", "token_type_ids", "attention_mask",
                                                       "labels", "next_sentence_label"))
    cls, sep = pretrain.SPECIAL_ID["[CLS]"], pretrain.SPECIAL_ID["[SEP]"]
    assert (ids[:, 0] == cls).all() and ids.shape[1] <= 32
    for i in range(64):
        n = att[i].sum()
        assert att[i, :n].all() and not att[i, n:].any()
        seps = np.flatnonzero(ids[i, :n] == sep)
        assert len(seps) == 2 and seps[1] == n - 1
        assert (typ[i, :seps[0] + 1] == 0).all() and (typ[i, seps[0] + 1:n] == 1).all()
        assert (lab[i, [0, *seps]] == -100).all() and (lab[i, n:] == -100).all()
    assert 0.25 < nsp.mean() < 0.75


def micro_config(**kw):
    return PretrainConfig(batch=8, seq_len=24, long_seq_len=32, long_fraction=0.25, warmup=2, log_every=2,
                          peak_matrix=128, calibration_steps=3, threads=1,
                          model=dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32), **kw)


def test_masked_only_mlm_loss_equals_full_head_loss_float64():
    docs = synthetic_documents()
    v = bert_zh.build_vocab(docs, 1)
    import tempfile, pathlib
    with tempfile.TemporaryDirectory() as d:
        bert_zh.write_vocab(v, pathlib.Path(d))
        tok = bert_zh.tokenizer(d)
        c = pretrain.tokenise_documents(docs, tok)
    cfg = bert_zh.config(len(v), num_hidden_layers=2, hidden_size=16, num_attention_heads=2,
                         intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    m = bert_zh.build_model(cfg, 0).double()
    batch = pretrain.make_batch(c, 16, 32, len(v), np.random.default_rng(0))
    fast = pretrain.pretraining_loss(m, batch)
    full = m(**batch)  # HF: MLM head on every position, CE ignoring -100, + NSP CE
    assert torch.allclose(fast["loss"], full.loss, rtol=0, atol=1e-12)
    lab = batch["labels"]
    ref = torch.nn.functional.cross_entropy(full.prediction_logits[lab != -100], lab[lab != -100])
    assert torch.allclose(fast["mlm_loss"], ref, rtol=0, atol=1e-12)
    # gradients agree too
    g1 = torch.autograd.grad(fast["loss"], m.bert.embeddings.word_embeddings.weight)[0]
    g2 = torch.autograd.grad(m(**batch).loss, m.bert.embeddings.word_embeddings.weight)[0]
    assert torch.allclose(g1, g2, atol=1e-12)


def test_stage_schedule():
    s = pretrain.make_stage(100, 64 * 64 * 1000, lr=1e-3, warmup=50, batch=64, seq_len=64,
                            long_seq_len=128, long_fraction=0.1)
    assert (s.steps_short, s.steps_long, s.end) == (900, 100, 1100)
    assert s.shape(100) == (64, 64) and s.shape(999) == (64, 64) and s.shape(1000) == (32, 128)
    assert s.lr_at(100) == pytest.approx(1e-3 / 50) and s.lr_at(149) == pytest.approx(1e-3)
    assert s.lr_at(1099) == pytest.approx(1e-3 / 950) and s.lr_at(1100) == 0
    assert pretrain.stage_of([s], 1099) is s and pretrain.stage_of([s], 1100) is None


def _weights(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def _train_records(folder):
    return [{k: v for k, v in json.loads(l).items() if k not in ("tokens_per_s", "mfu", "elapsed_s")}
            for l in open(folder / "log.jsonl") if '"train"' in l]


def small_evals(tok, heldout):
    return pretrain.EvalSets(heldout=heldout, heldout_batches=1, heldout_batch=8)


def test_resume_is_bit_identical_and_extension_adds_a_stage(tmp_path):
    docs = synthetic_documents()
    kw = dict(tokens=8 * 24 * 8, heldout_fraction=0.1, min_count=1, echo=False, eval_sets_fn=small_evals)
    full = pretrain.run(tmp_path / "a", docs, cfg=micro_config(), **kw)
    assert full["step"] == 8 and [s["steps_long"] for s in full["stages"]] == [2]
    part = pretrain.run(tmp_path / "b", docs, cfg=micro_config(), stop_after_steps=4, **kw)
    assert part["step"] == 4 and not (tmp_path / "b" / "model.safetensors").exists()
    with pytest.raises(FileExistsError):
        pretrain.run(tmp_path / "b", docs, cfg=micro_config(), **kw)
    kw.pop("tokens")
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # a record written after the last checkpoint
        f.write(json.dumps({"event": "train", "step": 5, "tokens": 0, "mlm_loss": 9.9}) + "\n")
    resumed = pretrain.run(tmp_path / "b", docs, resume=True, **kw)
    assert resumed["step"] == 8
    wa, wb = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _train_records(tmp_path / "a") == _train_records(tmp_path / "b")
    bert_zh.verify_checksums(tmp_path / "b")
    card = (tmp_path / "b" / "README.md").read_text()
    assert "python -m kexue.pretrain" not in card or "run()" in card
    assert "heldout_mlm_acc" in card and "MFU" in card
    # extending a finished run by a further budget
    ext = pretrain.run(tmp_path / "b", docs, resume=True, extend_tokens=8 * 24 * 4, **kw)
    assert ext["step"] == 12 and ext["stages"][1]["start"] == 8 and len(ext["stages"]) == 2
    assert not all(torch.equal(wb[k], _weights(tmp_path / "b")[k]) for k in wb)
    model, tok = bert_zh.load(tmp_path / "b")
    assert model.config.num_hidden_layers == 1


def test_stage_tokens_rebudgets_the_unfinished_stage(tmp_path):
    docs = synthetic_documents()
    kw = dict(heldout_fraction=0.1, min_count=1, echo=False, eval_sets_fn=small_evals)
    part = pretrain.run(tmp_path / "c", docs, cfg=micro_config(), tokens=8 * 24 * 8, stop_after_steps=3, **kw)
    assert part["step"] == 3 and part["stages"][0]["steps_short"] + part["stages"][0]["steps_long"] == 8
    with pytest.raises(ValueError, match="larger budget"):  # would end before the step reached
        pretrain.run(tmp_path / "c", docs, resume=True, stage_tokens=8 * 24 * 2, **kw)
    with pytest.raises(ValueError, match="either"):
        pretrain.run(tmp_path / "c", docs, resume=True, stage_tokens=8 * 24 * 6, extend_tokens=8 * 24, **kw)
    done = pretrain.run(tmp_path / "c", docs, resume=True, stage_tokens=8 * 24 * 5, **kw)
    assert done["step"] == 5 and len(done["stages"]) == 1 and done["stages"][0]["tokens"] == 8 * 24 * 5
    assert done["rebudgets"] == [{"step": 3, "stage": "main", "from_tokens": 8 * 24 * 8, "to_tokens": 8 * 24 * 5}]
    assert "re-budgeted at step 3" in (tmp_path / "c" / "README.md").read_text()
    lrs = [json.loads(l)["lr"] for l in open(tmp_path / "c" / "log.jsonl") if '"train"' in l]
    assert lrs[-1] < lrs[0]


def test_minutes_budget_is_fixed_after_timing(tmp_path):
    docs = synthetic_documents()
    st = pretrain.run(tmp_path / "m", docs, cfg=micro_config(), minutes=0.05, heldout_fraction=0.1,
                      min_count=1, echo=False, eval_sets_fn=small_evals)
    assert st["budget_from_minutes"]["tokens"] >= 0 and st["stages"][0]["label"] == "main"
    s = st["stages"][0]
    assert st["step"] == max(s["steps_short"] + s["steps_long"], 3)
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_read_log_columns(tmp_path):
    docs = synthetic_documents()
    pretrain.run(tmp_path / "r", docs, cfg=micro_config(), tokens=8 * 24 * 4, heldout_fraction=0.1,
                 min_count=1, echo=False, eval_sets_fn=small_evals)
    log = pretrain.read_log(tmp_path / "r")
    assert log["train"]["step"].tolist() == [2.0, 4.0]
    assert log["eval"]["step"].tolist() == [0.0, 4.0] and len(log["done"]) == 1
    assert ((0 <= log["eval"]["heldout_mlm_acc"]) & (log["eval"]["heldout_mlm_acc"] <= 1)).all()
