"""Tests of kexue.zeroshot: NSP and PET label scores against slow per-example loops, calibration,
the dev-then-test protocol, the few-shot reference and the paired bootstrap."""
import numpy as np
import pytest
import torch

from kexue import zeroshot
from kexue.models import bert_zh

pytestmark = pytest.mark.usefixtures("one_thread")


TEXTS = ["今天的比赛很精彩", "股市大涨", "这部电影好看吗", "学校开学了。", "房价又涨了吧"]
LABELS = ["体育", "股票", "娱乐", "教育", "房产"]


@pytest.fixture(scope="module")
def model_tok(char_tokenizer):
    tok = char_tokenizer("".join(TEXTS + LABELS) + "这是一则新闻。很不满意下面总之好差")
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


def test_calibration_with_reference_matches_loop():
    rng = np.random.default_rng(1)
    s, ref = rng.normal(size=(7, 3)), rng.normal(size=(11, 3))
    slow = np.array([[s[i, c] - sum(ref[j, c] for j in range(11)) / 11 for c in range(3)] for i in range(7)])
    np.testing.assert_allclose(zeroshot.calibrate(s, reference=ref), slow, atol=1e-12)
    np.testing.assert_array_equal(zeroshot.calibrate(s, reference=s), zeroshot.calibrate(s))
    with pytest.raises(ValueError, match="columns"):
        zeroshot.calibrate(s, reference=ref[:, :2])


def test_fixed_subset():
    idx = zeroshot.fixed_subset(50, 12, seed=3)
    assert len(idx) == 12 and len(set(idx.tolist())) == 12 and (np.diff(idx) > 0).all() and idx.max() < 50
    assert (idx == zeroshot.fixed_subset(50, 12, seed=3)).all()
    assert not (idx == zeroshot.fixed_subset(50, 12, seed=4)).all()
    assert zeroshot.fixed_subset(5, None).tolist() == [0, 1, 2, 3, 4] == zeroshot.fixed_subset(5, 9).tolist()


def test_prompt_variant_fields_and_grid():
    v = zeroshot.PromptVariant("nsp", "我{}满意。", ("不", "很"), "first")
    assert v.prompts == ["我不满意。", "我很满意。"]
    assert v.name == "NSP · 我{不/很}满意。 · prompt first"
    for bad in (dict(method="mlm"), dict(order="middle"), dict(template="我满意。")):
        kw = dict(method="nsp", template="我{}满意。", words=("不", "很"), order="first") | bad
        with pytest.raises(ValueError):
            zeroshot.PromptVariant(**kw)
    grid = zeroshot.prompt_variants([("我{}满意。", ("不", "很")), ("总之很{}。", ["差", "好"])])
    assert len(grid) == 8 and len(set(grid)) == 8
    assert [(g.method, g.template, g.order) for g in grid[:3]] == [
        ("nsp", "我{}满意。", "first"), ("nsp", "我{}满意。", "second"), ("nsp", "总之很{}。", "first")]
    assert grid[-1] == zeroshot.PromptVariant("pet", "总之很{}。", ("差", "好"), "second")


def _slow_variant_scores(m, tok, texts, v):
    """Per text and label, one unbatched forward pass of the exact input the variant describes."""
    out = np.empty((len(texts), len(v.words)))
    for i, t in enumerate(texts):
        for c, w in enumerate(v.words):
            if v.method == "nsp":
                p = v.template.replace("{}", w)
                enc = tok(*((p, t) if v.order == "first" else (t, p)), return_tensors="pt")
                with torch.no_grad():
                    out[i, c] = torch.log_softmax(m(**enc).seq_relationship_logits[0], -1)[0].item()
            else:
                cloze = v.template.replace("{}", "[MASK]" * len(w))
                enc = tok(cloze + t if v.order == "first" else t + cloze, return_tensors="pt")
                pos = (enc["input_ids"][0] == tok.mask_token_id).nonzero()[:, 0]
                with torch.no_grad():
                    logp = torch.log_softmax(m(**enc).prediction_logits[0], -1)
                lid = tok(w, add_special_tokens=False)["input_ids"]
                out[i, c] = sum(logp[p, l].item() for p, l in zip(pos, lid))
    return out


@pytest.mark.parametrize("method", ["nsp", "pet"])
@pytest.mark.parametrize("order", ["first", "second"])
def test_variant_scores_match_slow_loop(model_tok, method, order):
    m, tok = model_tok
    v = zeroshot.PromptVariant(method, "总之很{}。", ("差", "好"), order)
    fast = zeroshot.variant_scores(m, tok, TEXTS, v, batch_size=2)
    np.testing.assert_allclose(fast, _slow_variant_scores(m, tok, TEXTS, v), atol=1e-10)
    assert np.abs(fast[:, 0] - fast[:, 1]).max() > 1e-8  # the labels are told apart


def test_sweep_select_and_test_against_loop(model_tok):
    m, tok = model_tok
    variants = zeroshot.prompt_variants([("总之很{}。", ("差", "好")), ("我{}满意。", ("不", "很"))])
    dev_texts, dev_y = TEXTS[:4], np.array([0, 1, 1, 0])
    test_texts, test_y = TEXTS[1:], np.array([1, 0, 0, 1])
    rows = zeroshot.sweep_variants(m, tok, dev_texts, dev_y, variants)
    for r in rows:
        s = _slow_variant_scores(m, tok, dev_texts, r["variant"])
        np.testing.assert_allclose(r["scores"], s, atol=1e-10)
        assert r["raw"] == np.mean(s.argmax(1) == dev_y)
        assert r["calibrated"] == np.mean((s - s.mean(0)).argmax(1) == dev_y)
    out = zeroshot.select_and_test(m, tok, rows, test_texts, test_y)
    assert set(out) == {("nsp", "raw"), ("nsp", "calibrated"), ("pet", "raw"), ("pet", "calibrated")}
    for (method, sc), o in out.items():
        cand = [r for r in rows if r["variant"].method == method]
        best = max(r[sc] for r in cand)
        first_best = next(r for r in cand if r[sc] == best)
        assert o["variant"] == first_best["variant"] and o["dev"] == best
        s = _slow_variant_scores(m, tok, test_texts, o["variant"])
        prior = first_best["scores"].mean(0) if sc == "calibrated" else 0.0
        np.testing.assert_allclose(o["scores"], s, atol=1e-10)
        assert o["test"] == np.mean((s - prior).argmax(1) == test_y)


def test_best_row_takes_the_first_of_ties():
    v = [zeroshot.PromptVariant(me, "{}", ("a", "b"), o) for me in ("nsp", "pet") for o in ("first", "second")]
    rows = [{"variant": v[0], "raw": 0.5}, {"variant": v[1], "raw": 0.7}, {"variant": v[2], "raw": 0.9},
            {"variant": v[3], "raw": 0.7}]
    assert zeroshot.best_row(rows, "nsp", "raw")["variant"] == v[1]
    rows[0]["raw"] = 0.7
    assert zeroshot.best_row(rows, "nsp", "raw")["variant"] == v[0]
    assert zeroshot.best_row(rows, "pet", "raw")["variant"] == v[2]
    with pytest.raises(ValueError):
        zeroshot.best_row(rows[:2], "pet", "raw")


def _features(texts):
    """Deterministic features: class 0 texts start with 'a', class 1 with 'b', plus noise from the text."""
    out = []
    for t in texts:
        r = np.random.default_rng(int(t[1:]))
        out.append(np.r_[3.0 if t[0] == "a" else -3.0, r.normal(size=4)])
    return np.array(out)


def test_few_shot_accuracies_match_slow_loop():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y = np.array([0] * 40 + [1] * 40 + [2] * 40)
    texts = [("a" if c == 0 else "b") + str(i) for i, c in enumerate(y)]
    calls = []

    def enc(ts):
        calls.append(len(ts))
        return _features(ts)

    Xt = _features(["a900", "b901", "a902", "b903"])
    yt = np.array([0, 1, 0, 2])
    out = zeroshot.few_shot_accuracies(enc, texts, y, Xt, yt, shots=(2, 5), seeds=(0, 1, 2))
    assert len(calls) == 1 and set(out) == {2, 5} and all(len(v) == 3 for v in out.values())
    for k in (2, 5):
        for j, s in enumerate((0, 1, 2)):
            idx = zeroshot.stratified_subsample(y, k, seed=s)
            X = _features([texts[i] for i in idx])
            sc = StandardScaler().fit(X)
            clf = LogisticRegression(max_iter=5000).fit(sc.transform(X), y[idx])
            assert out[k][j] == np.mean(clf.predict(sc.transform(Xt)) == yt)
    assert min(out[5]) >= 0.5  # class 0 is separable by the first feature


def test_stronger_control_and_dev_table_rows():
    name, c = zeroshot.stronger_control({"majority": [1, 0, 0, 1], "random": [1, 1, 0, 1], "tie": [1, 1, 0, 1]})
    assert name == "random" and c.tolist() == [1.0, 1.0, 0.0, 1.0]
    v1 = zeroshot.PromptVariant("nsp", "这是{}。", ("甲", "乙"), "first")
    v2 = zeroshot.PromptVariant("nsp", "{}", ("甲", "乙"), "second")
    rows = [{"variant": v1, "raw": 0.5, "calibrated": 0.7}, {"variant": v2, "raw": 0.6, "calibrated": 0.7}]
    ctrl = [{"variant": v2, "raw": 0.1, "calibrated": 0.2}]
    t = zeroshot.dev_table_rows(rows, ctrl)
    assert t[0] == ["NSP", "这是{甲/乙}。", "first", "0.500", "0.700 ★", "—", "—"]
    assert t[1][3:] == ["0.600 ★", "0.700", "0.100 ★", "0.200 ★"]


def test_label_char_scores_slow_loop():
    texts = ["体育新闻今天", "股票大涨", "", "教育体育"]
    words = ["体育", "股票", "教育"]
    ref = [[sum(1 for ch in set(w) if ch in t) for w in words] for t in texts]
    assert zeroshot.label_char_scores(texts, words).tolist() == ref
    assert zeroshot.label_char_scores([], words).shape == (0, 3)


def test_tie_split_accuracy_matches_enumerating_tie_breaks():
    import itertools
    scores = np.array([[2, 2, 0], [0, 0, 0], [1, 0, 1], [0, 3, 1]])
    y = np.array([1, 2, 0, 0])
    # enumerate every tie-breaking choice, each row's choices equally likely
    choices = [np.flatnonzero(r == r.max()) for r in scores]
    accs = [np.mean([c == yy for c, yy in zip(pick, y)]) for pick in itertools.product(*choices)]
    assert zeroshot.tie_split_accuracy(scores, y) == pytest.approx(np.mean(accs))
    assert zeroshot.tie_split_accuracy(np.eye(3), [0, 1, 2]) == 1.0


def test_char_rule_select_and_test_chooses_on_dev():
    dev = (["很好看", "差劲"], np.array([1, 0]))
    test = (["不好", "真好"], np.array([0, 1]))
    out = zeroshot.char_rule_select_and_test(*dev, *test, [("X", "Y"), ("差", "好")])
    assert out["words"] == ("差", "好") and out["dev"] == 1.0 and out["dev_all"][0] == 0.5
    assert out["test"] == zeroshot.tie_split_accuracy(zeroshot.label_char_scores(test[0], ("差", "好")), test[1])


def test_shared_items_against_loop():
    named = {"probes": [3, 5, 7, 7], "dev": [1, 2, 3, 7], "test": ["a"], "texts": ["a", "b", "a"]}
    got = zeroshot.shared_items(named)
    want = []
    names = list(named)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            shared = []
            for x in named[names[i]]:
                if x in named[names[j]] and x not in shared:
                    shared.append(x)
            want.append((names[i], names[j], len(shared)))
    assert got == want and got[0] == ("probes", "dev", 2) and got[-1] == ("test", "texts", 1)
