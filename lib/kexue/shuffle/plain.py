"""The article's algorithm written plainly, line by line, in Python: the counterpart of its script.

From 有限内存下全局打乱几百G文件（Python）, https://kexue.fm/archives/8662 (chapter ``global-shuffle``),
which reports about 3.5 h for 280 GB with its Python script (≈ 22 MB/s) against 2.7 h for terashuf's
C++ (≈ 29 MB/s). This module is our own code for the same two phases (先竖后横), written the way the
script is, one Python call per line, so that the vectorised modes of ``kexue-shuffle`` have a
plain-Python counterpart on the same machine:

1. local shuffle: read the inputs line by line; every ``batch_size`` lines (the article's 100,000),
   shuffle the batch in memory and write it to its own temporary file;
2. global shuffle: open every temporary file; in each of ``batch_size`` rounds, visit the files in a
   fresh random order and copy one ``readline()`` of each to the output (an empty read means the file
   is done).

Differences from the script, each for correctness: bytes instead of text (lines are the bytes up to
``\\n``, so CRLF and any encoding are kept), one process instead of five workers (the book's machine
has two cores), a seeded ``numpy.random.Generator``, a final line without a newline gets one (the
script would glue it to the next file's first line; ``\\r\\n`` after a CRLF line, as ``kexue-shuffle``
does), one output file written under a temporary name and renamed at the end, temporary files removed
on success and on error. Like the script, it is the biased round-robin merge (``--mode rounds`` of
``kexue-shuffle`` with ``chunk_lines=batch_size``), memory is ``batch_size`` lines (not bytes), and
it opens every temporary file at once (so at most about ``ulimit -n`` batches).

    python -m kexue.shuffle.plain IN... -o OUT [--batch-size 100000] [--seed 0] [--no-cache]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from .core import ShuffleError, _drop_cache, _resident_fraction, _settle, run_comparison_tool


def plain_shuffle(inputs, output, *, batch_size: int = 100_000, seed=None, tmpdir=None, fsync: bool = False,
                  nocache: bool = False) -> dict:
    """The article's two phases, one Python call per line (module docstring); returns
    ``{"lines", "bytes", "chunks", "seconds", "MBps", "tmp_resident"}``.

    ``nocache``: the temporary files are written back and dropped from the page cache before the
    global phase (``tmp_resident`` measures what is left), and the output is dropped as it is written,
    as for a file far larger than RAM. From https://kexue.fm/archives/8662 (chapter ``global-shuffle``).
    """
    t0 = time.perf_counter()
    inputs = [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
    output = os.fspath(output)
    if batch_size < 1:
        raise ShuffleError("batch_size must be a positive number of lines")
    real_in = {os.path.realpath(p) for p in inputs}
    if os.path.realpath(output) in real_in:
        raise ShuffleError(f"the output {output} is also an input; choose another output name")
    for p in inputs:
        if not os.path.isfile(p):
            raise ShuffleError(f"input {p} is not a readable file")
    out_dir = os.path.dirname(os.path.abspath(output))
    rng = np.random.default_rng(seed)
    work = tempfile.mkdtemp(prefix="kexue-plain-", dir=tmpdir or out_dir)
    tmp_out = os.path.join(out_dir, f".{os.path.basename(output)}.kexue-plain-{os.getpid()}.tmp")
    paths: list[str] = []
    n_lines = n_bytes = 0
    done = False
    try:
        batch: list[bytes] = []

        def local_shuffle():
            rng.shuffle(batch)
            path = os.path.join(work, "%05d" % len(paths))
            with open(path, "wb") as f:
                for text in batch:
                    f.write(text)
            paths.append(path)
            batch.clear()

        for name in inputs:  # phase 1: local shuffle
            last = b""
            with open(name, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):  # only a file's last line
                        line += b"\r\n" if last.endswith(b"\r\n") else b"\n"
                    last = line
                    batch.append(line)
                    if len(batch) == batch_size:
                        local_shuffle()
                if nocache:
                    _drop_cache(f.fileno())
        if batch:
            local_shuffle()
        if nocache:
            _settle(paths)
        tmp_resident = _resident_fraction(paths)
        opens = [open(p, "rb") for p in paths]  # phase 2: global shuffle, round by round
        try:
            with open(tmp_out, "wb") as out:
                written = 0
                for _ in range(batch_size):
                    for i in rng.permutation(len(opens)):
                        text = opens[i].readline()
                        if text:
                            out.write(text)
                            n_lines += 1
                            n_bytes += len(text)
                            if nocache and n_bytes - written > 32 << 20:
                                out.flush()
                                _drop_cache(out.fileno())
                                written = n_bytes
                out.flush()
                if fsync:
                    os.fsync(out.fileno())
                if nocache:
                    _drop_cache(out.fileno())
        finally:
            for f in opens:
                f.close()
        os.replace(tmp_out, output)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_out)
        shutil.rmtree(work, ignore_errors=True)
    secs = time.perf_counter() - t0
    in_bytes = sum(os.path.getsize(p) for p in inputs)
    return {"lines": n_lines, "bytes": n_bytes, "chunks": len(paths), "seconds": secs,
            "MBps": in_bytes / 1e6 / max(secs, 1e-9), "tmp_resident": tmp_resident}


def main(argv=None) -> int:
    """``python -m kexue.shuffle.plain IN... -o OUT [--batch-size N] [--seed S] [--no-cache]``."""
    p = argparse.ArgumentParser(prog="python -m kexue.shuffle.plain",
                                description="The article's round-robin shuffle (https://kexue.fm/archives/8662), "
                                            "plain line-by-line Python; biased, for comparison")
    p.add_argument("inputs", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--batch-size", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--fsync", action="store_true")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--stats-json", default=None)
    args = p.parse_args(argv)
    return run_comparison_tool(
        "kexue.shuffle.plain",
        lambda: plain_shuffle(args.inputs, args.output, batch_size=args.batch_size, seed=args.seed,
                              tmpdir=args.tmpdir, fsync=args.fsync, nocache=args.no_cache),
        args.stats_json)


if __name__ == "__main__":
    sys.exit(main())
