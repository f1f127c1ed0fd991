"""Claims, outcomes and the results record of a chapter (``results/<slug>.json``).

The book scores three kinds of checks (README.md, "How a chapter is scored"):

- **article claims** (``kind: article``): what the article itself asserts, with its own words (a short
  Chinese quote and its section). The verdict counts these alone.
- **extensions** (``kind: extension``): sharper or additional tests of ours or of the paper; scored and
  shown separately, never part of the verdict.
- **implementation checks**: the code computes what the math says (parity, identities, closed forms);
  recorded, never counted (:meth:`Results.implementation_check`).

Claims are **registered** before the full run, in ``<slug>.claims.yml`` beside the notebook, committed
in its own commit. A chapter loads them, checks each, and saves the record::

    res = Results.registered("bert-init-std", scale=scale, seed=seed)
    res.show_claims()
    res.check("A1", gap, interval=(lo, hi))   # holds only when the whole interval passes the test
    res.compare("warm-up gap", "Post-LN, Xavier init", article="diverges", ours=gap)
    res.show_comparison(); res.show_verdict(); res.save()

``save`` at the full or large scale refuses to write while the registration is uncommitted or differs
from the committed file, and stores the registration's commit, date and content hash in the record;
``tests/chapters`` checks every record against its registration at that commit.

Verdicts: every article claim held -> "reproduced"; none held -> "not reproduced"; otherwise "partly
reproduced"; no article claim at all -> "no testable article claim scored yet". Records written
before registration existed (claims declared in the notebook with :meth:`Results.claim`, no kinds)
keep the old rule over all their claims and are flagged as unregistered by the scoreboard.

Bookkeeping for chapters: :func:`show_config`, :func:`show_table`, :func:`glue`, :func:`glue_all`,
:func:`load_record`. Used by every chapter.
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

NO_CLAIMS_TEXT = ("No claim is registered for this chapter: what it measures is recorded as "
                  "implementation checks and shown as measurements (see the verdict).")
NO_ARTICLE_CLAIM = "no testable article claim scored yet"
VERDICTS = ("reproduced", "partly reproduced", "not reproduced", NO_ARTICLE_CLAIM)
KINDS = ("article", "extension")
TESTS = {">=": 1, ">": 1, "<=": 1, "<": 1, "between": 2, "near": 2, "rel_near": 2, "is": 1}
REGISTERED_FIELDS = ("id", "kind", "statement", "quote", "section", "metric", "test", "control",
                     "seeds", "fails_if", "threshold", "article_value", "scales")
"""The fields of a claim that come from the registration (and must equal it in the record).
``scales`` (optional) lists the scales at which a claim is scored, e.g. ``[large]`` for a claim whose
experiment does not fit the CPU budget of ``full``; at any other scale the claim is carried in the record
unscored ("scored at large only") and is left out of the verdict and the counts."""
REQUIRED_FIELDS = ("id", "kind", "statement", "metric", "test", "control", "seeds", "fails_if",
                   "threshold")
HAN = "\u4e00-\u9fff"


class RegistrationError(RuntimeError):
    """A chapter's claims are not registered (committed, unchanged) before a full or large run."""


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


def verdict_of(article_held: list[bool]) -> str:
    """The verdict from the outcomes of the article claims alone."""
    if not article_held:
        return NO_ARTICLE_CLAIM
    if all(article_held):
        return "reproduced"
    return "not reproduced" if not any(article_held) else "partly reproduced"


# -- registration ------------------------------------------------------------------------------
def parse_registration(text: str, where: str = "registration") -> list[dict]:
    """The claims of a registration file (YAML text), checked: known fields only, the required ones
    present, a valid kind and test, and the article's own (Chinese) words for an article claim."""
    import re

    import yaml

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise ValueError(f"{where}: expected a mapping with a list 'claims'")
    extra = set(data) - {"claims", "implementation_checks"}
    if extra:
        raise ValueError(f"{where}: unknown top-level key(s) {sorted(extra)}")
    out, seen = [], set()
    for i, c in enumerate(data["claims"]):
        cid = c.get("id", f"#{i + 1}") if isinstance(c, dict) else f"#{i + 1}"
        if not isinstance(c, dict):
            raise ValueError(f"{where}: claim {cid} is not a mapping")
        unknown = set(c) - set(REGISTERED_FIELDS)
        if unknown:
            raise ValueError(f"{where}: claim {cid} has unknown field(s) {sorted(unknown)}; "
                             f"the fields are {', '.join(REGISTERED_FIELDS)}")
        missing = [k for k in REQUIRED_FIELDS if c.get(k) in (None, "")]
        if c.get("kind") == "article":
            missing += [k for k in ("quote", "section") if not c.get(k)]
        if missing:
            raise ValueError(f"{where}: claim {cid} lacks {', '.join(missing)}")
        if c["kind"] not in KINDS:
            raise ValueError(f"{where}: claim {cid} has kind {c['kind']!r}; use one of {KINDS}")
        if c["kind"] == "article" and not re.search(f"[{HAN}]", str(c["quote"])):
            raise ValueError(f"{where}: article claim {cid} quotes no Chinese words of the article")
        if cid in seen:
            raise ValueError(f"{where}: claim {cid} is registered twice")
        seen.add(cid)
        if not (isinstance(c["seeds"], int) and c["seeds"] >= 1) and not isinstance(c["seeds"], str):
            raise ValueError(f"{where}: claim {cid}: seeds is a positive int or a description")
        if c.get("scales") is not None:
            from . import SCALES
            sc = c["scales"]
            if not (isinstance(sc, list) and sc and all(x in SCALES for x in sc)):
                raise ValueError(f"{where}: claim {cid}: scales is a non-empty list of {SCALES}, got {sc!r}")
        reg = {k: c.get(k) for k in REGISTERED_FIELDS}
        reg["test"] = list(_check_test(c["test"]))
        reg["id"] = str(cid)
        out.append(reg)
    return out


def registration_path(slug: str) -> Path:
    """``<slug>.claims.yml`` beside the chapter's notebook (the working directory's copy first, as
    in a notebook run)."""
    here = Path.cwd() / f"{slug}.claims.yml"
    if here.is_file():
        return here
    return book.notebook_for(slug).with_name(f"{slug}.claims.yml")


def _git(args: list[str], cwd: Path) -> str | None:
    import subprocess
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def registration_state(path: Path) -> dict:
    """Where a registration file stands in git: ``status`` is ``committed`` (with ``commit``, its
    ISO ``date`` and ``file`` relative to the repository), ``uncommitted`` (changed, staged or
    untracked), ``missing``, or ``no git history`` (not a git checkout, or a shallow clone)."""
    path = Path(path).resolve()
    if not path.is_file():
        return {"status": "missing", "file": str(path)}
    top = _git(["rev-parse", "--show-toplevel"], path.parent)
    if top is None:
        return {"status": "no git history", "file": path.name, "commit": None}
    top = Path(top.strip())
    rel = path.relative_to(top).as_posix()
    if (_git(["rev-parse", "--is-shallow-repository"], top) or "").strip() == "true":
        return {"status": "no git history", "file": rel, "commit": None}
    if (_git(["status", "--porcelain", "--", rel], top) or "").strip():
        return {"status": "uncommitted", "file": rel}
    log = (_git(["log", "-1", "--format=%H %cI", "--", rel], top) or "").split()
    if len(log) != 2:
        return {"status": "uncommitted", "file": rel}
    return {"status": "committed", "file": rel, "commit": log[0], "date": log[1]}


def registration_at(commit: str, file: str, root: Path) -> str | None:
    """The text of a registration file at ``commit`` (``None`` when git cannot show it)."""
    return _git(["show", f"{commit}:{file}"], root)


def require_registered(slug: str, scale: str, path: Path | None = None) -> dict:
    """For a full or large run: the registration state, or a :class:`RegistrationError` that says
    what to do when the claims file is missing, uncommitted or changed since its commit."""
    path = Path(path) if path else registration_path(slug)
    state = registration_state(path)
    if scale in ("full", "large"):
        if state["status"] == "missing":
            raise RegistrationError(
                f"{slug}: no {path.name} beside the notebook: register the chapter's claims there and "
                "commit that file alone before a full run (README.md, 'How a chapter is scored')")
        if state["status"] == "uncommitted":
            raise RegistrationError(
                f"{slug}: {state['file']} has uncommitted changes: commit the registration in its "
                f"own commit (git add {state['file']} && git commit) before a {scale} run")
    return state


# -- claims and the record --------------------------------------------------------------------
@dataclass
class Claim:
    id: str
    statement: str
    metric: str
    test: tuple
    article: str | float | None = None      # the article's value, shown beside ours
    value: object = None
    held: bool | None = None
    note: str = ""
    kind: str | None = None                 # article | extension (None: an unregistered, old claim)
    quote: str | None = None
    section: str | None = None
    control: str | None = None
    seeds: int | str | None = None
    fails_if: str | None = None
    threshold: str | None = None
    interval: list | None = None
    per_seed: list | None = None
    scales: list | None = None              # the scales at which it is scored (None: every scale)

    def applies(self, scale: str) -> bool:
        """Whether this claim is scored at ``scale``."""
        return self.scales is None or scale in self.scales

    def registered(self) -> dict:
        return {"id": self.id, "kind": self.kind, "statement": self.statement, "quote": self.quote,
                "section": self.section, "metric": self.metric, "test": list(self.test),
                "control": self.control, "seeds": self.seeds, "fails_if": self.fails_if,
                "threshold": self.threshold, "article_value": self.article, "scales": self.scales}


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
        self.registration = None          # the state of the registration file, when registered
        self._registered_text = None
        self.registered_checks: list = []

    # -- declaring claims ------------------------------------------------------------------------
    @classmethod
    def registered(cls, slug: str, scale: str, seed: int = 0, path: Path | None = None) -> "Results":
        """Results whose claims come from the chapter's registration (``<slug>.claims.yml``). At the
        full and large scales the file must be committed and unchanged (:func:`require_registered`)."""
        res = cls(slug, scale=scale, seed=seed)
        res.registration = require_registered(slug, scale, path)
        path = Path(path) if path else registration_path(slug)
        if not path.is_file():
            raise RegistrationError(f"{slug}: no registration {path.name}: write the chapter's claims "
                                    "there (see kexue.results) and commit it before the full run")
        text = path.read_text(encoding="utf-8")
        res._registered_text = text
        import yaml
        res.registered_checks = list((yaml.safe_load(text) or {}).get("implementation_checks") or [])
        for c in parse_registration(text, where=path.name):
            res.claims[c["id"]] = Claim(
                c["id"], c["statement"], c["metric"], tuple(c["test"]), c["article_value"],
                kind=c["kind"], quote=c["quote"], section=c["section"], control=c["control"],
                seeds=c["seeds"], fails_if=c["fails_if"], threshold=c["threshold"], scales=c["scales"])
        return res

    def claim(self, id: str, statement: str, *, metric: str, test, article=None) -> Claim:
        """Declare claim check ``id`` in the notebook (the old, unregistered way; new chapters use
        :meth:`registered`)."""
        if self.registration is not None:
            raise ValueError("this chapter's claims come from its registration; edit "
                             f"{self.slug}.claims.yml (and commit it) instead of declaring claims here")
        if id in self.claims:
            raise ValueError(f"claim {id} is declared twice")
        c = Claim(id, statement, metric, _check_test(test), article)
        self.claims[id] = c
        return c

    # -- checking --------------------------------------------------------------------------------
    def check(self, id: str, value, note: str = "", *, interval=None, per_seed=None) -> bool:
        """Record the measured ``value`` of claim ``id``; returns whether it held.

        With ``interval=(lo, hi)`` (e.g. a 90 % interval from :mod:`kexue.stats`) the claim holds only
        when both ends pass its test, i.e. the whole interval lies on the claimed side; a missing
        (nan) end never passes. ``per_seed`` values are kept in the record."""
        if id not in self.claims:
            raise KeyError(f"claim {id} was not declared; declared: {', '.join(self.claims)}")
        c = self.claims[id]
        if not c.applies(self.scale):
            raise ValueError(f"claim {id} is registered for scale(s) {', '.join(c.scales)} only; at "
                             f"{self.scale!r} it stays unscored (test it with `res.scored({id!r})` first)")
        c.value = _jsonable(value)
        v = c.value if not isinstance(c.value, str) else float(c.value)
        held = bool(evaluate_test(c.test, v))
        if interval is not None:
            if c.test[0] == "is":
                raise ValueError(f"claim {id}: an 'is' test takes no interval")
            lo, hi = (float(x) for x in interval)
            c.interval = _jsonable([lo, hi])
            held = held and evaluate_test(c.test, lo) and evaluate_test(c.test, hi)
        if per_seed is not None:
            c.per_seed = _jsonable(list(per_seed))
        c.held = bool(held)
        c.note = note
        self.metrics[c.metric] = c.value
        return c.held

    def check_paired(self, id: str, a, b, *, scale: float = 1.0) -> tuple[float, float, float]:
        """Score claim ``id`` on the paired per-seed difference ``a − b`` (divided by ``scale``, e.g.
        two seed sds for an "A ≈ B" claim): its mean and 90 % t interval (:func:`kexue.stats.paired_interval`),
        per-seed values kept. Returns (mean, lo, hi) of the scaled difference."""
        import numpy as np

        from . import stats
        d = (np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) / float(scale)
        m, lo, hi = stats.mean_interval(d)
        self.check(id, m, interval=(lo, hi), per_seed=d)
        return m, lo, hi

    def check_mean(self, id: str, x) -> tuple[float, float, float]:
        """Score claim ``id`` on the per-seed values ``x``: their mean and 90 % t interval
        (:func:`kexue.stats.mean_interval`), per-seed values kept. Returns (mean, lo, hi)."""
        import numpy as np

        from . import stats
        m, lo, hi = stats.mean_interval(x)
        self.check(id, m, interval=(lo, hi), per_seed=np.asarray(x, dtype=float))
        return m, lo, hi

    def implementation_check(self, name: str, passed: bool, detail: str = "") -> None:
        """Record an implementation check (code == math); never counted; a failure stops the chapter."""
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
    def scored(self, id: str) -> bool:
        """Whether claim ``id`` is scored at this run's scale (see ``scales`` in the registration)."""
        return self.claims[id].applies(self.scale)

    def _by_kind(self, kind, deferred: bool = False):
        """The claims of ``kind`` scored at this scale (``deferred=True``: those that are not)."""
        return [c for c in self.claims.values() if c.kind == kind and c.applies(self.scale) != deferred]

    def verdict(self) -> str:
        pending = [c.id for c in self.claims.values() if c.held is None and c.applies(self.scale)]
        if pending:
            raise RuntimeError(f"claims without an outcome: {', '.join(pending)}")
        if self.registration is None:  # an old, unregistered chapter: every claim counts
            if not self.claims:
                raise RuntimeError("a chapter needs at least one claim check")
            return verdict_of([c.held for c in self.claims.values()])
        return verdict_of([c.held for c in self._by_kind("article")])

    def counts(self) -> dict:
        """Held / tested per kind, and implementation checks passing / run."""
        out = {k: [sum(bool(c.held) for c in self._by_kind(k)), len(self._by_kind(k))] for k in KINDS}
        out["implementation"] = [sum(self.checks.values()), len(self.checks)]
        deferred = {k: len(self._by_kind(k, deferred=True)) for k in KINDS}
        if any(deferred.values()):
            out["not scored at this scale"] = deferred
        return out

    # -- display ---------------------------------------------------------------------------------
    def claims_markdown(self) -> str:
        if not self.claims:
            return NO_CLAIMS_TEXT
        rows = []
        for c in self.claims.values():
            words = f"「{c.quote}」 ({c.section})" if c.quote else "—"
            rows.append([c.id, c.kind or "—", c.statement, words, f"{c.metric} {describe_test(c.test)}",
                         c.control or "—", c.seeds if c.seeds is not None else "—"])
        return markdown_table(["id", "kind", "claim", "the article's words", "test", "control",
                               "seeds"], rows)

    def show_claims(self):
        """The registered claims as a table: id, kind, the claim, the article's words, test,
        control and seeds; then the registration's commit."""
        from IPython.display import Markdown, display
        text = self.claims_markdown()
        reg = self.registration or {}
        if reg.get("status") == "committed":
            text += (f"\n\nRegistered in `{reg['file']}`, commit `{reg['commit'][:10]}` "
                     f"({reg['date'][:10]}).")
        elif reg:
            text += f"\n\nRegistration `{reg.get('file')}`: {reg['status']}."
        display(Markdown(text))

    def comparison_markdown(self) -> str:
        return markdown_table(["quantity", "setting", "article", "ours"],
                              [[r["quantity"], r["setting"], r["article"], r["ours"]]
                               for r in self.comparisons])

    @staticmethod
    def _outcome(c) -> str:
        if c.held is None and c.scales:
            return f"scored at `{'`, `'.join(c.scales)}` only"
        return "—" if c.held is None else ("**held**" if c.held else "**not held**")

    def _claim_rows(self, claims):
        rows = []
        for c in claims:
            ours = _fmt(c.value)
            if c.interval:
                ours += f" [{_fmt(c.interval[0])}, {_fmt(c.interval[1])}]"
            rows.append([c.id, c.statement, f"{c.metric} {describe_test(c.test)}", ours,
                         _fmt(c.article), self._outcome(c)])
        return rows

    def verdict_markdown(self) -> str:
        head = ["claim", "statement", "test", "ours [90 % interval]", "article", "outcome"]
        if self.registration is None:  # old chapters
            rows = [markdown_table(head, self._claim_rows(self.claims.values())), ""]
            held = sum(bool(c.held) for c in self.claims.values())
            rows.append(f"**Verdict: {self.verdict()}** ({held} of {len(self.claims)} claim checks "
                        f"held; scale `{self.scale}`, seed {self.seed}).")
            return "\n".join(rows)
        n = self.counts()
        parts = []
        arts = [c for c in self.claims.values() if c.kind == "article"]
        exts = [c for c in self.claims.values() if c.kind == "extension"]
        if arts:
            parts += ["**Article claims** (the verdict counts these alone)", "",
                      markdown_table(head, self._claim_rows(arts)), ""]
        if exts:
            parts += ["**Extensions** (ours; scored separately, never part of the verdict)", "",
                      markdown_table(head, self._claim_rows(exts)), ""]
        if self.checks:
            parts += [f"**Implementation checks** (code = math; never counted): "
                      f"{n['implementation'][0]} of {n['implementation'][1]} passed: "
                      + "; ".join(f"{k} ({'passed' if v else 'FAILED'})" for k, v in self.checks.items()),
                      ""]
        a, e = n["article"], n["extension"]
        later = n.get("not scored at this scale", {})
        later_text = "".join(f"; {later[k]} {k} claim{'s' if later[k] > 1 else ''} registered for another "
                             "scale, not scored here" for k in KINDS if later.get(k))
        parts.append(f"**Verdict: {self.verdict()}** ({a[0]} of {a[1]} article claims held; "
                     f"extensions {e[0]} of {e[1]}{later_text}; scale `{self.scale}`, seed {self.seed}).")
        return "\n".join(parts)

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

        from . import current_device
        dev = str(current_device())  # the device setup() chose and the library computed on
        rec = {
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
        }
        if self.registration is not None:
            import hashlib
            rec["registration"] = dict(self.registration, sha256=hashlib.sha256(
                self._registered_text.encode("utf-8")).hexdigest())
            rec["counts"] = self.counts()
        return _jsonable(rec)

    def _code_hash(self) -> str | None:
        here = Path.cwd() / f"{self.slug}.ipynb"
        try:
            path = here if here.is_file() else book.notebook_for(self.slug)
        except (FileNotFoundError, TypeError):
            return None
        return book.code_hash(path)

    def save(self, directory: Path | None = None) -> None:
        """Write the record (:func:`kexue.book.record_path`: ``<slug>.json``, ``<slug>.large.json``
        for a large run) and print where; the path is kept in ``self.saved_path`` (not returned, so a
        notebook shows no machine path). A full or large run re-checks that the registration is still
        the committed one, so a claims file edited during the run cannot slip into the record."""
        if self.registration is not None and self.scale in ("full", "large") \
                and self.registration.get("status") == "committed":
            now = registration_state(registration_path(self.slug))
            committed = registration_at(now.get("commit", ""), now.get("file", ""),
                                        book.repo_root() or Path.cwd())
            if now["status"] != "committed" or committed != self._registered_text:
                raise RegistrationError(f"{self.slug}: the registration changed during the run; "
                                        "commit it and run the chapter again")
            self.registration = now
        rec = self.record()
        path = book.record_path(self.slug, self.scale, directory)
        path.parent.mkdir(parents=True, exist_ok=True)
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
    """Problems with a results record (empty when it is well formed). A registered record's verdict
    follows from its article claims alone; an old, unregistered one's from all its claims."""
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
    registered = "registration" in rec
    if not rec["claims"] and not registered:
        problems.append("no claims")
    for c in rec["claims"]:
        for key in ("id", "statement", "metric", "test", "value", "held"):
            if key not in c:
                problems.append(f"claim {c.get('id', '?')} lacks {key!r}")
        deferred = c.get("scales") is not None and rec["scale"] not in c["scales"]
        if deferred and c.get("held") is not None:
            problems.append(f"claim {c.get('id', '?')} is registered for {c['scales']} but scored at {rec['scale']!r}")
        if not deferred and not isinstance(c.get("held"), bool):
            problems.append(f"claim {c.get('id', '?')} has no outcome")
        if registered and c.get("kind") not in KINDS:
            problems.append(f"claim {c.get('id', '?')} has kind {c.get('kind')!r}")
    if not problems:
        counted = [c for c in rec["claims"] if c.get("kind") == "article"] if registered else rec["claims"]
        counted = [c for c in counted if c.get("held") is not None]
        expect = verdict_of([c["held"] for c in counted])
        if rec["verdict"] != expect:
            problems.append(f"verdict {rec['verdict']!r} does not follow from the claims ({expect!r})")
    if not rec["comparisons"] and rec["article"].get("archive") is not None:
        problems.append("no results-vs-article rows")  # a workbench page has no article to compare
    return problems


def record_matches_registration(rec: dict, registration_text: str) -> list[str]:
    """Differences between a record's claims and the registration it names (empty when equal)."""
    reg = {c["id"]: c for c in parse_registration(registration_text)}
    got = {c["id"]: c for c in rec["claims"]}
    problems = []
    if list(reg) != list(got):
        problems.append(f"claims {list(got)} in the record, {list(reg)} registered")
    for cid in set(reg) & set(got):
        for k in REGISTERED_FIELDS:
            want = reg[cid][k]
            have = got[cid].get("article") if k == "article_value" else got[cid].get(k)
            if have != want:
                problems.append(f"{cid}.{k}: record has {have!r}, registration {want!r}")
    return problems


# -- bookkeeping for chapters ---------------------------------------------------------------------
def show_table(header, rows, caption: str | None = None):
    """Show a Markdown table (any rows; cells through ``str``, ``|`` escaped), with an optional
    caption line above it."""
    from IPython.display import Markdown, display
    text = markdown_table(header, rows)
    display(Markdown(f"{caption}\n\n{text}" if caption else text))


def show_config(table: dict, scale: str):
    """Show a chapter's ``CONFIG`` table: one row per knob, one column per scale, the running scale
    in bold (narrow enough for the book's column however many knobs there are)."""
    scales = list(table)
    knobs = list(dict.fromkeys(k for s in scales for k in table[s]))
    rows = [[f"`{k}`"] + [(f"**{_cell(table[s].get(k))}**" if s == scale else _cell(table[s].get(k)))
                          for s in scales] for k in knobs]
    show_table(["knob"] + [f"**{s}** (running)" if s == scale else s for s in scales], rows)


def _cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        return ", ".join(_cell(x) for x in v)
    return _fmt(v) if isinstance(v, float) else str(v)


def load_record(slug: str, scale: str = "full") -> dict | None:
    """The recorded run of a chapter (``results/<slug>.json``, ``.large.json`` for ``large``), or
    ``None`` when there is none; ``code_current`` is added: whether its code hash equals the chapter's
    notebook now. Chapters read records through this (never through ``kexue.book``)."""
    path = book.record_path(slug, scale)
    if not path.is_file():
        return None
    rec = json.loads(path.read_text(encoding="utf-8"))
    try:
        rec["code_current"] = rec.get("code_hash") == book.code_hash(book.notebook_for(slug))
    except FileNotFoundError:
        rec["code_current"] = None
    return rec


def glue_all(**values) -> None:
    """:func:`glue` every keyword (name = value) for quoting in prose. Returns nothing, so that a
    cell ending with it shows no stray output."""
    for name, value in values.items():
        glue(name, value)


def markdown_table(header, rows) -> str:
    """A Markdown table (header row, separator, one line per row; cells through ``str``, ``|`` escaped). Chapters
    show it with ``IPython.display.Markdown(markdown_table(...))``."""
    def cell(x) -> str:  # a bare | would end the cell; a line break would end the table
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, r)) + " |" for r in rows])


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
