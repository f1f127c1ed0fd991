"""The core of ``kexue.shuffle``: ``shuffle_files`` and the machinery behind ``kexue-shuffle``.

From 有限内存下全局打乱几百G文件（Python）, https://kexue.fm/archives/8662 (chapter ``global-shuffle``).
Works on bytes: a *line* is the bytes before a ``\\n``; ``\\r`` and non-UTF-8 bytes are content.

    kexue-shuffle corpus/*.json -o shuffled.json --mem 2G --verify
    kexue-shuffle big.txt -o 'part-{:05d}.txt' --split-lines 100000 --seed 0

Three modes, each two passes over the data within the memory budget ``M``:

``fair`` (default): random-bucket scatter, then in-memory shuffles (Rao 1961, Sandelius 1962).
    Pass 1 streams the input once and sends every line to bucket ``B_i ~ Uniform{0..k-1}``, iid,
    appending it to that bucket's temporary file. Pass 2 loads the buckets one at a time, shuffles
    each with an exact Fisher-Yates shuffle and appends it to the output. ``k`` is chosen so that a
    bucket's expected memory cost is ``M/3``; a bucket that still comes out too big (over 0.7 M)
    is split again by the same method, recursively. An input that fits is shuffled in memory.

    *Uniformity.* Label the lines 1..N by input position. The output order is a function of the
    bucket labels ``(B_1..B_N)`` and of one permutation per bucket. For any fixed relabelling τ of
    the lines, ``(B_τ(1)..B_τ(N))`` has the law of ``(B_1..B_N)`` (iid), and given the bucket
    contents each bucket's order is uniform over its orderings (Fisher-Yates; by induction also for
    a bucket split again). So the law of the output permutation σ is invariant under σ ↦ σ∘τ for
    every τ, and the only such law on S_N is the uniform one: every one of the N! orders has
    probability exactly 1/N!. Bucket sizes only decide where the work happens, never the law.
    (``tests/lib/test_shuffle.py`` counts all 24 orders of a 4-line file over many seeds, with
    buckets and re-splits forced, and runs a chi-square test.) Pass 2 deletes each bucket once it
    is written out, so the disk needs about the input's size free beside the output.

``merge``: terashuf's fair merge. Pass 1 cuts the input into consecutive chunks that fit in
    memory and writes each one shuffled; pass 2 draws the next chunk with probability
    ``remaining_c / total_remaining``, vectorised per block: the chunk counts of a block of ``b``
    draws are multivariate-hypergeometric and, given the counts, their order is a uniform
    arrangement (exchangeability of draws without replacement). Exact too: every interleaving of
    the chunk sequences has probability ∏n_c!/N!, each chunk order 1/n_c!, and (interleaving,
    chunk orders) ↔ output order is a bijection, so each order has probability 1/N!. Needs 2x the
    input free (every chunk is kept until the end) and is slower than ``fair``.

``rounds``: the article's round-robin merge (先竖后横). Same pass 1; in round r every chunk that
    still has lines gives its r-th line, the chunks visited in a fresh random order. Not uniform:
    two lines of one chunk never share a round, and a short last chunk runs out early, so its
    lines crowd the front of the output. ``reject_fix=True`` includes chunk c in each round with
    probability ``n_c / n_max`` so all chunks finish together in expectation (still not exact).
    ``chunk_lines`` cuts chunks every N lines as the article's ``batch_size`` does.

Memory: a line held in memory costs its bytes plus ``LINE_OVERHEAD`` (object header, pointers).
Reads are ``M/16`` (at most 16 MiB) blocks, split with ``bytes.split``; lines are grouped and
permuted as numpy object arrays and written with ``b"\\n".join`` blocks; one thread reads ahead
and one writes behind. Measured peak RSS is about ``M`` plus the interpreter's ~35 MB.

Defined behaviour and guarantees:

- Lines are kept byte for byte. A file's last line without a newline gets one (``\\r\\n`` if the
  file's previous line ended in ``\\r\\n``, else ``\\n``), so lines of consecutive files never merge.
  Empty files give nothing; empty lines are lines.
- A line longer than ``M/8`` is streamed to its own temporary file and shuffled as one item
  (``fair`` mode; ``merge``/``rounds`` stop with a clear error instead).
- The inputs are only read; an output that names an input is refused. The output is written
  under a hidden temporary name and renamed at the end, so ``output`` is never half-written.
  Temporary files live in a uniquely named directory ``kexue-shuffle-<pid>-*`` under ``tmpdir``
  (default: the output's directory, so they never land in a RAM-backed /tmp; the unfinished
  output sits there too when ``tmpdir`` is on the output's disk, else beside ``output`` as
  ``.<name>.kexue-shuffle-*.tmp``). They are removed on success, on error, on Ctrl-C (SIGINT) and
  on SIGTERM/SIGHUP. Only SIGKILL or a power cut can leave them behind.
- Free disk space is checked (``shutil.disk_usage``) before any work starts.
- At most a few files are open at any time (buckets are appended with open-write-close, merge
  readers re-open to refill), so the number of temporary files is not limited by ``ulimit -n``.
- ``nocache=True`` (``--no-cache``) keeps the data out of the page cache, the regime of a file far
  larger than RAM: ``posix_fadvise(DONTNEED)`` on the input as it is read, on the temporary files as
  they are written (which also starts their write-back) and read, and on the output; at the end of
  pass 1 every temporary file is ``fdatasync``'d and dropped, so pass 2 reads it from the disk.
  ``ShuffleStats.tmp_resident`` is the measured fraction of the temporary files' bytes still in the
  page cache when pass 2 starts (``mincore``), with or without the option.
- ``verify=True`` re-reads the written output and compares its multiset fingerprint (line count,
  byte count, sum and xor of 64-bit line hashes) with the input's before the rename.
- Same inputs, budget, mode and seed give the same output.

The command line is :mod:`kexue.shuffle.cli`, the chapter's measurements :mod:`kexue.shuffle.bench`.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

LINE_OVERHEAD = 80
"""Bytes of memory one in-memory line costs beyond its content: the bytes object header (33 B plus
allocator rounding) and the pointers in the lists and arrays that hold and permute it."""

MIN_BUDGET = 4096
MODES = ("fair", "merge", "rounds")
_MASK64 = (1 << 64) - 1
_IOV = 512  # buffers per writev call (the kernel's IOV_MAX is 1024)
_THREAD_MIN = 4 << 20  # inputs below this are read and written without helper threads


class ShuffleError(Exception):
    """A problem with the inputs, the options or the machine, stated so the user can fix it."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so that the clean-up code runs."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signal.Signals(signum).name}")
        self.signum = signum


# -- sizes ----------------------------------------------------------------------------------------
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text) -> int:
    """``"512M"`` -> 536870912. Units K/M/G/T are powers of 1024; ``KB``/``KiB`` spellings work."""
    if isinstance(text, (int, np.integer)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text).upper())
    if not m:
        raise ShuffleError(f"cannot read the size {text!r}: write e.g. 512M, 4G or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def physical_ram() -> int | None:
    """This machine's physical memory in bytes, measured (``os.sysconf``: pages x page size; on
    macOS ``hw.memsize``), or None where it cannot be read."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        pass
    try:
        import subprocess
        return int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                  timeout=5).stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def cgroup_memory_limit() -> int | None:
    """The memory limit of this process's control group (a container's limit; cgroup v2
    ``memory.max`` or v1 ``memory.limit_in_bytes``), or None when there is none or it cannot be read."""
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(f).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            return int(text)
    return None


def memory_warning(budget: int, ram: int | None = None, limit: int | None = None) -> str | None:
    """The warning for a memory budget larger than the machine's RAM or the container's memory limit,
    both measured (:func:`physical_ram`, :func:`cgroup_memory_limit`; None when it fits or neither is
    known): such a budget is accepted, but the in-memory shuffle of a bucket would swap or be killed."""
    ram = physical_ram() if ram is None else ram
    limit = cgroup_memory_limit() if limit is None else limit
    what, avail = ("this machine's RAM", ram)
    if limit is not None and (avail is None or limit < avail):
        what, avail = ("this container's memory limit", limit)
    if avail is None or budget <= avail:
        return None
    return (f"the memory budget --mem {format_size(budget)} is larger than {what} "
            f"({format_size(avail)}, measured); the shuffle may swap heavily or be killed (peak RSS can "
            f"reach 1.5 x the budget + 64 MB): give at most about {format_size(avail // 2)}")


STDIN_MESSAGE = ("reading standard input ('-') is not supported: the shuffle needs the size of its input "
                 "before it starts (to check free disk) and reads each input as a file. Save the stream "
                 "first (e.g. `... > in.txt`, then `kexue-shuffle in.txt -o out.txt`); a file really named "
                 "'-' can be given as ./-")
STDOUT_MESSAGE = ("writing to standard output ('-o -') is not supported: the output is written under a "
                  "temporary name and renamed at the end; give a file name (a file named '-' as ./-)")


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


@dataclass(frozen=True)
class _Budget:
    """How a memory budget ``M`` is spent (the measured peak stays below ``M`` + the interpreter)."""
    total: int

    @property
    def piece(self) -> int:  # bytes per read
        return int(min(max(self.total // 16, 1024), 16 << 20))

    @property
    def huge(self) -> int:  # lines longer than this are streamed, never held in memory
        return max(self.total // 8, self.piece)

    @property
    def cap(self) -> int:  # largest cost shuffled in memory (whole input, a bucket, a chunk)
        return int(0.7 * self.total)

    @property
    def target(self) -> int:  # mean bucket cost aimed at by the scatter
        return self.total // 3

    @property
    def pending(self) -> int:  # scattered bytes held before they are appended to the buckets
        return int(0.2 * self.total)  # twice: one batch filling, one being written


# -- fingerprints ---------------------------------------------------------------------------------
@dataclass
class Fingerprint:
    """Multiset fingerprint of lines: count, bytes (terminators included), sum and xor of hashes.

    Two files hold the same lines (in any order) => equal fingerprints; the converse fails only on
    a 64-bit hash collision. Line hashes are Python's ``hash`` of the line's bytes (salted per
    process, so compare fingerprints made in one process) or blake2b for lines longer than the
    in-memory limit, which are hashed while streaming. O(1) memory.
    """
    n_lines: int = 0
    n_bytes: int = 0
    hsum: int = 0
    hxor: int = 0

    def add_lines(self, lines) -> None:
        n = len(lines)
        if n:
            h = np.fromiter(map(hash, lines), dtype=np.int64, count=n)
            self.n_lines += n
            self.hsum = (self.hsum + int(h.view(np.uint64).sum())) & _MASK64
            self.hxor ^= int(np.bitwise_xor.reduce(h.view(np.uint64)))

    def add_hash(self, h: int) -> None:
        self.n_lines += 1
        self.hsum = (self.hsum + h) & _MASK64
        self.hxor ^= h & _MASK64

    def same_multiset(self, other: "Fingerprint") -> bool:
        return (self.n_lines, self.n_bytes, self.hsum, self.hxor) == (
            other.n_lines, other.n_bytes, other.hsum, other.hxor)


# -- reading lines --------------------------------------------------------------------------------
@dataclass
class _HugeLine:
    """A line longer than the in-memory limit, kept in its own file (content without the newline)."""
    path: str
    size: int


class _HugeToFile:
    def __init__(self, workdir: str, number: int, fp: "Fingerprint | None" = None):
        self.path = os.path.join(workdir, f"line-{number:06d}")
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.size = 0
        self.hash = _HugeToHash(fp) if fp is not None else None

    def write(self, data) -> None:
        _write_all(self.fd, data)
        self.size += len(data)
        if self.hash is not None:
            self.hash.write(data)

    def close(self) -> _HugeLine:
        os.close(self.fd)
        if self.hash is not None:
            self.hash.close()
        return _HugeLine(self.path, self.size)


class _HugeToHash:
    def __init__(self, fp: Fingerprint):
        self.fp, self.h = fp, hashlib.blake2b(digest_size=8)

    def write(self, data) -> None:
        self.h.update(data)

    def close(self) -> None:
        self.fp.add_hash(int.from_bytes(self.h.digest(), "little"))
        return None


def _read_ahead(f, size: int):
    """Yield ``f.read(size)`` blocks until EOF, reading the next block in a thread meanwhile."""
    from concurrent.futures import ThreadPoolExecutor
    if os.fstat(f.fileno()).st_size <= max(4 * size, _THREAD_MIN):  # small: a thread costs more than it saves
        data = f.read(size)
        while data:
            yield data
            data = f.read(size)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="kexue-shuffle-read") as pool:
        fut = pool.submit(f.read, size)
        while True:
            data = fut.result()
            if not data:
                return
            fut = pool.submit(f.read, size)
            yield data


class _LineReader:
    """Stream the lines of files in pieces of ~``piece`` bytes: ``for lines, huge in reader``.

    ``lines`` is a list of line contents (no terminator) in file order, except that a line longer
    than ``huge_limit`` is passed to ``huge_sink()`` as it streams and comes back in ``huge`` (a
    list of whatever the sink's ``close`` returns). Counts the added terminators.
    """

    def __init__(self, paths, piece: int, huge_limit: int, huge_sink=None, progress=None, drop: bool = False):
        if piece > huge_limit:
            raise ValueError("piece must not exceed huge_limit")
        self.paths, self.piece, self.huge_limit = list(paths), piece, huge_limit
        self.drop = drop
        self.huge_sink, self.progress = huge_sink, progress
        self.added_bytes = 0
        self.added_lines = 0

    def _open_huge(self):
        if self.huge_sink is None:
            raise ShuffleError(f"a line is longer than {format_size(self.huge_limit)} (the longest line this "
                               "--mem holds in memory: an eighth of it, or one read): use --mode fair, which streams such lines, or a larger --mem")
        return self.huge_sink()

    def __iter__(self):
        for path in self.paths:
            yield from self._iter_file(path)

    def _iter_file(self, path):
        carry = b""      # the unfinished line, at most huge_limit bytes
        sink = None      # open sink while a huge line streams
        last_cr = False  # did the last finished line of this file end in \r ?
        with open(path, "rb", buffering=0) as f:
            done = 0
            for data in _read_ahead(f, self.piece):
                if self.progress is not None:
                    self.progress(len(data))
                if self.drop:  # what was read will not be read again: out of the page cache
                    _drop_cache(f.fileno(), 0, done + len(data))
                done += len(data)
                if sink is not None:
                    i = data.find(b"\n")
                    if i < 0:
                        sink.write(data)
                        last_tail = data[-1:]
                        continue
                    sink.write(data[:i])
                    last_cr = data[i - 1:i] == b"\r" if i else last_tail == b"\r"
                    yield [], [sink.close()]
                    sink = None
                    data = data[i + 1:]
                    if not data:
                        continue
                parts = data.split(b"\n")
                if len(parts) == 1:
                    carry += data
                    if len(carry) > self.huge_limit:
                        sink = self._open_huge()
                        sink.write(carry)
                        last_tail, carry = carry[-1:], b""
                    continue
                if carry:
                    parts[0] = carry + parts[0]
                carry = parts.pop()
                last_cr = parts[-1][-1:] == b"\r"
                huge = []
                if len(parts[0]) > self.huge_limit:  # only the first line can exceed one piece
                    sink = self._open_huge()
                    sink.write(parts[0])
                    huge.append(sink.close())
                    sink = None
                    parts[0] = parts[-1]
                    parts.pop()
                yield parts, huge
                if len(carry) > self.huge_limit:
                    sink = self._open_huge()
                    sink.write(carry)
                    last_tail, carry = carry[-1:], b""
        if sink is None and not carry:
            return
        # a final line without a newline gets one, matching the file's line endings; the \r it may
        # get counts towards the in-memory limit, so a line that it pushes over the limit streams
        # like any other long line (and reads back the same way from the output)
        term = b"\r" if last_cr else b""
        self.added_bytes += 1 + len(term)
        self.added_lines += 1
        if sink is None and len(carry) + len(term) > self.huge_limit:
            sink = self._open_huge()
            sink.write(carry)
            carry = b""
        if sink is not None:
            sink.write(term)
            yield [], [sink.close()]
        else:
            yield [carry + term], []


def multiset_fingerprint(paths, mem="64M") -> Fingerprint:
    """Fingerprint of the lines of ``paths`` (one file or a list), read with the tool's own reader.

    Use the same ``mem`` for files you compare: it sets which long lines are hashed with blake2b.
    From https://kexue.fm/archives/8662 (chapter ``global-shuffle``): the streaming check behind
    ``--verify``.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    budget = _Budget(parse_size(mem))
    fp = Fingerprint()
    reader = _LineReader(paths, budget.piece, budget.huge, lambda: _HugeToHash(fp))
    for lines, _ in reader:
        fp.add_lines(lines)
    fp.n_bytes = sum(os.path.getsize(p) for p in paths) + reader.added_bytes
    return fp


# -- writing --------------------------------------------------------------------------------------
def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def run_comparison_tool(prog: str, call, stats_json: str | None) -> int:
    """The ``main`` of a comparison script (:mod:`kexue.shuffle.plain`, :mod:`kexue.shuffle.engines`):
    run ``call()``, print ``prog: error: …`` and return 1 on a :class:`ShuffleError` or an OSError,
    else write the returned stats dict to ``stats_json`` (when given) and return 0."""
    try:
        stats = call()
    except (ShuffleError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    if stats_json:
        import json
        with open(stats_json, "w") as f:
            json.dump(stats, f)
    return 0


def _drop_cache(fd: int, offset: int = 0, length: int = 0) -> None:
    """``posix_fadvise(DONTNEED)``: start writing back the range's dirty pages and drop its clean
    ones from the page cache (no root needed). A no-op where the call is missing."""
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _settle(paths) -> None:
    """Write ``paths`` back to the disk (fdatasync) and drop them from the page cache."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                _drop_cache(fd)
            finally:
                os.close(fd)


def page_cache_resident(path) -> int | None:
    """Bytes of ``path`` that are in the page cache now (``mmap`` + ``mincore``, without touching
    the pages), or None where that cannot be measured. How the chapter ``global-shuffle``
    (https://kexue.fm/archives/8662) checks that ``nocache`` keeps the temporary files on the disk."""
    import ctypes
    import mmap
    size = os.path.getsize(path)
    if size == 0:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        try:
            n = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = ctypes.create_string_buffer(n)
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            resident = int((np.frombuffer(vec.raw[:n], dtype=np.uint8) & 1).sum())
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)
    return min(resident * mmap.PAGESIZE, size)


def _resident_fraction(paths) -> float | None:
    total = res = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            r = page_cache_resident(path)
            if r is None:
                return None
            res += r
            total += os.path.getsize(path)
    return res / total if total else None


def _writev_drop(fd: int, bufs: list) -> None:
    _writev_all(fd, bufs)
    _drop_cache(fd)


def _writev_all(fd: int, bufs: list) -> None:
    for i in range(0, len(bufs), _IOV):
        group = bufs[i:i + _IOV]
        done = os.writev(fd, group)
        if done < sum(map(len, group)):  # short write (rare): finish buffer by buffer
            for b in group:
                if done >= len(b):
                    done -= len(b)
                    continue
                _write_all(fd, memoryview(b)[done:])
                done = 0


class _Background:
    """One thread that runs the writes in submission order, so the kernel's copy into the page
    cache (and any wait for the disk) overlaps the next block's work. At most ``max_bytes`` are
    queued; ``submit`` waits for older writes beyond that and re-raises their errors.
    ``threaded=False`` runs every write at once (small inputs, where a thread costs more)."""

    def __init__(self, max_bytes: int, threaded: bool = True):
        from concurrent.futures import ThreadPoolExecutor
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="kexue-shuffle-io") if threaded else None
        self.max_bytes, self.queued, self.futures = max_bytes, 0, []

    def submit(self, nbytes: int, fn, *args) -> None:
        if self.pool is None:
            fn(*args)
            return
        while self.futures and self.queued + nbytes > self.max_bytes:
            fut, n = self.futures.pop(0)
            self.queued -= n
            fut.result()
        self.futures.append((self.pool.submit(fn, *args), nbytes))
        self.queued += nbytes

    def drain(self) -> None:
        while self.futures:
            fut, n = self.futures.pop(0)
            self.queued -= n
            fut.result()

    def shutdown(self) -> None:
        """Wait for the write in progress, drop the rest (clean-up after an error or a signal)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.futures, self.queued = [], 0


def _append_files(paths: list, bufs_per_path: list, drop: bool = False) -> None:
    for path, bufs in zip(paths, bufs_per_path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            _writev_all(fd, bufs)
            if drop:
                _drop_cache(fd)
        finally:
            os.close(fd)


def _copy_file_into(fd: int, path: str, size: int) -> None:
    with open(path, "rb", buffering=0) as f:
        while size > 0:
            data = f.read(min(size, 8 << 20))
            if not data:
                raise ShuffleError(f"temporary file {path} is shorter than expected")
            _write_all(fd, data)
            size -= len(data)


def _first_output_name(output: str, split_lines: int | None) -> str:
    """The first output file's name (``output`` itself unless ``split_lines``)."""
    if not split_lines:
        return output
    return output.format(0) if "{" in output else f"{output}.00000"


class _OutputWriter:
    """Writes lines to hidden temporary files beside the output; ``commit`` renames them."""

    def __init__(self, output: str, split_lines: int | None, piece_bytes: int, fsync: bool,
                 tmp_dir: str | None, io: _Background, drop: bool = False):
        self.output, self.split, self.tmp_dir, self.io = output, split_lines, tmp_dir, io
        self.drop = drop
        self.piece_bytes, self.fsync = piece_bytes, fsync
        self.parts: list[tuple[str, str]] = []  # (temporary, final)
        self.fd = None
        self.in_part = 0
        self.n_lines = 0
        self.n_bytes = 0
        self.token = f"{os.getpid()}-{os.urandom(4).hex()}"
        if not split_lines:
            self._open_next()  # the output exists even when there are no lines

    def final_name(self, i: int) -> str:
        if not self.split:
            return self.output
        if "{" in self.output:
            return self.output.format(i)
        return f"{self.output}.{i:05d}"

    def _open_next(self) -> None:
        self._close_current()
        final = self.final_name(len(self.parts))
        d, base = os.path.split(os.path.abspath(final))
        tmp = os.path.join(self.tmp_dir or d, f".{base}.kexue-shuffle-{self.token}.{len(self.parts)}.tmp")
        self.parts.append((tmp, final))
        self.fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.in_part = 0

    def _close_current(self) -> None:
        if self.fd is not None:
            self.io.drain()
            if self.fsync:
                os.fsync(self.fd)
            if self.drop:
                _drop_cache(self.fd)
            os.close(self.fd)
            self.fd = None

    def _room(self) -> int:
        if self.fd is None or (self.split and self.in_part >= self.split):
            self._open_next()
        return self.split - self.in_part if self.split else 1 << 62

    def write_lines(self, items, avg_len: float = 100.0) -> None:
        """Write a list or object array of line contents, in order, each with a newline."""
        step_max = int(max(1, min(8192, self.piece_bytes // max(avg_len, 1.0))))
        i, n = 0, len(items)
        while i < n:
            step = min(step_max, n - i, self._room())
            part = items[i:i + step]
            if isinstance(part, np.ndarray):
                part = part.tolist()
            data = b"\n".join(part)
            self.io.submit(len(data), _writev_drop if self.drop else _writev_all, self.fd, [data, b"\n"])
            self.n_bytes += len(data) + 1
            self.in_part += step
            self.n_lines += step
            i += step

    def write_huge(self, item: _HugeLine) -> None:
        self._room()
        self.io.drain()
        _copy_file_into(self.fd, item.path, item.size)
        _write_all(self.fd, b"\n")
        self.n_bytes += item.size + 1
        self.in_part += 1
        self.n_lines += 1

    @property
    def temp_paths(self) -> list[str]:
        return [t for t, _ in self.parts]

    def close(self) -> None:
        self._close_current()

    def commit(self) -> list[str]:
        self._close_current()
        for tmp, final in self.parts:
            os.replace(tmp, final)
        done = [f for _, f in self.parts]
        self.parts = []
        return done

    def abort(self) -> None:
        self.io.shutdown()
        with contextlib.suppress(OSError):
            self._close_current()
        for tmp, _ in self.parts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self.parts = []


# -- in-memory shuffle ----------------------------------------------------------------------------
def _emit_shuffled(writer: _OutputWriter, lines: list, huge: list, rng: np.random.Generator) -> None:
    """Write ``lines`` (+ streamed ``huge`` items) in a uniformly random order (Fisher-Yates).

    Takes ownership of ``lines`` and empties it."""
    n, h = len(lines), len(huge)
    if n + h == 0:
        return
    avg = sum(map(len, lines[:4096])) / min(n, 4096) + 1 if n else 1.0  # sets the write block
    arr = np.fromiter(lines, dtype=object, count=n)
    lines.clear()
    if h == 0:
        rng.shuffle(arr)  # numpy's Fisher-Yates, unbiased bounded integers
        writer.write_lines(arr, avg)
        return
    perm = rng.permutation(n + h)
    at_huge = np.flatnonzero(perm >= n)
    start = 0
    for pos in at_huge:
        writer.write_lines(arr[perm[start:pos]], avg)
        writer.write_huge(huge[perm[pos] - n])
        start = pos + 1
    writer.write_lines(arr[perm[start:]], avg)


# -- fair mode: random-bucket scatter -------------------------------------------------------------
class _Scatter:
    """Append every line to bucket ``B ~ Uniform{0..k-1}`` (iid per line), batching the writes."""

    def __init__(self, workdir: str, prefix: str, k: int, rng, pending_cap: int, io: _Background,
                 drop: bool = False):
        self.k, self.rng, self.pending_cap, self.io, self.drop = k, rng, pending_cap, io, drop
        self.paths = [os.path.join(workdir, f"{prefix}{j:05d}") for j in range(k)]
        self.pending: list[list] = [[] for _ in range(k)]
        self.pending_bytes = 0
        self.lines = np.zeros(k, dtype=np.int64)
        self.bytes = np.zeros(k, dtype=np.int64)
        self.huge: list[list] = [[] for _ in range(k)]
        self.dtype = np.uint16 if k <= 1 << 16 else np.uint32

    def add(self, lines: list) -> None:
        n = len(lines)
        if n == 0:
            return
        b = self.rng.integers(0, self.k, size=n, dtype=self.dtype)
        counts = np.bincount(b, minlength=self.k)
        grouped = np.fromiter(lines, dtype=object, count=n)[np.argsort(b, kind="stable")].tolist()
        ends = np.cumsum(counts).tolist()
        self.lines += counts
        start = 0
        for j in np.flatnonzero(counts).tolist():
            data = b"\n".join(grouped[start:ends[j]])
            start = ends[j]
            self.pending[j].append(data)
            self.pending[j].append(b"\n")
            self.bytes[j] += len(data) + 1
            self.pending_bytes += len(data) + 1
        if self.pending_bytes >= self.pending_cap:
            self.flush()

    def add_huge(self, items: list) -> None:
        for item in items:
            self.huge[int(self.rng.integers(0, self.k))].append(item)

    def flush(self, wait: bool = False) -> None:
        """Hand the held pieces to the I/O thread (``wait``: and let it finish)."""
        full = [j for j, bufs in enumerate(self.pending) if bufs]
        if full:
            self.io.submit(self.pending_bytes, _append_files, [self.paths[j] for j in full],
                           [self.pending[j] for j in full], self.drop)
            for j in full:
                self.pending[j] = []
        self.pending_bytes = 0
        if wait:
            self.io.drain()


def _n_buckets(cost: float, budget: _Budget) -> int:
    return max(2, math.ceil(cost / budget.target))


class _Job:
    """State shared by the passes of one ``shuffle_files`` call."""

    def __init__(self, budget, rng, workdir, writer, fp_in, progress, io):
        self.budget, self.rng, self.workdir, self.writer, self.io = budget, rng, workdir, writer, io
        self.fp_in, self.progress = fp_in, progress
        self.n_huge = 0
        self.n_buckets = 0
        self.n_resplit = 0
        self.n_chunks = 0
        self.pass1_end = None
        self.nocache = False
        self.tmp_resident = None  # fraction of the temporary files' bytes in the page cache at pass 2

    def end_pass1(self, paths) -> None:
        """Settle the temporary files (``nocache``: written back and dropped), then measure how much
        of them the page cache holds as pass 2 starts."""
        if self.nocache:
            _settle(paths)
        if self.tmp_resident is None:
            self.tmp_resident = _resident_fraction(paths)

    def huge_sink(self):
        self.n_huge += 1
        return _HugeToFile(self.workdir, self.n_huge, self.fp_in)

    def note(self, lines, huge) -> None:
        if self.fp_in is not None:
            self.fp_in.add_lines(lines)


def _fair_shuffle(job: _Job, reader: _LineReader, total_bytes: int) -> None:
    """Pass 1 (scatter) and pass 2 (shuffle each bucket). Small inputs are shuffled in memory."""
    b = job.budget
    acc, acc_huge, acc_cost, seen = [], [], 0, 0
    scatter = None
    for lines, huge in reader:
        job.note(lines, huge)
        if scatter is not None:
            scatter.add(lines)
            scatter.add_huge(huge)
            continue
        nb = sum(map(len, lines)) + len(lines)
        seen += nb
        acc.extend(lines)
        acc_huge.extend(huge)
        acc_cost += nb + LINE_OVERHEAD * len(lines)
        if acc_cost > b.cap:  # does not fit: scatter what we hold and the rest
            est = acc_cost * max(total_bytes, seen) / max(seen, 1)
            scatter = _Scatter(job.workdir, "bucket-", _n_buckets(est, b), job.rng, b.pending, job.io,
                               job.nocache)
            job.n_buckets += scatter.k
            step = max(1, len(acc) * b.piece // max(acc_cost, 1))
            while acc:
                part = acc[-step:]
                del acc[-step:]
                scatter.add(part)
            scatter.add_huge(acc_huge)
            acc_huge = []
    job.pass1_end = time.perf_counter()
    if scatter is None:
        job.progress.phase("shuffle")
        _emit_shuffled(job.writer, acc, acc_huge, job.rng)
        job.progress(seen)
        return
    scatter.flush(wait=True)
    job.end_pass1([p for p, n in zip(scatter.paths, scatter.lines) if n])
    job.pass1_end = time.perf_counter()
    job.progress.phase("shuffle")
    _drain_buckets(job, scatter)


def _drain_buckets(job: _Job, scatter: _Scatter) -> None:
    b = job.budget
    for j in range(scatter.k):
        path, n, nbytes, huge = scatter.paths[j], int(scatter.lines[j]), int(scatter.bytes[j]), scatter.huge[j]
        scatter.huge[j] = []
        if n == 0 and not huge:
            continue
        if nbytes + LINE_OVERHEAD * n > b.cap:  # unlucky or underestimated: split it again
            job.n_resplit += 1
            sub = _Scatter(job.workdir, os.path.basename(path) + "-", _n_buckets(nbytes + LINE_OVERHEAD * n, b),
                           job.rng, b.pending, job.io, job.nocache)
            for lines, _ in _LineReader([path], b.piece, b.huge):
                sub.add(lines)
            sub.add_huge(huge)
            sub.flush(wait=True)
            if job.nocache:
                _settle(sub.paths)
            os.unlink(path)
            _drain_buckets(job, sub)
            continue
        lines = []
        if n:
            for part, _ in _LineReader([path], b.piece, b.huge):
                lines.extend(part)
            os.unlink(path)
        if len(lines) != n:
            raise ShuffleError(f"temporary file {path} holds {len(lines)} lines, expected {n}")
        _emit_shuffled(job.writer, lines, huge, job.rng)
        for item in huge:
            os.unlink(item.path)
        job.progress(nbytes + sum(x.size + 1 for x in huge))


# -- merge and rounds modes: chunks ---------------------------------------------------------------
@dataclass
class _Chunk:
    path: str
    n_lines: int
    n_bytes: int


def _write_chunks(job: _Job, reader: _LineReader, chunk_lines: int | None) -> tuple[list[_Chunk], list]:
    """Pass 1 of merge/rounds: consecutive chunks of the input, each shuffled in memory.

    Returns (chunk files, []) or, when the whole input is one chunk, ([], its lines)."""
    b = job.budget
    chunks: list[_Chunk] = []
    acc, acc_bytes, acc_cost = [], 0, 0

    def cut():
        nonlocal acc, acc_bytes, acc_cost
        if not acc:
            return
        path = os.path.join(job.workdir, f"chunk-{len(chunks):06d}")
        arr = np.fromiter(acc, dtype=object, count=len(acc))
        acc = []
        job.rng.shuffle(arr)
        step = max(1, min(8192, b.piece * len(arr) // max(acc_bytes, 1)))
        for i in range(0, len(arr), step):
            data = b"\n".join(arr[i:i + step].tolist())
            job.io.submit(len(data), _append_files, [path], [[data, b"\n"]], job.nocache)
        chunks.append(_Chunk(path, len(arr), acc_bytes))
        acc_bytes = acc_cost = 0

    for lines, _huge in reader:  # huge lines raise inside the reader (no sink)
        job.note(lines, _huge)
        cost = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)) + (1 + LINE_OVERHEAD)
        i = 0
        while i < len(lines):
            cum = np.cumsum(cost[i:])
            take = int(np.searchsorted(cum, b.cap - acc_cost, side="right"))  # lines that still fit
            if chunk_lines:
                take = min(take, chunk_lines - len(acc))
            if take == 0 and not acc:
                take = 1  # a chunk holds at least one line
            if take:
                acc.extend(lines[i:i + take])
                acc_cost += int(cum[take - 1])
                acc_bytes += int(cum[take - 1]) - take * LINE_OVERHEAD
                i += take
            if i < len(lines) or (chunk_lines and len(acc) >= chunk_lines):
                cut()
    if not chunks:
        job.n_chunks = 1 if acc else 0
        return [], acc
    cut()
    job.io.drain()
    job.end_pass1([c.path for c in chunks])
    job.n_chunks = len(chunks)
    return chunks, []


class _ChunkReader:
    """Buffered lines of one chunk file; re-opens the file for every refill (no fd held)."""

    def __init__(self, chunk: _Chunk, refill_bytes: int, drop: bool = False):
        self.chunk, self.refill_bytes, self.drop = chunk, refill_bytes, drop
        self.offset, self.size = 0, os.path.getsize(chunk.path)
        self.buf: list = []
        self.pos = 0

    @property
    def buffered(self) -> int:
        return len(self.buf) - self.pos

    @property
    def disk_done(self) -> bool:
        return self.offset >= self.size

    def refill(self) -> None:
        want = self.refill_bytes
        with open(self.chunk.path, "rb", buffering=0) as f:
            while True:
                f.seek(self.offset)
                data = f.read(want)
                last = data.rfind(b"\n")
                if last >= 0:
                    break
                if self.offset + len(data) >= self.size:
                    raise ShuffleError(f"temporary file {self.chunk.path} does not end with a newline")
                want *= 2  # a line longer than the refill size
            if self.drop:
                _drop_cache(f.fileno(), 0, self.offset + last + 1)
        new = data[:last].split(b"\n")
        self.offset += last + 1
        self.buf = self.buf[self.pos:] + new if self.pos < len(self.buf) else new
        self.pos = 0

    def take(self, n: int) -> list:
        while self.buffered < n:
            if self.disk_done:
                raise ShuffleError(f"temporary file {self.chunk.path} has fewer lines than expected")
            self.refill()
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


_MVHG_LIMIT = 10**9  # numpy's multivariate_hypergeometric needs sum(colors) below this


def _urn_counts(rng, rem: np.ndarray, size: int) -> np.ndarray:
    """Chunk counts among ``size`` draws without replacement from an urn with ``rem[c]`` balls of
    colour c (multivariate hypergeometric). Past numpy's limit: the colours of a uniformly random
    ``size``-subset of the ``sum(rem)`` balls, which has exactly that law."""
    total = int(rem.sum())
    if total < _MVHG_LIMIT:
        return rng.multivariate_hypergeometric(rem, size)
    picked = rng.choice(total, size=size, replace=False, shuffle=False)
    return np.bincount(np.searchsorted(np.cumsum(rem), picked, side="right"), minlength=len(rem))


def _merge_chunks(job: _Job, chunks: list[_Chunk], mode: str, reject_fix: bool) -> None:
    """Pass 2 of merge/rounds: interleave the shuffled chunks, block by block."""
    b, rng, k = job.budget, job.rng, len(chunks)
    n_c = np.array([c.n_lines for c in chunks], dtype=np.int64)
    avg = max(1.0, sum(c.n_bytes for c in chunks) / max(int(n_c.sum()), 1))
    # each reader holds about (M/3)/k of cost; refill when below half of it
    refill_bytes = max(4096, int(b.target / k / (1 + LINE_OVERHEAD / avg)))
    low = max(1, int(refill_bytes / avg / 2))
    readers = [_ChunkReader(c, refill_bytes, job.nocache) for c in chunks]
    rem = n_c.copy()
    p_keep = n_c / n_c.max() if reject_fix else None
    while rem.sum() > 0:
        for r, left in zip(readers, rem):
            if left and not r.disk_done and r.buffered < low:
                r.refill()
        buffered = np.array([r.buffered for r in readers], dtype=np.int64)
        if mode == "merge":
            # next B draws of the urn: multivariate-hypergeometric counts, then a uniform order
            size = int(min(rem.sum(), max(1, buffered.sum() // 2)))
            counts = _urn_counts(rng, rem, size)
            seq = np.repeat(np.arange(k), counts)
            rng.shuffle(seq)
        else:
            alive = np.flatnonzero(rem)
            need = [int(buffered[c]) for c in alive if not readers[c].disk_done]
            rounds = max(1, min(need) if need else int(rem[alive].max()))
            rounds = max(1, min(rounds, (1 << 20) // len(alive)))
            if reject_fix:
                inc = rng.random((rounds, len(alive))) < p_keep[alive]
            else:
                inc = np.ones((rounds, len(alive)), dtype=bool)
            inc &= np.cumsum(inc, axis=0) <= rem[alive]  # a chunk stops when it runs out
            order = np.argsort(rng.random((rounds, len(alive))), axis=1)  # visiting order per round
            seq = alive[order][np.take_along_axis(inc, order, axis=1)]
            counts = np.bincount(seq, minlength=k)
        pool = []
        for c in np.flatnonzero(counts).tolist():
            pool.extend(readers[c].take(int(counts[c])))
        # the pool is grouped by chunk; position i of the output takes the line with pool index
        # (first pool index of seq[i]) + (number of earlier occurrences of seq[i])
        where = np.empty(len(seq), dtype=np.int64)
        where[np.argsort(seq, kind="stable")] = np.arange(len(seq))
        out = np.fromiter(pool, dtype=object, count=len(pool))[where]
        pool.clear()
        job.writer.write_lines(out, avg)
        rem -= counts
        job.progress(int(len(seq) * avg))
    for c in chunks:
        os.unlink(c.path)


# -- progress and signals -------------------------------------------------------------------------
class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                            desc="read", file=sys.stderr, dynamic_ncols=True, leave=False)

    def __call__(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_description(name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def _signals_raise():
    """Turn SIGTERM/SIGHUP into an exception for the duration (main thread only) so clean-up runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    old = {}
    for s in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):
            old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_blocked():
    """Hold SIGINT/SIGTERM/SIGHUP back while cleaning up, so a second Ctrl-C cannot leave debris."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- the API --------------------------------------------------------------------------------------
@dataclass
class ShuffleStats:
    """What ``shuffle_files`` did; ``summary()`` is the CLI's closing line."""
    mode: str
    seed: int
    mem_budget: int
    n_inputs: int
    n_lines: int
    n_bytes: int
    input_bytes: int
    added_newlines: int
    outputs: list = field(default_factory=list)
    n_buckets: int = 0
    n_resplit: int = 0
    n_chunks: int = 0
    n_huge_lines: int = 0
    seconds: float = 0.0
    pass1_seconds: float = 0.0
    pass2_seconds: float = 0.0
    verify_seconds: float = 0.0
    peak_rss: int = 0
    verified: bool | None = None
    fingerprint: Fingerprint | None = None
    nocache: bool = False
    tmp_resident: float | None = None

    def as_dict(self) -> dict:
        """The plain numbers (for ``--stats-json``)."""
        d = {k: v for k, v in self.__dict__.items() if k != "fingerprint"}
        d["MBps"] = self.mb_per_s
        return d

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        parts = [f"{self.n_lines:,} lines", format_size(self.n_bytes),
                 f"{self.seconds:.2f} s", f"{self.mb_per_s:.1f} MB/s",
                 f"peak RSS {format_size(self.peak_rss)} (budget {format_size(self.mem_budget)})",
                 f"mode {self.mode}", f"seed {self.seed}"]
        if self.n_buckets:
            parts.append(f"{self.n_buckets} buckets" + (f" ({self.n_resplit} split again)" if self.n_resplit else ""))
        if self.n_chunks:
            parts.append(f"{self.n_chunks} chunks")
        if self.added_newlines:
            parts.append(f"{self.added_newlines} final newline(s) added")
        if self.n_huge_lines:
            parts.append(f"{self.n_huge_lines} long line(s) streamed")
        if self.tmp_resident is not None:
            parts.append(f"temporary files {100 * self.tmp_resident:.0f}% in the page cache at pass 2"
                         + (" (--no-cache)" if self.nocache else ""))
        if self.verified is not None:
            parts.append("verified" if self.verified else "VERIFY FAILED")
        if len(self.outputs) > 1:
            parts.append(f"{len(self.outputs)} output files")
        return "shuffled " + ", ".join(parts)


def peak_rss_self() -> int:
    """Peak resident memory of this process so far, in bytes.

    Linux: ``VmHWM`` of /proc/self/status, which starts afresh at exec. (``ru_maxrss`` does not:
    a process spawned by a big parent inherits the parent's high-water mark through vfork/exec.)"""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _check_paths(inputs, output, tmpdir, split_lines) -> None:
    if not inputs:
        raise ShuffleError("no input files given")
    if "-" in inputs:
        raise ShuffleError(STDIN_MESSAGE)
    if output == "-":
        raise ShuffleError(STDOUT_MESSAGE)
    for p in inputs:
        if not os.path.exists(p):
            raise ShuffleError(f"input {p} does not exist")
        if os.path.isdir(p):
            raise ShuffleError(f"input {p} is a directory")
        if not os.access(p, os.R_OK):
            raise ShuffleError(f"input {p} is not readable")
    finals = [_first_output_name(output, split_lines)]
    for f in finals:
        if os.path.isdir(f):
            raise ShuffleError(f"the output {f} is a directory: give a file name")
        d = os.path.dirname(os.path.abspath(f))
        if not os.path.isdir(d):
            raise ShuffleError(f"the output directory {d} does not exist")
        if not os.access(d, os.W_OK):
            raise ShuffleError(f"the output directory {d} is not writable")
    if not os.path.isdir(tmpdir):
        raise ShuffleError(f"--tmpdir {tmpdir} is not a directory")
    real_in = {os.path.realpath(p) for p in inputs}
    if split_lines:  # any part name could hit an input: test the pattern's first few
        finals = [output.format(i) if "{" in output else f"{output}.{i:05d}" for i in range(1000)]
    for f in finals:
        if os.path.realpath(f) in real_in:
            raise ShuffleError(f"the output {f} is also an input; the input is never overwritten: "
                               "choose another output name")


def _check_disk(input_bytes: int, first_output: str, tmpdir: str, budget: _Budget, mode: str) -> None:
    """Refuse to start when the temporary and output files cannot fit (shutil.disk_usage)."""
    slack = 16 << 20
    out_dir = os.path.dirname(os.path.abspath(first_output))
    need_out = input_bytes + slack
    # fair: pass 2 deletes every bucket once written, so a shared disk holds ~1x input + a bucket;
    # merge/rounds keep every chunk until the end.  Small inputs never touch tmpdir.
    if input_bytes <= budget.cap:
        need_tmp = 0
    else:
        need_tmp = input_bytes + slack
    same = os.stat(out_dir).st_dev == os.stat(tmpdir).st_dev
    if same:
        extra = (budget.total + slack) if mode == "fair" else input_bytes
        checks = [(out_dir, need_out + (extra if need_tmp else 0))]
    else:
        checks = [(out_dir, need_out), (tmpdir, need_tmp)]
    for d, need in checks:
        free = shutil.disk_usage(d).free
        if need > free:
            raise ShuffleError(
                f"not enough free disk space in {d}: the shuffle needs about {format_size(need)} there "
                f"(temporary files and output) but only {format_size(free)} is free; free some space "
                "or point --tmpdir at another disk")


def shuffle_files(inputs, output, *, mem="512M", tmpdir=None, seed=None, mode: str = "fair",
                  split_lines: int | None = None, chunk_lines: int | None = None,
                  reject_fix: bool = False, verify: bool = False, progress: bool | None = None,
                  fsync: bool = False, nocache: bool = False) -> ShuffleStats:
    """Write the lines of ``inputs`` (paths, concatenated) to ``output`` in random order.

    ``mode="fair"`` gives an exactly uniform permutation by random-bucket scatter; ``"merge"`` is
    terashuf's weighted merge (also exact); ``"rounds"`` is the article's round-robin merge (biased,
    for comparison; ``reject_fix`` and ``chunk_lines`` apply to it). Memory stays near ``mem``
    (bytes or "512M"); temporary files go under ``tmpdir`` (default: the output's directory).
    ``split_lines=N`` writes ``output.00000``, ``output.00001``... (or ``output.format(i)`` if
    ``output`` holds ``{}``) of N lines each. ``seed=None`` draws one (it is in the result).
    ``verify`` re-reads the output and compares multiset fingerprints before the rename.
    ``nocache`` keeps input, temporary and output files out of the page cache (module docstring).
    Raises ``ShuffleError`` for bad inputs or options, ``KeyboardInterrupt`` on SIGINT/SIGTERM/
    SIGHUP, after removing every temporary file. See the module docstring for the uniformity proof.
    From https://kexue.fm/archives/8662 (chapter ``global-shuffle``).
    """
    t0 = time.perf_counter()
    inputs = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    output = os.fspath(output)
    if mode not in MODES:
        raise ShuffleError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    budget = _Budget(parse_size(mem))
    if budget.total < MIN_BUDGET:
        raise ShuffleError(f"the memory budget must be at least {MIN_BUDGET} bytes")
    too_big = memory_warning(budget.total)
    if too_big:
        warnings.warn(too_big, ResourceWarning, stacklevel=2)
    if split_lines is not None and split_lines < 1:
        raise ShuffleError("--split-lines must be a positive number of lines")
    if chunk_lines is not None and chunk_lines < 1:
        raise ShuffleError("--chunk-lines must be a positive number of lines")
    if (chunk_lines or reject_fix) and mode != "rounds":
        raise ShuffleError("chunk_lines and reject_fix only apply to mode 'rounds'")
    if tmpdir is None:
        tmpdir = os.path.dirname(os.path.abspath(_first_output_name(output, split_lines)))
    tmpdir = os.fspath(tmpdir)
    _check_paths(inputs, output, tmpdir, split_lines)
    input_bytes = sum(os.path.getsize(p) for p in inputs)
    _check_disk(input_bytes, _first_output_name(output, split_lines), tmpdir, budget, mode)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    rng = np.random.default_rng(seed)
    if progress is None:
        progress = sys.stderr.isatty()
    bar = _Progress(2 * input_bytes, progress)
    writer = workdir = io = None
    committed = False
    stats = ShuffleStats(mode=mode, seed=seed, mem_budget=budget.total, n_inputs=len(inputs), n_lines=0,
                         n_bytes=0, input_bytes=input_bytes, added_newlines=0)
    with _signals_raise():
        try:
            workdir = tempfile.mkdtemp(prefix=f"kexue-shuffle-{os.getpid()}-", dir=tmpdir)
            same_disk = os.stat(workdir).st_dev == os.stat(os.path.dirname(os.path.abspath(
                _first_output_name(output, split_lines)))).st_dev
            io = _Background(max(budget.pending, 2 * budget.piece),
                             threaded=input_bytes > max(budget.cap, _THREAD_MIN))
            writer = _OutputWriter(output, split_lines, budget.piece, fsync, workdir if same_disk else None, io,
                                   nocache)
            fp_in = Fingerprint() if verify else None
            job = _Job(budget, rng, workdir, writer, fp_in, bar, io)
            job.nocache = stats.nocache = bool(nocache)
            sink = job.huge_sink if mode == "fair" else None
            reader = _LineReader(inputs, budget.piece, budget.huge, sink, bar, drop=bool(nocache))
            t1 = time.perf_counter()
            if mode == "fair":
                _fair_shuffle(job, reader, input_bytes)
            else:
                chunks, whole = _write_chunks(job, reader, chunk_lines)
                job.pass1_end = time.perf_counter()
                bar.phase(mode)
                if chunks:
                    _merge_chunks(job, chunks, mode, reject_fix)
                else:  # the input fits in memory: one chunk, shuffled
                    _emit_shuffled(writer, whole, [], rng)
            writer.close()
            t3 = time.perf_counter()
            stats.pass1_seconds, stats.pass2_seconds = job.pass1_end - t1, t3 - job.pass1_end
            stats.n_lines, stats.n_bytes = writer.n_lines, writer.n_bytes
            stats.added_newlines = reader.added_lines
            stats.n_buckets, stats.n_resplit = job.n_buckets, job.n_resplit
            stats.n_chunks, stats.n_huge_lines = job.n_chunks, job.n_huge
            stats.tmp_resident = job.tmp_resident
            expected_bytes = input_bytes + reader.added_bytes
            if writer.n_bytes != expected_bytes:
                raise ShuffleError(f"wrote {writer.n_bytes} bytes, expected {expected_bytes}: did an input "
                                   "change during the run? The output was not written")
            if verify:
                bar.phase("verify")
                fp_in.n_bytes = expected_bytes
                fp_out = multiset_fingerprint(writer.temp_paths, budget.total)
                stats.verify_seconds = time.perf_counter() - t3
                stats.verified = fp_out.same_multiset(fp_in)
                stats.fingerprint = fp_out
                if not stats.verified:
                    raise ShuffleError(f"verification failed: input {fp_in} != output {fp_out}; "
                                       "the output was not written")
            stats.outputs = writer.commit()
            committed = True
        finally:
            with _signals_blocked():
                bar.close()
                if io is not None:
                    io.shutdown()
                if writer is not None and not committed:
                    writer.abort()
                if workdir is not None:
                    shutil.rmtree(workdir, ignore_errors=True)
    stats.seconds = time.perf_counter() - t0
    stats.peak_rss = peak_rss_self()
    return stats
