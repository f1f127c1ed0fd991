"""Compare the cells tagged ``nbval-check-output`` of an executed notebook with the committed one,
with nbval's own comparison (the same rules as ``pytest --nbval-lax``: images and metadata skipped,
streams coalesced, outputs sanitized with ``tests/sanitize.cfg``), without executing anything again.

The chapter tests execute each chapter once at smoke scale; this reuses that execution instead of
letting nbval run every notebook a second time."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nbformat
from nbval.plugin import IPyNbCell, coalesce_streams, get_sanitize_patterns, nocolors

TAG = "nbval-check-output"
# nbval's skip list in lax mode without nbdime (nbval.plugin.IPyNbFile.__init__)
SKIP_COMPARE = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


class _Cell:
    """Just enough of an nbval cell item for ``IPyNbCell.compare_outputs``."""
    colors = nocolors
    compare_outputs = IPyNbCell.compare_outputs
    format_output_compare = IPyNbCell.format_output_compare
    sanitize = IPyNbCell.sanitize
    ihook = SimpleNamespace(pytest_assertrepr_compare=lambda **kw: [])  # nbval's plain fallback repr
    config = None

    def __init__(self, patterns: dict):
        self.parent = SimpleNamespace(skip_compare=SKIP_COMPARE, sanitize_patterns=patterns)
        self.comparison_traceback = []


def tagged_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code" and TAG in c.get("metadata", {}).get("tags", [])]


def compare_tagged(executed: Path, committed: Path, sanitize_cfg: Path) -> tuple[int, list[str]]:
    """(number of tagged cells compared, differences); no differences means they all match."""
    patterns = dict(get_sanitize_patterns(Path(sanitize_cfg).read_text()))
    run = tagged_cells(nbformat.reads(Path(executed).read_text(encoding="utf-8"), as_version=4))
    ref = tagged_cells(nbformat.reads(Path(committed).read_text(encoding="utf-8"), as_version=4))
    if len(run) != len(ref):
        return 0, [f"{len(ref)} tagged cells committed, {len(run)} executed"]
    problems = []
    for k, (a, b) in enumerate(zip(run, ref)):
        if a.source != b.source:
            problems.append(f"tagged cell {k}: its source differs from the committed one")
            continue
        cell = _Cell(patterns)
        if not cell.compare_outputs(coalesce_streams(a.outputs), coalesce_streams(b.outputs)):
            problems.append(f"tagged cell {k} ({b.source.splitlines()[0][:60]!r}):\n"
                            + "\n".join(map(str, cell.comparison_traceback)))
    return len(ref), problems


if __name__ == "__main__":  # python tests/chapters/nbcompare.py executed.ipynb committed.ipynb
    import sys
    n, probs = compare_tagged(Path(sys.argv[1]), Path(sys.argv[2]),
                              Path(__file__).parents[1] / "sanitize.cfg")
    print(json.dumps({"compared": n, "problems": probs}, indent=1))
