"""Check built book pages as a reader's browser shows them (issue 19 §1).

A page is loaded in headless Chromium (Debian's ``chromium``; ``tools/browser.sh`` installs it with
``fonts-noto-cjk``), MathJax runs offline from ``_vendor``, and the DOM after typesetting is dumped
(``chromium --headless --dump-dom --virtual-time-budget=...``: virtual time lets MathJax finish
without waiting in real time, and no network is needed). :func:`findings` then reads that DOM with
the standard library's HTML parser and reports:

* ``math-error``   a MathJax error node (``mjx-merror``) or the text "Math input error";
* ``raw-tex``      a literal ``$$``, ``\\begin`` or any other TeX control word (``\\sigma``, ``\\frac``)
                   left in visible text (code, pre, scripts and typeset math excluded): math that
                   MathJax never saw;
* ``math-pairing`` a ``$`` in the text touching typeset math, or two inline maths back to back with
                   nothing between them: the dollar signs paired wrongly, as when a display ``$$ … $$``
                   is written inside a paragraph (MyST reads ``$$a$$ which is $b$`` as ``$``, math
                   ``a``, math `` which is ``, then ``b`` as prose: issue 19 §1, bert-init-std);
* ``table-pipe``   a paragraph that starts with ``|``: a Markdown table that did not parse;
* ``object-repr``  a Python object repr such as ``<matplotlib.legend.Legend at 0x7f...>``;
* ``duplicate-search`` two search fields in the page header, or one there beside the sidebar's (the
                   pydata-sphinx-theme >= 0.16 navbar under sphinx-book-theme, issue 19 §1);
* ``wide-table``   a table in the article wider than the content column (by more than
                   :data:`TABLE_SLACK` px), measured as its content's width (``scrollWidth``), so a
                   table that only scrolls inside its own box fails too. The book's stylesheet
                   (``kexue/static/kexue.css``, added by :mod:`kexue.sphinxext`) makes tables fit:
                   a smaller font, wrapping cells, long tokens broken (issue 19 §2). Layout is
                   measured in the browser (below).

Layout (widths, the page height, visible search fields) is not in a dumped DOM, so
:func:`dump_dom` loads a copy of the page with a small script (:data:`LAYOUT_PROBE`, and a
``<base href>`` to the page's own folder so its assets load) that waits for MathJax, measures, and
writes its numbers as JSON into ``<script type="application/json" id="kx-layout">``;
:func:`layout` reads them back. Warnings (:func:`warnings`) do not fail a page:

* ``small-figure-text`` a figure shown so much smaller than it was drawn that 10-pt text in it is
                   under 7 px tall (its PNG's dpi from the ``pHYs`` chunk; 100 if absent).

The DOM checks are pure Python (tested on tiny HTML strings in tests/lib/test_render_check.py);
:func:`dump_dom` is the only part that needs the browser.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["findings", "warnings", "layout", "dump_dom", "screenshot", "browser", "OBJECT_REPR",
           "LAYOUT_PROBE"]

# <module.Class at 0x...>, <module.Class object at 0x...>, <Figure size ... at 0x...>
OBJECT_REPR = re.compile(r"<[A-Za-z_][\w.]*(?:[^<>\n]{0,80}?)\bat 0x[0-9a-fA-F]+>")
# $$, \begin, or any TeX control word such as \sigma or \frac (a backslash and two letters or more)
_RAW_TEX = re.compile(r"\$\$|\\[A-Za-z]{2,}")
_SKIP = {"script", "style", "code", "pre", "textarea", "noscript", "head", "title"}
_BLOCK = {"p", "div", "li", "td", "th", "tr", "table", "section", "article", "h1", "h2", "h3", "h4", "h5",
          "h6", "dt", "dd", "blockquote", "figcaption", "caption"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
         "track", "wbr"}


class _Reader(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.skip = 0          # depth inside code/pre/script...
        self.math = 0          # depth inside mjx-container (typeset math: its text is glyphs)
        self.merror = 0
        self.para: list[str] | None = None
        self.out: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.header = 0        # depth inside <header>
        self.dialog = 0        # depth inside <dialog> (the search pop-up)
        self.search = {"header": 0, "page": 0}
        self.mathspan = 0      # depth inside Sphinx's math node (span.math / div.math)
        self.tail = ""         # the visible text since the last block start or math node
        self.after_math = False  # an inline math node just closed, with nothing after it yet

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if _is_search_field(tag, a) and not self.dialog:
            self.search["header" if self.header else "page"] += 1
        if tag in _VOID:
            return
        is_math = tag in ("span", "div") and "math" in (a.get("class") or "").split()
        if is_math and tag == "span" and not self.mathspan and self.skip == 0:
            if self.tail.endswith("$"):
                self.out.append(("math-pairing", " ".join(self.tail[-60:].split()) + "<math>"))
            elif self.after_math:
                self.out.append(("math-pairing", " ".join(self.tail[-60:].split()) + "<math><math> (back to back)"))
        if not self.mathspan:
            self.after_math = False
            if tag in _BLOCK or is_math:
                self.tail = ""
        if is_math or self.mathspan:
            self.mathspan += 1
        self.stack.append(tag)
        if tag == "header":
            self.header += 1
        if tag == "dialog":
            self.dialog += 1
        if tag in _SKIP:
            self.skip += 1
        if tag.startswith("mjx-"):
            self.math += 1
        if tag == "mjx-merror":
            self.merror += 1
            title = dict(attrs).get("data-mjx-error") or dict(attrs).get("title") or ""
            self.out.append(("math-error", title or "mjx-merror"))
        if tag == "p" and self.skip == 0:
            self.para = []

    def handle_endtag(self, tag):
        if tag in _VOID or tag not in self.stack:
            return
        while self.stack:
            t = self.stack.pop()
            if self.mathspan:
                self.mathspan -= 1
                if not self.mathspan:
                    self.after_math = t == "span"
            elif t in _BLOCK:
                self.tail, self.after_math = "", False
            if t == "header":
                self.header -= 1
            if t == "dialog":
                self.dialog -= 1
            if t in _SKIP:
                self.skip -= 1
            if t.startswith("mjx-"):
                self.math -= 1
            if t == "mjx-merror":
                self.merror -= 1
            if t == "p" and self.para is not None:
                s = "".join(self.para).strip()
                if s.startswith("|"):
                    self.out.append(("table-pipe", s[:120]))
                self.para = None
            if t == tag:
                break

    def handle_data(self, data):
        if self.skip == 0 and not self.mathspan:
            if self.after_math and data.startswith("$"):
                self.out.append(("math-pairing", "<math>" + " ".join(data[:60].split())))
            self.after_math = False
            self.tail = (self.tail + data)[-200:]
        if self.para is not None and self.skip == 0:
            self.para.append(data)
        if self.skip == 0 and self.math == 0:
            self.text.append(data)
        # object reprs are looked for everywhere, code outputs (<pre>) included
        for m in OBJECT_REPR.finditer(data):
            self.out.append(("object-repr", m.group(0)))


def _is_search_field(tag: str, attrs: dict) -> bool:
    """A search box or the theme's search field button (not the small icon-only search button)."""
    if tag == "input" and (attrs.get("type") or "").lower() == "search":
        return True
    return "search-button-field" in (attrs.get("class") or "").split()


# a table fails when its content is wider than the column by more than this many pixels (rounding);
# the book's stylesheet makes every table fit (kexue/static/kexue.css)
TABLE_SLACK = 2

_LAYOUT_RE = re.compile(r'<script type="application/json" id="kx-layout">(.*?)</script>', re.S)


def layout(html: str) -> dict | None:
    """The layout numbers :data:`LAYOUT_PROBE` wrote into a dumped DOM (None if it did not run)."""
    m = _LAYOUT_RE.search(html)
    return json.loads(m.group(1)) if m else None


def findings(html: str) -> list[tuple[str, str]]:
    """Rendering defects in one page's DOM (after MathJax), as ``(kind, excerpt)`` pairs."""
    r = _Reader()
    r.feed(_LAYOUT_RE.sub("", html))
    r.close()
    out = list(r.out)
    h, p = r.search["header"], r.search["page"]
    if h >= 2 or (h and p):
        out.append(("duplicate-search", f"{h} search field(s) in the header, {p} elsewhere"))
    lay = layout(html)
    if lay:
        if lay.get("visible_search", 0) > 1:
            out.append(("duplicate-search", f"{lay['visible_search']} search fields visible"))
        col = lay.get("column", 0)
        for t in lay.get("tables", []):
            if col and t["width"] > col + TABLE_SLACK:
                out.append(("wide-table", f"{t['width']} px table in a {col} px column: {t['text']}"))
    text = " ".join(" ".join(r.text).split())
    if "Math input error" in text:
        out.append(("math-error", "Math input error"))
    for m in _RAW_TEX.finditer(text):
        out.append(("raw-tex", text[max(0, m.start() - 50): m.end() + 50]))
    return out


def _png_dpi(path: Path) -> float | None:
    """The horizontal resolution a PNG declares (its ``pHYs`` chunk, pixels per metre), or None."""
    try:
        b = Path(path).read_bytes()[:4096]
    except OSError:
        return None
    i = b.find(b"pHYs")
    if b[:8] != b"\x89PNG\r\n\x1a\n" or i < 0 or len(b) < i + 13:
        return None
    ppm, _, unit = struct.unpack(">IIB", b[i + 4:i + 13])
    return ppm * 0.0254 if unit == 1 and ppm else None


def warnings(html: str, page: Path | None = None) -> list[tuple[str, str]]:
    """Layout warnings that do not fail a page: figures whose 10-pt text shows under 7 px tall
    (tables wider than the column are findings). ``page`` (the built page's path) lets the figure
    files be read for their dpi."""
    lay = layout(html) or {}
    out = []
    for im in lay.get("images", []):
        if not im["natural"] or not im["width"]:
            continue
        dpi = None
        if page is not None and im.get("src") and not im["src"].startswith("data:"):
            dpi = _png_dpi(Path(page).parent / im["src"].split("?")[0])
        dpi = dpi or 100.0
        text_px = 10 / 72 * dpi * im["width"] / im["natural"]
        if text_px < 7:
            out.append(("small-figure-text",
                        f"{im['src'].rsplit('/', 1)[-1]}: {im['natural']} px wide shown at {im['width']} px "
                        f"({dpi:.0f} dpi): 10-pt text {text_px:.1f} px tall"))
    return out


# Measures the page after MathJax typeset it and writes the numbers into the DOM as JSON.
LAYOUT_PROBE = r"""<script>(function () {
  function measure() {
    var art = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
    var cs = getComputedStyle(art);
    var col = art.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
    function shown(el) { return !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length); }
    var out = {height: Math.round(document.documentElement.scrollHeight), column: Math.round(col),
               tables: [], images: [], visible_search: 0};
    art.querySelectorAll("table").forEach(function (t) {
      var w = Math.max(t.getBoundingClientRect().width, t.scrollWidth);
      out.tables.push({width: Math.round(w), text: (t.innerText || "").replace(/\s+/g, " ").slice(0, 80)});
    });
    art.querySelectorAll("img").forEach(function (im) {
      out.images.push({src: im.getAttribute("src") || "", natural: im.naturalWidth,
                       width: Math.round(im.getBoundingClientRect().width),
                       height: Math.round(im.getBoundingClientRect().height)});
    });
    document.querySelectorAll("input[type=search], .search-button-field").forEach(function (el) {
      // the search page's own box lives in <main>; the pop-up in <dialog>
      if (!el.closest("dialog, main") && shown(el)) out.visible_search += 1;
    });
    var s = document.createElement("script");
    s.type = "application/json"; s.id = "kx-layout"; s.textContent = JSON.stringify(out);
    document.body.appendChild(s);
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
    (mj || Promise.resolve()).then(function () { setTimeout(measure, 50); }, function () { setTimeout(measure, 50); });
  });
})();</script>"""


def _probe_copy(page: Path, tmpdir: str) -> Path:
    """A copy of ``page`` in ``tmpdir`` with the layout probe and a ``<base>`` to the page's folder."""
    page = Path(page).resolve()
    src = page.read_text(encoding="utf-8")
    base = f'<base href="{page.parent.as_uri()}/">'
    src = re.sub(r"<head([^>]*)>", lambda m: f"<head{m.group(1)}>{base}", src, count=1)
    src = src.replace("</body>", LAYOUT_PROBE + "</body>", 1) if "</body>" in src else src + LAYOUT_PROBE
    out = Path(tmpdir) / page.name
    out.write_text(src, encoding="utf-8")
    return out


def browser() -> str | None:
    """The headless browser's executable (Debian's chromium), or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium(ud: str, budget_ms: int, width: int, height: int) -> list[str]:
    exe = browser()
    if exe is None:
        raise RuntimeError("no chromium: run `bash tools/browser.sh` (apt-get install chromium fonts-noto-cjk)")
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", f"--user-data-dir={ud}", f"--virtual-time-budget={budget_ms}",
            f"--window-size={width},{height}"]


def dump_dom(page: Path, budget_ms: int = 10000, screenshot: Path | None = None,
             timeout_s: float = 120, width: int = 1280, probe: bool = True,
             max_shot_height: int = 20000) -> str:
    """The DOM of ``page`` after scripts (MathJax) ran for ``budget_ms`` of virtual time, with the
    layout probe's JSON in it (``probe=True``; read it with :func:`layout`). ``screenshot``: a
    full-page PNG there (the window as tall as the measured page, at most ``max_shot_height``)."""
    with tempfile.TemporaryDirectory() as ud, tempfile.TemporaryDirectory() as td:
        url = (_probe_copy(page, td) if probe else Path(page).resolve()).as_uri()
        res = subprocess.run(_chromium(ud, budget_ms, width, 1600) + ["--dump-dom", url],
                             capture_output=True, text=True, timeout=timeout_s)
        if res.returncode != 0:
            raise RuntimeError(f"chromium failed on {page}: {res.stderr[-500:]}")
        if screenshot is not None:
            height = min((layout(res.stdout) or {}).get("height") or 1600, max_shot_height)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(_chromium(ud, budget_ms, width, height) + [f"--screenshot={screenshot}", url],
                           capture_output=True, timeout=timeout_s)
        return res.stdout


def screenshot(page: Path, path: Path, width: int = 1280, **kw) -> dict | None:
    """A full-page screenshot of ``page`` at ``path``; returns the page's layout numbers."""
    return layout(dump_dom(page, screenshot=path, width=width, **kw))
