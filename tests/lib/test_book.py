"""Catalogue, table of contents, code hash and notebook hygiene."""
import copy

import nbformat
import pytest

from kexue import book


def nb_with(*sources, injected=None):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t")] + [nbformat.v4.new_code_cell(s) for s in sources]
    if injected is not None:
        c = nbformat.v4.new_code_cell(injected)
        c.metadata["tags"] = ["injected-parameters"]
        nb.cells.insert(2, c)
    return nb


def test_catalog_has_the_36_articles():
    cat = book.catalog()
    assert len(cat) == 36
    assert cat["bert-init-std"]["archive"] == 8747 and cat["bert-init-std"]["url"].endswith("/8747")
    assert {a["part"] for a in cat.values()} >= {"01-signal-propagation", "09-engineering"}


def test_code_hash_sees_code_only():
    base = nb_with("x = 1", "print(x)  ")
    h = book.code_hash(base)
    assert book.code_hash(nb_with("x = 1", "print(x)")) == h           # trailing blanks ignored
    assert book.code_hash(nb_with("x = 1", "print(x)", injected='scale = "smoke"')) == h
    edited = copy.deepcopy(base)
    edited.cells[0].source = "# another title"                           # markdown: same hash
    assert book.code_hash(edited) == h
    assert book.code_hash(nb_with("x = 2", "print(x)")) != h             # code: new hash
    assert book.code_hash(nb_with("print(x)", "x = 1")) != h             # order matters


def test_strip_volatile_keeps_outputs():
    nb = nb_with("1")
    nb.metadata["papermill"] = {"duration": 1.0}
    nb.cells[1].metadata.update(papermill={"start_time": "t"}, execution={"a": 1}, tags=[])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="hi")]
    out = book.strip_volatile(nb)
    assert "papermill" not in out.metadata and out.cells[1].metadata == {}
    assert out.cells[1].outputs[0]["text"] == "hi"


def test_toc_and_notebook_lookup(root):
    files = book.toc_files(root)
    assert files[0] == "intro" and "scoreboard" in files
    assert book.notebook_for("bert-init-std", root).name == "bert-init-std.ipynb"
    with pytest.raises(FileNotFoundError, match="no chapter 'nope'"):
        book.notebook_for("nope", root)


def test_workbench_pages_are_known_but_not_articles():
    assert "bert-zh-workbench" not in book.catalog()
    page = book.article("bert-zh-workbench")
    assert page["kind"] == "page" and page["archive"] is None and page["url"] is None
    assert book.article("bert-init-std")["kind"] == "article"
    with pytest.raises(KeyError, match="unknown chapter slug"):
        book.article("no-such-page")
