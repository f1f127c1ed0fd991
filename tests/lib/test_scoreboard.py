"""The scoreboard reflects records: pending, stale, current, not written."""
import json
import shutil

import nbformat

from kexue import book
from kexue.results import Results
from kexue.scoreboard import build_rows, dates, key_result, render_html, render_markdown, summary, verdict_anchor


def mini_book(tmp_path):
    (tmp_path / "lib" / "kexue").mkdir(parents=True)
    (tmp_path / "chapters" / "01-signal-propagation").mkdir(parents=True)
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - caption: P\n    chapters:\n"
        "      - file: chapters/01-signal-propagation/bert-init-std\n"
        "      - file: chapters/01-signal-propagation/xavier-averaging\n")
    for slug in ("bert-init-std", "xavier-averaging"):
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell(f"x = '{slug}'")]
        nbformat.write(nb, tmp_path / "chapters" / "01-signal-propagation" / f"{slug}.ipynb")
    return tmp_path


def record(tmp_path, slug, held):
    res = Results(slug, scale="full")
    res.claim("C1", "c", metric="m", test=(">=", 1))
    res.check("C1", 2 if held else 0)
    res.compare("the number", "s", article="1", ours=2, key=True)
    rec = res.record()
    rec["code_hash"] = book.code_hash(tmp_path / "chapters" / "01-signal-propagation" / f"{slug}.ipynb")
    (tmp_path / "results").mkdir(exist_ok=True)
    (tmp_path / "results" / f"{slug}.json").write_text(json.dumps(rec))


def test_statuses(tmp_path):
    root = mini_book(tmp_path)
    rows = {r.slug: r for r in build_rows(root)}
    assert len(rows) == 36
    assert rows["bert-init-std"].status == "pending" and rows["rnn-gradients"].status == "not written"
    record(root, "bert-init-std", held=True)
    record(root, "xavier-averaging", held=False)
    rows = {r.slug: r for r in build_rows(root)}
    assert rows["bert-init-std"].status == "current" and rows["bert-init-std"].held == (1, 1)
    nb_path = root / "chapters" / "01-signal-propagation" / "xavier-averaging.ipynb"
    nb = nbformat.read(nb_path, 4)
    nb.cells[0].source = "x = 'edited'"
    nbformat.write(nb, nb_path)
    rows = build_rows(root)
    assert {r.slug: r.status for r in rows}["xavier-averaging"] == "stale"
    s = summary(rows)
    assert (s["written"], s["reproduced"], s["not reproduced"], s["pending or stale"]) == (2, 1, 1, 1)
    page = render_html(rows)
    assert "outputs stale" in page and "34 articles without a chapter yet" in page
    assert "<b>2</b> <span class='kx-dim'>(1)</span>" in page  # key result: ours, then the article's
    assert "chapters/01-signal-propagation/bert-init-std.html" in page


def test_invalid_record_is_flagged(tmp_path):
    root = mini_book(tmp_path)
    (root / "results").mkdir()
    (root / "results" / "bert-init-std.json").write_text(json.dumps({"slug": "bert-init-std"}))
    row = {r.slug: r for r in build_rows(root)}["bert-init-std"]
    assert row.status == "invalid" and row.problems
    shutil.rmtree(root / "results")


def test_large_record_is_shown_validated_and_flagged_when_stale(tmp_path):
    root = mini_book(tmp_path)
    record(root, "bert-init-std", held=True)
    nb_path = root / "chapters" / "01-signal-propagation" / "bert-init-std.ipynb"
    res = Results("bert-init-std", scale="large")
    res.claim("C1", "c", metric="m", test=(">=", 1))
    res.check("C1", 0)
    res.compare("the number", "s", article="1", ours=0, key=True)
    rec = res.record()
    rec["code_hash"], rec["wall_time_s"] = book.code_hash(nb_path), 1500.0
    large = root / "results" / "bert-init-std.large.json"
    large.write_text(json.dumps(rec))
    row = {r.slug: r for r in build_rows(root)}["bert-init-std"]
    assert row.large["verdict"] == "not reproduced" and not row.large_stale and row.status == "current"
    page = render_html(build_rows(root))
    assert "large: not reproduced · cpu · 25.0 min" in page and "(older code)" not in page
    rec["code_hash"] = "0" * 64
    large.write_text(json.dumps(rec))
    row = {r.slug: r for r in build_rows(root)}["bert-init-std"]
    assert row.large_stale and "large run" in row.problems[-1] and "(older code)" in render_html([row])
    rec["scale"] = "full"                      # a mislabelled record is not shown as a large run
    large.write_text(json.dumps(rec))
    row = {r.slug: r for r in build_rows(root)}["bert-init-std"]
    assert row.large is None and any("large record: scale" in p for p in row.problems)


def test_registered_record_counts_kinds_apart(tmp_path):
    """Article claims, extensions and implementation checks are counted apart; the verdict follows
    the article claims; the registration date shows beside the run date."""
    from kexue.results import Claim
    root = mini_book(tmp_path)
    res = Results("bert-init-std", scale="full")
    res.registration = {"status": "committed", "file": "x.claims.yml", "commit": "ab" * 20,
                        "date": "2026-12-01T10:00:00+00:00"}
    res._registered_text = "claims: []"
    res.claims = {"A1": Claim("A1", "a", "m1", (">=", 1), kind="article"),
                  "A2": Claim("A2", "b", "m2", (">=", 1), kind="article"),
                  "E1": Claim("E1", "e", "m3", (">=", 1), kind="extension")}
    res.check("A1", 2)
    res.check("A2", 0)
    res.check("E1", 2)
    res.implementation_check("parity", True)
    res.compare("the number", "s", article="1", ours=2, key=True)
    rec = res.record()
    rec["code_hash"] = book.code_hash(root / "chapters" / "01-signal-propagation" / "bert-init-std.ipynb")
    (root / "results").mkdir()
    (root / "results" / "bert-init-std.json").write_text(json.dumps(rec))
    row = {r.slug: r for r in build_rows(root)}["bert-init-std"]
    assert row.registered and row.held == (1, 2) and row.extensions == (1, 1) and row.checks == (1, 1)
    assert row.record["verdict"] == "partly reproduced"
    page = render_html(build_rows(root))
    assert "reg. 2026-12-01" in page and "checks 1 / 1 passing" in page
    assert "<b>1 of 2</b><span>article claims held (50 %)</span>" in page  # the summary on top
    assert "<b>1 of 1</b><span>extensions held" in page and "Claims registered 2026-12-01" in page
    s = summary(build_rows(root))
    assert (s["article claims held"], s["article claims tested"], s["extensions held"]) == (1, 2, 1)


def test_page_reads_at_a_glance(tmp_path):
    """Summary first, then the written chapters (in book order), then the unwritten ones folded in a
    <details> list; each verdict links to the chapter's Verdict section."""
    root = mini_book(tmp_path)
    nb_path = root / "chapters" / "01-signal-propagation" / "bert-init-std.ipynb"
    nb = nbformat.read(nb_path, 4)
    nb.cells.append(nbformat.v4.new_markdown_cell("Some text.\n\n## Verdict\n\nThe outcomes."))
    nbformat.write(nb, nb_path)
    record(root, "bert-init-std", held=True)
    record(root, "xavier-averaging", held=False)
    rows = build_rows(root)
    page = render_html(rows)
    summary_at, table_at, details_at = page.index("kx-sum"), page.index("<table class='kx-sb'"), page.index("<details")
    assert summary_at < table_at < details_at
    assert "<b>2 of 36</b><span>chapters written</span>" in page
    assert "2 still on unregistered claims" in page  # these test records predate registration
    written, folded = page[table_at:details_at], page[details_at:]
    assert written.index("sb-bert-init-std") < written.index("sb-xavier-averaging")
    assert "sb-rnn-gradients" in folded and "sb-rnn-gradients" not in written
    assert folded.count("<tr") == 34 and "https://kexue.fm/archives/7888" in folded
    # the verdict links to #verdict where the chapter has a Verdict heading, else to the chapter's top
    assert "href='chapters/01-signal-propagation/bert-init-std.html#verdict'>reproduced</a>" in page
    assert "href='chapters/01-signal-propagation/xavier-averaging.html'>not reproduced</a>" in page
    # one key result per row, not a list
    assert "<ul>" not in written and written.count("the number") == 2


def test_verdict_anchor_needs_a_verdict_heading(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\n## Verdicts of others\n\nVerdict: x")]
    path = tmp_path / "c.ipynb"
    nbformat.write(nb, path)
    assert verdict_anchor(path) == ""
    nb.cells.append(nbformat.v4.new_markdown_cell("## Verdict  "))
    nbformat.write(nb, path)
    assert verdict_anchor(path) == "#verdict"
    assert verdict_anchor(tmp_path / "missing.ipynb") == ""


def test_key_result_is_the_first_key_comparison():
    comps = [{"quantity": "a", "ours": 1, "article": 2}, {"quantity": "b", "ours": 3, "article": 4, "key": True},
             {"quantity": "c", "ours": 5, "article": 6, "key": True}]
    assert key_result({"comparisons": comps})["quantity"] == "b"
    assert key_result({"comparisons": comps[:1]})["quantity"] == "a"  # none marked: the first one
    assert key_result({"comparisons": []}) is None


def test_dates_and_markdown(tmp_path):
    root = mini_book(tmp_path)
    record(root, "bert-init-std", held=True)
    rec_path = root / "results" / "bert-init-std.json"
    rec = json.loads(rec_path.read_text())
    rec["started"] = "2026-12-02T08:00:00+00:00"
    rec_path.write_text(json.dumps(rec))
    record(root, "xavier-averaging", held=False)
    rows = build_rows(root)
    d = dates(rows)
    assert d["registered"] is None and d["run"][0] == "2026-12-02" and d["run"][1] >= "2026-12-02"
    md = render_markdown(rows)
    first, table = md.splitlines()[0], md.split("\n\n")[1]
    assert first.startswith("2 of 36 chapters written; article claims held")
    assert table.count("\n") == 3 and "| 1 | bert-init-std | reproduced |" in table  # header, rule, 2 rows
    assert "the number: 2 (1)" in table
    assert md.rstrip().splitlines()[-1].startswith("Not written yet (34): rnn-gradients, ")
