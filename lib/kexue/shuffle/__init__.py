"""Globally shuffle text files far larger than memory: ``kexue-shuffle`` and ``shuffle_files``.

From 有限内存下全局打乱几百G文件（Python）, https://kexue.fm/archives/8662 (chapter ``global-shuffle``).

    kexue-shuffle corpus/*.json -o shuffled.json --mem 2G --verify
    kexue-shuffle big.txt -o 'part-{:05d}.txt' --split-lines 100000 --seed 0

    from kexue.shuffle import shuffle_files
    stats = shuffle_files(["a.txt", "b.txt"], "out.txt", mem="512M", seed=0)

The package: :mod:`kexue.shuffle.core` (the three modes ``fair``, ``merge``, ``rounds``, their
guarantees and ``shuffle_files``; its docstring is the reference), :mod:`kexue.shuffle.cli` (the
command line) and :mod:`kexue.shuffle.bench` (the chapter's measurements). It imports no torch.
"""
from .bench import (compare_tools, disk_bandwidth, duplicate_runs, evict_from_page_cache, make_test_file, order_frequencies,
                    output_positions, position_chisquare, profile_shuffle, rounds_bias_stats, rounds_merge_labels,
                    run_measured, write_numbered_lines)
from .cli import main
from .core import (LINE_OVERHEAD, MIN_BUDGET, MODES, Fingerprint, Interrupted, ShuffleError, ShuffleStats,
                   format_size, memory_warning, multiset_fingerprint, page_cache_resident, parse_size, peak_rss_self,
                   physical_ram, shuffle_files)

__all__ = ["LINE_OVERHEAD", "MIN_BUDGET", "MODES", "Fingerprint", "Interrupted", "ShuffleError", "ShuffleStats",
           "compare_tools", "disk_bandwidth", "duplicate_runs", "evict_from_page_cache", "format_size", "main", "make_test_file", "memory_warning",
           "multiset_fingerprint", "order_frequencies", "output_positions", "page_cache_resident", "parse_size",
           "peak_rss_self", "physical_ram", "position_chisquare", "profile_shuffle", "rounds_bias_stats", "rounds_merge_labels", "run_measured", "shuffle_files", "write_numbered_lines"]
