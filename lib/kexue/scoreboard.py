"""The reproduction scoreboard: one row per article, built from ``results/*.json`` at book-build
time (never edited by hand). ``python -m kexue.scoreboard`` prints it as Markdown; the book's
``scoreboard`` directive (``kexue.sphinxext``) renders it as HTML."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import book
from .results import NO_ARTICLE_CLAIM, validate_record


@dataclass
class Row:
    slug: str
    article: dict
    notebook: str | None = None        # path without suffix, relative to the root
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
        claims = [c for c in self.record["claims"] if not self.registered or c.get("kind") == "article"]
        return sum(c["held"] is True for c in claims), len(claims)

    @property
    def extensions(self) -> tuple[int, int] | None:
        if not self.registered:
            return None
        claims = [c for c in self.record["claims"] if c.get("kind") == "extension"]
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


VERDICT_CLASS = {"reproduced": "kx-ok", "partly reproduced": "kx-part", "not reproduced": "kx-no",
                 NO_ARTICLE_CLAIM: "kx-dim"}
STATUS_TEXT = {"pending": "full run pending", "stale": "outputs stale", "invalid": "record invalid",
               "not written": "chapter not written yet", "current": ""}


def render_html(rows: list[Row]) -> str:
    """The scoreboard as an HTML table (links relative to the book's root page)."""
    e = html.escape
    s = summary(rows)
    out = [
        "<style>.kx-sb{font-size:0.85em;border-collapse:collapse;width:100%}"
        ".kx-sb td,.kx-sb th{border-bottom:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}"
        ".kx-ok{color:#1a7f37;font-weight:600}.kx-part{color:#9a6700;font-weight:600}"
        ".kx-no{color:#cf222e;font-weight:600}.kx-flag{color:#cf222e}.kx-dim{color:#777}"
        ".kx-sb ul{margin:0;padding-left:1em}</style>",
        f"<p><b>{s['written']}</b> of {s['articles']} articles have a chapter; "
        f"<span class='kx-ok'>{s['reproduced']} reproduced</span>, "
        f"<span class='kx-part'>{s['partly reproduced']} partly reproduced</span>, "
        f"<span class='kx-no'>{s['not reproduced']} not reproduced</span>, "
        f"<span class='kx-dim'>{s['no article claim']} with no testable article claim scored yet</span>; "
        f"{s['pending or stale']} with a pending or stale full run. Article claims held: "
        f"<b>{s['article claims held']} of {s['article claims tested']}</b>; extensions (ours, never "
        f"part of a verdict): {s['extensions held']} of {s['extensions tested']}"
        + (f"; {s['unregistered']} chapter(s) still on unregistered claims (old contract)"
           if s['unregistered'] else "") + ".</p>",
        "<table class='kx-sb'><thead><tr><th>#</th><th>chapter</th><th>article</th>"
        "<th>article claims held</th><th>extensions held</th><th>implementation checks</th>"
        "<th>key numbers: ours (article)</th><th>verdict</th><th>registered · run</th></tr></thead><tbody>",
    ]
    for i, r in enumerate(rows, 1):
        a = r.article
        art = (f"<a href='{e(a['url'])}'>{e(a['title_zh'])}</a><br>"
               f"<span class='kx-dim'>{e(a['date'])} · archive {a['archive']}</span>")
        if r.notebook:
            chap = f"<a href='{e(r.notebook)}.html'>{e(a['title_en'])}</a>"
        else:
            chap = f"<span class='kx-dim'>{e(a['title_en'])}</span>"
        held = ext = checks = verdict = run = nums = ""
        if r.record:
            h, n = r.held
            held = f"{h} / {n}" + ("" if r.registered else "<br><span class='kx-flag'>unregistered</span>")
            ext = "{} / {}".format(*r.extensions) if r.registered else ""
            checks = "{} / {} passing".format(*r.checks) if r.checks[1] else "—"
            v = r.record["verdict"]
            verdict = f"<span class='{VERDICT_CLASS[v]}'>{e(v)}</span>"
            nums = "<ul>" + "".join(
                f"<li>{e(c['quantity'])}: <b>{e(str(c['ours']))}</b> ({e(str(c['article']))})</li>"
                for c in _key_numbers(r.record)) + "</ul>"
            reg = r.record.get("registration") or {}
            regd = (f"registered {e(reg['date'][:10])} (<code>{e(reg['commit'][:8])}</code>)<br>"
                    if reg.get("commit") else "")
            run = (regd + f"run {e(r.record.get('started', '')[:10])} · {e(r.record['scale'])} · "
                   f"{e(r.record['device'])} · {r.record['wall_time_s'] / 60:.1f} min")
            if r.large:
                run += (f"<br>large: {e(r.large['verdict'])} · {e(r.large['device'])} · "
                        f"{r.large['wall_time_s'] / 60:.1f} min" + (" (older code)" if r.large_stale else ""))
        flag = STATUS_TEXT[r.status]
        if flag:
            cls = "kx-dim" if r.status == "not written" else "kx-flag"
            run += ("<br>" if run else "") + f"<span class='{cls}'>{e(flag)}</span>"
        out.append(f"<tr><td>{i}</td><td>{chap}</td><td>{art}</td><td>{held}</td><td>{ext}</td>"
                   f"<td>{checks}</td><td>{nums}</td><td>{verdict}</td><td>{run}</td></tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def render_markdown(rows: list[Row]) -> str:
    lines = ["| # | chapter | article claims held | extensions held | implementation checks | verdict "
             "| registered | status |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        held = "{} / {}".format(*r.held) if r.record else ""
        ext = "{} / {}".format(*r.extensions) if r.registered else ""
        checks = "{} / {}".format(*r.checks) if r.record else ""
        verdict = r.record["verdict"] if r.record else ""
        reg = (r.record.get("registration") or {}).get("date", "")[:10] if r.registered else \
            ("unregistered" if r.record else "")
        lines.append(f"| {i} | {r.slug} | {held} | {ext} | {checks} | {verdict} | {reg} | {r.status} |")
    s = summary(rows)
    lines.append("")
    lines.append(", ".join(f"{k}: {v}" for k, v in s.items()))
    return "\n".join(lines)


def main() -> int:
    root = book.repo_root()
    if root is None:
        print("run from inside the book's repository", flush=True)
        return 2
    print(render_markdown(build_rows(root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
