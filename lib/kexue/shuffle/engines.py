"""The same exact two-pass shuffle on a real distributed engine, Dask, running locally.

From 有限内存下全局打乱几百G文件（Python）, https://kexue.fm/archives/8662 (chapter ``global-shuffle``).
A user with terabytes shuffles on a cluster with an existing engine, not with our tool. This is
``kexue-shuffle --mode fair`` expressed in ``dask.bag``:

1. *scatter*: the inputs are cut at line boundaries into byte ranges (one bag partition each); every
   line gets a key ``B ~ Uniform{0..P-1}``, iid (a generator per range, seeded from ``seed``), and
   ``Bag.groupby`` moves each line to the group of its key: dask's own shuffle (``shuffle="disk"``:
   partd files on the local disk, the two-pass scheme's temporary files; ``"tasks"``: in memory);
2. *shuffle each partition in memory*: every group is permuted with Fisher-Yates (its own seeded
   generator) and written to a part file; the output is the part files concatenated in key order.

The law of the output is exactly uniform for the reason given in :mod:`kexue.shuffle.core` (iid
keys, a uniform order inside each group, groups ordered by key alone). ``P`` is chosen as in the
tool, so a group costs about a third of ``mem``. Lines are bytes up to ``\\n``, with the tool's
conventions (a missing final newline is added; ``\\r\\n`` after a CRLF line).

Dask is imported only inside :func:`dask_shuffle`, so ``import kexue.shuffle`` stays light.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from .core import LINE_OVERHEAD, ShuffleError, parse_size, run_comparison_tool


def _final_terminator(path: str, size: int) -> bytes:
    """What ``kexue-shuffle`` appends to a file's last line when it has no newline ('' if it has)."""
    if size == 0:
        return b""
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return b""
        pos = size
        while pos > 0:  # find the last newline: does the line before the final one end in \r ?
            start = max(0, pos - (1 << 20))
            f.seek(start)
            data = f.read(pos - start)
            q = data.rfind(b"\n")
            if q >= 0:
                return b"\r\n" if data[q - 1:q] == b"\r" else (
                    b"\n" if q > 0 or start == 0 else _byte_before_cr(f, start))
            pos = start
    return b"\n"


def _byte_before_cr(f, offset: int) -> bytes:
    f.seek(offset - 1)
    return b"\r\n" if f.read(1) == b"\r" else b"\n"


def line_ranges(path, blocksize: int) -> list[tuple[int, int]]:
    """Byte ranges ``[start, end)`` of ``path``, about ``blocksize`` each, cut just after a ``\\n``
    (the last one ends at the end of the file). Used by :func:`dask_shuffle`
    (https://kexue.fm/archives/8662, chapter ``global-shuffle``)."""
    size = os.path.getsize(path)
    out, pos = [], 0
    with open(path, "rb") as f:
        while pos < size:
            end = pos + max(1, blocksize)
            if end >= size:
                end = size
            else:
                f.seek(end - 1)
                while True:
                    data = f.read(1 << 16)
                    if not data:
                        end = size
                        break
                    q = data.find(b"\n")
                    if q >= 0:
                        end += q
                        break
                    end += len(data)
                end = min(end, size)
            out.append((pos, end))
            pos = end
    return out


def _scatter_range(item) -> list:
    """One bag partition: the lines of a byte range, each paired with its random key."""
    path, start, end, term, n_keys, seed, index = item
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = data.split(b"\n")
    last = lines.pop()  # b"" after a final newline, else the file's unterminated last line
    if last:
        lines.append(last + term[:-1])  # the line's content gets the \r of an added \r\n
    keys = np.random.default_rng((seed, 0, index)).integers(0, n_keys, size=len(lines)).tolist()
    return list(zip(keys, lines))


def _write_group(group, seed: int, workdir: str):
    """One group: shuffle its lines in memory and write them to ``part-<key>``."""
    key, pairs = group
    lines = np.fromiter((line for _, line in pairs), dtype=object, count=len(pairs))
    np.random.default_rng((seed, 1, key)).shuffle(lines)
    path = os.path.join(workdir, f"part-{key:06d}")
    with open(path, "wb") as f:
        data = b"\n".join(lines.tolist())
        f.write(data + b"\n")
    return key, len(lines), len(data) + 1


def dask_shuffle(inputs, output, *, mem="192M", seed: int = 0, tmpdir=None, blocksize=None,
                 scheduler: str = "threads", shuffle: str = "disk", fsync: bool = False) -> dict:
    """Shuffle the lines of ``inputs`` into ``output`` with ``dask.bag`` (module docstring): the
    two-pass random-bucket algorithm of ``kexue-shuffle --mode fair``, exactly uniform.

    ``scheduler``: dask's local scheduler (``threads``, ``processes``, ``sync``); ``shuffle``: dask's
    ``groupby`` shuffle (``disk`` or ``tasks``). Returns ``{"lines", "bytes", "partitions", "groups",
    "seconds", "MBps"}``. The output is written under a temporary name and renamed; temporary files
    are removed. From https://kexue.fm/archives/8662 (chapter ``global-shuffle``)."""
    import dask
    import dask.bag as db

    t0 = time.perf_counter()
    inputs = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    output = os.fspath(output)
    if os.path.realpath(output) in {os.path.realpath(p) for p in inputs}:
        raise ShuffleError(f"the output {output} is also an input; choose another output name")
    budget = parse_size(mem)
    blocksize = parse_size(blocksize) if blocksize else max(1 << 16, budget // 8)
    sizes = [os.path.getsize(p) for p in inputs]
    total = sum(sizes)
    items = []
    for path, size in zip(inputs, sizes):
        term = _final_terminator(path, size)
        for start, end in line_ranges(path, blocksize):
            items.append([path, start, end, term if end == size else b"\n"])
    est_cost = total * (1 + LINE_OVERHEAD / 100)  # lines of ~100 bytes or more
    n_keys = max(1, math.ceil(est_cost / (budget / 3)))
    items = [tuple(x) + (n_keys, int(seed), i) for i, x in enumerate(items)]
    out_dir = os.path.dirname(os.path.abspath(output))
    work = tempfile.mkdtemp(prefix="kexue-dask-", dir=tmpdir or out_dir)
    tmp_out = os.path.join(out_dir, f".{os.path.basename(output)}.kexue-dask-{os.getpid()}.tmp")
    done = False
    try:
        parts = []
        if items:
            bag = db.from_sequence(items, npartitions=len(items)).map(_scatter_range).flatten()
            groups = bag.groupby(lambda kv: kv[0], npartitions=min(n_keys, max(1, len(items))), shuffle=shuffle)
            written = groups.map(_write_group, int(seed), work)
            with dask.config.set(scheduler=scheduler, temporary_directory=work):
                parts = sorted(written.compute())
        n_lines = n_bytes = 0
        with open(tmp_out, "wb") as out:
            for key, n, nb in parts:
                path = os.path.join(work, f"part-{key:06d}")
                with open(path, "rb") as f:
                    shutil.copyfileobj(f, out, 8 << 20)
                os.unlink(path)
                n_lines += n
                n_bytes += nb
            out.flush()
            if fsync:
                os.fsync(out.fileno())
        if n_bytes != os.path.getsize(tmp_out):
            raise ShuffleError("the part files do not add up; the output was not written")
        os.replace(tmp_out, output)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_out)
        shutil.rmtree(work, ignore_errors=True)
    secs = time.perf_counter() - t0
    return {"lines": n_lines, "bytes": n_bytes, "partitions": len(items), "groups": len(parts),
            "seconds": secs, "MBps": total / 1e6 / max(secs, 1e-9)}


def ray_style_shuffle(inputs, output, *, rows_per_block: int, n_out: int, seed: int = 0) -> dict:
    """Ray Data's ``random_shuffle`` scheme, in memory, for small files (a model, not Ray itself):
    the lines are cut into input blocks of ``rows_per_block``; the *map* step shuffles each block,
    cuts it into ``n_out`` contiguous slices of ``ceil(rows / n_out)`` rows and shuffles the slices'
    order; output block j concatenates the j-th slice of every input block and the *reduce* step
    shuffles it (``ShuffleTaskSpec.map``/``reduce`` in ``ray/data/_internal/planner/exchange``).
    Unlike iid keys, the slices have fixed sizes, so every output block gets a fixed number of lines
    from each input block: not an exactly uniform permutation (the chapter's 24-order test shows it).
    Lines follow :mod:`kexue.shuffle.core`'s conventions. https://kexue.fm/archives/8662, chapter
    ``global-shuffle``."""
    from .core import _LineReader
    inputs = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    lines = [x for part, _ in _LineReader(inputs, 1 << 20, 1 << 62) for x in part]
    rng = np.random.default_rng(seed)
    outs = [[] for _ in range(n_out)]
    for b in range(0, len(lines), rows_per_block):
        block = np.array(lines[b:b + rows_per_block] + [None], dtype=object)[:-1]
        rng.shuffle(block)
        sz = max(1, math.ceil(len(block) / n_out))
        slices = [block[i * sz:(i + 1) * sz].tolist() for i in range(n_out)]
        order = rng.permutation(n_out)
        for j in range(n_out):
            outs[j].extend(slices[order[j]])
    tmp = os.fspath(output) + ".ray-style.tmp"
    with open(tmp, "wb") as f:
        for o in outs:
            arr = np.array(o + [None], dtype=object)[:-1]
            rng.shuffle(arr)
            f.write(b"".join(x + b"\n" for x in arr.tolist()))
    os.replace(tmp, output)
    return {"lines": len(lines)}


def main(argv=None) -> int:
    """``python -m kexue.shuffle.engines IN... -o OUT [--mem 192M] [--seed 0] [--scheduler threads]``."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m kexue.shuffle.engines",
                                description="kexue-shuffle's fair algorithm on dask.bag (https://kexue.fm/archives/8662)")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--mem", default="192M")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--scheduler", default="threads", choices=["threads", "processes", "sync"])
    p.add_argument("--shuffle", default="disk", choices=["disk", "tasks"])
    p.add_argument("--fsync", action="store_true")
    p.add_argument("--stats-json", default=None)
    args = p.parse_args(argv)
    return run_comparison_tool(
        "kexue.shuffle.engines",
        lambda: dask_shuffle(args.inputs, args.output, mem=args.mem, seed=args.seed, tmpdir=args.tmpdir,
                             scheduler=args.scheduler, shuffle=args.shuffle, fsync=args.fsync),
        args.stats_json)


if __name__ == "__main__":
    sys.exit(main())
