"""Tests of kexue.models.bert_zh: vocabulary, tokenizer, config, FLOP count, save/load with checksum."""
import json

import numpy as np
import pytest
import torch

from kexue.models import bert_zh

pytestmark = pytest.mark.usefixtures("one_thread")


DOCS = [["这是一则新闻。", "今天天气很好！"], ["新闻说今天是好天气。", "ABC 2008年"],
        ["这是ABC的新闻。", "2008年的天气。", "好"]] * 3


def test_vocab_specials_first_counts_and_order():
    v = bert_zh.build_vocab(DOCS, min_count=3)
    assert v[:5] == list(bert_zh.SPECIAL_TOKENS)
    assert len(set(v)) == len(v)
    # slow reference: count the tokenizer's units one text at a time
    from collections import Counter
    c = Counter(u for d in DOCS for s in d for u in bert_zh.char_units(s))
    assert set(v[5:]) == {u for u, n in c.items() if n >= 3}
    assert [c[u] for u in v[5:]] == sorted((c[u] for u in v[5:]), reverse=True)
    assert "##b" in v and "a" in v and "##0" in v  # lower-cased word pieces of "ABC 2008"
    assert "好" in v


def test_min_count_drops_rare_characters():
    docs = [["甲乙。", "甲丙。"], ["甲。", "乙。"]]
    v = bert_zh.build_vocab(docs, min_count=2)
    assert "甲" in v and "乙" in v and "丙" not in v


def test_tokenizer_is_char_level_and_round_trips(tmp_path):
    v = bert_zh.build_vocab(DOCS, min_count=1)
    bert_zh.write_vocab(v, tmp_path)
    tok = bert_zh.tokenizer(tmp_path)
    text = "这是一则新闻。今天天气很好！"
    assert tok.tokenize(text) == list(text)
    ids = tok(text)["input_ids"]
    assert ids[0] == v.index("[CLS]") and ids[-1] == v.index("[SEP]")
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text
    assert tok.tokenize("ABC 2008") == ["a", "##b", "##c", "2", "##0", "##0", "##8"]
    assert tok.decode(tok("ABC 2008", add_special_tokens=False)["input_ids"]) == "abc 2008"
    assert tok.tokenize("龘") == ["[UNK]"]
    # the plain transformers constructor reads the same file
    from transformers import BertTokenizerFast
    import transformers
    key = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    tok2 = BertTokenizerFast(**{key: str(tmp_path / "vocab.txt")}, tokenize_chinese_chars=True,
                             do_lower_case=True)
    assert tok2(text)["input_ids"] == ids
    assert tok.model_max_length == bert_zh.MAX_LENGTH


def test_small_config_size():
    cfg = bert_zh.config(5803)
    m = bert_zh.build_model(cfg, 0)
    n = sum(p.numel() for p in m.parameters())
    assert 4.5e6 < n < 5.1e6  # ≈ 4.8 M (research/pilot-bert.md)
    assert cfg.max_position_embeddings >= 128
    assert bert_zh.matmul_params(cfg) == 4 * (4 * 256 * 256 + 2 * 256 * 1024)
    # 6 N + attention + head on 15 %: pilot's ≈ 21 MFLOP/token at seq 64
    assert 19e6 < bert_zh.train_flops_per_token(cfg, 64) < 23e6


def test_build_model_is_a_function_of_the_seed():
    cfg = bert_zh.config(50, num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32)
    a, b, c = bert_zh.build_model(cfg, 1), bert_zh.build_model(cfg, 1), bert_zh.build_model(cfg, 2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["bert.embeddings.word_embeddings.weight"],
                           sc["bert.embeddings.word_embeddings.weight"])


@pytest.fixture
def saved(tmp_path):
    v = bert_zh.build_vocab(DOCS, min_count=1)
    bert_zh.write_vocab(v, tmp_path / "v")
    cfg = bert_zh.config(len(v), num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                         intermediate_size=32, hidden_dropout_prob=0.0)
    m = bert_zh.build_model(cfg, 0)
    out = bert_zh.save(m, tmp_path / "v", tmp_path / "model")
    return m, out


def test_save_load_round_trip(saved):
    m, out = saved
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    lines = (out / "sha256").read_text().split("\n")
    assert any(l.endswith("  model.safetensors") for l in lines)
    m2, tok = bert_zh.load(out)
    s1, s2 = m.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert json.loads((out / "config.json").read_text())["hidden_dropout_prob"] == 0.1
    assert m.config.hidden_dropout_prob == 0.0  # the live model is untouched
    assert tok.tokenize("这是") == ["这", "是"]


def test_load_rejects_corrupt_weights(saved):
    _, out = saved
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (out / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        bert_zh.load(out)


def test_missing_weights_name_the_command(tmp_path):
    with pytest.raises(bert_zh.MissingWeightsError, match="python -m kexue.pretrain"):
        bert_zh.load(tmp_path / "nothing-here")


def test_hub_id_detection():
    assert bert_zh._looks_like_hub_id("someone/bert-zh")
    assert not bert_zh._looks_like_hub_id("./bert-zh")
    assert not bert_zh._looks_like_hub_id("a/b/c")
