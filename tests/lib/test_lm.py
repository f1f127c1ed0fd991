"""kexue.lm: windows against a slow loop, the tied half-swap, per-token NLL, the arms
(https://kexue.fm/archives/9736, chapter lion-tiger-embedding)."""
import numpy as np
import torch
import torch.nn.functional as F

from kexue import lm


def test_load_vocab_is_bert_zh():
    vocab, V = lm.load_vocab()
    assert V == 5778 and vocab["[CLS]"] == lm.BOS and vocab["[UNK]"] == lm.UNK and vocab["的"] == 6


def test_char_windows_against_a_loop():
    vocab = {"a": 5, "b": 6, "c": 7}
    X, y = lm.char_windows(["abca", "", "cz"], vocab, context=3)
    rows, ys = [], []
    for line in ["abca", "cz"]:
        ids = [vocab.get(c, lm.UNK) for c in line]
        for i in range(len(ids)):
            prev = ([lm.BOS] * 3 + ids)[i:i + 3]
            rows.append(prev); ys.append(ids[i])
    assert X.tolist() == rows and y.tolist() == ys


def test_tied_half_swap_logits():
    m = lm.ContextMLPLM(11, dim=6, context=2, hidden=5, tied=True, half_swap=True, seed=1)
    x = torch.tensor([[1, 2], [3, 4]])
    h = m.features(x)
    ref = torch.cat([h[:, 3:], h[:, :3]], 1) @ m.embedding.weight.T + m.out_bias
    assert torch.allclose(m(x), ref)
    m2 = lm.ContextMLPLM(11, dim=6, context=2, hidden=5, tied=True, half_swap=False, seed=1)
    assert torch.allclose(m2(x), m2.features(x) @ m2.embedding.weight.T)
    # the tied softmax gives every row of E a gradient; the untied model only the context rows
    F.cross_entropy(m(x), torch.tensor([0, 5])).backward()
    assert (m.embedding.weight.grad.abs().sum(1) > 0).all()
    u = lm.ContextMLPLM(11, dim=6, context=2, hidden=5, seed=1)
    F.cross_entropy(u(x), torch.tensor([0, 5])).backward()
    assert set(torch.nonzero(u.embedding.weight.grad.abs().sum(1)).ravel().tolist()) == {1, 2, 3, 4}


def test_token_nll_and_counts():
    m = lm.ContextMLPLM(9, dim=4, context=2, hidden=3, seed=0)
    X = np.array([[1, 2], [3, 3], [0, 8]]); y = np.array([4, 5, 6])
    nll = lm.token_nll(m, X, y, batch=2)
    ref = F.cross_entropy(m(torch.as_tensor(X)), torch.as_tensor(y), reduction="none").detach().numpy()
    assert np.allclose(nll, ref, atol=1e-6)
    assert lm.context_counts(X, 9).tolist() == [1, 1, 1, 2, 0, 0, 0, 0, 1]


def test_every_arm_trains_a_few_steps():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 30, size=(200, 2)); y = (X[:, 0] + X[:, 1]) % 30
    data = {"train": (X[:150], y[:150]), "dev": (X[150:175], y[150:175]), "test": (X[175:], y[175:])}
    for arm in lm.ARMS:
        out = lm.train_arm(arm, data, vocab_size=30, dim=4, hidden=8, context=2, steps=6, batch=16, lr=1e-2,
                           weight_decay=0.1, eval_every=3, seed=0)
        assert out["E"].shape == (30, 4) and np.isfinite(out["test_nll"]).all() and out["best_step"] in (3, 6)
