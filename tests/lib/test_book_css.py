"""kexue.sphinxext ships the book's stylesheet (issue 19 §2): a tiny Sphinx build with the extension
copies kexue/static/kexue.css into _static and links it from every page, keeping the project's own
html_static_path; the stylesheet is package data, so an installed kexue builds the same book."""
import subprocess
import sys

from kexue.sphinxext import CSS, STATIC


def test_stylesheet_is_copied_and_linked(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "_vendor").mkdir(parents=True)
    (src / "_vendor" / "own.js").write_text("// the project's own static file\n")
    (src / "conf.py").write_text('extensions = ["kexue.sphinxext"]\nhtml_static_path = ["_vendor"]\n')
    (src / "index.rst").write_text("Title\n=====\n\n+---+---+\n| a | b |\n+---+---+\n")
    res = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(src), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (out / "_static" / CSS).read_text() == (STATIC / CSS).read_text()
    assert (out / "_static" / "own.js").is_file()
    assert f'href="_static/{CSS}' in (out / "index.html").read_text()


def test_stylesheet_makes_tables_wrap():
    css = (STATIC / CSS).read_text()
    for rule in ("overflow-wrap: anywhere", "min-width", "font-size", "overflow-x: auto"):
        assert rule in css, rule


def test_stylesheet_is_package_data():
    import tomllib
    from pathlib import Path
    conf = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "static/*.css" in conf["tool"]["setuptools"]["package-data"]["kexue"]
