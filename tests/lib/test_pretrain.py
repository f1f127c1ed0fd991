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
    return [{k: v for k, v in json.loads(l).items() if k not in ("tokens_per_s", "mfu", "elapsed_s", "window_seconds")}
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


def _recipe(cfg, stages):
    from dataclasses import asdict
    return {"config": asdict(cfg), "heldout_fraction": 0.1, "min_count": 1, "stages": stages}


def test_recipe_replays_the_commands_it_records(tmp_path):
    """A recipe (stage, re-budget, extension) run in one go = the same plan given as three commands."""
    docs = synthetic_documents()
    kw = dict(heldout_fraction=0.1, min_count=1, echo=False, eval_sets_fn=small_evals)
    pretrain.run(tmp_path / "cmd", docs, cfg=micro_config(), tokens=8 * 24 * 8, stop_after_steps=3, **kw)
    pretrain.run(tmp_path / "cmd", docs, resume=True, stage_tokens=8 * 24 * 5, **kw)
    pretrain.run(tmp_path / "cmd", docs, resume=True, extend_tokens=8 * 24 * 4, **kw)
    recipe = _recipe(micro_config(), [
        {"label": "main", "tokens": 8 * 24 * 8, "rebudgets": [{"step": 3, "tokens": 8 * 24 * 5}]},
        {"label": "extension 1", "tokens": 8 * 24 * 4}])
    st = pretrain.run(tmp_path / "rec", docs, recipe=recipe, echo=False, eval_sets_fn=small_evals)
    assert st["step"] == 9 and [s["label"] for s in st["stages"]] == ["main", "extension 1"]
    assert st["rebudgets"] == [{"step": 3, "stage": "main", "from_tokens": 8 * 24 * 8, "to_tokens": 8 * 24 * 5}]
    wa, wb = _weights(tmp_path / "cmd"), _weights(tmp_path / "rec")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # a resumed command starts a new log window: the records at steps 4 and 6 average fewer steps there
    same = lambda folder: [r for r in _train_records(folder) if r["step"] not in (4, 6)]
    assert same(tmp_path / "cmd") == same(tmp_path / "rec") and len(same(tmp_path / "rec")) == 2
    assert [s.end for s in pretrain.final_plan(recipe, micro_config())] == [5, 9]
    with pytest.raises(ValueError, match="own budget"):
        pretrain.run(tmp_path / "x", docs, recipe=recipe, tokens=100, echo=False)


def test_init_weights_continues_a_recipe_like_the_replay(tmp_path):
    """Starting a fresh-optimizer stage from shipped weights = replaying the recipe from scratch."""
    docs = synthetic_documents()
    stages = [{"label": "main", "tokens": 8 * 24 * 4},
              {"label": "long", "tokens": 8 * 24 * 4, "long_fraction": 0.5, "fresh_optimizer": True}]
    kw = dict(echo=False, eval_sets_fn=small_evals)
    full = pretrain.run(tmp_path / "full", docs, recipe=_recipe(micro_config(), stages), **kw)
    assert full["optimizer_resets"] == [4] and full["stages"][1]["steps_long"] == 2
    pretrain.run(tmp_path / "first", docs, recipe=_recipe(micro_config(), stages[:1]), **kw)
    named = lambda tok, h: pretrain.EvalSets(heldout=h, heldout_batches=1, heldout_batch=8, name="new probes")
    cont = pretrain.run(tmp_path / "cont", docs, recipe=_recipe(micro_config(), stages), echo=False,
                        eval_sets_fn=named, init_weights=(tmp_path / "first", "long"))
    assert cont["step"] == 8 and cont["inherited"]["step"] == 4
    wa, wb = _weights(tmp_path / "full"), _weights(tmp_path / "cont")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _train_records(tmp_path / "full") == _train_records(tmp_path / "cont")
    evs = [e for e in cont["evals"] if e["step"] == 4]
    assert len(evs) == 2   # the inherited log's end-of-stage evaluation and this run's baseline
    card = (tmp_path / "cont" / "README.md").read_text()
    assert "started at step 4" in card and "fresh optimizer" in card
    with pytest.raises(ValueError, match="fresh_optimizer"):
        pretrain.run(tmp_path / "bad", docs, recipe=_recipe(micro_config(), [stages[0], {**stages[1], "fresh_optimizer": False}]),
                     init_weights=(tmp_path / "first", "long"), **kw)


def test_checkpoint_probes_avoid_the_prompt_selection_subset():
    from kexue.zeroshot import fixed_subset
    y = np.repeat(np.arange(10), 100)
    pick = pretrain.checkpoint_probe_indices(y, 20, 1234, (400, 0))
    assert len(pick) == 200 and np.bincount(y[pick]).tolist() == [20] * 10
    assert not set(pick) & set(fixed_subset(len(y), 400, 0))


def test_evaluate_reports_both_lengths(tmp_path):
    docs = synthetic_documents()
    st = pretrain.run(tmp_path / "e", docs, cfg=micro_config(), tokens=8 * 24 * 2, heldout_fraction=0.2, min_count=1,
                      echo=False, eval_sets_fn=lambda tok, h: pretrain.EvalSets(heldout=h, heldout_batches=1,
                                                                                 heldout_batch=4, long_seq_len=32))
    e = st["evals"][-1]
    assert {"heldout_mlm_loss", "heldout_mlm_loss_32", "heldout_nsp_acc_32"} <= set(e)


def test_thucnews_probe_indices_are_default_eval_sets_probes():
    """The chapter's probe indices = what default_eval_sets draws with its defaults; the shipped run's
    older probes = the stratified draw over all of dev."""
    import inspect

    from kexue.zeroshot import stratified_subsample
    d = inspect.signature(pretrain.default_eval_sets).parameters
    assert (d["thucnews_per_label"].default, d["seed"].default) == (20, 1234)
    y = np.repeat(np.arange(10), 100)
    assert np.array_equal(pretrain.thucnews_probe_indices(y),
                          pretrain.checkpoint_probe_indices(y, 20, 1234, pretrain.PROMPT_SELECTION_DEV["thucnews"]))
    assert np.array_equal(pretrain.thucnews_probe_indices(y, shipped_run=True), np.sort(stratified_subsample(y, 20, 1234)))


def test_pretrained_from_recipe_trains_once_then_reuses(tmp_path):
    docs = synthetic_documents()
    recipe = _recipe(micro_config(), [{"label": "main", "tokens": 8 * 24 * 8, "rebudgets": [{"step": 3, "tokens": 8 * 24 * 5}]}])
    small = pretrain.recipe_with_tokens(recipe, 8 * 24 * 4)
    assert small["stages"] == [{"label": "main", "tokens": 8 * 24 * 4}] and small["config"] == recipe["config"]
    out = pretrain.pretrained_from_recipe(small, tmp_path / "m", docs, eval_sets_fn=small_evals)
    ref = pretrain.run(tmp_path / "ref", docs, recipe=small, echo=False, eval_sets_fn=small_evals)
    w = _weights(out)
    assert ref["step"] == 4 and all(torch.equal(w[k], _weights(tmp_path / "ref")[k]) for k in w)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert pretrain.pretrained_from_recipe(small, out, None) == out       # finished: no corpus needed, nothing trained
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="another"):
        pretrain.pretrained_from_recipe(recipe, out, docs)
    # an interrupted run of the same recipe is resumed to the same weights
    pretrain.run(tmp_path / "cut", docs, recipe=small, echo=False, eval_sets_fn=small_evals, stop_after_steps=2)
    pretrain.pretrained_from_recipe(small, tmp_path / "cut", docs, eval_sets_fn=small_evals)
    wc = _weights(tmp_path / "cut")
    assert all(torch.equal(w[k], wc[k]) for k in w)


def test_prompt_selection_indices_stay_inside_the_fixed_subset():
    from kexue.zeroshot import fixed_subset
    y = np.repeat(np.arange(10), 100)
    pool = fixed_subset(len(y), *pretrain.PROMPT_SELECTION_DEV["thucnews"])
    probes = set(pretrain.thucnews_probe_indices(y))
    for n, seed in ((400, 0), (400, 3), (None, 1), (10, 0), (10, 5)):
        got = pretrain.prompt_selection_indices("thucnews", len(y), n, seed)
        assert set(got) <= set(pool) and not set(got) & probes and list(got) == sorted(got)
        assert len(got) == (400 if n is None else n)
    assert np.array_equal(pretrain.prompt_selection_indices("thucnews", len(y), 400, 7), pool)
    assert np.array_equal(pretrain.prompt_selection_indices("inews", 500, 30, 2), fixed_subset(500, 30, 2))


def test_recipe_with_tokens_threads_and_caller_threads_kept(tmp_path):
    from dataclasses import replace
    recipe = _recipe(replace(micro_config(), threads=2), [{"label": "main", "tokens": 10 ** 6}])
    small = pretrain.recipe_with_tokens(recipe, 8 * 24 * 2, threads=1)
    assert small["config"]["threads"] == 1 and recipe["config"]["threads"] == 2
    before = torch.get_num_threads()
    pretrain.pretrained_from_recipe(pretrain.recipe_with_tokens(recipe, 8 * 24 * 2), tmp_path / "t",
                                    synthetic_documents(), eval_sets_fn=small_evals)
    assert torch.get_num_threads() == before
