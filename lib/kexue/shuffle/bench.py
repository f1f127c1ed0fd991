"""Measurements for the chapter ``global-shuffle`` (https://kexue.fm/archives/8662) and
``tools/bench_shuffle.py``: test files, peak RSS of a process, O_DIRECT disk bandwidth, page-cache
eviction, output positions and order counts over many shuffles, tool comparisons and a profile.
Imports no torch (neither does the rest of :mod:`kexue.shuffle`)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import numpy as np

from .core import MODES, ShuffleError, ShuffleStats, multiset_fingerprint, parse_size, shuffle_files

_MEASURE = """import os, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
os.write(fd, b"%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


def run_measured(cmd, stdout=None, stdin=None, env=None, preexec_fn=None) -> tuple[int, float, int]:
    """Run ``cmd``; return (exit code, wall seconds, peak RSS of that process in bytes).

    The RSS is ``ru_maxrss`` from ``wait4``, taken by a small Python that *forks* the command: a
    child spawned straight from this (possibly large) process would inherit its high-water mark.
    Used by https://kexue.fm/archives/8662's chapter (``global-shuffle``) to compare tools."""
    r, w = os.pipe()
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen([sys.executable, "-c", _MEASURE, str(w), *map(os.fspath, cmd)], stdout=stdout,
                             stdin=stdin, env=env, preexec_fn=preexec_fn, pass_fds=(w,))
        os.close(w)
        w = None
        p.wait()
        secs = time.perf_counter() - t0
        out = os.read(r, 100).split()
    finally:
        os.close(r)
        if w is not None:
            os.close(w)
    if len(out) != 2:
        raise RuntimeError(f"could not measure {cmd!r}")
    return int(out[0]), secs, int(out[1]) * 1024


def make_test_file(path, n_lines: int, seed: int = 0, *, min_len: int = 20, max_len: int = 2000,
                   median_len: int = 120, dup_every: int = 100, final_newline: bool = False,
                   block: int = 200_000) -> int:
    """Write ``n_lines`` lines of lognormal length (bytes, clipped to [min_len, max_len], newline
    included) that start with their zero-based line number (``%010d\\t``) followed by random
    letters; every ``dup_every``-th line is the duplicate ``duplicate line``. With
    ``final_newline=False`` the last newline is left off. Returns the file size in bytes.
    Test data for https://kexue.fm/archives/8662 (chapter ``global-shuffle``).
    """
    if min_len < 12:
        raise ValueError("min_len must leave room for the line number (12 bytes)")
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz  ", dtype=np.uint8)
    dup = b"duplicate line"
    total = 0
    with open(path, "wb") as f:
        for s in range(0, n_lines, block):
            e = min(n_lines, s + block)
            ln = np.clip(rng.lognormal(np.log(median_len), 0.8, size=e - s), min_len, max_len).astype(np.int64)
            idx = np.arange(s, e)
            is_dup = (idx % dup_every == dup_every - 1) if dup_every else np.zeros(e - s, bool)
            ln[is_dup] = len(dup) + 1
            ends = np.cumsum(ln)
            starts = ends - ln
            buf = alphabet[rng.integers(0, len(alphabet), size=int(ends[-1]))]
            buf[ends - 1] = ord("\n")
            num = idx[~is_dup]
            st = starts[~is_dup]
            for p in range(10):  # zero-padded decimal line number, most significant digit first
                buf[st + p] = (num // 10 ** (9 - p)) % 10 + ord("0")
            buf[st + 10] = ord("\t")
            if is_dup.any():
                buf[starts[is_dup][:, None] + np.arange(len(dup))] = np.frombuffer(dup, dtype=np.uint8)
            data = buf.tobytes()
            if e == n_lines and not final_newline:
                data = data[:-1]
            f.write(data)
            total += len(data)
    return total


def disk_bandwidth(directory, size="1G", direct: bool = True) -> dict:
    """Sequential write then read speed (MB/s) of a ``size`` file in ``directory``, in 8 MiB blocks.

    ``direct=True`` bypasses the page cache (O_DIRECT) where the file system allows it, so the
    numbers are the device's; the result says which was measured. The file is removed.
    """
    size = parse_size(size)
    block = 8 << 20
    import mmap
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    buf.write(os.urandom(1 << 16) * (block >> 16))
    path = os.path.join(os.fspath(directory), f".kexue-bw-{os.getpid()}")
    flag = getattr(os, "O_DIRECT", 0) if direct else 0
    used_direct = bool(flag)
    out = {}
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | flag, 0o600)
        except OSError:
            fd, used_direct = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), False
        t = time.perf_counter()
        n = 0
        while n < size:
            n += os.write(fd, buf)
        os.fsync(fd)
        out["write_MBps"] = n / 1e6 / (time.perf_counter() - t)
        os.close(fd)
        if not used_direct:  # drop what we can of the cache
            with contextlib.suppress(Exception):
                fd = os.open(path, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
        fd = os.open(path, os.O_RDONLY | (flag if used_direct else 0))
        t = time.perf_counter()
        m = 0
        while True:
            got = os.readv(fd, [buf])
            if not got:
                break
            m += got
        out["read_MBps"] = m / 1e6 / (time.perf_counter() - t)
        os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        buf.close()
    out["direct_io"] = used_direct
    out["bytes"] = size
    return out


# -- experiments of the chapter ------------------------------------------------------------------
def evict_from_page_cache(path) -> None:
    """Write ``path``'s dirty pages back and drop its pages from the page cache
    (``posix_fadvise(DONTNEED)``: no root needed, only this file), so the next read hits the disk.
    Used by the chapter ``global-shuffle`` (https://kexue.fm/archives/8662) for cold timings."""
    fd = os.open(os.fspath(path), os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def write_numbered_lines(path, n_lines: int) -> None:
    """Write the lines ``0``, ``1``, ..., ``n_lines - 1`` (decimal, one per line), so an output
    line names its input position. Test data of https://kexue.fm/archives/8662 (``global-shuffle``)."""
    with open(path, "wb") as f:
        f.write(b"".join(b"%d\n" % i for i in range(n_lines)))


def output_positions(n_lines: int, seeds, workdir, shuffle_fn=None, **shuffle_kw) -> np.ndarray:
    """Shuffle a numbered file of ``n_lines`` lines once per seed; row s, column i is the relative
    output position of input line i, ``pos / (n_lines - 1)`` in [0, 1] (0.5 on average for every
    line under a uniform shuffle). ``shuffle_kw`` go to ``shuffle_fn(src, out, seed=..., **kw)``,
    by default ``shuffle_files`` (mode, mem, chunk_lines...); ``kexue.shuffle.engines.dask_shuffle``
    and ``kexue.shuffle.plain.plain_shuffle`` fit too.
    The bias measurements of https://kexue.fm/archives/8662's chapter (``global-shuffle``)."""
    if shuffle_fn is None:
        shuffle_fn = shuffle_files
        shuffle_kw.setdefault("progress", False)
    src, out = os.path.join(workdir, "numbered.txt"), os.path.join(workdir, "numbered.out")
    write_numbered_lines(src, n_lines)
    rows = []
    try:
        for s in seeds:
            shuffle_fn(src, out, seed=int(s), **shuffle_kw)
            with open(out, "rb") as f:
                order = np.array(f.read().split(), dtype=np.int64)  # order[p] = input line at p
            if np.sort(order).tolist() != list(range(n_lines)):
                raise ShuffleError("the output is not a permutation of the numbered input")
            where = np.empty(n_lines)
            where[order] = np.arange(n_lines) / max(n_lines - 1, 1)
            rows.append(where)
    finally:
        for p in (src, out):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    return np.array(rows)


def position_chisquare(positions: np.ndarray, bins: int = 10) -> np.ndarray:
    """Per input line, the chi-square p-value of "its output position is uniform": the positions
    over independent shuffles (rows of ``output_positions``) counted in ``bins`` equal bins,
    against ``n_shuffles / bins`` each (scipy.stats.chisquare, ``bins - 1`` degrees of freedom).
    Under an exactly uniform shuffle each p-value is (nearly) uniform on [0, 1].
    From https://kexue.fm/archives/8662's chapter (``global-shuffle``)."""
    from scipy import stats
    b = np.minimum((positions * bins).astype(np.int64), bins - 1)  # (shuffles, lines)
    counts = np.stack([(b == j).sum(axis=0) for j in range(bins)], axis=1)  # (lines, bins)
    return stats.chisquare(counts, axis=1).pvalue


def order_frequencies(lines: list, seeds, workdir, shuffle_fn=None, **shuffle_kw) -> np.ndarray:
    """Shuffle a file of the given distinct ``lines`` once per seed; count how often each of the
    ``len(lines)!`` orders comes out, in ``itertools.permutations`` order. An exactly uniform
    shuffle gives a multinomial with equal cell probabilities ``1/n!``.
    From https://kexue.fm/archives/8662's chapter (``global-shuffle``)."""
    import itertools
    src, out = os.path.join(workdir, "orders.txt"), os.path.join(workdir, "orders.out")
    with open(src, "wb") as f:
        f.write(b"".join(x + b"\n" for x in lines))
    if shuffle_fn is None:
        shuffle_fn = shuffle_files
        shuffle_kw.setdefault("progress", False)
    index = {p: i for i, p in enumerate(itertools.permutations(range(len(lines))))}
    which = {x: i for i, x in enumerate(lines)}
    counts = np.zeros(len(index), dtype=np.int64)
    try:
        for s in seeds:
            shuffle_fn(src, out, seed=int(s), **shuffle_kw)
            with open(out, "rb") as f:
                counts[index[tuple(which[x] for x in f.read().split(b"\n")[:-1])]] += 1
    finally:
        for p in (src, out):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    return counts


def compare_tools(src, workdir, mem, tools=("fair", "rounds", "shuf", "sort"), *, cold: bool = True,
                  repeat: int = 1, check: bool = True, nocache: bool = False, chunk_lines: int | None = None,
                  dup_line: bytes | None = None) -> dict:
    """Time each tool on ``src`` in its own process: ``fair``/``merge``/``rounds`` are
    ``kexue-shuffle --mode ...`` with memory budget ``mem``; ``shuf`` is coreutils ``shuf``
    (in memory); ``sort`` is ``sort -R -S mem`` (temporary files in ``workdir``); ``python`` is the
    article's algorithm in plain line-by-line Python (:mod:`kexue.shuffle.plain`, batches of
    ``chunk_lines`` or 100,000 lines); ``dask`` is the fair algorithm on ``dask.bag``
    (:mod:`kexue.shuffle.engines`, threads scheduler, disk shuffle, budget ``mem``).

    ``nocache``: ``kexue-shuffle`` and ``python`` keep their files out of the page cache
    (``--no-cache``); each result then has ``tmp_resident``, the measured fraction of the temporary
    files in the page cache when pass 2 starts. ``chunk_lines`` also goes to ``rounds``.
    ``dup_line``: the output's runs of that line are counted (``dup``: :func:`duplicate_runs`).

    ``cold``: the input is evicted from the page cache before each run and the output is fsync'd
    before the clock stops (``--fsync``; for shuf/sort the fsync is timed after they exit), so the
    first read and the last write reach the disk. Returns ``{tool: {seconds (median of repeat),
    MBps (input MB per second), peak_rss (bytes, wait4), correct (multiset fingerprint equal)}}``.
    Used by https://kexue.fm/archives/8662's chapter (``global-shuffle``) and tools/bench_shuffle.py.
    """
    src, workdir = os.fspath(src), os.fspath(workdir)
    nbytes = os.path.getsize(src)
    fp_in = multiset_fingerprint(src) if check else None
    out = os.path.join(workdir, "compare.out")
    env = dict(os.environ, LC_ALL="C", TMPDIR=workdir)
    results = {}
    for tool in tools:
        times, peak, ok = [], 0, True
        for _ in range(repeat):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            if cold:
                evict_from_page_cache(src)
            stats_path = os.path.join(workdir, "compare.json")
            extra = {}
            if tool in MODES or tool in ("python", "dask"):
                if tool in MODES:
                    cmd = [sys.executable, "-m", "kexue.shuffle", src, "-o", out, "--mem", str(mem), "--mode", tool,
                           "-q"] + (["--chunk-lines", str(chunk_lines)] if chunk_lines and tool == "rounds" else [])
                elif tool == "python":
                    cmd = [sys.executable, "-m", "kexue.shuffle.plain", src, "-o", out,
                           "--batch-size", str(chunk_lines or 100_000)]
                else:
                    cmd = [sys.executable, "-m", "kexue.shuffle.engines", src, "-o", out, "--mem", str(mem)]
                cmd += ["--seed", "0", "--tmpdir", workdir, "--stats-json", stats_path]
                cmd += (["--fsync"] if cold else []) + (["--no-cache"] if nocache and tool != "dask" else [])
                rc, secs, rss = run_measured(cmd, env=env)
                if rc == 0:
                    import json
                    with open(stats_path) as f:
                        extra = json.load(f)
                    os.unlink(stats_path)
            else:
                cmd = {"shuf": ["shuf", src],
                       "sort": ["sort", "-R", "-S", str(parse_size(mem) >> 10) + "K", "-T", workdir, src]}[tool]
                with open(out, "wb") as f:
                    rc, secs, rss = run_measured(cmd, stdout=f, env=env)
                    if cold:
                        t = time.perf_counter()
                        os.fsync(f.fileno())
                        secs += time.perf_counter() - t
            if rc != 0:
                raise RuntimeError(f"{tool} failed with exit code {rc}")
            ok = ok and (not check or multiset_fingerprint(out).same_multiset(fp_in))
            times.append(secs)
            peak = max(peak, rss)
            dup = duplicate_runs(out, dup_line) if dup_line is not None else None
        secs = float(np.median(times))
        results[tool] = {"seconds": secs, "MBps": nbytes / 1e6 / secs, "peak_rss": peak,
                         "correct": ok if check else None, "input_bytes": nbytes,
                         "tmp_resident": extra.get("tmp_resident"), "dup": dup}
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)
    return results


def profile_shuffle(src, out, mem, top: int = 12, **shuffle_kw) -> tuple[str, ShuffleStats]:
    """cProfile one in-process ``shuffle_files`` run; returns (the ``top`` entries by own time, as
    text without directory names, stats). The profile that guided the hot path of
    https://kexue.fm/archives/8662's chapter (``global-shuffle``)."""
    import cProfile
    import io as _io
    import pstats
    prof = cProfile.Profile()
    prof.enable()
    try:
        st = shuffle_files(src, out, mem=mem, progress=False, **shuffle_kw)
    finally:
        prof.disable()
    buf = _io.StringIO()
    ps = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime")
    ps.print_stats(top)
    text = buf.getvalue()
    text = text[text.find("   ncalls"):] if "   ncalls" in text else text
    return text.rstrip(), st


def duplicate_runs(path, line: bytes, block: int = 16 << 20) -> dict:
    """How the copies of ``line`` lie in the file at ``path``: ``copies``, ``runs`` (maximal groups of
    adjacent copies) and ``longest`` (copies in the longest run). A uniform shuffle leaves nearly
    every copy on its own (runs close to copies); ``sort -R`` sorts by a random hash of the line, so
    equal lines come out together (one run), as terashuf's README warns.
    From https://kexue.fm/archives/8662's chapter (``global-shuffle``)."""
    from .core import _LineReader
    copies = runs = longest = cur = 0
    for lines, _ in _LineReader([os.fspath(path)], block, 1 << 62):
        if not lines:
            continue
        v = np.fromiter((x == line for x in lines), dtype=np.int8, count=len(lines))
        copies += int(v.sum())
        d = np.diff(np.concatenate([[0], v, [0]]))
        starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
        if len(starts) == 0:
            cur = 0
            continue
        lengths = ends - starts
        if starts[0] == 0 and cur:  # the first run continues the previous block's last one
            lengths[0] += cur
            runs -= 1
        runs += len(lengths)
        longest = max(longest, int(lengths.max()))
        cur = int(lengths[-1]) if ends[-1] == len(v) else 0
    return {"copies": copies, "runs": runs, "longest": longest}


def rounds_merge_labels(sizes, seed: int, reject_fix: bool = False, block_rounds: int = 256):
    """Yield, block after block, the input chunk of each output position of the article's
    round-robin merge (先竖后横) over chunks of ``sizes`` lines, at the index level (no files): in
    round r every chunk with lines left gives one (``reject_fix``: with probability n_c / n_max), the
    chunks in a fresh random order. Also yields each block's round number per position. The
    vectorised merge of ``kexue-shuffle --mode rounds`` at any scale, for
    https://kexue.fm/archives/8662's chapter (``global-shuffle``)."""
    rng = np.random.default_rng(seed)
    n = np.asarray(sizes, dtype=np.int64)
    rem = n.copy()
    p_keep = n / n.max()
    r0 = 0
    while rem.sum() > 0:
        alive = np.flatnonzero(rem)
        R = int(max(1, min(block_rounds, rem[alive].max())))
        if reject_fix:
            inc = rng.random((R, len(alive))) < p_keep[alive]
        else:
            inc = np.ones((R, len(alive)), dtype=bool)
        inc &= np.cumsum(inc, axis=0) <= rem[alive]
        order = rng.permuted(np.broadcast_to(np.arange(len(alive)), (R, len(alive))), axis=1)
        keep = np.take_along_axis(inc, order, axis=1)
        labels = alive[order][keep]
        rounds = np.broadcast_to(np.arange(r0, r0 + R)[:, None], (R, len(alive)))[keep]
        rem -= np.bincount(labels, minlength=len(n))
        r0 += R
        if len(labels):
            yield labels, rounds


def rounds_bias_stats(sizes, seed: int, reject_fix: bool = False, block_rounds: int = 256) -> dict:
    """Statistics of the article's merge over chunks of ``sizes`` lines (:func:`rounds_merge_labels`)
    beside their values under a uniform shuffle (exact expectations):

    - ``chunk_mean_pos``: each chunk's mean relative output position (uniform: 0.5 for every chunk);
    - ``adjacent_same``: the fraction of adjacent output pairs whose two lines come from the same
      input chunk (uniform: sum n_c (n_c - 1) / (N (N - 1)));
    - ``same_round_pairs``: pairs of lines of one chunk in the same round (0 by construction);
    - ``window_mates``: per window of ``w`` = number of chunks consecutive output lines (aligned),
      the mean number of pairs from the same chunk (uniform: C(w, 2) * sum n_c (n_c - 1) / (N (N - 1))).

    The round-robin bias at the article's scale (chunks of 100,000 lines, thousands of them),
    https://kexue.fm/archives/8662's chapter (``global-shuffle``)."""
    n = np.asarray(sizes, dtype=np.int64)
    N, k = int(n.sum()), len(n)
    pos_sum = np.zeros(k)
    adjacent = same_round = 0
    w = k
    carry = np.zeros(0, dtype=np.int64)
    start = 0
    prev_label = prev_round = -1
    win_total = 0.0
    win_count = 0
    for labels, rounds in rounds_merge_labels(n, seed, reject_fix, block_rounds):
        m = len(labels)
        pos_sum += np.bincount(labels, weights=np.arange(start, start + m, dtype=np.float64), minlength=k)
        both = np.concatenate([[prev_label], labels])
        rnd = np.concatenate([[prev_round], rounds])
        same = both[1:] == both[:-1]
        adjacent += int(same.sum())
        same_round += int((same & (rnd[1:] == rnd[:-1])).sum())
        prev_label, prev_round = int(labels[-1]), int(rounds[-1])
        # aligned windows of w output lines: same-chunk pairs = sum over chunks of C(count, 2)
        buf = np.concatenate([carry, labels])
        full = len(buf) // w
        if full:
            cnt = np.bincount(np.repeat(np.arange(full, dtype=np.int64) * k, w) + buf[:full * w], minlength=full * k)
            win_total += float((cnt * (cnt - 1) // 2).sum())
            win_count += full
        carry = buf[full * w:]
        start += m
    same_pair_prob = float((n * (n - 1)).sum()) / (N * (N - 1)) if N > 1 else 0.0
    return {"chunk_mean_pos": pos_sum / n / max(N - 1, 1), "adjacent_same": adjacent / max(N - 1, 1),
            "adjacent_same_uniform": same_pair_prob, "same_round_pairs": same_round,
            "window": w, "window_mates": win_total / max(win_count, 1),
            "window_mates_uniform": w * (w - 1) / 2 * same_pair_prob, "n_lines": N, "n_chunks": k}
