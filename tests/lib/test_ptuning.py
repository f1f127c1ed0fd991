"""Tests of kexue.ptuning: the gradient-mask trick (eq. 1 of https://kexue.fm/archives/8295), prompt
tokens on a frozen BERT, the LSTM prompt encoder, the cloze loss against slow references, training."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue import ptuning as P
from kexue import zeroshot
from kexue.bert import heads, objective
from kexue.bert.batching import pad_right
from kexue.models import bert_zh

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["这本书很好看，推荐", "质量太差了，不满意", "物流很快", "不喜欢这个颜色", "还行吧", "非常满意的一次购物"]
LABELS = [1, 0, 1, 0, 1, 1]
N_PROMPT = 8


@pytest.fixture(scope="module")
def micro(char_tokenizer):
    tok = char_tokenizer("".join(TEXTS) + "很不满意好喜欢感觉")
    cfg = bert_zh.config(len(tok), num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64)
    model = bert_zh.build_model(cfg, 0).double().eval()
    return model, tok


def test_masked_rows_value_identical_and_gradient_masked():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    m = torch.zeros(7, 1, dtype=torch.float64)
    m[[2, 5]] = 1.0
    out = P.masked_rows(w, m)
    assert torch.equal(out, w)                               # forward bit for bit, -0.0 included
    up = torch.randn(7, 5, generator=g, dtype=torch.float64)
    out.backward(up)
    assert torch.equal(w.grad, up * m)                      # ∂L/∂W = M ⊙ upstream
    assert (w.grad[[0, 1, 3, 4, 6]] == 0).all()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
       st.lists(st.booleans(), min_size=4, max_size=4))
def test_masked_rows_bit_identical_property(vals, mask):
    w = torch.tensor(vals, dtype=torch.float32).reshape(4, 1)
    m = torch.tensor(mask, dtype=torch.float32).reshape(4, 1)
    assert torch.equal(P.masked_rows(w, m).view(torch.int32), w.view(torch.int32))


def test_prompt_tokens_added_to_a_copy(micro):
    _, tok = micro
    v = len(tok)
    ptok = P.add_prompt_tokens(tok, N_PROMPT)
    assert len(tok) == v and len(ptok) == v + N_PROMPT
    ids = ptok(P.prompt_template().replace("{mask}", "[MASK]") + "好看", add_special_tokens=False)["input_ids"]
    assert ids == list(range(v, v + 4)) + [tok.mask_token_id] + list(range(v + 4, v + 8)) + \
        tok("好看", add_special_tokens=False)["input_ids"]


def _prompted(micro, **kw):
    model, tok = micro
    m = copy.deepcopy(model)
    pe = P.attach_prompts(m, tok, N_PROMPT, seed=1, **kw)
    return m, P.add_prompt_tokens(tok, N_PROMPT), pe


def test_prompt_embedding_forward_identical_to_plain_lookup(micro):
    model, tok = micro
    m, ptok, pe = _prompted(micro)
    v = len(tok)
    ids = torch.arange(v + N_PROMPT).reshape(1, -1)
    assert torch.equal(pe(ids), F.embedding(ids, pe.weight))
    assert torch.equal(pe(ids[:, :v]), model.bert.embeddings.word_embeddings(ids[:, :v]))
    # a text-only input gives the same MLM logits bit for bit before and after attaching the prompts
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(m(**enc).prediction_logits, model(**enc).prediction_logits)
    assert m.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight or \
        torch.equal(m.cls.predictions.decoder.weight, model.bert.embeddings.word_embeddings.weight)


def _loss(m, ptok, tok, template, texts=TEXTS, labels=LABELS, aux=False, seed=0):
    ids, pos, text_from = P.encode_cloze(ptok, texts, template, 40)
    label_ids = [tok.convert_tokens_to_ids(w) for w in P.LABEL_WORDS]
    return P.cloze_loss(m, *pad_right(ids, range(len(texts))), pos, np.array(labels), label_ids,
                        aux_mlm_from=text_from if aux else None, vocab=objective.vocab_of(ptok),
                        rng=np.random.default_rng(seed))


@pytest.mark.parametrize("aux", [False, True])
def test_gradient_zero_outside_prompt_rows_and_count(micro, aux):
    _, tok = micro
    m, ptok, pe = _prompted(micro)
    _loss(m, ptok, tok, P.prompt_template(), aux=aux).backward()
    v, d = len(tok), pe.embedding_dim
    g = pe.weight.grad
    assert (g[:v] == 0).all()                                # exactly zero outside the prompt rows
    assert (g[v:].abs().sum(1) > 0).all()                    # every prompt row learns
    assert int((g != 0).sum()) == N_PROMPT * d == pe.trainable_count()
    others = [n for n, p in m.named_parameters() if p.grad is not None and p is not pe.weight]
    assert others == []
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == (v + N_PROMPT) * d  # one table


def test_frozen_weights_unchanged_after_training_steps(micro):
    model, tok = micro
    source = {k: t.clone() for k, t in model.state_dict().items()}
    m, ptok, pe = _prompted(micro)
    before = {k: t.clone() for k, t in m.state_dict().items()}
    ids, pos, _ = P.encode_cloze(ptok, TEXTS, P.prompt_template(), 40)
    label_ids = [tok.convert_tokens_to_ids(w) for w in P.LABEL_WORDS]
    y = np.array(LABELS)
    loss_on = lambda idx, rng: P.cloze_loss(m, *pad_right(ids, idx), pos, y[idx], label_ids)
    P.fit(list(m.parameters()), loss_on, len(TEXTS), steps=5, batch_size=4, lr=0.1,
          evaluate=lambda: 0.0, eval_every=100)  # one evaluation (the last step): its params stay
    assert not m.training                                    # eval mode: dropout off
    after = m.state_dict()
    v = len(tok)
    for k, t in before.items():
        if k == "bert.embeddings.word_embeddings.weight":
            assert torch.equal(after[k][:v], t[:v])
            assert not torch.equal(after[k][v:], t[v:])      # the prompt rows did move
        else:
            assert torch.equal(after[k], t), k
    assert all(torch.equal(t, source[k]) for k, t in model.state_dict().items())  # source untouched


def test_lstm_encoder_supplies_the_prompt_rows(micro):
    _, tok = micro
    m, ptok, pe = _prompted(micro, lstm=True)
    v = len(tok)
    table = pe.table()
    assert torch.equal(table[v:], pe.encoder())
    assert torch.equal(table[:v], pe.weight[:v])
    _loss(m, ptok, tok, P.prompt_template()).backward()
    assert pe.weight.grad is None                            # the table itself is frozen
    n_enc = sum(p.numel() for p in pe.encoder.parameters())
    assert pe.trainable_count() == n_enc
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pe.encoder.parameters())


def test_cloze_loss_matches_pet_scores_and_slow_reference(micro):
    model, tok = micro
    template = "{mask}满意。"
    scores = zeroshot.pet_label_scores(model, tok, TEXTS, list(P.LABEL_WORDS), template=template, max_length=40)
    label_ids = [tok.convert_tokens_to_ids(w) for w in P.LABEL_WORDS]
    slow = []
    for t in TEXTS:
        enc = tok("[MASK]满意。" + t, return_tensors="pt")
        with torch.no_grad():
            slow.append(model(**enc).prediction_logits[0, 1, label_ids])
    slow = torch.stack(slow)
    # log-softmax over the vocabulary and the 2-way logits differ by one per-row constant
    np.testing.assert_allclose(scores[:, 1] - scores[:, 0], (slow[:, 1] - slow[:, 0]).numpy(), atol=1e-10)
    with torch.no_grad():
        loss = _loss(model, tok, tok, template)
    ref = F.cross_entropy(slow, torch.as_tensor(LABELS))
    assert abs(loss.item() - ref.item()) < 1e-10


def test_corrupt_text_only_touches_the_text(micro):
    _, tok = micro
    ptok = P.add_prompt_tokens(tok, N_PROMPT)
    ids, pos, text_from = P.encode_cloze(ptok, TEXTS * 20, P.prompt_template(), 40)
    assert pos == 5 and text_from == 10
    inp, att = pad_right(ids, range(len(ids)))
    vocab = objective.vocab_of(ptok)
    assert vocab.n_special == 5 + N_PROMPT and vocab.ordinary_ids.tolist() == list(range(5, len(tok)))
    out, lab = P.corrupt_text(inp, text_from, vocab, np.random.default_rng(0))
    sel = lab != objective.IGNORE
    n_special = len(bert_zh.SPECIAL_TOKENS)
    assert torch.equal(out[:, :text_from], inp[:, :text_from])
    assert not sel[:, :text_from].any() and not sel[inp < n_special].any()
    assert torch.equal(lab[sel], inp[sel])
    assert ((out[sel] >= n_special) & (out[sel] < len(tok)) | (out[sel] == tok.mask_token_id)).all()
    frac = sel.sum().item() / ((inp >= n_special).sum().item() - len(ids) * (text_from - 1))
    assert 0.08 < frac < 0.22
    assert (out[sel] == tok.mask_token_id).float().mean() > 0.6


def test_classifier_logits_match_slow_loop(micro):
    model, tok = micro
    clf = heads.ClsHeadClassifier(copy.deepcopy(model), seed=0).double()
    ids = tok(TEXTS)["input_ids"]
    fast = heads.classifier_logits(clf, ids, batch_size=4)
    clf.eval()
    with torch.no_grad():
        slow = np.stack([clf(torch.tensor([x]), torch.ones(1, len(x), dtype=torch.long))[0].numpy() for x in ids])
    np.testing.assert_allclose(fast, slow, atol=1e-10)


def test_fit_restores_the_best_evaluation():
    w = torch.nn.Parameter(torch.zeros(1))
    seen = []

    def evaluate():
        seen.append(w.item())
        return [0.1, 0.9, 0.2][len(seen) - 1]

    out = P.fit([w], lambda idx, rng: (w - 10.0).pow(2).sum(), 4, steps=3, batch_size=2, lr=0.5,
                evaluate=evaluate, eval_every=1)
    assert out["best_step"] == 2 and out["best_dev"] == 0.9
    assert w.item() == seen[1]


def test_few_shot_run_end_to_end(micro):
    model, tok = micro
    data = list(zip(TEXTS, LABELS))
    before = {k: t.clone() for k, t in model.state_dict().items()}
    for kw in (dict(head="cls", lr=1e-3), dict(n_prompt=8, template=P.prompt_template(), aux_mlm=True),
               dict(n_prompt=8, template=P.prompt_template(), lstm=True, lr=1e-3),
               dict(template="{mask}满意。", train_model=True, lr=1e-3)):
        r = P.few_shot_run(model, tok, data, data, data, steps=3, batch_size=4, eval_every=2, max_length=40, **kw)
        assert 0.0 <= r["test_acc"] <= 1.0 and r["best_step"] in (2, 3) and r["trainable"] > 0
    assert all(torch.equal(t, before[k]) for k, t in model.state_dict().items())


def test_few_shot_subset_and_char_bag():
    data = [(f"{'好' if i % 2 else '差'}{i}", i % 2) for i in range(200)]
    a, b = P.few_shot_subset(data, 0.05, 3), P.few_shot_subset(data, 0.05, 3)
    assert a == b and len(a) == 10 and len(set(a)) == 10
    assert P.few_shot_subset(data, 0.05, 4) != a
    assert P.char_bag_accuracy(data[:100], data[100:]) > 0.95


def test_few_shot_grid_reuses_rows_and_summarises(micro):
    model, tok = micro
    data = list(zip(TEXTS * 5, LABELS * 5))
    methods = {"pt": dict(n_prompt=4, template=P.prompt_template(2, 2)), "cls": dict(head="cls", lr=1e-3)}
    common = dict(steps=2, batch_size=4, eval_every=2, max_length=40)
    rows = P.few_shot_grid({"pretrained": model}, tok, data, data[:6], data[:6], methods, fractions=[0.2],
                           seeds=[0, 1], common=common, echo=False)
    assert [(r["method"], r["seed"]) for r in rows] == [("pt", 0), ("cls", 0), ("pt", 1), ("cls", 1)]
    assert all(r["n_labels"] == 6 for r in rows)
    again = P.few_shot_grid({"pretrained": None}, tok, data, data, data, methods, fractions=[0.2], seeds=[0, 1],
                            common=common, done=rows, echo=False)   # all reused: the model is never touched
    assert again == rows
    s = P.summarise(rows)
    vals = [r["test_acc"] for r in rows if r["method"] == "pt"]
    assert s[("pt", 0.2)] == (pytest.approx(np.mean(vals)), pytest.approx(np.std(vals, ddof=1)), 2)
    shuffled = [rows[3], rows[0], rows[2], rows[1]]
    assert P.per_seed(shuffled, "pt", 0.2).tolist() == vals           # seed order, whatever the row order


def test_mask_trick_checks_all_pass_on_micro_model(micro):
    model, tok = micro
    c = P.mask_trick_checks(model, tok, list(zip(TEXTS, LABELS)), n_prompt=N_PROMPT, max_length=40)
    v = len(tok)
    assert c["prompt_ids"] == (v, v + N_PROMPT - 1)
    for k in ("forward_identical", "grad_zero_outside_prompts", "grad_on_every_prompt_row",
              "frozen_weights_unchanged", "prompt_rows_moved", "eval_mode"):
        assert c[k] is True, k
    assert c["nonzero_grad_entries"] == c["trainable"] == c["n_prompt_times_d"] == N_PROMPT * 32


def test_zero_shot_accuracy_matches_pet_scores(micro):
    model, tok = micro
    data = list(zip(TEXTS, LABELS))
    raw, cal = P.zero_shot_accuracy(model, tok, data, "{mask}满意。", 40)
    s = zeroshot.pet_label_scores(model, tok, TEXTS, list(P.LABEL_WORDS), template="{mask}满意。", max_length=40)
    assert raw == zeroshot.accuracy(s, LABELS) and cal == zeroshot.accuracy(zeroshot.calibrate(s), LABELS)


@pytest.mark.parametrize("lstm", [False, True])
def test_all_weights_mode_trains_the_base_rows(micro, lstm):
    _, tok = micro
    m, ptok, pe = _prompted(micro, train_model=True, lstm=lstm)
    assert m.training
    _loss(m, ptok, tok, P.prompt_template()).backward()
    v = len(tok)
    assert pe.weight.grad[:v].abs().sum() > 0
    assert (pe.weight.grad[v:] == 0).all() if lstm else (pe.weight.grad[v:].abs().sum(1) > 0).all()
    assert pe.trainable_count() == (v if lstm else v + N_PROMPT) * pe.embedding_dim + \
        (sum(p.numel() for p in pe.encoder.parameters()) if lstm else 0)


@pytest.mark.parametrize("lstm", [False, True])
def test_trained_input_and_output_embeddings_stay_tied(micro, lstm):
    """train_model=True: after optimiser steps the MLM decoder still reads exactly the input rows,
    and the logits equal h · E[:V]ᵀ + b computed by hand from the trained table."""
    _, tok = micro
    m, ptok, pe = _prompted(micro, train_model=True, lstm=lstm)
    v = len(tok)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    before = pe.weight[:v].detach().clone()
    for step in range(3):
        opt.zero_grad()
        _loss(m, ptok, tok, P.prompt_template(), aux=True, seed=step).backward()
        opt.step()
    assert not torch.equal(pe.weight[:v], before)                      # the rows did train
    assert torch.equal(m.cls.predictions.decoder.weight, pe.weight[:v])  # and the decoder reads them
    m.eval()
    enc = tok(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = m.cls.predictions.transform(m.bert(**enc)[0])
        ref = h @ pe.weight[:v].T + m.cls.predictions.decoder.bias
        assert torch.allclose(m(**enc).prediction_logits, ref, atol=1e-5)


def test_tied_decoder_survives_deepcopy(micro):
    m, _, pe = _prompted(micro, train_model=True)
    c = copy.deepcopy(m)
    assert c.cls.predictions.decoder._pe is c.bert.embeddings.word_embeddings
    assert c.cls.predictions.decoder._pe is not pe


@pytest.mark.parametrize("kw", [dict(head="cls", lr=1e-3), dict(n_prompt=8, template=P.prompt_template(), lr=1e-2)])
def test_few_shot_run_passes_patience_to_fit(micro, kw):
    """patience=None runs every step (the chapter's earlier runs); a patience is fit's early stopping:
    the run is the same run cut where fit stops, with the same best step and dev accuracy up to there."""
    model, tok = micro
    data = list(zip(TEXTS, LABELS))
    common = dict(steps=12, batch_size=4, eval_every=1, max_length=40, seed=1, **kw)
    torch.manual_seed(0)  # the [CLS] head fine-tunes with dropout, drawn from torch's global generator
    full = P.few_shot_run(model, tok, data, data, data, **common)
    assert full["steps_run"] == 12 and len(full["history"]) == 12
    torch.manual_seed(0)
    short = P.few_shot_run(model, tok, data, data, data, patience=1, **common)
    dev = [h[2] for h in full["history"]]
    # where a patience of one stops: the first evaluation that does not beat every earlier one
    stop = next((i + 1 for i in range(1, len(dev)) if dev[i] <= max(dev[:i])), len(dev))
    assert short["steps_run"] == stop and short["history"] == full["history"][:stop]
    assert short["dev_acc"] == max(dev[:stop])
