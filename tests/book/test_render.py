"""Every built page, rendered in headless Chromium after MathJax ran, has no rendering defect
(kexue.render_check: MathJax errors, raw `$$`/`\\begin`, table pipes in a paragraph, object reprs, a
duplicate search bar, tables far wider than the column); layout warnings (tables a little wider than
the column, figures whose text shows too small) are printed, not failed. The scoreboard reads at a
glance (under SCOREBOARD_MAX_PX tall) and its verdict links land on existing sections.
Needs `_build/html` (make book-strict) and chromium (tools/browser.sh). Known findings that need a
code change and a re-run are listed, each with a reason, in tests/book/render_allow.yml.
Full-page screenshots of a few pages go to _build/screenshots."""
import re
import time
from pathlib import Path

import pytest
import yaml

from kexue.book import toc_files
from kexue.render_check import browser, dump_dom, findings, layout, warnings

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
# the pages of the current _toc.yml and Sphinx's own; a page dropped from the toc may linger in _build/html
# from an older build (Jupyter Book does not delete it) and is not checked
PAGES = sorted(p for p in [HTML / f"{f}.html" for f in toc_files(ROOT)]
               + [HTML / n for n in ("index.html", "search.html", "genindex.html")] if p.is_file())
ALLOW = yaml.safe_load((Path(__file__).with_name("render_allow.yml")).read_text()) or []
SCREENSHOT = {"intro.html", "scoreboard.html", "bert-init-std.html", "nsp-zero-shot.html"}
COST: list[float] = []
WARNINGS: list[str] = []
SCOREBOARD_MAX_PX = 4000   # at a 1280 px window (it was 12,100 px with one row per article)


def allowed(page: str, kind: str, excerpt: str) -> bool:
    return any(a["page"] == page and a["kind"] == kind and a["match"] in excerpt for a in ALLOW)


@pytest.mark.skipif(not PAGES, reason="no built book: run make book-strict first")
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(HTML)) for p in PAGES])
def test_page_renders_clean(page):
    assert browser(), "no chromium: run `bash tools/browser.sh` (installs chromium fonts-noto-cjk as root)"
    rel = str(page.relative_to(HTML))
    t = time.perf_counter()
    shot = SHOTS / (page.stem + ".png") if page.name in SCREENSHOT else None
    dom = dump_dom(page, screenshot=shot)
    COST.append(time.perf_counter() - t)
    WARNINGS.extend(f"{rel}: {k}: {e}" for k, e in warnings(dom, page))
    bad = [(k, e) for k, e in findings(dom) if not allowed(rel, k, e)]
    assert not bad, f"{rel}: " + "; ".join(f"{k}: {e!r}" for k, e in bad)
    if rel == "scoreboard.html":
        height = (layout(dom) or {}).get("height")
        assert height and height < SCOREBOARD_MAX_PX, f"the scoreboard is {height} px tall"


@pytest.mark.skipif(not (HTML / "scoreboard.html").is_file(), reason="no built book")
def test_scoreboard_links_land_on_sections():
    """Every chapter link of the scoreboard opens a built page, and every #fragment exists there."""
    page = (HTML / "scoreboard.html").read_text(encoding="utf-8")
    links = re.findall(r"href='(chapters/[^'#]+\.html)(#[^']*)?'", page)
    assert links and any(frag == "#verdict" for _, frag in links)
    for path, frag in links:
        target = HTML / path
        assert target.is_file(), path
        if frag:
            assert f'id="{frag[1:]}"' in target.read_text(encoding="utf-8"), f"{path}{frag}"


def test_allow_list_entries_have_reasons():
    for a in ALLOW:
        assert {"page", "kind", "match", "reason"} <= set(a) and a["reason"].strip(), a


def teardown_module(module):
    if WARNINGS:
        print("\nrender check warnings (not failures):\n  " + "\n  ".join(WARNINGS))
    if COST:
        print(f"\nrender check: {len(COST)} pages, {sum(COST) / len(COST):.1f} s per page")
