"""Tests of kexue.mlm: the synthetic Markov corpus and its exact losses, BERT's masking, the
warm-up schedule and the training loop."""
import math

import numpy as np
import pytest
import torch

from kexue import mlm
from kexue.mlm import (IGNORE, block_relative_change, fixed_eval_batches, last_ln_gamma_ratio,
                       markov_corpus, mlm_mask, run_mlm, sample_windows, train_mlm,
                       zipf_unigram)
from kexue.transformer import BertMLM


@pytest.fixture(scope="module")
def tiny():
    return markov_corpus(vocab=7, order=2, n_tokens=60_000, zipf_a=1.0, seed=3, successors=3,
                         chain_length=512, eval_tokens=4096)


def test_zipf_unigram():
    u = zipf_unigram(100, 1.1)
    assert u.sum() == pytest.approx(1.0)
    assert u[0] / u[1] == pytest.approx(2 ** 1.1)
    assert np.all(np.diff(u) < 0)


def test_corpus_tables_are_distributions(tiny):
    assert tiny.order == 2 and tiny.mask_id == 7
    assert tiny.weights.sum() == pytest.approx(1.0)
    for A in tiny.lags:
        np.testing.assert_allclose(A.sum(1), 1.0, rtol=1e-6)
    ctx = np.array([[0, 1], [6, 6], [3, 2]])
    np.testing.assert_allclose(tiny.next_probs(ctx).sum(1), 1.0, rtol=1e-6)
    assert tiny.train.min() >= 0 and tiny.train.max() < 7
    assert tiny.train.shape[1] == 512 and tiny.train.size >= 60_000


def test_corpus_is_reproducible_and_validates_arguments():
    a = markov_corpus(50, 2, 5000, seed=1, chain_length=256, eval_tokens=256)
    b = markov_corpus(50, 2, 5000, seed=1, chain_length=256, eval_tokens=256)
    np.testing.assert_array_equal(a.train, b.train)
    with pytest.raises(ValueError):
        markov_corpus(50, 0, 1000)
    with pytest.raises(ValueError):
        markov_corpus(50, 2, 1000, lag_weights=(0.5, 0.5, 0.5))


def test_empirical_transitions_follow_next_probs(tiny):
    x = tiny.train
    ctx = np.stack([x[:, :-2], x[:, 1:-1]], -1).reshape(-1, 2)
    nxt = x[:, 2:].reshape(-1)
    pairs, counts = np.unique(ctx, axis=0, return_counts=True)
    a, b = pairs[np.argmax(counts)]  # the most frequent context
    sel = (ctx[:, 0] == a) & (ctx[:, 1] == b)
    freq = np.bincount(nxt[sel], minlength=7) / sel.sum()
    p = tiny.next_probs(np.array([[a, b]]))[0]
    se = np.sqrt(p * (1 - p) / sel.sum())
    assert np.all(np.abs(freq - p) < 5 * se + 1e-9)


def test_entropy_rate_matches_a_slow_loop(tiny):
    x = tiny.eval[:2, :100]
    slow = [-math.log(tiny.next_probs(np.array([[x[r, t - 2], x[r, t - 1]]]))[0, x[r, t]])
            for r in range(2) for t in range(2, 100)]
    assert tiny.entropy_rate(x) == pytest.approx(np.mean(slow), rel=1e-9)


def test_mlm_floor_matches_brute_force_posterior(tiny):
    x = tiny.eval[:2, :40]
    nll = []
    for r in range(2):
        for t in range(2, 38):
            joint = []
            for v in range(7):  # P(x_t = v | rest) ∝ product of the factors that contain x_t
                y = x[r].copy()
                y[t] = v
                joint.append(np.prod([tiny.next_probs(np.array([[y[s - 2], y[s - 1]]]))[0, y[s]]
                                      for s in range(t, t + 3)]))
            joint = np.array(joint)
            nll.append(-math.log(joint[x[r, t]] / joint.sum()))
    assert tiny.mlm_floor(x) == pytest.approx(np.mean(nll), rel=1e-6)


def test_loss_references_are_ordered():
    c = markov_corpus(200, 2, 200_000, seed=0, successors=4, chain_length=1024, eval_tokens=8192)
    floor, rate, uni = c.mlm_floor(max_positions=3000), c.entropy_rate(), c.unigram_entropy()
    assert floor < rate < uni < math.log(200)


def test_mlm_mask_rates_and_labels():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (400, 512), generator=g)
    inputs, labels = mlm_mask(ids, mask_id=1000, vocab=1000, generator=g)
    sel = labels != IGNORE
    n = ids.numel()
    assert abs(sel.float().mean().item() - 0.15) < 4 * math.sqrt(0.15 * 0.85 / n)
    assert torch.equal(labels[sel], ids[sel])
    assert torch.equal(inputs[~sel], ids[~sel])  # unselected tokens are never touched
    k = sel.sum().item()
    masked = (inputs[sel] == 1000).float().mean().item()
    random_other = ((inputs[sel] != 1000) & (inputs[sel] != ids[sel])).float().mean().item()
    kept = (inputs[sel] == ids[sel]).float().mean().item()
    tol = 4 * math.sqrt(0.1 * 0.9 / k)
    assert abs(masked - 0.8) < tol
    assert abs(random_other - 0.1 * (1 - 1 / 1000)) < tol
    assert abs(kept - (0.1 + 0.1 / 1000)) < tol
    assert inputs.max() <= 1000 and inputs.min() >= 0


def test_sample_windows_are_consecutive_within_a_chain():
    tokens = np.arange(5 * 100).reshape(5, 100)
    w = sample_windows(tokens, 64, 16, np.random.default_rng(0)).numpy()
    assert w.shape == (64, 16)
    assert np.all(np.diff(w, axis=1) == 1)
    assert np.all(w[:, 0] // 100 == w[:, -1] // 100)


def test_last_ln_gamma_ratio():
    g = {"emb": 5.0, "L1.ln1": 1.0, "L1.ln2": 1.2, "L2.ln1": 0.8, "L2.ln2": 2.0, "head": 9.0}
    assert last_ln_gamma_ratio(g) == pytest.approx(2.0)


def test_train_mlm_learns_and_is_reproducible(tiny):
    kw = dict(n_layers=1, d=16, heads=2, ffn=32, seq_len=16, steps=60, batch=16, lr=3e-3,
              warmup=6, init_std=0.1, eval_every=30,
              eval_batches=fixed_eval_batches(tiny, 2, 16, 16, seed=1))
    a = run_mlm(tiny, seed=0, **kw)
    b = run_mlm(tiny, seed=0, **kw)
    np.testing.assert_array_equal(a["loss"], b["loss"])
    assert a["diverged_at"] is None and a["eval_step"] == [30, 60]
    assert np.mean(a["loss"][-10:]) < np.mean(a["loss"][:5]) - 0.3
    assert a["eval_loss"][-1] < math.log(8)  # better than a uniform guess over the vocabulary
    assert set(a["gammas"]) >= {"L1.ln1", "L1.ln2", "head"} and a["gamma_ratio"] > 0


def test_train_mlm_stops_at_divergence(tiny):
    model = BertMLM(8, 1, 8, 2, 16, max_len=8)
    out = train_mlm(model, tiny, steps=5, batch=4, seq_len=8, lr=1e-3, warmup=0, diverge_loss=0.0)
    assert out["diverged_at"] == 0 and np.all(np.isnan(out["loss"]))


def test_scored_final_loss_uses_the_penalty_for_diverged_or_non_finite_runs():
    ok = {"eval_loss": [3.0, 2.5], "diverged_at": None}
    assert mlm.scored_final_loss(ok, 6.2) == 2.5
    assert mlm.scored_final_loss({"eval_loss": [3.0], "diverged_at": 40}, 6.2) == 6.2
    assert mlm.scored_final_loss({"eval_loss": [3.0, float("nan")], "diverged_at": None}, 6.2) == 6.2
    assert mlm.scored_final_loss({"eval_loss": [], "diverged_at": 0}, 6.2) == 6.2


def test_head_minus_last_gamma():
    g = {"emb": 1.0, "L1.ln1": 1.0, "L1.ln2": 0.9, "L2.ln1": 1.1, "L2.ln2": 0.95, "head": 1.7}
    assert abs(mlm.head_minus_last_gamma(g) - 0.75) < 1e-12
    with pytest.raises(ValueError, match="head_transform"):
        mlm.head_minus_last_gamma({k: v for k, v in g.items() if k != "head"})


def test_block_relative_change_matches_a_manual_norm():
    model = BertMLM(10, 2, 8, 2, 16, max_len=4)
    init = [[p.detach().clone() for p in layer.parameters() if p.ndim == 2] for layer in model.encoder.layers]
    assert block_relative_change(model.encoder, init) == [0.0, 0.0]
    with torch.no_grad():
        model.encoder.layers[1].ffn.fc1.weight.add_(1.0)  # 16×8 entries moved by 1
        model.encoder.layers[1].ln1.weight.add_(5.0)      # LN parameters are not counted
    layer = model.encoder.layers[1]
    den = sum(float((m.weight.detach().double() ** 2).sum()) for m in
              (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.o, layer.ffn.fc2))
    den += float(((layer.ffn.fc1.weight.detach().double() - 1.0) ** 2).sum())
    got = block_relative_change(model.encoder, init)
    assert got[0] == 0.0 and got[1] == pytest.approx(math.sqrt(16 * 8 / den), rel=1e-6)  # float32 weights


def test_train_mlm_tracks_layer_changes_and_embedding_norm(tiny):
    torch.manual_seed(0)
    model = BertMLM(8, 2, 16, 2, 32, max_len=16)
    emb0 = model.encoder.tok_emb.weight.detach().norm(dim=1).mean().item()
    out = train_mlm(model, tiny, steps=12, batch=8, seq_len=16, lr=3e-3, warmup=0, track_every=4)
    assert out["track_step"] == [0, 4, 8, 12] and out["rel_change"].shape == (4, 2)
    assert np.all(out["rel_change"][0] == 0) and np.all(out["rel_change"][1:] > 0)
    assert np.all(np.diff(out["rel_change"], axis=0) > 0)  # moves further from init every 4 Adam steps here
    assert out["emb_norm"][0] == pytest.approx(emb0) and out["emb_norm"][-1] != out["emb_norm"][0]
    plain = train_mlm(BertMLM(8, 2, 16, 2, 32, max_len=16), tiny, steps=2, batch=8, seq_len=16, lr=3e-3, warmup=0)
    assert "rel_change" not in plain


def test_run_mlm_many_matches_one_thread_runs_in_order(tiny):
    kw = dict(n_layers=1, d=16, heads=2, ffn=32, seq_len=16, steps=20, batch=8, lr=3e-3, warmup=2,
              init_std=0.1, eval_every=10, eval_batches=fixed_eval_batches(tiny, 1, 8, 16, seed=1))
    runs = [dict(kw, seed=s) for s in (0, 1, 2)]
    par = mlm.run_mlm_many(tiny, runs, workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = mlm.run_mlm_many(tiny, runs, workers=1)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(par, seq):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        assert a["eval_loss"] == pytest.approx(b["eval_loss"], rel=1e-6)
    assert not np.allclose(par[0]["loss"], par[1]["loss"])
    with pytest.raises(ValueError, match="at least 1"):
        mlm.run_mlm_many(tiny, runs, workers=0)
    with pytest.raises(ValueError, match="GPU"):
        mlm.run_mlm_many(tiny, [dict(kw, device="cuda")], workers=2)
