"""The command line ``kexue-shuffle`` (https://kexue.fm/archives/8662, chapter ``global-shuffle``);
``python -m kexue.shuffle`` runs it too."""
from __future__ import annotations

import argparse
import signal
import sys
import warnings

from .core import MODES, ShuffleError, memory_warning, parse_size, shuffle_files


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kexue-shuffle",
        description="Globally shuffle the lines of text files far larger than memory "
                    "(https://kexue.fm/archives/8662). Default mode 'fair' is an exactly uniform "
                    "random permutation.",
        epilog="Lines are bytes up to \\n (CRLF and any encoding kept). A last line without a "
               "newline gets one. The output is written under a temporary name and renamed at the "
               "end; temporary files go to a fresh kexue-shuffle-* directory under --tmpdir and are "
               "removed on success, error, Ctrl-C and SIGTERM.")
    p.add_argument("inputs", nargs="+", metavar="IN",
                   help="input text file(s); their lines are mixed (standard input '-' is not supported: save it to a file)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (with --split-lines: a prefix, or a pattern such as part-{:05d}.txt)")
    p.add_argument("--mem", default="512M",
                   help="memory budget, e.g. 512M or 4G (default 512M; more than the machine's RAM is warned about)")
    p.add_argument("--tmpdir", default=None, help="where temporary files go (default: the output's directory)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: drawn, and printed)")
    p.add_argument("--mode", choices=MODES, default="fair",
                   help="fair: exact uniform (random buckets); merge: terashuf's weighted merge (exact); "
                        "rounds: the article's round-robin merge (biased; for comparison)")
    p.add_argument("--split-lines", type=int, default=None, metavar="N", help="write output files of N lines each")
    p.add_argument("--chunk-lines", type=int, default=None, metavar="N",
                   help="rounds mode: cut chunks every N lines, like the article's batch_size")
    p.add_argument("--reject-fix", action="store_true",
                   help="rounds mode: keep chunk c in a round with probability n_c/n_max")
    p.add_argument("--verify", action="store_true",
                   help="re-read the output and check it holds exactly the input's lines before renaming")
    p.add_argument("--fsync", action="store_true", help="fsync the output before the rename")
    p.add_argument("--no-cache", action="store_true",
                   help="keep input, temporary and output files out of the page cache (posix_fadvise), as "
                        "for a file far larger than RAM: pass 2 then reads the temporary files from the disk")
    p.add_argument("--stats-json", default=None, metavar="FILE", help="write the run's statistics to FILE as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary")
    return p


def main(argv=None) -> int:
    """``kexue-shuffle IN... -o OUT [--mem 512M] [--mode fair|merge|rounds] ...``; see ``--help``."""
    args = _parser().parse_args(argv)
    try:
        too_big = memory_warning(parse_size(args.mem))
        if too_big:  # said before the shuffle starts, not after it has swapped
            print(f"kexue-shuffle: warning: {too_big}", file=sys.stderr)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ResourceWarning, message="the memory budget")
            stats = shuffle_files(args.inputs, args.output, mem=args.mem, tmpdir=args.tmpdir, seed=args.seed,
                                  mode=args.mode, split_lines=args.split_lines, chunk_lines=args.chunk_lines,
                                  reject_fix=args.reject_fix, verify=args.verify,
                                  progress=False if args.quiet else None, fsync=args.fsync,
                                  nocache=args.no_cache)
    except ShuffleError as err:
        print(f"kexue-shuffle: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"kexue-shuffle: interrupted ({signal.Signals(signum).name}); temporary files removed, "
              "output not written", file=sys.stderr)
        return 128 + int(signum)
    except OSError as err:
        print(f"kexue-shuffle: error: {err}; temporary files removed, output not written", file=sys.stderr)
        return 1
    if args.stats_json:
        import json
        with open(args.stats_json, "w") as f:
            json.dump(stats.as_dict(), f)
    if not args.quiet:
        print(f"kexue-shuffle: {stats.summary()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
