"""Tests of kexue.sentemb: pooling vs a per-sentence loop, whitening, the one Spearman (kexue.stats),
character overlap, CoSENT loss vs a double loop, and the fine-tune helper."""
import numpy as np
import pytest
import torch

from kexue import sentemb
from kexue.models import bert_zh

pytestmark = pytest.mark.usefixtures("one_thread")


S1 = ["今天天气很好", "我喜欢看电影", "股市大涨了", "学校开学", "他在打球"]
S2 = ["今天天气不错", "我不喜欢电影", "房价下跌", "学校今天开学", "打球的人"]
Y = [4.5, 2.0, 0.5, 4.0, 2.5]


@pytest.fixture(scope="module")
def model_tok(char_tokenizer):
    tok = char_tokenizer("".join(S1 + S2))
    cfg = bert_zh.config(len(tok.get_vocab()), num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return bert_zh.build_model(cfg, 0).double().eval(), tok


@pytest.mark.parametrize("pooling", ["mean", "cls", "first_last"])
def test_encode_matches_per_sentence_loop(model_tok, pooling):
    m, tok = model_tok
    fast = sentemb.encode(m, tok, S1 + S2, pooling=pooling, batch_size=3)
    for i, s in enumerate(S1 + S2):
        enc = tok(s, return_tensors="pt")
        with torch.no_grad():
            hs = m.bert(**enc, output_hidden_states=True).hidden_states
        ref = {"mean": hs[-1][0].mean(0), "cls": hs[-1][0, 0], "first_last": ((hs[1] + hs[-1]) / 2)[0].mean(0)}[pooling]
        np.testing.assert_allclose(fast[i], ref.numpy(), atol=1e-10)


def test_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3
    mu, W = sentemb.fit_whitening(X)
    Z = sentemb.apply_whitening(X, mu, W)
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-10)
    np.testing.assert_allclose(Z.T @ Z / len(Z), np.eye(6), atol=1e-8)
    mu, W3 = sentemb.fit_whitening(X, dim=3)
    Z3 = sentemb.apply_whitening(X, mu, W3)
    np.testing.assert_allclose(Z3.T @ Z3 / len(Z3), np.eye(3), atol=1e-8)


def test_whitening_refuses_fewer_samples_than_dimensions():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(20, 32))
    with pytest.raises(ValueError, match="shrinkage"):
        sentemb.fit_whitening(X)                 # n = 20 <= d = 32
    with pytest.raises(ValueError, match="dim < 20"):
        sentemb.fit_whitening(X, dim=20)
    with pytest.raises(ValueError):
        sentemb.fit_whitening(X[:32], dim=None)  # n = d
    mu, W = sentemb.fit_whitening(X, dim=8)      # the top 8 < n - 1 directions are well defined
    Z = sentemb.apply_whitening(X, mu, W)
    np.testing.assert_allclose(Z.T @ Z / len(Z), np.eye(8), atol=1e-8)
    for bad in (0, 1.5, -0.1, "oas"):
        with pytest.raises(ValueError):
            sentemb.fit_whitening(X, shrinkage=bad)


@pytest.mark.parametrize("shrinkage", [0.1, 0.5, 1.0, "ledoit-wolf"])
@pytest.mark.parametrize("n", [20, 200])
def test_whitening_with_shrinkage_matches_sklearn(shrinkage, n):
    from sklearn.covariance import LedoitWolf, ShrunkCovariance
    rng = np.random.default_rng(2)
    X = rng.normal(size=(n, 32)) @ rng.normal(size=(32, 32)) + 1
    ref = (LedoitWolf() if shrinkage == "ledoit-wolf" else ShrunkCovariance(shrinkage=shrinkage)).fit(X)
    mu, W = sentemb.fit_whitening(X, shrinkage=shrinkage)
    np.testing.assert_allclose(mu[0], ref.location_, atol=1e-12)
    # W = U Λ^(-1/2) of the shrunk covariance: W Wᵀ is its inverse and Wᵀ Σ W = I
    np.testing.assert_allclose(W @ W.T, np.linalg.inv(ref.covariance_), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(W.T @ ref.covariance_ @ W, np.eye(32), atol=1e-8)
    if n == 20:  # without shrinkage these data would give weights of order 1e6 (4.5e6 here)
        assert np.abs(W).max() < 1e3
    _, W4 = sentemb.fit_whitening(X, dim=4, shrinkage=shrinkage)
    np.testing.assert_allclose(np.abs(W4), np.abs(W[:, :4]), atol=1e-10)


def test_sts_spearman_uses_the_one_spearman():
    from kexue import stats
    assert sentemb.spearman is stats.spearman


def test_char_overlap_scores():
    d = sentemb.char_overlap(["今天天气", "abc", ""], ["天气很好", "xyz", ""], "dice")
    # {今,天,气} vs {天,气,很,好}: 2·2/(3+4)
    np.testing.assert_allclose(d, [4 / 7, 0, 0])
    j = sentemb.char_overlap(["今天天气"], ["天气很好"], "jaccard")
    np.testing.assert_allclose(j, [2 / 5])
    with pytest.raises(ValueError):
        sentemb.char_overlap(["a"], ["b"], "cosine")


def test_cosent_loss_matches_double_loop():
    rng = np.random.default_rng(0)
    cos = torch.tensor(rng.uniform(-1, 1, 7), dtype=torch.float64)
    y = torch.tensor([3.0, 1.0, 1.0, 4.0, 0.0, 2.0, 3.0], dtype=torch.float64)
    terms = [20 * (cos[j] - cos[i]) for i in range(7) for j in range(7) if y[i] > y[j]]
    ref = torch.log(1 + sum(torch.exp(t) for t in terms))
    assert sentemb.cosent_loss(cos, y).item() == pytest.approx(ref.item(), rel=1e-12)
    assert sentemb.cosent_loss(cos, torch.ones(7, dtype=torch.float64)).item() == 0.0


def test_sts_spearman_and_controls(model_tok):
    m, tok = model_tok
    r = sentemb.sts_spearman(m, tok, S1, S2, Y, whiten_sentences=S1 + S2, dim=4)
    assert set(r) == {"raw", "whitened"} and all(-1 <= v <= 1 for v in r.values())
    ctrl = bert_zh.random_init_like(m, seed=5)
    assert ctrl.config.hidden_size == m.config.hidden_size
    assert not torch.equal(ctrl.bert.embeddings.word_embeddings.weight.double(),
                           m.bert.embeddings.word_embeddings.weight)


def test_cosent_finetune_lowers_the_loss(model_tok):
    m, tok = model_tok
    m = bert_zh.random_init_like(m, seed=0)
    losses = sentemb.cosent_finetune(m, tok, S1, S2, Y, epochs=12, batch_size=5, lr=1e-3)
    assert len(losses) == 12 and np.mean(losses[-3:]) < 0.7 * losses[0]
    assert not m.training


def test_pair_spearman_matches_per_sentence_loop(model_tok):
    from scipy.stats import spearmanr
    m, tok = model_tok
    cos = []
    for a, b in zip(S1, S2):
        u, v = (sentemb.encode(m, tok, [s])[0] for s in (a, b))
        cos.append(u @ v / np.linalg.norm(u) / np.linalg.norm(v))
    assert sentemb.pair_spearman(m, tok, S1, S2, Y, batch_size=2) == pytest.approx(spearmanr(cos, Y)[0], abs=1e-12)


def test_cosent_fit_restores_the_best_dev_weights(model_tok):
    m, tok = model_tok
    m = bert_zh.random_init_like(m, seed=1)
    dev = (S2, S1, Y)
    out = sentemb.cosent_fit(m, tok, (S1, S2, Y), dev, lr=1e-3, steps=9, eval_every=3, batch_size=3, seed=0)
    steps = [h[0] for h in out["history"]]
    assert steps == [3, 6, 9]
    best = max(out["history"], key=lambda h: h[2])  # first of equal scores
    assert out["best_step"] == best[0] and out["best_dev"] == best[2]
    assert sentemb.pair_spearman(m, tok, *dev) == pytest.approx(out["best_dev"], abs=1e-12)
    assert not m.training
    with pytest.raises(ValueError, match="aligned"):
        sentemb.cosent_fit(m, tok, (S1, S2[:3], Y), dev, lr=1e-3, steps=2, eval_every=1)


def test_cosent_fit_first_loss_is_the_cosent_loss_of_its_first_batch(model_tok):
    m, tok = model_tok
    m = bert_zh.random_init_like(m, seed=2)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    out = sentemb.cosent_fit(m, tok, (S1, S2, Y), (S1, S2, Y), lr=0.0, steps=1, eval_every=1, batch_size=5, seed=3)
    m.load_state_dict(before)
    idx = np.random.default_rng(3).permutation(5).tolist()
    m.train()
    vec = [m.bert(**tok([side[i] for i in idx], padding=True, return_tensors="pt"))[0] for side in (S1, S2)]
    masks = [tok([side[i] for i in idx], padding=True, return_tensors="pt")["attention_mask"] for side in (S1, S2)]
    pooled = [(v * mk[..., None]).sum(1) / mk.sum(1, keepdim=True) for v, mk in zip(vec, masks)]
    cos = torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=-1)
    ref = sentemb.cosent_loss(cos, torch.tensor([Y[i] for i in idx], dtype=torch.float64))
    assert out["history"][0][1] == pytest.approx(ref.item(), rel=1e-9)


def test_cosent_fit_same_seed_same_run_with_dropout(model_tok, char_tokenizer):
    m, tok = model_tok
    cfg = bert_zh.config(m.config.vocab_size, num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                         intermediate_size=32, hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.0)
    runs = []
    for _ in range(2):
        mm = bert_zh.build_model(cfg, 0).double()
        torch.manual_seed(123 + len(runs))  # a different global state before each run
        out = sentemb.cosent_fit(mm, tok, (S1, S2, Y), (S1, S2, Y), lr=1e-2, steps=4, eval_every=2,
                                 batch_size=3, seed=4)
        runs.append((out["history"], mm.bert.embeddings.word_embeddings.weight.detach().clone()))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
