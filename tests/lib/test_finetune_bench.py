"""Tests of kexue.finetune_bench on tiny inputs: entity F1 against a from-scratch span reader,
windows, character ids, the char-window control, the taggers' batched loss against per-sequence
loops, best-dev restore, the lr choice, the paired interval, and the generated card section."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as st

from kexue import finetune_bench as fb
from kexue.models import bert_zh

pytestmark = pytest.mark.usefixtures("one_thread")

TYPES = ("PER", "LOC", "ORG")


def reference_chunks(tags):
    """seqeval's default (IOB2, non-strict) chunks, written from its rules: a chunk starts at B-X,
    or at I-X after O / after a chunk of another type; it ends before O, B-*, or I-Y of another type."""
    chunks, cur = [], None
    for i, t in enumerate(tags):
        kind, typ = (t[0], t[2:]) if t != "O" else ("O", None)
        if cur is not None and (kind in ("O", "B") or typ != cur[0]):
            chunks.append((cur[0], cur[1], i))
            cur = None
        if kind == "B" or (kind == "I" and cur is None):
            cur = (typ, i)
    if cur is not None:
        chunks.append((cur[0], cur[1], len(tags)))
    return chunks


def random_tags(rng, n):
    pool = ["O"] * 4 + [f"{p}-{t}" for t in TYPES for p in "BI"]
    return [pool[k] for k in rng.integers(0, len(pool), n)]


def test_entity_f1_equals_a_from_scratch_span_count():
    rng = np.random.default_rng(0)
    gold = [random_tags(rng, int(rng.integers(1, 15))) for _ in range(200)]
    pred = [[t if rng.random() < 0.7 else random_tags(rng, 1)[0] for t in g] for g in gold]
    G = {(k, *c) for k, g in enumerate(gold) for c in reference_chunks(g)}
    P = {(k, *c) for k, p in enumerate(pred) for c in reference_chunks(p)}
    ok = len(G & P)
    got = fb.entity_f1(gold, pred)
    assert (got["n_gold"], got["n_pred"], got["n_correct"]) == (len(G), len(P), ok)
    p, r = ok / len(P), ok / len(G)
    assert math.isclose(got["f1"], 2 * p * r / (p + r))


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-LOC", "O"]]
    got = fb.entity_f1(gold, pred)
    assert (got["n_gold"], got["n_pred"], got["n_correct"]) == (2, 3, 1)
    assert math.isclose(got["f1"], 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert fb.entity_f1([["O"]], [["O"]])["f1"] == 0.0
    with pytest.raises(ValueError):
        fb.entity_f1([["O", "O"]], [["O"]])


def test_chunk_bounds_cover_and_cut_after_the_last_punctuation():
    rng = np.random.default_rng(1)
    alphabet = list("甲乙丙丁戊己庚辛") + ["，", "。"]
    for _ in range(300):
        chars = [alphabet[k] for k in rng.integers(0, len(alphabet), int(rng.integers(1, 60)))]
        m = int(rng.integers(1, 12))
        b = fb.chunk_bounds(chars, m)
        assert b[0][0] == 0 and b[-1][1] == len(chars)
        assert all(e1 == s2 for (_, e1), (s2, _) in zip(b, b[1:]))
        for s, e in b:
            assert 0 < e - s <= m
            if e < len(chars):
                window = chars[s:s + m]
                punct = [i for i, c in enumerate(window) if c in fb.PUNCT]
                assert e - s == (punct[-1] + 1 if punct else m)


def test_char_ids_align_one_to_one_with_the_tokenizer(char_tokenizer):
    tok = char_tokenizer("北京举行新年音乐会")
    text = "北京举行音乐会"
    assert fb.char_ids(tok, list(text)) == tok(text)["input_ids"][1:-1]
    assert fb.char_ids(tok, list("北X")) == [tok.convert_tokens_to_ids("北"), tok.unk_token_id]


def test_window_features_by_hand():
    assert fb.window_features(list("ab"), 1) == [["-1:<s>", "0:a", "1:b"], ["-1:a", "0:b", "1:</s>"]]


def test_charbag_tagger_learns_a_character_rule():
    rng = np.random.default_rng(2)
    names, other = list("张王李"), list("的了是在有和")

    def sent():
        chars, tags = [], []
        for _ in range(int(rng.integers(3, 9))):
            if rng.random() < 0.3:
                chars += [names[int(rng.integers(0, 3))], "某"]
                tags += ["B-PER", "I-PER"]
            else:
                chars.append(other[int(rng.integers(0, len(other)))])
                tags.append("O")
        return chars, tags
    rows = [sent() for _ in range(120)]
    got = fb.charbag_tagger(rows[:80], rows[80:100], rows[100:], c_grid=[1.0, 10.0])
    assert got["test"] == 1.0 and got["C"] in (1.0, 10.0)


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    tok = char_tokenizer("好坏的书很差不错一般东西北京")
    cfg = bert_zh.config(len(tok), num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)
    return cfg, tok


def test_tagger_batched_loss_and_predictions_equal_per_sequence_loops(tiny):
    cfg, tok = tiny
    model = bert_zh.build_model(cfg, 0).double()
    tagger = fb.TokenTagger(model, 5, dropout=0.0, seed=3).double().eval()
    rng = np.random.default_rng(3)
    seqs = [rng.integers(5, len(tok), int(rng.integers(1, 9))).tolist() for _ in range(6)]
    labels = [rng.integers(0, 5, len(s)).tolist() for s in seqs]
    cls, sep = tok.cls_token_id, tok.sep_token_id
    inp, att, lab = fb.tagger_batch(seqs, labels, list(range(6)), cls, sep)
    logits = tagger(inp, att)
    batched = F.cross_entropy(logits.reshape(-1, 5), lab.reshape(-1), ignore_index=-100)
    total, n, preds = 0.0, 0, []
    for s, y in zip(seqs, labels):
        x = torch.tensor([[cls, *s, sep]])
        out = tagger(x, torch.ones_like(x))[0, 1:-1]
        total += F.cross_entropy(out, torch.tensor(y), reduction="sum").item()
        n += len(s)
        preds.append(out.argmax(-1).tolist())
    assert math.isclose(batched.item(), total / n, rel_tol=1e-10)
    assert fb.tagger_predict(tagger, seqs, cls, sep, batch_size=4) == preds


CFG = dict(fb.DEFAULT_CONFIG, batch_size=4, eval_every=3, patience=2, dropout=0.1, lr_grid=[1e-3, 1e-2],
           seeds=[0, 1])


def toy_classification(tok):
    pos, neg = ["好书", "很好", "不错", "好东西"], ["坏书", "很差", "差东西", "坏的"]
    rows = [(t, 1) for t in pos] + [(t, 0) for t in neg]
    data = {s: rows for s in ("train", "dev", "test")}
    return {"rows": data, "n_classes": 2,
            "ids": {s: fb.encode_texts(tok, [t for t, _ in r], 16) for s, r in data.items()},
            "labels": {s: [y for _, y in r] for s, r in data.items()}}


def test_finetune_classifier_restores_the_best_dev_weights(tiny):
    cfg, tok = tiny
    data = toy_classification(tok)
    clf, info = fb.finetune_classifier(bert_zh.build_model(cfg, 0), data["ids"], data["labels"], 2,
                                       lr=1e-2, seed=0, steps=30, cfg=CFG)
    assert info["best_dev"] == max(d for _, _, d in info["history"])
    assert fb.classifier_accuracy(clf, data["ids"]["dev"], data["labels"]["dev"]) == info["best_dev"]


def test_finetune_tagger_restores_the_best_dev_weights(tiny):
    cfg, tok = tiny
    rows = [(list("北京好"), ["B-LOC", "I-LOC", "O"]), (list("很好的书"), ["O"] * 4),
            (list("东北"), ["B-LOC", "I-LOC"]), (list("书北京"), ["O", "B-LOC", "I-LOC"])]
    data = fb.tagging_inputs({"train": rows, "dev": rows, "test": rows}, tok, max_chars=3)
    assert data["tag_names"] == ["O", "B-LOC", "I-LOC"]
    gold = [t for _, t in rows]

    def dev_score(pred):
        return fb.entity_f1(gold, fb.sentence_tags(pred, data["where"]["dev"], rows, data["tag_names"]))["f1"]
    tagger, info = fb.finetune_tagger(bert_zh.build_model(cfg, 0), data["seqs"], data["tags"], data["tag_names"],
                                      lr=1e-2, seed=0, steps=30, cfg=CFG, cls_id=tok.cls_token_id,
                                      sep_id=tok.sep_token_id, dev_score=dev_score)
    again = dev_score(fb.tagger_predict(tagger, data["seqs"]["dev"], tok.cls_token_id, tok.sep_token_id))
    assert again == info["best_dev"] == max(d for _, _, d in info["history"])


def test_sentence_tags_stitch_windows_back():
    rows = [(list("abcde"), ["O"] * 5)]
    where = [(0, 0, 2), (0, 2, 5)]
    assert fb.sentence_tags([[1, 2], [0, 0, 1]], where, rows, ["O", "B-X", "I-X"]) == \
        [["B-X", "I-X", "O", "O", "B-X"]]


def test_run_bert_task_chooses_the_lr_on_dev_and_reuses_that_run(tiny):
    cfg, tok = tiny
    data = toy_classification(tok)
    out = fb.run_bert_task("toy", data, {"kind": "classification", "steps": 12}, CFG,
                           lambda s: bert_zh.build_model(cfg, s), tok, log=lambda *a: None)
    devs = [r["dev"] for r in out["lr_selection"]]
    assert out["lr"] == CFG["lr_grid"][int(np.argmax(devs))]
    assert [r["seed"] for r in out["runs"]] == CFG["seeds"]
    assert all(r["lr"] == out["lr"] for r in out["runs"])
    assert out["runs"][0]["dev"] == max(devs)


def test_summarise_paired_t_interval_by_formula():
    a, b = [0.8, 0.82, 0.79, 0.85, 0.81], [0.7, 0.75, 0.74, 0.72, 0.7]
    arm = lambda v: {"runs": [{"seed": s, "test": x} for s, x in enumerate(v)]}
    s = fb.summarise(arm(a), arm(b), 0.76, 0.5)
    d = np.subtract(a, b)
    half = st.t.ppf(0.95, 4) * d.std(ddof=1) / math.sqrt(5)
    assert np.allclose(s["diff_random"], [d.mean(), d.mean() - half, d.mean() + half])
    c = np.subtract(a, 0.76)
    half = st.t.ppf(0.95, 4) * c.std(ddof=1) / math.sqrt(5)
    assert np.allclose(s["diff_charbag"], [c.mean(), c.mean() - half, c.mean() + half])
    with pytest.raises(ValueError):
        fb.summarise(arm(a), {"runs": arm(b)["runs"][::-1]}, 0.76, 0.5)


def fake_bench():
    arm = lambda lr, v: {"lr": lr, "lr_selection": [{"lr": lr, "dev": 0.5, "best_step": 10, "steps_run": 20}],
                         "runs": [{"seed": s, "test": x, "best_step": 10, "steps_run": 20} for s, x in enumerate(v)]}
    a, b = [0.812, 0.823, 0.801], [0.701, 0.695, 0.712]
    cfg = json.loads(json.dumps(fb.DEFAULT_CONFIG))
    cfg["seeds"] = [0, 1, 2]
    task = {"sizes": {"train": 10, "dev": 5, "test": 7}, "shipped": arm(3e-4, a), "random_init": arm(1e-3, b),
            "summary": fb.summarise(arm(0, a), arm(0, b), 0.9, 0.1)}
    return {"config": cfg, "fit_patience": True, "wall_seconds": 60.0, "tasks": {"thucnews": task},
            "environment": {"date": "2026-12-03", "cpu": "cpu", "torch_threads": 2, "torch": "x"}}


def test_card_section_reads_every_number_from_the_json_and_the_record(tmp_path):
    bench = fake_bench()
    text = fb.card_section(bench, fb.stsb_row(tmp_path / "absent.json"))
    for x in ("0.812", "0.823", "0.801", "0.701", "0.695", "0.712", "0.900", "0.0003", "0.001"):
        assert x in text
    d = bench["tasks"]["thucnews"]["summary"]["diff_random"]
    assert f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]" in text
    assert "not run yet" in text
    assert "Convergence: every run stopped improving on dev before its step cap." in text
    late = fake_bench()
    cap = late["config"]["tasks"]["thucnews"]["steps"]
    late["tasks"]["thucnews"]["shipped"]["runs"][1].update(best_step=cap, steps_run=cap)
    assert "at the step cap" in fb.card_section(late, None) and "thucnews shipped 1 of 3" in fb.card_section(late, None)
    assert "did not finish: no numbers yet for reviews, ner" in text   # fake_bench ran one of three tasks
    assert "on THUCNews the shipped weights beat random init and lose to the char-bag model" in text
    rec = {"scale": "full", "started": "2026-12-03", "metrics": {
        "cosent_per_seed": {"bert-zh": {"test": [0.61, 0.63]}, "bert-zh-random": {"test": [0.65, 0.66]}},
        "sts": {"char-overlap": {"STS-B raw test": 0.586}}}}
    (tmp_path / "rec.json").write_text(json.dumps(rec))
    row = fb.stsb_row(tmp_path / "rec.json")
    assert row["shipped_mean"] == pytest.approx(0.62) and row["char_overlap"] == 0.586
    text = fb.card_section(bench, row)
    assert "0.620 (0.610, 0.630)" in text and "0.655 (0.650, 0.660)" in text and "0.586" in text
    assert "not run yet" not in text


def test_write_card_replaces_only_its_section(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# card\n\nbefore\n")
    fb.write_card(card, fake_bench(), None)
    once = card.read_text()
    assert once.startswith("# card\n\nbefore\n") and fb.CARD_START in once
    card.write_text(once + "\nafter\n")
    fb.write_card(card, fake_bench(), None)
    assert card.read_text() == once + "\nafter\n"


def fake_pilot(best):
    cfg = json.loads(json.dumps(fb.DEFAULT_CONFIG))
    cfg["tasks"] = {n: {"steps": 200} for n in best}
    tasks = {n: {arm: {"runs": [{"seed": 99, "lr": 3e-4, "best_step": b, "steps_run": 200, "dev": 0.5,
                                  "seconds": 10.0}]} for arm, b in zip(("shipped", "random_init"), bs)}
             for n, bs in best.items()}
    return cfg, {"config": cfg, "tasks": tasks, "wall_seconds": 60.0}


def test_size_from_pilot_grows_late_caps_within_budget_and_shrinks_early_ones_when_over():
    cfg, pilot = fake_pilot({"a": (200, 50), "b": (50, 75), "c": (125, 125)})
    n_runs = 2 * (3 + 5 - 1)      # 10 s per run: 140 s per task
    got, notes = fb.size_from_pilot(cfg, pilot, budget_s=10_000)
    assert [got["tasks"][n]["steps"] for n in "abc"] == [300, 200, 200]
    got, notes = fb.size_from_pilot(cfg, pilot, budget_s=3 * 10 * n_runs - 1)
    assert [got["tasks"][n]["steps"] for n in "abc"] == [200, 150, 200]
    assert any("cap kept" in x for x in notes)
    text = fb.card_section({**fake_bench(), "sizing": {"pilot": fb.pilot_summary(pilot), "decisions": notes}}, None)
    assert "pilot on seed 99" in text and "a shipped 200/200, random init 50/200 (cap 200)" in text
