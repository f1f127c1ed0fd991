"""Tests of the GPT row of kexue.ptuning (https://kexue.fm/archives/8295): P-tuning a frozen causal
LM, checked on a tiny random Gemma-3 (kexue.models.gemma.tiny_causal_lm) against slow references:
the full model run token by token on unpadded inputs."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kexue import ptuning as P
from kexue import zeroshot
from kexue.bert.batching import pad_right
from kexue.data import MissingDataError
from kexue.models import gemma

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["这本书很好看，推荐", "质量太差了，不满意", "物流很快", "不喜欢这个颜色", "还行吧", "非常满意的一次购物"]
LABELS = [1, 0, 1, 0, 1, 1]
DATA = list(zip(TEXTS, LABELS))


@pytest.fixture(scope="module")
def tiny(char_tokenizer):
    tok = char_tokenizer("".join(TEXTS) + "很不满意好喜欢感觉总之")
    lm = gemma.tiny_causal_lm(len(tok), seed=0).double()
    return lm, tok


def reference_logits(lm, seq, label_ids):
    """Slow reference: the whole causal LM on one unpadded token sequence, next-token logits."""
    with torch.no_grad():
        return lm(input_ids=torch.as_tensor([seq])).logits[0, -1, label_ids]


def test_tiny_lm_is_frozen_gemma(tiny):
    lm, tok = tiny
    assert type(lm).__name__ == "Gemma3ForCausalLM" and not lm.training
    assert not any(p.requires_grad for p in lm.parameters())
    assert lm.config.vocab_size == len(tok)


def test_single_token_ids(tiny):
    _, tok = tiny
    assert P.single_token_ids(tok, ["不", "很"]) == [tok.convert_tokens_to_ids("不"), tok.convert_tokens_to_ids("很")]
    with pytest.raises(ValueError, match="one token"):
        P.single_token_ids(tok, ["很好"])


def test_encode_causal_layout(tiny):
    _, tok = tiny
    start = tok.cls_token_id  # the book's tokenizer has no BOS: the [CLS] id starts the sequence
    t = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    ids, slots = P.encode_causal(tok, ["物流很快"], n_left=2, n_right=3, before="总之", after="感觉", max_length=64)
    assert ids[0] == [start, start, start] + t("总之") + t("物流很快") + t("感觉") + [start] * 3
    assert slots[0] == [0, 1, 2] + [0] * (2 + 4 + 2) + [3, 4, 5]
    # truncation keeps the template and cuts the text: 1 + 2 + 3 + 2 + 2 fixed tokens, max_length 12
    ids, slots = P.encode_causal(tok, ["非常满意的一次购物"], n_left=2, n_right=3, before="总之", after="感觉", max_length=12)
    assert len(ids[0]) == 12 and ids[0][3:5] == t("总之") and ids[0][5:7] == t("非常") and slots[0][-3:] == [3, 4, 5]
    with pytest.raises(ValueError, match="no room"):
        P.encode_causal(tok, ["物流"], n_left=4, n_right=4, max_length=9)


@pytest.mark.parametrize("left,right", [(0, 0), (3, 0), (0, 3), (2, 2)])
def test_label_logits_match_the_full_model_with_prompts_as_real_tokens(tiny, left, right):
    """Prompts set to the input embeddings of real tokens t_k: the batched, right-padded logits at
    the last real position equal the full model run on the sequence with t_k at the slots."""
    lm, tok = tiny
    label_ids = P.single_token_ids(tok, P.LABEL_WORDS)
    ids, slots = P.encode_causal(tok, TEXTS, n_left=left, n_right=right, max_length=64)
    chosen = [tok.convert_tokens_to_ids(c) for c in "好喜欢感"][: left + right]
    prompts = lm.get_input_embeddings()(torch.as_tensor(chosen, dtype=torch.long)) if chosen else None
    got = np.empty((len(TEXTS), 2))
    for idx, inp, att, slot in P._slot_batches(ids, slots, range(len(TEXTS)), 4):   # padded batches
        got[idx] = P.causal_label_logits(lm, inp, att, slot, label_ids, prompts).detach().numpy()
    for i, (seq, code) in enumerate(zip(ids, slots)):
        real = [chosen[c - 1] if c else s for s, c in zip(seq, code)]
        np.testing.assert_allclose(got[i], reference_logits(lm, real, label_ids).numpy(), rtol=1e-9, atol=1e-10)
    scores = P.causal_label_scores(lm, ids, slots, label_ids, prompts, batch_size=3)
    np.testing.assert_allclose(scores, torch.log_softmax(torch.as_tensor(got), -1).numpy(), atol=1e-10)


def test_final_logit_softcapping_is_applied(tiny):
    lm, tok = tiny
    lm = copy.deepcopy(lm)
    lm.config.final_logit_softcapping = 0.05   # tiny cap, so that it changes the logits visibly
    label_ids = P.single_token_ids(tok, P.LABEL_WORDS)
    ids, slots = P.encode_causal(tok, TEXTS[:1], max_length=64)
    inp, att, slot = torch.as_tensor(ids), torch.ones(1, len(ids[0]), dtype=torch.long), torch.as_tensor(slots)
    got = P.causal_label_logits(lm, inp, att, slot, label_ids)
    np.testing.assert_allclose(got[0].numpy(), reference_logits(lm, ids[0], label_ids).numpy(), atol=1e-12)
    assert got.abs().max() <= 0.05


def test_gradient_reaches_only_the_prompts(tiny):
    lm, tok = tiny
    label_ids = P.single_token_ids(tok, P.LABEL_WORDS)
    ids, slots = P.encode_causal(tok, TEXTS, n_left=2, n_right=2, max_length=64)
    prompts = torch.nn.Parameter(torch.randn(4, lm.config.hidden_size, dtype=torch.float64) * 0.1)
    inp, att = pad_right(ids, range(len(ids)))
    slot, _ = pad_right(slots, range(len(ids)))
    F.cross_entropy(P.causal_label_logits(lm, inp, att, slot, label_ids, prompts), torch.as_tensor(LABELS)).backward()
    assert (prompts.grad.abs().sum(1) > 0).all()
    assert all(p.grad is None for p in lm.parameters())


def test_zero_shot_matches_scores(tiny):
    lm, tok = tiny
    raw, cal = P.causal_zero_shot(lm, tok, DATA, "总之", "感觉", max_length=64)
    ids, slots = P.encode_causal(tok, TEXTS, before="总之", after="感觉", max_length=64)
    s = np.array([torch.log_softmax(reference_logits(lm, seq, P.single_token_ids(tok, P.LABEL_WORDS)), -1).numpy()
                  for seq in ids])
    assert raw == zeroshot.accuracy(s, LABELS) and cal == zeroshot.accuracy(zeroshot.calibrate(s), LABELS)


def test_zero_shot_calibration_prior_from_a_reference_split(tiny):
    lm, tok = tiny
    ref = DATA[::-1][: max(2, len(DATA) // 2)]
    raw, cal = P.causal_zero_shot(lm, tok, DATA, "总之", "感觉", max_length=64, reference=ref)
    ids, slots = P.encode_causal(tok, TEXTS, before="总之", after="感觉", max_length=64)
    lab = P.single_token_ids(tok, P.LABEL_WORDS)
    s = np.array([torch.log_softmax(reference_logits(lm, seq, lab), -1).numpy() for seq in ids])
    r_ids, _ = P.encode_causal(tok, [t for t, _ in ref], before="总之", after="感觉", max_length=64)
    r = np.array([torch.log_softmax(reference_logits(lm, seq, lab), -1).numpy() for seq in r_ids])
    assert raw == zeroshot.accuracy(s, LABELS)
    assert cal == zeroshot.accuracy(s - r.mean(0, keepdims=True), LABELS)

def test_prompt_init_draws_embeddings_of_pool_tokens(tiny):
    lm, tok = tiny
    pool = [7, 8, 9, 9, 10]
    init = P.causal_prompt_init(lm, pool, 3, seed=1)
    emb = lm.get_input_embeddings()(torch.arange(len(tok)))
    rows = [int((emb - v).abs().sum(1).argmin()) for v in init]
    assert len(set(rows)) == 3 and set(rows) <= set(pool)
    assert torch.equal(init, P.causal_prompt_init(lm, pool, 3, seed=1))
    with pytest.raises(ValueError, match="distinct tokens"):
        P.causal_prompt_init(lm, pool, 5, seed=0)


def test_few_shot_run_trains_prompts_only_and_is_deterministic(tiny):
    lm, tok = tiny
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    kw = dict(n_left=2, n_right=2, lr=0.05, steps=6, batch_size=4, eval_every=2, max_length=32, seed=3)
    a = P.causal_few_shot_run(lm, tok, DATA, DATA, DATA, **kw)
    b = P.causal_few_shot_run(lm, tok, DATA, DATA, DATA, **kw)
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in before.items())
    assert a["trainable"] == 4 * lm.config.hidden_size and torch.equal(a["prompts"], b["prompts"])
    assert a["test_acc"] == b["test_acc"] and a["dev_acc"] == max(h[2] for h in a["history"])
    assert [h[0] for h in a["history"]] == [2, 4, 6]
    # the returned prompts are the early-stopped ones: scoring them again gives the reported accuracy
    assert P.causal_test_accuracy(lm, tok, DATA, a["prompts"], n_left=2, n_right=2, max_length=32) == a["test_acc"]
    start = P.causal_prompt_init(lm, [t for s in P.encode_causal(tok, TEXTS, n_left=2, n_right=2, max_length=32)[0]
                                      for t in s[1:]], 4, 3)
    assert not torch.equal(a["prompts"], start)


def test_few_shot_run_learns_a_separable_task(tiny):
    """On a task the prompts can solve (the label is which of two characters ends the text, next to the
    suffix prompts), training lifts dev accuracy above chance."""
    lm, tok = tiny
    data = [(t + e, int(e == "好")) for t in TEXTS for e in ("好", "差")]
    r = P.causal_few_shot_run(lm, tok, data, data, None, n_left=0, n_right=2, lr=0.1, steps=60, batch_size=12,
                              eval_every=20, max_length=32, seed=0)
    assert r["test_acc"] is None and r["dev_acc"] >= 0.75


def test_few_shot_run_refuses_an_unfrozen_lm(tiny):
    lm, tok = tiny
    m = copy.deepcopy(lm)
    next(m.parameters()).requires_grad_(True)
    with pytest.raises(ValueError, match="freeze"):
        P.causal_few_shot_run(m, tok, DATA, DATA, None, steps=1)


def test_gemma_load_says_how_to_install(monkeypatch):
    import kexue.models.gemma as G
    monkeypatch.setattr(G, "PACKAGES", {"kexue-no-such-package-xyz": "1.0"})
    with pytest.raises(MissingDataError, match="requirements-gemma.txt"):
        G.load()


def test_zero_shot_select_chooses_on_dev_and_calibrates_with_dev(tiny):
    lm, tok = tiny
    dev, test = DATA[:4], DATA[2:]
    out = P.causal_zero_shot_select(lm, tok, dev, test, ["感觉", "总之"], max_length=64)
    table = {t: P.causal_zero_shot(lm, tok, dev, "", t, max_length=64, reference=dev) for t in ["感觉", "总之"]}
    assert out["zero_shot_dev"] == {t: list(v) for t, v in table.items()}
    best = max(v[k] for v in table.values() for k in (0, 1))
    kind = ("raw", "calibrated").index(out["scoring"])
    assert table[out["template"]][kind] == best
    assert out["test"] == P.causal_zero_shot(lm, tok, test, "", out["template"], max_length=64, reference=dev)[kind]


def test_placement_runs_one_row_per_subset_and_placement(tiny):
    lm, tok = tiny
    kw = dict(lr=0.05, steps=2, batch_size=4, eval_every=2, max_length=32)
    places = {"4+4": (1, 1), "prefix": (2, 0), "suffix": (0, 2)}
    rows = P.causal_placement_runs(lm, tok, {3: DATA, 4: DATA[::-1]}, DATA, DATA, places, fraction=0.5, **kw)
    assert [(r["seed"], r["method"]) for r in rows] == [(s, m) for s in (3, 4) for m in places]
    one = P.causal_few_shot_run(lm, tok, DATA[::-1], DATA, DATA, n_left=0, n_right=2, seed=4, **kw)
    assert rows[-1]["test_acc"] == one["test_acc"] and rows[-1]["trainable"] == 2 * lm.config.hidden_size


def test_few_shot_run_patience_stops_where_fit_would(tiny):
    lm, tok = tiny
    kw = dict(n_left=2, n_right=2, lr=0.05, steps=10, batch_size=4, eval_every=1, max_length=32, seed=3)
    full = P.causal_few_shot_run(lm, tok, DATA, DATA, None, **kw)
    short = P.causal_few_shot_run(lm, tok, DATA, DATA, None, patience=1, **kw)
    dev = [h[2] for h in full["history"]]
    stop = next((i + 1 for i in range(1, len(dev)) if dev[i] <= max(dev[:i])), len(dev))
    assert full["steps_run"] == 10 and short["steps_run"] == stop
    assert short["history"] == full["history"][:stop]
    rows = P.causal_placement_runs(lm, tok, {3: DATA}, DATA, DATA, {"suffix": (0, 2)}, fraction=1.0,
                                   lr=0.05, steps=10, batch_size=4, eval_every=1, max_length=32, patience=1)
    assert rows[0]["steps_run"] <= 10 and "steps_run" in rows[0]
