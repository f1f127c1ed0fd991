"""The book's one repository URL (issue 19 §4): launch buttons only when it is set, no template
repository anywhere (kexue.launch), and the Colab first cell (kexue.colab) that installs the library
into a running kernel, tested offline in a fresh virtualenv kernel with a local repository as the URL.

Cost: three one-page Sphinx builds (about 5 s each) and one kernel that installs the library
(about 10 s); nothing trains."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from kexue import colab

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_URLS = ("executablebooks/jupyter-book", "binder-examples", "jupyter-stacks-datascience")


def _mini_book(root: Path, url: str, with_extension: bool) -> str:
    """A one-notebook Sphinx project configured as Jupyter Book configures ours; returns page.html."""
    root.mkdir(parents=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Page"), nbformat.v4.new_code_cell("1 + 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "page.ipynb")
    (root / "index.md").write_text("# Home\n\n```{toctree}\npage\n```\n")
    launch = yaml.safe_load((ROOT / "_config.yml").read_text())["launch_buttons"]
    opts = {"launch_buttons": dict(launch), "repository_url": url, "repository_branch": "main", "path_to_docs": "",
            "use_repository_button": False, "use_edit_page_button": False, "use_issues_button": False}
    exts = ["myst_nb", "sphinx_thebe", "sphinx_book_theme"] + (["kexue.launch"] if with_extension else [])
    (root / "conf.py").write_text(f"extensions = {exts!r}\nhtml_theme = 'sphinx_book_theme'\n"
                                  f"html_theme_options = {opts!r}\nnb_execution_mode = 'off'\n")
    r = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-W", "-b", "html", str(root), str(root / "_build")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return (root / "_build" / "page.html").read_text()


def test_unset_url_no_launch_button_and_no_template_repository(tmp_path):
    # Jupyter Book hands its own template URL to the theme when repository.url is unset
    html = _mini_book(tmp_path / "b", "https://github.com/executablebooks/jupyter-book", True)
    assert not any(t in html for t in TEMPLATE_URLS)
    assert "mybinder.org" not in html and "colab.research.google.com" not in html
    assert "x-thebe-config" not in html
    assert "page.ipynb" in html  # the download button stays


def test_without_the_extension_the_template_shows(tmp_path):
    """The check above bites: the same page without kexue.launch carries both template repositories."""
    html = _mini_book(tmp_path / "b", "https://github.com/executablebooks/jupyter-book", False)
    assert "binder-examples/jupyter-stacks-datascience" in html
    assert "colab.research.google.com/github/executablebooks/jupyter-book" in html


def test_set_url_gives_colab_and_binder_buttons(tmp_path):
    html = _mini_book(tmp_path / "b", "https://github.com/someone/kexue-book", True)
    assert 'href="https://colab.research.google.com/github/someone/kexue-book/blob/main/page.ipynb"' in html
    assert "https://mybinder.org/v2/gh/someone/kexue-book/main" in html
    assert not any(t in html for t in TEMPLATE_URLS)


def test_config_has_one_repository_url_and_no_template():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "url" in cfg["repository"]
    assert "kexue.launch" in cfg["sphinx"]["extra_extensions"]
    assert cfg["launch_buttons"].get("thebe") is False
    text = (ROOT / "_config.yml").read_text() + (ROOT / "intro.md").read_text()
    assert not any(t in text for t in TEMPLATE_URLS) and "<this repository>" not in text
    url = colab.repository_url(ROOT)
    assert url is None or url == cfg["repository"]["url"].strip()


def test_repository_url_reads_config(tmp_path):
    (tmp_path / "_config.yml").write_text("repository:\n  url: ''\n")
    assert colab.repository_url(tmp_path) is None
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/executablebooks/jupyter-book\n")
    assert colab.repository_url(tmp_path) is None
    (tmp_path / "_config.yml").write_text("repository:\n  url: https://github.com/a/b\n")
    assert colab.repository_url(tmp_path) == "https://github.com/a/b"
    assert colab.repository_url(tmp_path / "nowhere") is None


def test_first_cell_needs_a_url(monkeypatch, capsys):
    monkeypatch.setattr(colab, "repository_url", lambda root=None: None)
    with pytest.raises(ValueError, match="repository URL is not set.*_config.yml"):
        colab.first_cell()
    assert colab.main([]) == 2 and "_config.yml" in capsys.readouterr().err
    cell = colab.first_cell("https://github.com/a/b")
    compile(cell, "first-cell", "exec")
    assert "'https://github.com/a/b'" in cell and "def " not in cell
    assert colab.main(["https://github.com/a/b"]) == 0 and capsys.readouterr().out == cell


def test_first_cell_does_nothing_outside_colab():
    """Here (not Colab) the cell runs no command at all: it neither clones nor installs."""
    calls = []
    import subprocess as sp
    real = sp.run
    try:
        sp.run = lambda *a, **k: calls.append(a)
        exec(colab.first_cell("https://github.com/a/b"), {})
    finally:
        sp.run = real
    assert calls == [] and not colab.in_colab()


def test_make_importable_reads_new_pth(tmp_path, monkeypatch):
    site_dir = tmp_path / "site"
    pkg_dir = tmp_path / "src"
    (pkg_dir / "late_pkg_19").mkdir(parents=True)
    (pkg_dir / "late_pkg_19" / "__init__.py").write_text("X = 19\n")
    site_dir.mkdir()
    import site
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(site_dir)])
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(tmp_path / "no-user-site"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    (site_dir / "__editable__.late.pth").write_text(str(pkg_dir) + "\n")  # written "by pip", after start
    with pytest.raises(ModuleNotFoundError):
        __import__("late_pkg_19")
    assert colab.make_importable() == [str(site_dir)]
    assert __import__("late_pkg_19").X == 19
    sys.modules.pop("late_pkg_19", None)


@pytest.mark.skipif(os.name == "nt", reason="a POSIX virtualenv layout (bin/python) and IPC sockets")
def test_first_cell_installs_into_a_running_fresh_kernel(tmp_path, fresh_venv):
    """A fresh virtualenv whose kernel starts without kexue (it sees this environment's packages
    through a .pth line, but not the editable kexue); Colab is faked by a `google.colab` module; the
    URL is a local git repository (a clone of this checkout's HEAD plus this working tree's library,
    so the test runs offline). pip runs offline: PIP_NO_INDEX=1, PIP_NO_BUILD_ISOLATION=0 (the build
    backend of this environment). The next cell imports kexue from the clone, in the same kernel."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager as KernelManager
    from nbclient import NotebookClient

    py = fresh_venv.python
    # the "repository": pyproject, README and the library of this working tree, committed in a new repo
    repo = tmp_path / "repo"
    import shutil
    shutil.copytree(ROOT / "lib" / "kexue", repo / "lib" / "kexue",
                    ignore=shutil.ignore_patterns("__pycache__", "checkpoint*", "*.safetensors", "log.jsonl"))
    for f in ("pyproject.toml", "README.md", "_toc.yml", "_config.yml"):
        shutil.copy2(ROOT / f, repo / f)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)
    kernels = tmp_path / "kernels" / "fresh"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        '{"argv": ["%s", "-m", "ipykernel_launcher", "-f", "{connection_file}"], '
        '"display_name": "fresh", "language": "python"}' % py)
    work = tmp_path / "content"  # Colab's /content: outside any checkout
    work.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import importlib.util, sys, types\n"
                                  "print('before', importlib.util.find_spec('kexue'))\n"
                                  "sys.modules['google.colab'] = types.ModuleType('google.colab')"),
        nbformat.v4.new_code_cell(colab.first_cell(str(repo))),
        nbformat.v4.new_code_cell("import kexue, kexue.colab, kexue.book\n"
                                  "print('after', kexue.__file__)\nprint('root', kexue.book.repo_root())"),
    ]
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)
    km = KernelManager(kernel_name="fresh", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels.parent)]),
                       transport="ipc" if os.name != "nt" else "tcp", ip=str(tmp_path / "kernel"))
    client = NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(work)}})
    old = dict(os.environ)
    os.environ.update(env)
    try:
        client.execute(env=env)
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = lambda c: "".join(o.get("text", "") for o in c.outputs)  # noqa: E731
    assert "before None" in text(nb.cells[0])
    out = text(nb.cells[2])
    assert f"after {work / colab.CLONE_DIR / 'lib' / 'kexue' / '__init__.py'}" in out, out
    assert f"root {work / colab.CLONE_DIR}" in out
    assert (ROOT / "lib" / "kexue").is_dir()  # this checkout untouched


# -- the first cell in the chapters: python -m kexue.colab --insert / --remove ---------------------------
CHAPTER = ROOT / "chapters" / "02-optimization" / "sgd-kernel-machine.ipynb"


def test_insert_puts_the_cell_first_and_remove_restores_the_chapter(tmp_path):
    import json
    nb_path = tmp_path / CHAPTER.name
    nb_path.write_bytes(CHAPTER.read_bytes())
    original = nb_path.read_bytes()
    assert colab.insert_first_cell(nb_path, "https://github.com/a/b")
    nb = json.loads(nb_path.read_text())
    first, rest = nb["cells"][0], nb["cells"][1:]
    assert colab.is_first_cell(first) and first["metadata"]["tags"] == ["kexue-colab", "remove-cell"]
    assert "".join(first["source"]) == colab.first_cell("https://github.com/a/b") and first["outputs"] == []
    assert rest == json.loads(original)["cells"]  # the chapter itself unchanged
    nbformat.validate(nbformat.reads(nb_path.read_text(), as_version=4))
    assert not colab.insert_first_cell(nb_path, "https://github.com/a/b")  # idempotent
    assert colab.insert_first_cell(nb_path, "https://github.com/c/d")  # a new URL replaces the cell
    nb = json.loads(nb_path.read_text())
    assert sum(map(colab.is_first_cell, nb["cells"])) == 1 and "'https://github.com/c/d'" in "".join(nb["cells"][0]["source"])
    assert colab.remove_first_cell(nb_path) and nb_path.read_bytes() == original
    assert not colab.remove_first_cell(nb_path)


def test_insert_refuses_while_the_url_is_unset(tmp_path, monkeypatch, capsys):
    nb_path = tmp_path / CHAPTER.name
    nb_path.write_bytes(CHAPTER.read_bytes())
    monkeypatch.setattr(colab, "repository_url", lambda root=None: None)
    with pytest.raises(ValueError, match="not set"):
        colab.insert_first_cell(nb_path)
    assert colab.main(["--insert", str(nb_path)]) == 2 and "_config.yml" in capsys.readouterr().err
    assert nb_path.read_bytes() == CHAPTER.read_bytes()  # nothing written, no placeholder
    assert colab.main(["https://github.com/a/b", "--insert", str(nb_path)]) == 0
    assert "updated" in capsys.readouterr().out
    assert colab.main(["--remove", str(nb_path)]) == 0 and nb_path.read_bytes() == CHAPTER.read_bytes()


def test_no_chapter_carries_a_first_cell_while_the_url_is_unset():
    import json
    from kexue import book
    if colab.repository_url(ROOT):
        pytest.skip("repository.url is set")
    for nb in book.chapter_notebooks(ROOT):
        assert not any(map(colab.is_first_cell, json.loads(nb.read_text())["cells"])), nb


def _code_hash_skips_the_cell():
    import inspect
    from kexue import book
    return "kexue-colab" in inspect.getsource(book.code_hash)


@pytest.mark.skipif(not _code_hash_skips_the_cell(),
                    reason="kexue.book.code_hash does not skip the cell yet (patch: scratch/s13/colab-code-hash.patch)")
def test_the_first_cell_does_not_make_a_record_stale(tmp_path):
    from kexue import book
    nb_path = tmp_path / CHAPTER.name
    nb_path.write_bytes(CHAPTER.read_bytes())
    before = book.code_hash(nb_path)
    colab.insert_first_cell(nb_path, "https://github.com/a/b")
    assert book.code_hash(nb_path) == before
