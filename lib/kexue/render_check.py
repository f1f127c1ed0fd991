"""Check built book pages as a reader's browser shows them (issue 19 §1).

A page is loaded in headless Chromium (Debian's ``chromium``; ``tools/browser.sh`` installs it with
``fonts-noto-cjk``), MathJax runs offline from ``_vendor``, and the DOM after typesetting is dumped
(``chromium --headless --dump-dom --virtual-time-budget=...``: virtual time lets MathJax finish
without waiting in real time, and no network is needed). :func:`findings` then reads that DOM with
the standard library's HTML parser and reports:

* ``math-error``   a MathJax error node (``mjx-merror``) or the text "Math input error";
* ``raw-tex``      a literal ``$$`` or ``\\begin`` left in visible text (code, pre, scripts excluded):
                   math that MathJax never saw, e.g. a display ``$$`` written inside a paragraph;
* ``table-pipe``   a paragraph that starts with ``|``: a Markdown table that did not parse;
* ``object-repr``  a Python object repr such as ``<matplotlib.legend.Legend at 0x7f...>``.

The DOM checks are pure Python (tested on tiny HTML strings in tests/lib/test_render_check.py);
:func:`dump_dom` is the only part that needs the browser.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

__all__ = ["findings", "dump_dom", "browser", "OBJECT_REPR"]

# <module.Class at 0x...>, <module.Class object at 0x...>, <Figure size ... at 0x...>
OBJECT_REPR = re.compile(r"<[A-Za-z_][\w.]*(?:[^<>\n]{0,80}?)\bat 0x[0-9a-fA-F]+>")
_RAW_TEX = re.compile(r"\$\$|\\begin\b")
_SKIP = {"script", "style", "code", "pre", "textarea", "noscript", "head", "title"}
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

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            return
        self.stack.append(tag)
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
        if self.para is not None and self.skip == 0:
            self.para.append(data)
        if self.skip == 0 and self.math == 0:
            self.text.append(data)
        # object reprs are looked for everywhere, code outputs (<pre>) included
        for m in OBJECT_REPR.finditer(data):
            self.out.append(("object-repr", m.group(0)))


def findings(html: str) -> list[tuple[str, str]]:
    """Rendering defects in one page's DOM (after MathJax), as ``(kind, excerpt)`` pairs."""
    r = _Reader()
    r.feed(html)
    r.close()
    out = list(r.out)
    text = " ".join(" ".join(r.text).split())
    if "Math input error" in text:
        out.append(("math-error", "Math input error"))
    for m in _RAW_TEX.finditer(text):
        out.append(("raw-tex", text[max(0, m.start() - 50): m.end() + 50]))
    return out


def browser() -> str | None:
    """The headless browser's executable (Debian's chromium), or None."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def dump_dom(page: Path, budget_ms: int = 10000, screenshot: Path | None = None,
             timeout_s: float = 120) -> str:
    """The DOM of ``page`` after scripts (MathJax) ran for ``budget_ms`` of virtual time."""
    exe = browser()
    if exe is None:
        raise RuntimeError("no chromium: run `bash tools/browser.sh` (apt-get install chromium fonts-noto-cjk)")
    with tempfile.TemporaryDirectory() as ud:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={ud}", f"--virtual-time-budget={budget_ms}",
                "--window-size=1280,1600"]
        url = Path(page).resolve().as_uri()
        res = subprocess.run(base + ["--dump-dom", url], capture_output=True, text=True,
                             timeout=timeout_s)
        if res.returncode != 0:
            raise RuntimeError(f"chromium failed on {page}: {res.stderr[-500:]}")
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(base + [f"--screenshot={screenshot}", url], capture_output=True,
                           timeout=timeout_s)
        return res.stdout
