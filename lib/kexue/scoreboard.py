"""The reproduction scoreboard: one row per article, built from ``results/*.json`` at book-build
time (never edited by hand). ``python -m kexue.scoreboard`` prints it as Markdown; the book's
``scoreboard`` directive (``kexue.sphinxext``) renders it as HTML."""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import book
from .results import NO_ARTICLE_CLAIM, validate_record


@dataclass
class Row:
    slug: str
    article: dict
    notebook: str | None = None        # path without suffix, relative to the root
    notebook_path: Path | None = None  # the notebook file
    record: dict | None = None
    large: dict | None = None          # a valid results/<slug>.large.json (optional large run)
    large_stale: bool = False          # its code hash differs from the notebook's
    status: str = "not written"        # not written | pending | stale | invalid | current
    problems: list = field(default_factory=list)

    @property
    def registered(self) -> bool:
        return bool(self.record and "registration" in self.record)

    @property
    def held(self) -> tuple[int, int] | None:
        """Article claims held / tested (for an old, unregistered record: all its claims)."""
        if not self.record:
            return None
        claims = [c for c in self.record["claims"] if (not self.registered or c.get("kind") == "article")
                  and c.get("held") is not None]  # a claim registered for another scale is not tested here
        return sum(c["held"] is True for c in claims), len(claims)

    @property
    def extensions(self) -> tuple[int, int] | None:
        if not self.registered:
            return None
        claims = [c for c in self.record["claims"] if c.get("kind") == "extension" and c.get("held") is not None]
        return sum(c["held"] is True for c in claims), len(claims)

    @property
    def checks(self) -> tuple[int, int] | None:
        if not self.record:
            return None
        ch = self.record.get("implementation_checks") or {}
        return sum(bool(v) for v in ch.values()), len(ch)


def build_rows(root: Path) -> list[Row]:
    """Every catalogued article, in the book's order, with its chapter's status and record."""
    notebooks = {p.stem: p for p in book.chapter_notebooks(root)}
    rows = []
    for slug, art in book.catalog().items():
        row = Row(slug, art)
        nb = notebooks.get(slug)
        if nb is not None:
            row.notebook = nb.relative_to(root).with_suffix("").as_posix()
            row.notebook_path = nb
            rec_path = root / "results" / f"{slug}.json"
            if not rec_path.is_file():
                row.status = "pending"
                row.problems.append("no results record: the full run is pending")
            else:
                rec = json.loads(rec_path.read_text(encoding="utf-8"))
                row.problems = validate_record(rec, slug=slug)
                if row.problems:
                    row.status = "invalid"
                else:
                    row.record = rec
                    if rec["scale"] != "full":
                        row.status = "pending"
                        row.problems.append(f"the record is a {rec['scale']} run, not full")
                    elif rec["code_hash"] != book.code_hash(nb):
                        row.status = "stale"
                        row.problems.append("the chapter's code changed after its full run")
                    else:
                        row.status = "current"
            large = root / "results" / f"{slug}.large.json"
            if large.is_file():
                lrec = json.loads(large.read_text(encoding="utf-8"))
                bad = validate_record(lrec, slug=slug, scale="large")
                if bad:
                    row.problems += [f"large record: {p}" for p in bad]
                else:
                    row.large = lrec
                    row.large_stale = lrec["code_hash"] != book.code_hash(nb)
                    if row.large_stale:
                        row.problems.append("the chapter's code changed after its large run")
        rows.append(row)
    return rows


def summary(rows: list[Row]) -> dict:
    written = [r for r in rows if r.notebook]
    verdicts = [r.record["verdict"] for r in written if r.record]
    return {"articles": len(rows), "written": len(written),
            "reproduced": verdicts.count("reproduced"),
            "partly reproduced": verdicts.count("partly reproduced"),
            "not reproduced": verdicts.count("not reproduced"),
            "no article claim": verdicts.count(NO_ARTICLE_CLAIM),
            "article claims held": sum(r.held[0] for r in written if r.record and r.registered),
            "article claims tested": sum(r.held[1] for r in written if r.record and r.registered),
            "extensions held": sum(r.extensions[0] for r in written if r.registered),
            "extensions tested": sum(r.extensions[1] for r in written if r.registered),
            "unregistered": sum(bool(r.record) and not r.registered for r in written),
            "pending or stale": sum(r.status in ("pending", "stale", "invalid") for r in written)}


def _key_numbers(rec: dict) -> list[dict]:
    rows = [c for c in rec["comparisons"] if c.get("key")]
    return rows or rec["comparisons"][:3]


def key_result(rec: dict) -> dict | None:
    """The one result a scoreboard row shows: the record's first comparison marked ``key`` (its
    first comparison if none is marked), straight from the record."""
    rows = _key_numbers(rec)
    return rows[0] if rows else None


def verdict_anchor(notebook: Path) -> str:
    """The fragment of a chapter's Verdict section (``#verdict``, from its ``## Verdict`` heading),
    or "" when the notebook has no such heading (the link then goes to the chapter's top)."""
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return ""
    for c in cells:
        if c.get("cell_type") != "markdown":
            continue
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for line in src.splitlines():
            if re.fullmatch(r"#{1,6}\s+Verdict\s*", line.strip()):
                return "#verdict"
    return ""


def dates(rows: list[Row]) -> dict:
    """The first and last registration and run dates over the current records (ISO days)."""
    reg = sorted((r.record.get("registration") or {}).get("date", "")[:10] for r in rows
                 if r.record and r.registered)
    run = sorted(r.record.get("started", "")[:10] for r in rows if r.record)
    reg, run = [d for d in reg if d], [d for d in run if d]
    return {"registered": (reg[0], reg[-1]) if reg else None, "run": (run[0], run[-1]) if run else None}


VERDICT_CLASS = {"reproduced": "kx-ok", "partly reproduced": "kx-part", "not reproduced": "kx-no",
                 NO_ARTICLE_CLAIM: "kx-dim"}
STATUS_TEXT = {"pending": "full run pending", "stale": "outputs stale", "invalid": "record invalid",
               "not written": "chapter not written yet", "current": ""}

_CSS = (
    "<style>"
    ".kx-sum{display:flex;flex-wrap:wrap;gap:.5rem;margin:0 0 .5rem 0}"
    ".kx-card{border:1px solid var(--pst-color-border,#ccc);border-radius:6px;padding:.3rem .7rem;"
    "flex:1 1 9rem}"
    ".kx-card b{font-size:1.35em;display:block;line-height:1.25}.kx-card span{font-size:.8em}"
    ".kx-sb{font-size:.8em;border-collapse:collapse;width:100%;table-layout:fixed;margin-top:.3rem}"
    ".kx-sb td,.kx-sb th{border-bottom:1px solid var(--pst-color-border,#ccc);padding:3px 4px;"
    "vertical-align:top;text-align:left;overflow-wrap:break-word}"
    ".kx-sb th{font-weight:600}.kx-sb col.kx-n{width:1.9em}.kx-sb col.kx-ch{width:27%}"
    ".kx-sb col.kx-v{width:14%}.kx-sb col.kx-c{width:12%}.kx-sb col.kx-k{width:28%}.kx-sb col.kx-d{width:16%}"
    ".kx-sb a.kx-ok,.kx-sb a.kx-part,.kx-sb a.kx-no,.kx-sb a.kx-dim{text-decoration:none}"
    ".kx-ok{color:#1a7f37;font-weight:600}.kx-part{color:#9a6700;font-weight:600}"
    ".kx-no{color:#cf222e;font-weight:600}.kx-flag{color:#cf222e}.kx-dim{color:#777}"
    ".kx-small{font-size:.88em}.kx-nw{white-space:nowrap}"
    ".kx-un{font-size:.8em;border-collapse:collapse;width:100%}"
    ".kx-un td{padding:1px 5px;border-bottom:1px solid var(--pst-color-border,#eee);vertical-align:top}"
    "details.kx-more summary{cursor:pointer;font-weight:600;margin:.7rem 0 .3rem 0}"
    "</style>")


def _pct(a: int, b: int) -> str:
    return f" ({100 * a / b:.0f} %)" if b else ""


def render_summary(rows: list[Row]) -> str:
    """The summary on top of the scoreboard: chapters written, verdicts, claims held, dates."""
    e = html.escape
    s, d = summary(rows), dates(rows)
    cards = [
        (f"{s['written']} of {s['articles']}", "chapters written"),
        (f"{s['article claims held']} of {s['article claims tested']}",
         "article claims held" + _pct(s["article claims held"], s["article claims tested"])),
        (f"{s['extensions held']} of {s['extensions tested']}", "extensions held (ours; never in a verdict)"),
    ]
    out = ["<div class='kx-sum'>"]
    out += [f"<div class='kx-card'><b>{e(v)}</b><span>{e(t)}</span></div>" for v, t in cards]
    out.append("</div>")
    verdicts = [f"<span class='{VERDICT_CLASS[k]}'>{s[k]} {e(k)}</span>"
                for k in ("reproduced", "partly reproduced", "not reproduced") if s[k]]
    if s["no article claim"]:
        verdicts.append(f"<span class='kx-dim'>{s['no article claim']} with no article claim scored yet</span>")
    line = "Verdicts: " + (", ".join(verdicts) if verdicts else "none yet")
    if s["pending or stale"]:
        line += f"; <span class='kx-flag'>{s['pending or stale']} with a pending or stale full run</span>"
    if s["unregistered"]:
        line += f"; {s['unregistered']} still on unregistered claims (old contract)"
    span = lambda p: e(p[0]) if p[0] == p[1] else f"{e(p[0])} to {e(p[1])}"
    if d["registered"]:
        line += f". Claims registered {span(d['registered'])}"
    if d["run"]:
        line += f"; full runs {span(d['run'])}"
    out.append(f"<p class='kx-small'>{line}.</p>")
    return "\n".join(out)


def _written_row(i: int, r: Row) -> str:
    e = html.escape
    a = r.article
    href = f"{e(r.notebook)}.html"
    chap = (f"<a href='{href}'>{e(a['title_en'])}</a><br><span class='kx-small'>"
            f"<a href='{e(a['url'])}'>{e(a['title_zh'])}</a> <span class='kx-dim'>· {e(a['date'])}</span></span>")
    verdict = claims = key = run = ""
    if r.record:
        rec = r.record
        v = rec["verdict"]
        anchor = verdict_anchor(r.notebook_path) if r.notebook_path else ""
        verdict = f"<a class='{VERDICT_CLASS[v]}' href='{href}{anchor}'>{e(v)}</a>"
        h, n = r.held
        claims = (f"<b>{h} / {n}</b> <span class='kx-small'>article</span>"
                  + ("" if r.registered else "<br><span class='kx-flag'>unregistered</span>"))
        if r.registered and r.extensions[1]:
            claims += "<br><span class='kx-small'>{} / {} extensions</span>".format(*r.extensions)
        if r.checks[1]:
            claims += "<br><span class='kx-dim kx-small'>checks {} / {} passing</span>".format(*r.checks)
        k = key_result(rec)
        if k:
            key = (f"<span class='kx-small'>{e(k['quantity'])}</span><br><b>{e(str(k['ours']))}</b> "
                   f"<span class='kx-dim'>({e(str(k['article']))})</span>")
        reg = rec.get("registration") or {}
        run = (f"<span class='kx-nw' title='claims registered in commit {e(reg.get('commit', '')[:8])}'>"
               f"reg. {e(reg['date'][:10])}</span><br>" if reg.get("date") else "")
        run += (f"<span class='kx-nw'>run {e(rec.get('started', '')[:10])}</span><br>"
                f"<span class='kx-dim kx-small'>{e(rec['scale'])} · {e(rec['device'])} · "
                f"{rec['wall_time_s'] / 60:.1f} min</span>")
        if r.large:
            run += (f"<br><span class='kx-small'>large: {e(r.large['verdict'])} · {e(r.large['device'])} · "
                    f"{r.large['wall_time_s'] / 60:.1f} min" + (" (older code)" if r.large_stale else "")
                    + "</span>")
    flag = STATUS_TEXT[r.status]
    if flag:
        run += ("<br>" if run else "") + f"<span class='kx-flag'>{e(flag)}</span>"
    return (f"<tr id='sb-{e(r.slug)}'><td>{i}</td><td>{chap}</td><td>{verdict}</td><td>{claims}</td>"
            f"<td>{key}</td><td>{run}</td></tr>")


def render_html(rows: list[Row]) -> str:
    """The scoreboard as HTML (links relative to the book's root page): the summary, then one row
    per written chapter (verdict linked to its Verdict section, one key result from its record,
    the registration and run dates), then the articles without a chapter, folded."""
    e = html.escape
    numbered = list(enumerate(rows, 1))
    written = [(i, r) for i, r in numbered if r.notebook]
    unwritten = [(i, r) for i, r in numbered if not r.notebook]
    out = [_CSS, render_summary(rows)]
    out.append(
        "<table class='kx-sb'><colgroup><col class='kx-n'><col class='kx-ch'><col class='kx-v'>"
        "<col class='kx-c'><col class='kx-k'><col class='kx-d'></colgroup>"
        "<thead><tr><th>#</th><th>chapter · article</th><th>verdict</th><th>claims held</th>"
        "<th>key result: ours (article)</th><th>registered · run</th></tr></thead><tbody>")
    out += [_written_row(i, r) for i, r in written]
    out.append("</tbody></table>")
    if unwritten:
        out.append(f"<details class='kx-more'><summary>{len(unwritten)} articles without a chapter yet "
                   f"</summary><table class='kx-un'><tbody>")
        for i, r in unwritten:
            a = r.article
            out.append(f"<tr id='sb-{e(r.slug)}'><td>{i}</td><td>{e(a['title_en'])}</td>"
                       f"<td><a href='{e(a['url'])}'>{e(a['title_zh'])}</a></td>"
                       f"<td class='kx-dim'>{e(a['date'])}</td></tr>")
        out.append("</tbody></table></details>")
    return "\n".join(out)


def render_markdown(rows: list[Row]) -> str:
    """The scoreboard as Markdown (``python -m kexue.scoreboard``): the summary, the written
    chapters with their key result, then the articles without a chapter on one line."""
    s, d = summary(rows), dates(rows)
    lines = [f"{s['written']} of {s['articles']} chapters written; article claims held "
             f"{s['article claims held']} of {s['article claims tested']}; extensions held "
             f"{s['extensions held']} of {s['extensions tested']}; "
             + ", ".join(f"{s[k]} {k}" for k in ("reproduced", "partly reproduced", "not reproduced",
                                                 "no article claim")),
             "", "| # | chapter | verdict | article claims held | extensions held | implementation checks "
             "| key result: ours (article) | registered | run | status |", "|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        if not r.notebook:
            continue
        held = "{} / {}".format(*r.held) if r.record else ""
        ext = "{} / {}".format(*r.extensions) if r.registered else ""
        checks = "{} / {}".format(*r.checks) if r.record else ""
        verdict = r.record["verdict"] if r.record else ""
        reg = (r.record.get("registration") or {}).get("date", "")[:10] if r.registered else \
            ("unregistered" if r.record else "")
        run = r.record.get("started", "")[:10] if r.record else ""
        k = key_result(r.record) if r.record else None
        key = f"{k['quantity']}: {k['ours']} ({k['article']})".replace("|", "\\|") if k else ""
        lines.append(f"| {i} | {r.slug} | {verdict} | {held} | {ext} | {checks} | {key} | {reg} | {run} "
                     f"| {r.status} |")
    rest = [r.slug for r in rows if not r.notebook]
    if rest:
        lines += ["", f"Not written yet ({len(rest)}): " + ", ".join(rest)]
    return "\n".join(lines) + "\n"


def main() -> int:
    root = book.repo_root()
    if root is None:
        print("run from inside the book's repository", flush=True)
        return 2
    print(render_markdown(build_rows(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
