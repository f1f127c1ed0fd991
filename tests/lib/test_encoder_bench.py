"""kexue.encoder_bench against slow obvious references on tiny fake encoders."""
import numpy as np
import pytest

from kexue import encoder_bench as eb
from kexue.models.encoders import Encoder, CharOverlap


class HashEncoder(Encoder):
    """A tiny fake encoder: bag of characters hashed into 8 dims, plus a seeded offset."""
    name = "fake"

    def __init__(self, seed=0):
        super().__init__(cache=False)
        self.offset = np.random.default_rng(seed).normal(size=8) * 0.1
        self.trained = 0

    @property
    def dim(self):
        return 8

    def _encode(self, texts, batch_size):
        X = np.zeros((len(texts), 8))
        for i, t in enumerate(texts):
            for c in t:
                X[i, ord(c) % 8] += 1.0
        return X + self.offset * (1 + self.trained)

    def cache_key(self):
        return {"fake": 1}


def ranks(x):
    x = np.asarray(x, float)
    r = np.empty(len(x))
    for i, v in enumerate(x):
        r[i] = (x < v).sum() + ((x == v).sum() + 1) / 2
    return r


def slow_spearman(a, b):
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def slow_cos(u, v):
    return float(u @ v / np.sqrt((u @ u) * (v @ v)))


PAIRS = [("abc", "abd", 4.0), ("hello", "help", 3.0), ("xyz", "qrs", 0.5), ("aaa", "aab", 3.5),
         ("mnop", "ponm", 2.0), ("kite", "bite", 2.5), ("sun", "moon", 1.0)]
TRAIN = [("abcdefgh", "hgfedcba", 5.0), ("ijklmnop", "qrstuvwx", 0.0), ("aceg", "bdfh", 1.0),
         ("zzzyx", "yxzz", 4.0)] * 3 + [(chr(97 + i) * 3 + chr(98 + i), chr(100 + i) * 2, 1.0) for i in range(12)]


def test_sts_spearman_matches_slow_reference():
    enc = HashEncoder()
    got = eb.sts_spearman(enc, PAIRS)
    vec = {t: enc.encode([t])[0] for p in PAIRS for t in p[:2]}
    ref = slow_spearman([slow_cos(vec[a], vec[b]) for a, b, _ in PAIRS], [y for *_, y in PAIRS])
    assert got == pytest.approx(ref, abs=1e-12)


def test_whitening_rows_match_manual_whitening():
    enc = HashEncoder(seed=3)
    rows = eb.sts_rows(enc, TRAIN, {"valid": PAIRS})
    sents = list(dict.fromkeys(s for a, b, _ in TRAIN for s in (a, b)))
    X = enc.encode(sents).astype(np.float64)
    mu = X.mean(0)
    cov = (X - mu).T @ (X - mu) / len(X)
    lam, U = np.linalg.eigh(cov)
    W = U / np.sqrt(lam)
    def f(t):
        return (enc.encode([t])[0] - mu) @ W
    ref = slow_spearman([slow_cos(f(a), f(b)) for a, b, _ in PAIRS], [y for *_, y in PAIRS])
    assert rows["whitened/valid"] == pytest.approx(ref, abs=1e-6)
    assert rows["raw/valid"] == pytest.approx(eb.sts_spearman(enc, PAIRS))


def test_char_overlap_control_gets_raw_rows_only():
    rows = eb.sts_rows(CharOverlap(), TRAIN, {"valid": PAIRS})
    assert set(rows) == {"raw/valid"}
    def dice(a, b):
        A, B = set(a), set(b)
        return 2 * len(A & B) / (len(A) + len(B))
    ref = slow_spearman([dice(a, b) for a, b, _ in PAIRS], [y for *_, y in PAIRS])
    assert rows["raw/valid"] == pytest.approx(ref, abs=1e-12)


def test_cosent_seeds_fresh_encoder_per_seed():
    calls = []
    def finetune(enc, s1, s2, y, seed, steps=1):
        calls.append((seed, len(s1), steps))
        enc.trained += steps
    out = eb.cosent_seeds(HashEncoder, TRAIN, {"valid": PAIRS, "test": PAIRS[:5]}, [0, 1, 2],
                          finetune=finetune, steps=2)
    assert [c[0] for c in calls] == [0, 1, 2] and all(c[1:] == (len(TRAIN), 2) for c in calls)
    for s, v in zip([0, 1, 2], out["valid"]):
        e = HashEncoder(s); e.trained = 2
        assert v == pytest.approx(eb.sts_spearman(e, PAIRS))
    assert len(out["test"]) == 3


def _clf_data():
    rng = np.random.default_rng(0)
    def make(n):
        rows = []
        for _ in range(n):
            lab = int(rng.integers(2))
            chars = "abcd" if lab else "wxyz"
            rows.append(("".join(rng.choice(list(chars + "mn"), 6)), lab))
        return rows
    return make(40), make(20), make(20)


def slow_logreg_select(Xtr, ytr, Xdev, ydev, Xte, yte, grid):
    from sklearn.linear_model import LogisticRegression
    scores = []
    for C in grid:
        clf = LogisticRegression(C=C, max_iter=2000, random_state=0).fit(Xtr, ytr)
        scores.append((np.mean(clf.predict(Xdev) == ydev), -grid.index(C), C, np.mean(clf.predict(Xte) == yte)))
    best = max(scores)
    return best[2], best[0], best[3]


def test_frozen_logreg_matches_reference():
    tr, dev, te = _clf_data()
    enc = HashEncoder()
    got = eb.frozen_logreg(enc, tr, dev, te)
    X = [enc.encode([t for t, _ in d]).astype(float) for d in (tr, dev, te)]
    mu, sd = X[0].mean(0), X[0].std(0) + 1e-8
    X = [(x - mu) / sd for x in X]
    y = [np.array([l for _, l in d]) for d in (tr, dev, te)]
    C, dacc, tacc = slow_logreg_select(X[0], y[0], X[1], y[1], X[2], y[2], list(eb.C_GRID))
    assert (got["C"], got["dev"], got["test"]) == (C, pytest.approx(dacc), pytest.approx(tacc))
    assert got["test"] > 0.8


def test_charbag_logreg_matches_reference():
    tr, dev, te = _clf_data()
    got = eb.charbag_logreg(tr, dev, te)
    vocab = sorted({c for t, _ in tr for c in t})
    def bag(d):
        return np.array([[t.count(c) for c in vocab] for t, _ in d], float)
    y = [np.array([l for _, l in d]) for d in (tr, dev, te)]
    C, dacc, tacc = slow_logreg_select(bag(tr), y[0], bag(dev), y[1], bag(te), y[2], list(eb.C_GRID))
    assert (got["C"], got["dev"], got["test"]) == (C, pytest.approx(dacc), pytest.approx(tacc))


def test_labelled_subset_fixed_and_ordered():
    rows = list(range(100))
    a, b = eb.labelled_subset(rows, 10, seed=1), eb.labelled_subset(rows, 10, seed=1)
    assert a == b and a == sorted(a) and len(set(a)) == 10
    assert eb.labelled_subset(rows, 200) == rows


def test_findings_and_best_above_controls():
    table = {"a": {"t": 0.8, "u": 0.1}, "b": {"t": 0.6, "u": float("nan")}, "ctl": {"t": 0.7, "u": 0.5},
             "rnd": {"t": 0.65}}
    lines = eb.findings(table, {"t": ["ctl", "rnd"], "u": ["ctl"]})
    assert "**a** (0.800)" in lines[0] and "**b**" not in lines[0] and "use **a**" in lines[0]
    assert "no encoder beats" in lines[1]
    assert eb.best_above_controls(table, "t", ["ctl", "rnd"]) == "a"
    assert eb.best_above_controls(table, "u", ["ctl"]) is None


def test_cosent_seeds_with_dev_passes_dev_and_keeps_details():
    seen, info = [], []
    def finetune(enc, s1, s2, y, seed, dev, lr):
        seen.append((seed, len(dev[0]), lr))
        enc.trained += 1
        return {"best_dev": 0.1 * seed, "best_step": seed}
    out = eb.cosent_seeds(HashEncoder, TRAIN, {"valid": PAIRS}, [0, 1], finetune=finetune,
                          dev=PAIRS[:4], details=info, lr=0.5)
    assert seen == [(0, 4, 0.5), (1, 4, 0.5)] and [d["best_step"] for d in info] == [0, 1]
    assert len(out["valid"]) == 2


def test_cosent_choose_lr_picks_the_best_dev_first_of_ties():
    table = {1e-5: 0.3, 3e-5: 0.5, 1e-4: 0.5}
    def finetune(enc, s1, s2, y, seed, dev, lr):
        return {"best_dev": table[lr], "best_step": int(lr * 1e5)}
    got = eb.cosent_choose_lr(HashEncoder, TRAIN, PAIRS[:4], [1e-5, 3e-5, 1e-4], seed=7, finetune=finetune)
    assert got["lr"] == 3e-5 and got["dev"] == table and got["best_step"][1e-4] == 10
    with pytest.raises(ValueError):
        eb.cosent_choose_lr(HashEncoder, TRAIN, PAIRS[:4], [], seed=0, finetune=finetune)


def test_disjoint_subsets_are_disjoint_random_and_ordered():
    rows = [(f"s{i}", i) for i in range(50)]
    a, b, c = eb.disjoint_subsets(rows, [10, 15, None], seed=3)
    assert (len(a), len(b), len(c)) == (10, 15, 25)
    keys = [r[1] for r in a + b + c]
    assert sorted(keys) == list(range(50))
    assert all(x == sorted(x, key=lambda r: r[1]) for x in (a, b, c))
    assert [r[1] for r in a] != list(range(10))  # random, not the first rows
    assert eb.disjoint_subsets(rows, [10, 15, None], seed=3) == [a, b, c]
    with pytest.raises(ValueError):
        eb.disjoint_subsets(rows, [40, 20])


def test_cosent_choose_lr_scores_the_chosen_run_like_cosent_seeds():
    def finetune(enc, s1, s2, y, seed, dev, lr):
        enc.trained += int(lr * 10)
        return {"best_dev": -abs(lr - 0.2), "best_step": 1}
    got = eb.cosent_choose_lr(HashEncoder, TRAIN, PAIRS[:4], [0.1, 0.2, 0.3], seed=5, finetune=finetune,
                              evals={"valid": PAIRS})
    again = eb.cosent_seeds(HashEncoder, TRAIN, {"valid": PAIRS}, [5], finetune=finetune, dev=PAIRS[:4], lr=0.2)
    assert got["lr"] == 0.2 and got["scores"]["valid"] == pytest.approx(again["valid"][0])
