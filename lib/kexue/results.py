"""Claims, outcomes and the results record of a chapter (``results/<slug>.json``).

A chapter declares its claim checks *before* it runs anything (id, statement, metric, test and
the article's value), records the measured value of each, shows a results-vs-article table and
the verdict, and saves the record. The scoreboard page is generated from these records.

    res = Results("bert-init-std", scale=scale, seed=seed)
    res.claim("C1", "std of trunc-normal(0.02) is 0.0176", metric="trunc_std",
              test=("near", 0.01759, 2e-4), article="≈ 0.0176")
    res.check("C1", measured_std)
    res.compare("std of the BERT init", "10^6 samples", article="≈ 0.0176", ours=measured_std)
    res.show_comparison(); res.show_verdict(); res.save()

Verdicts: every claim held -> "reproduced"; none held -> "not reproduced"; otherwise
"partly reproduced". Used by every chapter (CHAPTER.md, "Two kinds of checks").
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__, book, check_scale

VERDICTS = ("reproduced", "partly reproduced", "not reproduced")
TESTS = {">=": 1, ">": 1, "<=": 1, "<": 1, "between": 2, "near": 2, "rel_near": 2, "is": 1}


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def describe_test(test) -> str:
    """Human-readable form of a claim test, e.g. ``("between", 0.8, 1.25)`` -> ``in [0.8, 1.25]``."""
    op, *args = test
    if op == "between":
        return f"in [{_fmt(args[0])}, {_fmt(args[1])}]"
    if op == "near":
        return f"within {_fmt(args[1])} of {_fmt(args[0])}"
    if op == "rel_near":
        return f"within {args[1]:.0%} of {_fmt(args[0])}"
    if op == "is":
        return f"is {_fmt(args[0])}"
    return f"{op} {_fmt(args[0])}"


def evaluate_test(test, value) -> bool:
    """Whether ``value`` passes ``test``. NaN or None never passes a numeric test."""
    op, *args = test
    if op == "is":
        return value == args[0]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    v = float(value)
    if op == ">=":
        return v >= args[0]
    if op == ">":
        return v > args[0]
    if op == "<=":
        return v <= args[0]
    if op == "<":
        return v < args[0]
    if op == "between":
        return args[0] <= v <= args[1]
    if op == "near":
        return abs(v - args[0]) <= args[1]
    if op == "rel_near":
        return abs(v / args[0] - 1.0) <= args[1]
    raise ValueError(f"unknown test {op!r}")


def _check_test(test):
    if not isinstance(test, (tuple, list)) or not test or test[0] not in TESTS:
        raise ValueError(f"a claim test is (op, *args) with op in {list(TESTS)}; got {test!r}")
    if len(test) - 1 != TESTS[test[0]]:
        raise ValueError(f"test {test[0]!r} takes {TESTS[test[0]]} argument(s); got {test!r}")
    return tuple(test)


def _jsonable(v):
    if hasattr(v, "item") and callable(v.item):  # numpy / torch scalars
        v = v.item()
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


@dataclass
class Claim:
    id: str
    statement: str
    metric: str
    test: tuple
    article: str | float | None = None
    value: object = None
    held: bool | None = None
    note: str = ""


@dataclass
class Results:
    """The record of one chapter run; see the module docstring."""

    slug: str
    scale: str
    seed: int = 0
    claims: dict = field(default_factory=dict)
    comparisons: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def __post_init__(self):
        check_scale(self.scale)
        self.article = book.article(self.slug)
        self._t0 = time.perf_counter()
        self._started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # -- declaring and checking claims -------------------------------------------------------
    def claim(self, id: str, statement: str, *, metric: str, test, article=None) -> Claim:
        """Declare claim check ``id`` (before running the experiment that decides it)."""
        if id in self.claims:
            raise ValueError(f"claim {id} is declared twice")
        c = Claim(id, statement, metric, _check_test(test), article)
        self.claims[id] = c
        return c

    def check(self, id: str, value, note: str = "") -> bool:
        """Record the measured ``value`` of claim ``id``; returns whether it held."""
        if id not in self.claims:
            raise KeyError(f"claim {id} was not declared; declared: {', '.join(self.claims)}")
        c = self.claims[id]
        c.value = _jsonable(value)
        c.held = bool(evaluate_test(c.test, c.value if not isinstance(c.value, str) else float(c.value)))
        c.note = note
        self.metrics[c.metric] = c.value
        return c.held

    def implementation_check(self, name: str, passed: bool, detail: str = "") -> None:
        """Record an implementation check (code == math); a failure stops the chapter."""
        self.checks[name] = bool(passed)
        if not passed:
            raise AssertionError(f"implementation check failed: {name}. {detail}")

    def metric(self, name: str, value) -> None:
        """Record any other number worth keeping in the record."""
        self.metrics[name] = _jsonable(value)

    def compare(self, quantity: str, setting: str, *, article, ours, key: bool = False,
                digits: int = 4) -> None:
        """Add a row to the results-vs-article table; ``key`` rows also go on the scoreboard."""
        self.comparisons.append({"quantity": quantity, "setting": setting,
                                 "article": article if isinstance(article, str) else _fmt(article, digits),
                                 "ours": ours if isinstance(ours, str) else _fmt(_jsonable(ours), digits),
                                 "key": bool(key)})

    def note(self, text: str) -> None:
        self.notes.append(text)

    # -- verdict ---------------------------------------------------------------------------------
    def verdict(self) -> str:
        pending = [c.id for c in self.claims.values() if c.held is None]
        if pending:
            raise RuntimeError(f"claims without an outcome: {', '.join(pending)}")
        if not self.claims:
            raise RuntimeError("a chapter needs at least one claim check")
        held = sum(c.held for c in self.claims.values())
        if held == len(self.claims):
            return "reproduced"
        return "not reproduced" if held == 0 else "partly reproduced"

    # -- display ---------------------------------------------------------------------------------
    def comparison_markdown(self) -> str:
        return markdown_table(["quantity", "setting", "article", "ours"],
                              [[r["quantity"], r["setting"], r["article"], r["ours"]]
                               for r in self.comparisons])

    def verdict_markdown(self) -> str:
        table = []
        for c in self.claims.values():
            outcome = "—" if c.held is None else ("**held**" if c.held else "**not held**")
            table.append([c.id, c.statement, f"{c.metric} {describe_test(c.test)}",
                          _fmt(c.value), _fmt(c.article), outcome])
        rows = [markdown_table(["claim", "statement", "test", "ours", "article", "outcome"], table)]
        held = sum(bool(c.held) for c in self.claims.values())
        rows.append("")
        rows.append(f"**Verdict: {self.verdict()}** ({held} of {len(self.claims)} claim checks held; "
                    f"scale `{self.scale}`, seed {self.seed}).")
        return "\n".join(rows)

    def show_comparison(self):
        from IPython.display import Markdown, display
        display(Markdown(self.comparison_markdown()))

    def show_verdict(self):
        from IPython.display import Markdown, display
        display(Markdown(self.verdict_markdown()))

    # -- the record ------------------------------------------------------------------------------
    def record(self) -> dict:
        import numpy
        import torch

        from . import device
        dev = device()
        return _jsonable({
            "slug": self.slug,
            "title": self.article["title_en"],
            "title_zh": self.article["title_zh"],
            "article": {"url": self.article["url"], "date": self.article["date"],
                        "archive": self.article["archive"]},
            "scale": self.scale,
            "seed": self.seed,
            "device": dev,
            "device_name": torch.cuda.get_device_name(0) if dev == "cuda" else platform.processor() or "cpu",
            "cpu_threads": torch.get_num_threads(),
            "started": self._started,
            "wall_time_s": round(time.perf_counter() - self._t0, 1),
            "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                         "numpy": numpy.__version__, "kexue": __version__},
            "code_hash": self._code_hash(),
            "verdict": self.verdict(),
            "claims": [vars(c) | {"test": list(c.test), "test_text": describe_test(c.test)}
                       for c in self.claims.values()],
            "comparisons": self.comparisons,
            "implementation_checks": self.checks,
            "metrics": self.metrics,
            "notes": self.notes,
        })

    def _code_hash(self) -> str | None:
        here = Path.cwd() / f"{self.slug}.ipynb"
        try:
            path = here if here.is_file() else book.notebook_for(self.slug)
        except (FileNotFoundError, TypeError):
            return None
        return book.code_hash(path)

    def save(self, directory: Path | None = None) -> None:
        """Write ``<slug>.json`` (``<slug>.large.json`` for a large run) and print where; the path
        is kept in ``self.saved_path`` (not returned, so a notebook shows no machine path)."""
        rec = self.record()
        d = Path(directory) if directory else book.results_dir(self.scale)
        d.mkdir(parents=True, exist_ok=True)
        path = d / (f"{self.slug}.large.json" if self.scale == "large" else f"{self.slug}.json")
        path.write_text(json.dumps(rec, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        root = book.repo_root()
        shown = path.relative_to(root) if root and path.is_relative_to(root) else path.name
        print(f"results record written: {shown} (verdict: {rec['verdict']}, "
              f"wall time {rec['wall_time_s']:.0f} s)")
        self.saved_path = path


REQUIRED = {"slug": str, "title": str, "article": dict, "scale": str, "seed": int, "device": str,
            "wall_time_s": (int, float), "versions": dict, "code_hash": (str, type(None)),
            "verdict": str, "claims": list, "comparisons": list, "metrics": dict}


def validate_record(rec: dict, slug: str | None = None, scale: str | None = None) -> list[str]:
    """Problems with a results record (empty when it is well formed)."""
    problems = []
    for key, typ in REQUIRED.items():
        if key not in rec:
            problems.append(f"missing key {key!r}")
        elif not isinstance(rec[key], typ):
            problems.append(f"{key!r} has type {type(rec[key]).__name__}")
    if problems:
        return problems
    if slug and rec["slug"] != slug:
        problems.append(f"slug is {rec['slug']!r}, expected {slug!r}")
    if scale and rec["scale"] != scale:
        problems.append(f"scale is {rec['scale']!r}, expected {scale!r}")
    if rec["verdict"] not in VERDICTS:
        problems.append(f"unknown verdict {rec['verdict']!r}")
    if not rec["claims"]:
        problems.append("no claims")
    held = []
    for c in rec["claims"]:
        for key in ("id", "statement", "metric", "test", "value", "held"):
            if key not in c:
                problems.append(f"claim {c.get('id', '?')} lacks {key!r}")
        if not isinstance(c.get("held"), bool):
            problems.append(f"claim {c.get('id', '?')} has no outcome")
        held.append(c.get("held") is True)
    if held and not problems:
        expect = ("reproduced" if all(held) else "not reproduced" if not any(held)
                  else "partly reproduced")
        if rec["verdict"] != expect:
            problems.append(f"verdict {rec['verdict']!r} does not follow from the claims ({expect!r})")
    if not rec["comparisons"] and rec["article"].get("archive") is not None:
        problems.append("no results-vs-article rows")  # a workbench page has no article to compare
    return problems


def markdown_table(header, rows) -> str:
    """A Markdown table (header row, separator, one line per row; cells through ``str``). Chapters
    show it with ``IPython.display.Markdown(markdown_table(...))``."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def glue(name: str, value, display: bool = False):
    """Make ``value`` quotable in prose (``{glue:text}`name```); myst-nb's glue when present."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalar -> float, so `{glue:text}` can format it
    try:
        from myst_nb import glue as _glue
    except ImportError:  # outside the book toolchain (e.g. Colab): just show it
        if display:
            print(f"{name} = {value}")
        return value
    _glue(name, value, display=display)
    return value
