"""Sphinx extension: launch buttons from the book's one repository URL, and no placeholder URL.

``repository.url`` in ``_config.yml`` is the one place the repository's address lives
(:func:`kexue.colab.repository_url`). Jupyter Book fills an unset one with its own template
repository, and sphinx-thebe writes its template Binder repository into every page, whether Thebe is
on or not. This extension (``sphinx.extra_extensions`` in ``_config.yml``) makes the page follow the
setting instead:

- URL unset (empty or a template placeholder): no launch buttons (Colab, Binder), no repository
  buttons, and the repository URL handed to the theme is empty;
- URL set: the launch buttons configured in ``_config.yml`` (``launch_buttons``) point at it;
- Thebe off (``launch_buttons.thebe``, the book's setting): sphinx-thebe's page hooks are removed,
  so no Thebe configuration (and no template Binder repository) is written into the pages.
"""
from __future__ import annotations

from .colab import PLACEHOLDERS

_LAUNCH_KEYS = ("binderhub_url", "jupyterhub_url", "colab_url", "deepnote_url", "jupyterlite_url", "thebe")


def _config_inited(app, config) -> None:
    opts = dict(config.html_theme_options or {})
    url = str(opts.get("repository_url") or "").strip()
    if url.rstrip("/") in PLACEHOLDERS:
        url = ""
    opts["repository_url"] = url
    launch = dict(opts.get("launch_buttons") or {})
    if not url:
        for key in _LAUNCH_KEYS:
            launch.pop(key, None)
        for key in ("use_repository_button", "use_edit_page_button", "use_issues_button"):
            opts[key] = False
    opts["launch_buttons"] = launch
    config.html_theme_options = opts
    if not launch.get("thebe"):
        for name, listeners in app.events.listeners.items():
            listeners[:] = [lis for lis in listeners
                            if getattr(lis.handler, "__module__", "") != "sphinx_thebe"
                            or name == "builder-inited"]  # keep its static path (its CSS is harmless)


def setup(app):
    # after Jupyter Book has turned _config.yml into html_theme_options, before any page is read
    app.connect("config-inited", _config_inited, priority=900)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
