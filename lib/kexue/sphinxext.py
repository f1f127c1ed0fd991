"""Sphinx extension of the book: the ``scoreboard`` directive, rendered from ``results/*.json``
at build time, and the book's stylesheet ``kexue/static/kexue.css`` (tables that fit the column,
issue 19 §2). Registered in ``_config.yml`` (``sphinx.extra_extensions``)."""
from __future__ import annotations

from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive

from . import book
from .scoreboard import build_rows, render_html


class ScoreboardDirective(Directive):
    has_content = False

    def run(self):
        env = self.state.document.settings.env
        root = Path(env.srcdir)
        # re-render the page whenever a record or a chapter changes
        for path in sorted((root / "results").glob("*.json")) + book.chapter_notebooks(root):
            env.note_dependency(str(path))
        return [nodes.raw("", render_html(build_rows(root)), format="html")]


STATIC = Path(__file__).with_name("static")
CSS = "kexue.css"


def _add_static(app, config):
    # after _config.yml's html_static_path was read: append the package's folder, do not replace
    path = str(STATIC)
    if path not in config.html_static_path:
        config.html_static_path.append(path)


def setup(app):
    app.add_directive("scoreboard", ScoreboardDirective)
    app.connect("config-inited", _add_static)
    app.add_css_file(CSS)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
