"""The book's own machinery: where things are, the article catalogue, and notebook hygiene.

Used by the runner (``kexue.runner``), the results records (``kexue.results``), the scoreboard
(``kexue.scoreboard``) and the tests; chapters never call it directly.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import yaml

CATALOG_FILE = Path(__file__).with_name("articles.yml")


def repo_root(start: Path | None = None) -> Path | None:
    """The book's root (the folder with ``_toc.yml`` and ``lib/kexue``), searched upwards from
    ``start`` (default: the working directory), then from this package's location."""
    candidates = [Path(start or Path.cwd()).resolve(), Path(__file__).resolve().parent]
    for base in candidates:
        for p in (base, *base.parents):
            if (p / "_toc.yml").is_file() and (p / "lib" / "kexue").is_dir():
                return p
    return None


@lru_cache(maxsize=1)
def catalog() -> dict[str, dict]:
    """The 36 articles by slug: part, date, archive number, Chinese and English titles, URL."""
    data = yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8"))
    out = {}
    for a in data["articles"]:
        a = dict(a)
        a["url"] = f"https://kexue.fm/archives/{a['archive']}"
        out[a["slug"]] = a
    return out


def pages() -> dict[str, dict]:
    """The book's pages that are not articles (workbenches), by slug; ``url`` and ``archive`` are None."""
    data = yaml.safe_load(CATALOG_FILE.read_text(encoding="utf-8"))
    return {p["slug"]: dict(p, url=None, kind="page") for p in data.get("pages", [])}


def article(slug: str) -> dict:
    """Catalogue entry of one article (or of a workbench page, ``kind == "page"``); a clear error
    for an unknown slug."""
    cat = catalog()
    if slug in cat:
        return dict(cat[slug], kind="article")
    extra = pages()
    if slug in extra:
        return extra[slug]
    raise KeyError(f"unknown chapter slug {slug!r}; known slugs are listed in {CATALOG_FILE}")


def toc_files(root: Path) -> list[str]:
    """Files listed in ``_toc.yml`` (without suffix), in reading order."""
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("root", "parts", "chapters", "sections"):
                if key == "root" and isinstance(node.get("root"), str):
                    files.append(node["root"])
                elif key in node and key != "root":
                    walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return files


def chapter_notebooks(root: Path | None = None) -> list[Path]:
    """The chapter notebooks listed in ``_toc.yml``, in reading order."""
    root = root or repo_root()
    return [root / f"{f}.ipynb" for f in toc_files(root)
            if f.startswith("chapters/") and (root / f"{f}.ipynb").is_file()]


def notebook_for(slug: str, root: Path | None = None) -> Path:
    """The notebook of the chapter ``slug``; a clear error naming the chapters that exist."""
    root = root or repo_root()
    if root is None:
        raise FileNotFoundError("not inside the book's repository (no _toc.yml found above the "
                                "working directory); run from the repository root")
    found = [p for p in chapter_notebooks(root) if p.stem == slug]
    if not found:
        known = ", ".join(p.stem for p in chapter_notebooks(root))
        raise FileNotFoundError(f"no chapter {slug!r} in _toc.yml; chapters: {known}")
    return found[0]


def _source(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def code_hash(nb: dict | Path) -> str:
    """SHA-256 of a notebook's code cells (papermill's injected-parameters cell and the Colab first
    cell tagged ``kexue-colab`` excluded, trailing whitespace ignored). Stored in ``results/<slug>.json``
    by the full run; the tests compare it with the notebook now, so editing code without re-running is
    caught. The Colab cell (kexue.colab) computes nothing and changes nothing outside Colab."""
    if not isinstance(nb, dict):
        nb = json.loads(Path(nb).read_text(encoding="utf-8"))
    sources = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags or "kexue-colab" in tags:
            continue
        sources.append("\n".join(line.rstrip() for line in _source(cell).strip().splitlines()))
    return hashlib.sha256(json.dumps(sources, ensure_ascii=False).encode("utf-8")).hexdigest()


VOLATILE_CELL_KEYS = ("papermill", "execution", "ExecuteTime", "collapsed", "scrolled")


def strip_volatile(nb: dict) -> dict:
    """Remove papermill's timestamps and durations (notebook and cell metadata), keep outputs."""
    nb["metadata"].pop("papermill", None)
    for cell in nb.get("cells", []):
        md = cell.get("metadata", {})
        for key in VOLATILE_CELL_KEYS:
            md.pop(key, None)
        if md.get("tags") == []:
            md.pop("tags")
    return nb


def results_dir(scale: str) -> Path:
    """Where a run's record goes: ``$KEXUE_RESULTS_DIR``; else ``results/`` for full and large
    runs and ``_build/results-smoke/`` for smoke runs, so smoke never overwrites the book's record."""
    env = os.environ.get("KEXUE_RESULTS_DIR")
    if env:
        return Path(env)
    root = repo_root()
    base = root if root is not None else Path.cwd()
    return base / "results" if scale in ("full", "large") else base / "_build" / "results-smoke"


def record_path(slug: str, scale: str, directory: Path | None = None) -> Path:
    """The one rule for a record's file: ``<slug>.json`` for smoke and full runs,
    ``<slug>.large.json`` for a large run, in ``directory`` or :func:`results_dir` of the scale."""
    d = Path(directory) if directory else results_dir(scale)
    return d / (f"{slug}.large.json" if scale == "large" else f"{slug}.json")
