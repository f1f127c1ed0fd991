"""Tests of kexue.pretrain (the command): the stage schedule, checkpoint/resume bit-identity,
re-budgeting and extension, the minutes budget and the log, on synthetic documents. The objective
itself (masking, NSP pairs, batches, the loss) is tested in test_bert.py."""
import json

import numpy as np
import pytest
import torch

from kexue import pretrain
from kexue.models import bert_zh
from kexue.pretrain import PretrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")



def synthetic_documents(n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    chars = [chr(0x4E00 + i) for i in range(80)]
    return [["".join(rng.choice(chars, rng.integers(3, 15))) + "。" for _ in range(rng.integers(2, 6))]
            for _ in range(n_docs)]


def micro_config(**kw):
    return PretrainConfig(batch=8, seq_len=24, long_seq_len=32, long_fraction=0.25, warmup=2, log_every=2,
                          peak_matrix=128, calibration_steps=3, threads=1,
                          model=dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32), **kw)


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
