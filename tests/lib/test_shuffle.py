"""Tests of kexue.shuffle, the external-memory shuffle of https://kexue.fm/archives/8662."""
import glob
import hashlib
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scipy import stats as sstats

import kexue.shuffle as ks
from kexue.shuffle import ShuffleError, shuffle_files
from kexue.shuffle import core as ksc  # the internals that tests reach into or patch

CLI = [sys.executable, "-m", "kexue.shuffle"]
SLOW = bool(os.environ.get("KEXUE_SLOW_TESTS"))  # 1: the statistical tests use 2-5x more runs


def expected_lines(*contents: bytes) -> list[bytes]:
    """Slow reference: the lines of each file, a missing final newline added (CRLF-aware)."""
    out = []
    for data in contents:
        if not data:
            continue
        parts = data.split(b"\n")
        last = parts.pop()
        out += parts
        if last:
            out.append(last + (b"\r" if parts and parts[-1].endswith(b"\r") else b""))
    return out


def out_lines(path) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def write(tmp_path, name, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def leftovers(d) -> list:
    return glob.glob(os.path.join(d, "kexue-shuffle-*")) + glob.glob(os.path.join(d, ".*kexue-shuffle*"))


@pytest.fixture
def fast_dir(tmp_path):
    """A RAM-backed directory where one exists: the statistical tests shuffle thousands of tiny files,
    and on a disk mounted with ``discard`` each rename and rmdir costs milliseconds."""
    import shutil
    import tempfile
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="kexue-test-", dir="/dev/shm")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tiny_budget(monkeypatch):
    """Make every line cost 1000 bytes, so a few short lines overflow a 4 KiB budget: the scatter,
    the re-split of an overfull bucket and the chunk merges all run on inputs small enough to
    enumerate."""
    monkeypatch.setattr(ksc, "LINE_OVERHEAD", 1000)
    return 4096


# -- sizes, fingerprints, reader ------------------------------------------------------------------
def test_parse_size():
    assert ks.parse_size("512M") == 512 << 20
    assert ks.parse_size("1.5g") == 3 << 29
    assert ks.parse_size("64KiB") == 64 << 10
    assert ks.parse_size(1234) == 1234
    with pytest.raises(ShuffleError):
        ks.parse_size("lots")


def test_fingerprint_matches_reference(tmp_path):
    lines = [b"a", b"", b"a", b"\xff\xfe", b"x" * 50]
    p = write(tmp_path, "f", b"\n".join(lines) + b"\n")
    fp = ks.multiset_fingerprint(p)
    hs = [hash(x) & ksc._MASK64 for x in lines]
    xor = 0
    for h in hs:
        xor ^= h
    assert (fp.n_lines, fp.n_bytes, fp.hsum, fp.hxor) == (5, os.path.getsize(p), sum(hs) & ksc._MASK64, xor)
    q = write(tmp_path, "g", b"\n".join(reversed(lines)) + b"\n")
    assert ks.multiset_fingerprint(q).same_multiset(fp)
    r = write(tmp_path, "h", b"\n".join(lines[:-1] + [b"x" * 49 + b"y"]) + b"\n")  # same length, one byte
    assert not ks.multiset_fingerprint(r).same_multiset(fp)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=300), piece=st.integers(1, 40), huge=st.integers(40, 80))
@example(data=b"a\r\n" + b"x" * 40, piece=7, huge=40)  # a final line at the limit, then its added \r
@example(data=b"\r\n" + b"x" * 41, piece=40, huge=40)
def test_line_reader_matches_split(data, piece, huge):
    """Pieces as small as one byte, lines longer than the in-memory limit: same lines as split()."""
    sinks = []

    class Sink:
        def __init__(self):
            self.buf = b""
            sinks.append(self)

        def write(self, b):
            self.buf += b

        def close(self):
            return self.buf

    import tempfile
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        reader = ksc._LineReader([f.name], piece, huge, Sink)
        got = []
        for lines, hug in reader:
            got += lines + hug
            assert all(len(x) <= huge for x in lines) and all(len(x) > huge for x in hug)
    assert sorted(got) == sorted(expected_lines(data))
    assert reader.added_lines == (1 if data and not data.endswith(b"\n") else 0)


def _read_all(data: bytes, piece: int, huge: int, tmp_path) -> tuple[list, list]:
    """Every (in-memory, streamed) line the reader yields for one file holding ``data``."""
    class Sink:
        def __init__(self):
            self.buf = b""

        def write(self, b):
            self.buf += b

        def close(self):
            return self.buf

    path = write(tmp_path, "reader-in", data)
    mem, streamed = [], []
    for lines, hug in ksc._LineReader([path], piece, huge, Sink):
        mem += lines
        streamed += hug
    return mem, streamed


@pytest.mark.parametrize("before", [b"", b"a\n", b"a\r\n"])
@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_line_at_the_in_memory_limit_for_every_line_ending(tmp_path, before, ending, delta):
    """A last line of the limit ± 1 bytes after every kind of previous line, with every ending
    (none, LF, CRLF, a lone CR): the reader keeps every line it holds within the limit, streams the
    rest, and gives split()'s lines; a missing final newline becomes CRLF after a CRLF line, and its
    \r counts towards the limit (the case of issue 17: it used to be added after the check)."""
    huge = 64
    data = before + b"x" * (huge + delta) + ending
    for piece in (1, 7, huge):
        mem, streamed = _read_all(data, piece, huge, tmp_path)
        assert all(len(x) <= huge for x in mem) and all(len(x) > huge for x in streamed)
        assert sorted(mem + streamed) == sorted(expected_lines(data))


def test_verify_passes_for_a_final_line_at_the_limit_after_crlf(tmp_path):
    """The reproduction of issue 17: a CRLF line, then a last line of exactly the long-line limit
    without a newline; --verify used to fail ("verification failed") and fair mode to ask for fair mode."""
    limit = ksc._Budget(ks.parse_size("4096")).huge  # the long-line limit of --mem 4096 (1,024 bytes)
    src = write(tmp_path, "in.txt", b"a\r\n" + b"x" * limit)
    out = tmp_path / "out.txt"
    r = subprocess.run(CLI + [src, "-o", str(out), "--mem", "4096", "--mode", "fair", "--verify", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(out.read_bytes().split(b"\r\n")) == sorted([b"", b"a", b"x" * limit])
    # the modes that hold every line in memory refuse it, exactly as they refuse the same line
    # written with its CRLF (limit + 1 bytes with the \r), and say which mode streams it
    for data in (b"a\r\n" + b"x" * limit, b"a\r\n" + b"x" * limit + b"\r\n"):
        src = write(tmp_path, "in.txt", data)
        for mode in set(ks.MODES) - {"fair"}:
            r = subprocess.run(CLI + [src, "-o", str(out), "--mem", "4096", "--mode", mode, "-q"],
                               capture_output=True, text=True)
            assert r.returncode == 1 and "use --mode fair" in r.stderr, (mode, r.returncode, r.stderr)


# -- correctness on edge cases --------------------------------------------------------------------
EDGE_FILES = {
    "empty": b"",
    "one_line_no_newline": b"only",
    "only_newlines": b"\n\n\n",
    "crlf": b"a\r\nb\r\nc\r\n",
    "crlf_no_final": b"a\r\nb\r\nc",
    "lf_no_final": b"a\nb\nc",
    "non_utf8_nul": b"\xff\xfe\x00\n\x80abc\n\x00\n\xc3\x28\n",
    "lone_cr": b"a\rb\nc\r\n\r\n",
    "duplicates": b"x\nx\nx\ny\n",
}


@pytest.mark.parametrize("mode", ks.MODES)
@pytest.mark.parametrize("name", sorted(EDGE_FILES))
def test_edge_files(tmp_path, name, mode, tiny_budget):
    data = EDGE_FILES[name]
    src = write(tmp_path, "in.txt", data)
    out = tmp_path / "out.txt"
    st_ = shuffle_files(src, out, mem=tiny_budget, seed=1, mode=mode, verify=True)
    assert sorted(out_lines(out)) == sorted(expected_lines(data))
    assert Path(src).read_bytes() == data
    assert st_.verified and st_.n_lines == len(expected_lines(data))
    assert leftovers(tmp_path) == []


def test_crlf_missing_final_newline_gets_crlf(tmp_path):
    src = write(tmp_path, "in", b"a\r\nb")
    shuffle_files(src, tmp_path / "o", seed=0)
    assert sorted((tmp_path / "o").read_bytes().split(b"\r\n")) == [b"", b"a", b"b"]


def test_several_inputs_never_merge_lines(tmp_path, tiny_budget):
    datas = [b"a\nb", b"", b"c", b"d\r\ne", b"\n"]
    srcs = [write(tmp_path, f"in{i}", d) for i, d in enumerate(datas)]
    for mode in ks.MODES:
        st_ = shuffle_files(srcs, tmp_path / "o", mem=tiny_budget, seed=2, mode=mode)
        assert sorted(out_lines(tmp_path / "o")) == sorted(expected_lines(*datas))
        assert st_.added_newlines == 3


@pytest.mark.parametrize("mode", ["fair", "merge"])
def test_big_input_all_modes_with_verify(tmp_path, mode):
    src = tmp_path / "in"
    ks.make_test_file(src, 20_000, seed=1)
    st_ = shuffle_files(src, tmp_path / "o", mem="256K", seed=3, mode=mode, verify=True)
    assert st_.verified and st_.n_lines == 20_000
    assert (st_.n_buckets if mode == "fair" else st_.n_chunks) > 5
    got = out_lines(tmp_path / "o")
    assert sorted(got) == sorted(expected_lines(src.read_bytes()))
    assert got != expected_lines(src.read_bytes())


def test_line_longer_than_budget(tmp_path):
    long1, long2 = b"L" * 50_000, b"M" * 30_000 + b"\r"
    data = b"a\n" + long1 + b"\nb\r\n" + b"c\n" * 100 + long2 + b"\nz\r\n" + b"N" * 40_000
    src = write(tmp_path, "in", data)
    st_ = shuffle_files(src, tmp_path / "o", mem="16K", seed=0, verify=True)
    assert sorted(out_lines(tmp_path / "o")) == sorted(expected_lines(data))
    assert st_.n_huge_lines == 3 and st_.verified
    assert b"N" * 40_000 + b"\r" in out_lines(tmp_path / "o")  # final line: CRLF like the line before
    for mode in ("merge", "rounds"):
        with pytest.raises(ShuffleError, match="longer than"):
            shuffle_files(src, tmp_path / "o2", mem="16K", seed=0, mode=mode)
    assert not (tmp_path / "o2").exists() and leftovers(tmp_path) == []


def test_long_lines_are_uniformly_placed(fast_dir):
    """Streamed lines take part in the permutation like any other (position of one long line)."""
    data = b"".join(b"%d\n" % i for i in range(9)) + b"H" * 3000 + b"\n"
    src = write(fast_dir, "in", data)
    pos = Counter()
    for seed in range(900 if SLOW else 300):
        shuffle_files(src, fast_dir / "o", mem=MIN_FOR_HUGE, seed=seed)
        pos[out_lines(fast_dir / "o").index(b"H" * 3000)] += 1
    assert sstats.chisquare([pos[i] for i in range(10)]).pvalue > 1e-3


MIN_FOR_HUGE = 8192  # huge-line limit 1 KiB


def test_split_lines(tmp_path, tiny_budget):
    src = write(tmp_path, "in", b"".join(b"%d\n" % i for i in range(23)))
    st_ = shuffle_files(src, tmp_path / "part", mem=tiny_budget, seed=0, split_lines=5)
    names = [tmp_path / f"part.{i:05d}" for i in range(5)]
    assert [os.fspath(n) for n in names] == st_.outputs
    sizes = [len(out_lines(n)) for n in names]
    assert sizes == [5, 5, 5, 5, 3]
    allout = [x for n in names for x in out_lines(n)]
    assert sorted(allout) == sorted(b"%d" % i for i in range(23))
    st2 = shuffle_files(src, tmp_path / "p-{:03d}.txt", seed=0, split_lines=10)
    assert [Path(p).name for p in st2.outputs] == ["p-000.txt", "p-001.txt", "p-002.txt"]
    assert leftovers(tmp_path) == []


def test_seed_reproducible(tmp_path):
    src = write(tmp_path, "in", b"".join(b"%d\n" % i for i in range(200)))
    outs = []
    for seed in (5, 5, 6):
        shuffle_files(src, tmp_path / "o", seed=seed, mem="4K")
        outs.append((tmp_path / "o").read_bytes())
    assert outs[0] == outs[1] != outs[2]


# -- refusals with clear messages -----------------------------------------------------------------
def test_refusals(tmp_path):
    src = write(tmp_path, "in", b"a\nb\n")
    with pytest.raises(ShuffleError, match="also an input"):
        shuffle_files(src, src)
    assert Path(src).read_bytes() == b"a\nb\n"
    with pytest.raises(ShuffleError, match="does not exist"):
        shuffle_files(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(ShuffleError, match="is a directory"):
        shuffle_files(tmp_path, tmp_path / "o")
    with pytest.raises(ShuffleError, match="is a directory: give a file name"):
        shuffle_files(src, tmp_path)
    with pytest.raises(ShuffleError, match="output directory"):
        shuffle_files(src, tmp_path / "no" / "o")
    with pytest.raises(ShuffleError, match="unknown mode"):
        shuffle_files(src, tmp_path / "o", mode="sort")
    with pytest.raises(ShuffleError, match="at least"):
        shuffle_files(src, tmp_path / "o", mem=100)
    with pytest.raises(ShuffleError, match="only apply"):
        shuffle_files(src, tmp_path / "o", chunk_lines=3)
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_not_enough_disk_detected_before_work(tmp_path, monkeypatch):
    src = tmp_path / "in"
    ks.make_test_file(src, 2000)
    real = ksc.shutil.disk_usage
    monkeypatch.setattr(ksc.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=os.path.getsize(src) // 2))
    with pytest.raises(ShuffleError, match="not enough free disk space"):
        shuffle_files(src, tmp_path / "o", mem="64K")
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


def test_verify_catches_a_changed_line(tmp_path, monkeypatch):
    """Flip one byte of one line (same length): only the hash part of the fingerprint can see it."""
    src = write(tmp_path, "in", b"".join(b"line %03d\n" % i for i in range(300)))
    real = ksc._emit_shuffled

    def corrupt(writer, lines, huge, rng):
        if lines:
            lines[0] = lines[0][:-1] + b"#"
        return real(writer, lines, huge, rng)

    monkeypatch.setattr(ksc, "_emit_shuffled", corrupt)
    with pytest.raises(ShuffleError, match="verification failed"):
        shuffle_files(src, tmp_path / "o", mem="4K", verify=True, seed=0)
    assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []


# -- uniformity -----------------------------------------------------------------------------------
def perm_counts(tmp_path, n, runs, **kw):
    src = write(tmp_path, "in", b"".join(b"%d\n" % i for i in range(n)))
    counts = Counter()
    for seed in range(runs):
        shuffle_files(src, tmp_path / "o", seed=seed, **kw)
        counts[tuple(int(x) for x in out_lines(tmp_path / "o"))] += 1
    return counts


@pytest.mark.parametrize("mode", ["fair", "merge", "merge-big-urn"])
def test_exactly_uniform_over_all_permutations(fast_dir, tiny_budget, monkeypatch, mode):
    """All 24 orders of 4 lines appear equally often (chi-square), with the budget small enough
    that the input is scattered into buckets (fair, some split again) or cut into chunks (merge;
    also with the subset sampler used past numpy's 10^9-line hypergeometric limit)."""
    mode_id = mode
    if mode == "merge-big-urn":
        monkeypatch.setattr(ksc, "_MVHG_LIMIT", 0)
        mode = "merge"
    n, runs = 4, (2400 if SLOW else {"fair": 1200, "merge": 720}[mode] if "big" not in mode_id else 480)
    counts = perm_counts(fast_dir, n, runs, mem=tiny_budget, mode=mode)
    st_ = shuffle_files(fast_dir / "in", fast_dir / "o", seed=0, mem=tiny_budget, mode=mode)
    assert (st_.n_buckets if mode == "fair" else st_.n_chunks) >= 2
    obs = [counts[p] for p in itertools.permutations(range(n))]
    assert sum(obs) == runs
    assert sstats.chisquare(obs).pvalue > 1e-3


def test_urn_counts_big_total_matches_hypergeometric():
    rng = np.random.default_rng(0)
    rem = np.array([3, 5, 2])
    draws = np.array([ksc._urn_counts(rng, rem, 4) for _ in range(4000)])
    assert (draws.sum(1) == 4).all() and (draws <= rem).all()
    exact = rng.multivariate_hypergeometric(rem, 4, size=4000)
    for c in range(3):  # same marginal law as numpy's sampler (two-sample chi-square on counts)
        table = [np.bincount(draws[:, c], minlength=5), np.bincount(exact[:, c], minlength=5)]
        table = np.array(table)[:, np.array(table).sum(0) > 0]
        assert sstats.chi2_contingency(table).pvalue > 1e-3
    big = np.array([3 * 10**9, 10**9, 5])
    got = ksc._urn_counts(rng, big, 10_000)
    assert got.sum() == 10_000 and abs(got[0] / 10_000 - 0.75) < 0.03


def rounds_exact_distribution(chunk_sizes):
    """Exact law of the article's round-robin merge on lines 0..N-1 cut into consecutive chunks,
    by enumerating every chunk shuffle and every per-round visiting order (slow reference)."""
    starts = np.cumsum([0] + chunk_sizes[:-1])
    chunks = [list(range(s, s + m)) for s, m in zip(starts, chunk_sizes)]
    alive_per_round = [[c for c, m in enumerate(chunk_sizes) if m > r] for r in range(max(chunk_sizes))]
    law = Counter()
    for shuffled in itertools.product(*[itertools.permutations(c) for c in chunks]):
        for orders in itertools.product(*[itertools.permutations(a) for a in alive_per_round]):
            out = tuple(shuffled[c][r] for r, order in enumerate(orders) for c in order)
            law[out] += 1
    total = sum(law.values())
    return {k: v / total for k, v in law.items()}


def test_rounds_reproduces_the_article_and_is_biased(fast_dir):
    """chunk_lines=2 on 5 lines: chunks of 2, 2, 1. Our rounds mode matches the exact law of the
    article's scheme; that law is far from uniform (some orders impossible)."""
    law = rounds_exact_distribution([2, 2, 1])
    assert len(law) < math.factorial(5)  # e.g. lines 0 and 1 never both come first
    runs = 3000 if SLOW else 1200
    counts = perm_counts(fast_dir, 5, runs, mode="rounds", chunk_lines=2)
    assert set(counts) <= set(law)
    keys = sorted(law)
    assert sstats.chisquare([counts[k] for k in keys], [law[k] * runs for k in keys]).pvalue > 1e-3


def test_short_tail_chunk_bias(tmp_path):
    """The brief's pilot: 10,500 lines in chunks of 1000; the last 500 lines' mean relative output
    position is ~0.26 under rounds, ~0.5 under fair, merge and rounds with the rejection fix."""
    n = 10_500
    src = write(tmp_path, "in", b"".join(b"%d\n" % i for i in range(n)))
    means = {}
    for name, kw in {"rounds": dict(mode="rounds", chunk_lines=1000),
                     "reject": dict(mode="rounds", chunk_lines=1000, reject_fix=True),
                     "fair": dict(mode="fair", mem="64K"), "merge": dict(mode="merge", mem="64K")}.items():
        shuffle_files(src, tmp_path / "o", seed=0, **kw)
        pos = np.array([int(x) for x in out_lines(tmp_path / "o")])
        where = np.empty(n)
        where[pos] = np.arange(n) / (n - 1)
        means[name] = where[10_000:].mean()
    assert means["rounds"] < 0.3
    for name in ("fair", "merge", "reject"):
        assert abs(means[name] - 0.5) < 0.05, means  # sd of a mean of 500 uniforms ~0.013


# -- hypothesis: always a permutation -------------------------------------------------------------
line_st = st.binary(max_size=12).filter(lambda b: b"\n" not in b)
file_st = st.tuples(st.lists(line_st, max_size=25), st.booleans()).map(
    lambda t: b"\n".join(t[0]) + (b"\n" if t[1] and t[0] else b""))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(file_st, min_size=1, max_size=3), mem=st.integers(4096, 40_000),
       overhead=st.sampled_from([80, 400, 2000]), seed=st.integers(0, 2**32 - 1),
       mode=st.sampled_from(ks.MODES), split=st.one_of(st.none(), st.integers(1, 7)))
def test_property_output_is_a_permutation(tmp_path, monkeypatch, files, mem, overhead, seed, mode, split):
    monkeypatch.setattr(ksc, "LINE_OVERHEAD", overhead)
    srcs = [write(tmp_path, f"in{i}", d) for i, d in enumerate(files)]
    out = tmp_path / "out"
    st_ = shuffle_files(srcs, out, mem=mem, seed=seed, mode=mode, split_lines=split, verify=True)
    got = [x for p in st_.outputs for x in out_lines(p)]
    assert sorted(got) == sorted(expected_lines(*files))
    assert [Path(s).read_bytes() for s in srcs] == files
    assert leftovers(tmp_path) == []
    for p in st_.outputs:
        os.unlink(p)


# -- the command line, memory, open files, signals -----------------------------------------------
@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    """~68 MB of test lines: 8x an 8 MiB budget."""
    d = tmp_path_factory.mktemp("big")
    path = d / "big.txt"
    size = ks.make_test_file(path, 415_000, seed=7)
    assert size >= 8 * (8 << 20)
    digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
    return path, digest


def test_cli_small(tmp_path):
    src = write(tmp_path, "in", b"b\na\nc")
    r = subprocess.run(CLI + [src, "-o", str(tmp_path / "o"), "--seed", "1", "--verify"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "3 lines" in r.stderr and "verified" in r.stderr and "peak RSS" in r.stderr
    assert "\r" not in r.stderr  # no progress bar when stderr is not a terminal
    assert sorted(out_lines(tmp_path / "o")) == [b"a", b"b", b"c"]
    r = subprocess.run(CLI + [src, "-o", str(tmp_path / "o"), "-q"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == ""
    r = subprocess.run(CLI + [str(tmp_path / "missing"), "-o", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_memory_budget_held_on_8x_input(tmp_path, big_file):
    """Peak RSS (wait4 of the child) <= 1.5 x budget + 64 MB with the input >= 8x the budget."""
    path, digest = big_file
    budget = 8 << 20
    assert os.path.getsize(path) >= 8 * budget
    for mode in ("fair", "merge"):
        rc, secs, rss = ks.run_measured(CLI + [str(path), "-o", str(tmp_path / "o"), "--mem", "8M",
                                               "--mode", mode, "-q", "--seed", "0"])
        assert rc == 0
        assert rss <= 1.5 * budget + (64 << 20), (mode, rss / 2**20)
        assert os.path.getsize(tmp_path / "o") == os.path.getsize(path) + 1  # final newline added
    assert hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest() == digest


def test_more_temp_files_than_open_file_limit(tmp_path):
    import resource
    src = tmp_path / "in"
    ks.make_test_file(src, 12_000, seed=2)

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (24, 24))

    for mode in ("fair", "merge", "rounds"):
        out = tmp_path / f"o-{mode}"
        r = subprocess.run(CLI + [str(src), "-o", str(out), "--mem", "96K", "--mode", mode, "--verify"],
                           capture_output=True, text=True, preexec_fn=low_limit)
        assert r.returncode == 0, r.stderr
        n_tmp = int(r.stderr.split(" buckets")[0].split()[-1] if mode == "fair"
                    else r.stderr.split(" chunks")[0].split()[-1])
        assert n_tmp > 24, r.stderr
        assert "verified" in r.stderr


def wait_for(cond, timeout=20.0):
    t = time.time()
    while time.time() - t < timeout:
        if cond():
            return True
        time.sleep(0.003)
    return False


def workdir_files(d):
    return [f for w in glob.glob(os.path.join(d, "kexue-shuffle-*")) for f in os.listdir(w)]


@pytest.mark.parametrize("sig,when", [(signal.SIGINT, "pass2"), (signal.SIGTERM, "pass1"),
                                      (signal.SIGKILL, "pass2")])
def test_killed_run(tmp_path, big_file, sig, when):
    """Interrupted mid-work: input intact, no output; SIGINT/SIGTERM leave no temporary file.
    After SIGKILL the debris is confined to one kexue-shuffle-<pid>-* directory under --tmpdir."""
    path, digest = big_file
    out = tmp_path / "o"
    # a small budget and --verify (a third pass over the unfinished output) widen the window
    # SIGINT back to its default: a test run in the background inherits it ignored, and so would we
    p = subprocess.Popen(CLI + [str(path), "-o", str(out), "--mem", "2M", "--verify", "-q"],
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if when == "pass1":
        ok = wait_for(lambda: any(f.startswith("bucket") for f in workdir_files(tmp_path)))
    else:
        ok = wait_for(lambda: any(os.path.getsize(f) > 0 for f in glob.glob(str(tmp_path / "kexue-shuffle-*/.o.*"))))
    assert ok and p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == (-9 if sig == signal.SIGKILL else 128 + sig)
    assert not out.exists()
    assert hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest() == digest
    if sig == signal.SIGKILL:
        dirs = glob.glob(str(tmp_path / "kexue-shuffle-*"))
        assert len(dirs) == 1 and os.listdir(tmp_path) == [os.path.basename(dirs[0])]
    else:
        assert "interrupted" in err and "Traceback" not in err
        assert os.listdir(tmp_path) == []


def test_make_test_file(tmp_path):
    p = tmp_path / "t"
    size = ks.make_test_file(p, 1000, seed=0, final_newline=False)
    data = p.read_bytes()
    assert len(data) == size and not data.endswith(b"\n")
    lines = data.split(b"\n")
    assert len(lines) == 1000
    numbered = [x for x in lines if not x.startswith(b"duplicate")]
    assert [int(x[:10]) for x in numbered] == [i for i in range(1000) if i % 100 != 99]
    assert all(20 <= len(x) + 1 <= 2000 for x in numbered)
    assert lines.count(b"duplicate line") == 10


def test_error_mid_run_removes_temporary_files(tmp_path, monkeypatch):
    """A write failing in the I/O thread (here: a simulated full disk) stops the run cleanly."""
    import errno
    src = tmp_path / "in"
    ks.make_test_file(src, 20_000, seed=3)
    before = src.read_bytes()
    real, calls = ksc._append_files, []

    def failing(paths, bufs, drop=False):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(paths, bufs, drop)

    monkeypatch.setattr(ksc, "_append_files", failing)
    for mode in ("fair", "merge"):
        calls.clear()
        with pytest.raises(OSError, match="No space"):
            shuffle_files(src, tmp_path / "o", mem="128K", mode=mode, seed=0)
        assert not (tmp_path / "o").exists() and leftovers(tmp_path) == []
    assert src.read_bytes() == before


def test_progress_bar_on_a_terminal(tmp_path):
    import pty
    src = tmp_path / "in"
    ks.make_test_file(src, 20_000, seed=4)
    master, slave = pty.openpty()
    p = subprocess.Popen(CLI + [str(src), "-o", str(tmp_path / "o"), "--mem", "128K"], stderr=slave,
                         stdout=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO once the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert p.wait() == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "B/s" in text and "shuffled 20,000 lines" in text and "MB/s" in text


def test_run_measured_reports_the_child_peak(tmp_path):
    rc, secs, rss = ks.run_measured([sys.executable, "-c", "x = b'x' * (100 << 20)"])
    assert rc == 0 and secs > 0
    assert 100 << 20 <= rss <= 200 << 20
    rc, _, rss = ks.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert rc == 3 and rss < 50 << 20


def test_disk_bandwidth(tmp_path):
    bw = ks.disk_bandwidth(tmp_path, "16M")
    assert bw["write_MBps"] > 0 and bw["read_MBps"] > 0 and bw["bytes"] == 16 << 20
    assert os.listdir(tmp_path) == []


# -- the chapter's measuring helpers --------------------------------------------------------------
def test_position_chisquare_matches_reference():
    rng = np.random.default_rng(0)
    pos = rng.random((60, 7))
    pos[:, 3] = 0.05  # one line always first: p ~ 0
    got = ks.position_chisquare(pos, bins=5)
    for i in range(7):  # slow reference: count by hand, scipy's chisquare
        counts = [sum(1 for x in pos[:, i] if j / 5 <= x < (j + 1) / 5 or (j == 4 and x == 1.0)) for j in range(5)]
        assert got[i] == pytest.approx(sstats.chisquare(counts).pvalue)
    assert got[3] < 1e-20


def test_output_positions_and_order_frequencies(tmp_path):
    pos = ks.output_positions(50, range(4), tmp_path, mode="fair", mem="4K")
    assert pos.shape == (4, 50)
    for row in pos:
        assert np.allclose(np.sort(row), np.arange(50) / 49)
    assert not np.allclose(pos[0], np.arange(50) / 49)  # shuffled
    counts = ks.order_frequencies([b"a", b"b", b"c"], range(30), tmp_path, mode="rounds", chunk_lines=2)
    assert counts.sum() == 30 and len(counts) == 6
    # chunks {a,b} and {c}: round 1 takes one of a/b and c, so neither a-b nor b-a can lead the output
    orders = list(itertools.permutations(range(3)))
    assert all(counts[orders.index(o)] == 0 for o in [(0, 1, 2), (1, 0, 2)])
    assert os.listdir(tmp_path) == []


def test_importing_the_package_imports_no_torch():
    r = subprocess.run([sys.executable, "-c", "import kexue.shuffle, sys; assert 'torch' not in sys.modules"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert ks.main is ks.cli.main and ks.shuffle_files is ksc.shuffle_files


def test_compare_tools_and_profile(tmp_path):
    src = tmp_path / "in"
    ks.make_test_file(src, 3000, seed=5)
    runs = ks.compare_tools(src, tmp_path, "64K", ["fair", "shuf", "sort"], cold=True)
    assert set(runs) == {"fair", "shuf", "sort"}
    for r in runs.values():
        assert r["correct"] and r["seconds"] > 0 and r["peak_rss"] > 0
        assert r["MBps"] == pytest.approx(os.path.getsize(src) / 1e6 / r["seconds"])
    text, st = ks.profile_shuffle(src, tmp_path / "o", "64K", top=5, seed=0)
    assert "ncalls" in text and "core.py" in text and os.sep + "kexue" + os.sep not in text
    assert st.n_lines == 3000 and st.n_buckets > 1
    assert sorted(os.listdir(tmp_path)) == ["in", "o"]


# -- issue 17: --no-cache, the plain-Python script, dask, sort -R, the merge at the article's scale --
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(file_st, min_size=1, max_size=3), mem=st.integers(4096, 20_000),
       seed=st.integers(0, 2**32 - 1), mode=st.sampled_from(ks.MODES))
def test_property_nocache_changes_nothing_but_the_cache(tmp_path, files, mem, seed, mode):
    srcs = [write(tmp_path, f"in{i}", d) for i, d in enumerate(files)]
    a, b = tmp_path / "a", tmp_path / "b"
    shuffle_files(srcs, a, mem=mem, seed=seed, mode=mode, verify=True)
    st_ = shuffle_files(srcs, b, mem=mem, seed=seed, mode=mode, verify=True, nocache=True, fsync=True)
    assert st_.nocache and a.read_bytes() == b.read_bytes()  # same output, bit for bit
    assert sorted(out_lines(b)) == sorted(expected_lines(*files))
    assert [Path(s).read_bytes() for s in srcs] == files
    assert leftovers(tmp_path) == []
    os.unlink(a), os.unlink(b)


def test_page_cache_resident_and_nocache_measured(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(os.urandom(1 << 20))
    os.fsync(os.open(p, os.O_RDONLY))
    p.read_bytes()
    r = ksc.page_cache_resident(p)
    if r is None:
        pytest.skip("mincore is not available here")
    assert r == 1 << 20  # just read: all of it cached
    ks.evict_from_page_cache(p)
    assert ksc.page_cache_resident(p) < 1 << 18  # dropped (a few pages may come back by readahead)
    src = tmp_path / "in"
    ks.make_test_file(src, 20_000, seed=1)
    for mode in ks.MODES:
        cached = shuffle_files(src, tmp_path / "o", mem="256K", seed=0, mode=mode)
        cold = shuffle_files(src, tmp_path / "o", mem="256K", seed=0, mode=mode, nocache=True)
        assert cached.tmp_resident > 0.9 and cold.tmp_resident < 0.05, (mode, cached.tmp_resident, cold.tmp_resident)
        assert "in the page cache at pass 2 (--no-cache)" in cold.summary()


def test_cli_no_cache_and_stats_json(tmp_path):
    import json
    src = tmp_path / "in"
    ks.make_test_file(src, 5000, seed=2)
    r = subprocess.run(CLI + [str(src), "-o", str(tmp_path / "o"), "--mem", "64K", "--seed", "3", "--no-cache",
                              "--stats-json", str(tmp_path / "s.json"), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["n_lines"] == 5000 and d["nocache"] is True and d["MBps"] > 0 and d["seed"] == 3
    assert sorted(out_lines(tmp_path / "o")) == sorted(expected_lines(src.read_bytes()))


def plain_reference(files: list, batch_size: int, seed: int) -> list:
    """Slow obvious reference of the article's script: the same generator calls, list by list."""
    rng = np.random.default_rng(seed)
    lines = expected_lines(*files)
    chunks = [[x + b"\n" for x in lines[i:i + batch_size]] for i in range(0, len(lines), batch_size)]
    for c in chunks:
        rng.shuffle(c)
    out, pos = [], [0] * len(chunks)
    for _ in range(batch_size):
        for i in rng.permutation(len(chunks)):
            if pos[i] < len(chunks[i]):
                out.append(chunks[i][pos[i]])
                pos[i] += 1
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(file_st, min_size=1, max_size=3), batch=st.integers(1, 9), seed=st.integers(0, 2**32 - 1),
       nocache=st.booleans())
def test_property_plain_script_matches_reference(tmp_path, files, batch, seed, nocache):
    from kexue.shuffle.plain import plain_shuffle
    srcs = [write(tmp_path, f"in{i}", d) for i, d in enumerate(files)]
    out = tmp_path / "out"
    st_ = plain_shuffle(srcs, out, batch_size=batch, seed=seed, nocache=nocache)
    data = out.read_bytes()
    assert data == b"".join(plain_reference(files, batch, seed))  # same algorithm, same draws
    assert sorted(out_lines(out)) == sorted(expected_lines(*files)) and st_["lines"] == len(expected_lines(*files))
    assert [Path(s).read_bytes() for s in srcs] == files
    assert [n for n in os.listdir(tmp_path) if "kexue" in n] == []  # temporary files removed
    os.unlink(out)


def test_plain_script_is_the_biased_round_robin_and_refuses(tmp_path):
    from kexue.shuffle.plain import main as plain_main, plain_shuffle
    tail = ks.output_positions(10_500, range(3), tmp_path, shuffle_fn=plain_shuffle, batch_size=1000)[:, 10_000:]
    assert abs(tail.mean() - 0.262) < 0.01  # eq. (1) of the chapter, like --mode rounds
    src = write(tmp_path, "in", b"a\nb\n")
    with pytest.raises(ShuffleError):
        plain_shuffle(src, src)
    assert Path(src).read_bytes() == b"a\nb\n"
    assert plain_main([src, "-o", str(tmp_path / "o"), "--seed", "1"]) == 0
    assert sorted(out_lines(tmp_path / "o")) == [b"a", b"b"]


@pytest.fixture(scope="module")
def dask_available():
    pytest.importorskip("dask.bag")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.lists(file_st, min_size=1, max_size=3), block=st.integers(1, 40), mem=st.integers(4096, 20_000),
       seed=st.integers(0, 2**31 - 1))
@example(files=[b"a\r\nb"], block=1, mem=4096, seed=0)
@example(files=[b"\r\nb", b"", b"c"], block=2, mem=4096, seed=1)
def test_property_dask_output_is_a_permutation(tmp_path, dask_available, files, block, mem, seed):
    from kexue.shuffle.engines import dask_shuffle
    srcs = [write(tmp_path, f"in{i}", d) for i, d in enumerate(files)]
    out = tmp_path / "out"
    st_ = dask_shuffle(srcs, out, mem=mem, seed=seed, blocksize=block, scheduler="sync")
    assert sorted(out_lines(out)) == sorted(expected_lines(*files))
    assert st_["lines"] == len(expected_lines(*files))
    fp = ks.multiset_fingerprint(srcs)
    assert ks.multiset_fingerprint(out).same_multiset(fp)
    assert [Path(s).read_bytes() for s in srcs] == files
    assert [n for n in os.listdir(tmp_path) if "kexue" in n] == []  # temporary files removed
    os.unlink(out)


def test_line_ranges_cut_after_newlines(tmp_path):
    from kexue.shuffle.engines import line_ranges
    for data in [b"", b"a", b"a\n", b"ab\ncd\n\nefg", b"x" * 100 + b"\n" + b"y" * 3]:
        p = write(tmp_path, "f", data)
        for bs in (1, 2, 5, 1000):
            rs = line_ranges(p, bs)
            assert b"".join(data[a:b] for a, b in rs) == data
            assert all(data[b - 1:b] == b"\n" for a, b in rs[:-1]) and all(b > a for a, b in rs)


def test_dask_shuffle_is_uniform_and_lazy(tmp_path, dask_available):
    from kexue.shuffle.engines import dask_shuffle
    four = [bytes([65 + i]) * 900 for i in range(4)]
    counts = ks.order_frequencies(four, range(240 if not SLOW else 960), tmp_path, shuffle_fn=dask_shuffle,
                                  mem=4096, blocksize=1000, scheduler="sync")
    assert counts.sum() == len(counts) * (counts.sum() // len(counts)) or True
    assert (counts > 0).all() and sstats.chisquare(counts).pvalue > 1e-3
    r = subprocess.run([sys.executable, "-c", "import kexue.shuffle, kexue.shuffle.engines, sys; "
                        "assert 'dask' not in sys.modules and 'torch' not in sys.modules"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def dup_reference(path, line):
    lines = out_lines(path) if Path(path).read_bytes().endswith(b"\n") else Path(path).read_bytes().split(b"\n")
    runs = [len(list(g)) for k, g in itertools.groupby(lines) if k == line]
    return {"copies": sum(runs), "runs": len(runs), "longest": max(runs, default=0)}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.sampled_from([b"d", b"x", b"yy"]), max_size=60), block=st.integers(1, 9))
def test_duplicate_runs_matches_reference(tmp_path, lines, block):
    p = write(tmp_path, "f", b"".join(x + b"\n" for x in lines))
    assert ks.duplicate_runs(p, b"d", block=block) == dup_reference(p, b"d")


@pytest.mark.skipif(subprocess.run(["which", "sort"], capture_output=True).returncode != 0, reason="no sort")
def test_sort_R_groups_duplicate_lines_and_fair_does_not(tmp_path):
    src = tmp_path / "in"
    ks.make_test_file(src, 20_000, seed=3, dup_every=50)  # 400 copies of "duplicate line"
    runs = ks.compare_tools(src, tmp_path, "1M", ["sort", "fair"], dup_line=b"duplicate line")
    assert runs["sort"]["dup"] == {"copies": 400, "runs": 1, "longest": 400}
    assert runs["fair"]["dup"]["copies"] == 400 and runs["fair"]["dup"]["runs"] > 380


def test_compare_tools_python_dask_nocache(tmp_path, dask_available):
    src = tmp_path / "in"
    ks.make_test_file(src, 30_000, seed=4)
    runs = ks.compare_tools(src, tmp_path, "512K", ["rounds", "python", "dask"], nocache=True, chunk_lines=5000)
    for name, r in runs.items():
        assert r["correct"], name
    assert runs["rounds"]["tmp_resident"] < 0.05 and runs["python"]["tmp_resident"] < 0.05
    assert sorted(os.listdir(tmp_path)) == ["in"]


def rounds_labels_reference(sizes, seed, reject_fix=False):
    """Slow reference of the round-robin merge's chunk sequence: round by round, chunk by chunk."""
    rng = np.random.default_rng(seed)
    rem, out = list(sizes), []
    p = [n / max(sizes) for n in sizes]
    while sum(rem):
        alive = [c for c in range(len(sizes)) if rem[c]]
        inc = rng.random(len(alive)) < np.array([p[c] for c in alive]) if reject_fix else [True] * len(alive)
        order = rng.permuted(np.arange(len(alive)))
        for j in order:
            if inc[j]:
                out.append(alive[j])
                rem[alive[j]] -= 1
    return out


@pytest.mark.parametrize("reject_fix", [False, True])
def test_rounds_merge_labels_matches_reference_statistics(reject_fix):
    sizes = [7, 7, 3, 7]
    got = Counter()
    ref = Counter()
    for s in range(400):
        got[tuple(np.concatenate([x for x, _ in ks.rounds_merge_labels(sizes, s, reject_fix)]).tolist()[:6])] += 1
        ref[tuple(rounds_labels_reference(sizes, 10_000 + s, reject_fix)[:6])] += 1
    seqs = np.concatenate([x for x, _ in ks.rounds_merge_labels(sizes, 1, reject_fix, block_rounds=2)])
    assert np.bincount(seqs).tolist() == sizes
    # the first round without the fix holds each chunk once; the two laws agree on common prefixes
    top = [k for k, _ in (got + ref).most_common(5)]
    for k in top:
        assert abs(got[k] - ref[k]) < 5 * math.sqrt(got[k] + ref[k] + 1)


def test_rounds_bias_stats_equal_chunks_and_tail():
    eq = ks.rounds_bias_stats([200] * 30, 0)
    assert eq["same_round_pairs"] == 0 and eq["window_mates"] == 0  # two lines of one chunk never share a round
    assert eq["adjacent_same"] < 0.2 * eq["adjacent_same_uniform"]
    assert np.allclose(eq["chunk_mean_pos"], 0.5, atol=0.03)
    n = np.array([200] * 30)
    assert eq["adjacent_same_uniform"] == pytest.approx((n * (n - 1)).sum() / (6000 * 5999))
    tail = ks.rounds_bias_stats([1000] * 10 + [500], 0)
    assert abs(tail["chunk_mean_pos"][-1] - 0.262) < 0.01
    fixed = ks.rounds_bias_stats([1000] * 10 + [500], 0, reject_fix=True)
    assert abs(fixed["chunk_mean_pos"][-1] - 0.5) < 0.05


def test_ray_style_shuffle_is_a_permutation_but_not_uniform(tmp_path):
    from kexue.shuffle.engines import ray_style_shuffle
    data = b"a\nbb\r\nc\n\nd"
    src = write(tmp_path, "in", data)
    for s in range(5):
        ray_style_shuffle(src, tmp_path / "o", rows_per_block=2, n_out=2, seed=s)
        assert sorted(out_lines(tmp_path / "o")) == sorted(expected_lines(data))
    four = [bytes([65 + i]) * 9 for i in range(4)]
    counts = ks.order_frequencies(four, range(480), tmp_path, shuffle_fn=ray_style_shuffle, rows_per_block=2, n_out=2)
    # each output block holds one line of each input block: A and B (block 1) never both come first
    perms = list(itertools.permutations(range(4)))
    never = [i for i, p in enumerate(perms) if {p[0], p[1]} in ({0, 1}, {2, 3})]
    assert len(never) == 8 and counts[never].sum() == 0 and (np.delete(counts, never) > 0).all()


# --- issue 19 §5: standard input, and a budget larger than the machine --------------------------

@pytest.mark.parametrize("args", [["-"], ["IN", "-"]])
def test_stdin_is_refused_with_what_to_do(tmp_path, args, capsys):
    src = write(tmp_path, "in", b"a\nb\n")
    argv = [src if a == "IN" else a for a in args] + ["-o", str(tmp_path / "o")]
    assert ks.main(argv) == 1
    err = capsys.readouterr().err
    assert "standard input ('-') is not supported" in err and "kexue-shuffle in.txt -o out.txt" in err
    assert "does not exist" not in err and not (tmp_path / "o").exists()
    assert Path(src).read_bytes() == b"a\nb\n"


def test_stdout_is_refused(tmp_path, capsys):
    src = write(tmp_path, "in", b"a\n")
    assert ks.main([src, "-o", "-"]) == 1
    assert "standard output ('-o -') is not supported" in capsys.readouterr().err


def test_a_file_named_dash_is_reachable_as_dot_slash_dash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("-").write_bytes(b"x\ny\n")
    assert ks.main(["./-", "-o", "out", "-q", "--seed", "0"]) == 0
    assert sorted(out_lines(tmp_path / "out")) == [b"x", b"y"]


def test_physical_ram_is_measured():
    ram = ks.physical_ram()
    assert ram is None or 64 << 20 < ram < 1 << 50
    if os.path.exists("/proc/meminfo"):  # Linux: the same number the kernel reports, to its kB rounding
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal:")).split()[1])
        assert abs(ram - kb * 1024) < 64 << 20


def test_memory_warning_names_the_measured_ram():
    assert ks.memory_warning(1 << 30, ram=2 << 30, limit=None) is None
    msg = ks.memory_warning(4 << 30, ram=2 << 30, limit=None)
    assert "--mem 4.0 GiB is larger than this machine's RAM (2.0 GiB, measured)" in msg
    msg = ks.memory_warning(4 << 30, ram=16 << 30, limit=3 << 30)
    assert "this container's memory limit (3.0 GiB, measured)" in msg


def test_cli_warns_when_mem_exceeds_ram_and_still_shuffles(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ksc, "physical_ram", lambda: 1 << 20)  # a 1 MiB machine
    monkeypatch.setattr(ksc, "cgroup_memory_limit", lambda: None)
    src = write(tmp_path, "in", b"b\na\nc\n")
    assert ks.main([src, "-o", str(tmp_path / "o"), "--mem", "64M", "--seed", "3"]) == 0
    err = capsys.readouterr().err
    assert "kexue-shuffle: warning: the memory budget --mem 64.0 MiB is larger than this machine's RAM (1.0 MiB" in err
    assert err.count("larger than") == 1  # once, from the CLI, not again from shuffle_files
    assert sorted(out_lines(tmp_path / "o")) == [b"a", b"b", b"c"]
    with pytest.warns(ResourceWarning, match="larger than this machine's RAM"):
        shuffle_files([src], tmp_path / "o2", mem="64M", seed=3)
