"""Tests of kexue.zeroshot: NSP and PET label scores against slow per-example loops, calibration."""
import numpy as np
import pytest
import torch

from kexue import zeroshot
from kexue.models import bert_zh

pytestmark = pytest.mark.usefixtures("one_thread")


TEXTS = ["今天的比赛很精彩", "股市大涨", "这部电影好看吗", "学校开学了。", "房价又涨了吧"]
LABELS = ["体育", "股票", "娱乐", "教育", "房产"]


@pytest.fixture(scope="module")
def model_tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("v")
    chars = sorted(set("".join(TEXTS + LABELS) + "这是一则新闻。很不满意"))
    bert_zh.write_vocab(list(bert_zh.SPECIAL_TOKENS) + chars, d)
    tok = bert_zh.tokenizer(d)
    cfg = bert_zh.config(len(tok.get_vocab()), num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64)
    m = bert_zh.build_model(cfg, 0).double().eval()
    return m, tok


@pytest.mark.parametrize("order", ["first", "second"])
def test_nsp_scores_match_slow_loop(model_tok, order):
    m, tok = model_tok
    fast = zeroshot.nsp_label_scores(m, tok, TEXTS, LABELS, order=order, batch_size=7)
    slow = np.empty_like(fast)
    for i, t in enumerate(TEXTS):
        for c, lab in enumerate(LABELS):
            p = zeroshot.THUCNEWS_PROMPT.format(label=lab)
            a, b = (p, t) if order == "first" else (t, p)
            enc = tok(a, b, return_tensors="pt")
            with torch.no_grad():
                logits = m(**enc).seq_relationship_logits[0]
            slow[i, c] = torch.log_softmax(logits, -1)[0].item()
    np.testing.assert_allclose(fast, slow, atol=1e-10)
    assert not np.allclose(fast[:, 0], fast[:, 1])


def test_pet_scores_match_slow_loop(model_tok):
    m, tok = model_tok
    for text_first in (False, True):
        fast = zeroshot.pet_label_scores(m, tok, TEXTS, LABELS, text_first=text_first, batch_size=3)
        slow = np.empty_like(fast)
        for i, t in enumerate(TEXTS):
            body = "这是一则[MASK][MASK]新闻。"
            s = t + body if text_first else body + t
            enc = tok(s, return_tensors="pt")
            ids = enc["input_ids"][0]
            pos = (ids == tok.mask_token_id).nonzero()[:, 0]
            assert len(pos) == 2
            with torch.no_grad():
                logp = torch.log_softmax(m(**enc).prediction_logits[0], -1)
            for c, lab in enumerate(LABELS):
                lid = tok(lab, add_special_tokens=False)["input_ids"]
                slow[i, c] = sum(logp[p, l].item() for p, l in zip(pos, lid))
        np.testing.assert_allclose(fast, slow, atol=1e-10)


def test_pet_rejects_labels_of_unequal_length(model_tok):
    m, tok = model_tok
    with pytest.raises(ValueError, match="equal token length"):
        zeroshot.pet_label_scores(m, tok, TEXTS, ["体育", "股"])


def test_calibration_and_accuracy():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(40, 4))
    s[:, 2] += 10  # a label favoured by its prior alone
    y = rng.integers(0, 4, 40)
    assert zeroshot.accuracy(s, y) == pytest.approx((y == 2).mean())
    c = zeroshot.calibrate(s)
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(c - s, np.broadcast_to(-s.mean(0), s.shape))  # a per-label shift only
    assert (np.argmax(c, 1) == 2).mean() < 0.5


def test_stratified_subsample():
    y = np.array([0] * 30 + [1] * 5 + [2] * 12)
    idx = zeroshot.stratified_subsample(y, 10, seed=1)
    assert np.bincount(y[idx]).tolist() == [10, 5, 10]
    assert (idx == zeroshot.stratified_subsample(y, 10, seed=1)).all() and (np.diff(idx) > 0).all()
