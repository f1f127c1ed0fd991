"""Claims, verdicts and the results record."""
import json
import math

import pytest

from kexue import book
from kexue.results import Results, describe_test, evaluate_test, validate_record


@pytest.mark.parametrize("test,value,expect", [
    ((">=", 1.0), 1.0, True), ((">=", 1.0), 0.999, False), ((">", 1.0), 1.0, False),
    (("<=", 0.5), 0.5, True), (("<", 0.5), 0.5, False),
    (("between", 0.8, 1.25), 0.8, True), (("between", 0.8, 1.25), 1.26, False),
    (("near", 0.01759, 2e-4), 0.0177, True), (("near", 0.01759, 2e-4), 0.0180, False),
    (("rel_near", 2.0, 0.03), 2.05, True), (("rel_near", 2.0, 0.03), 2.07, False),
    (("is", True), True, True), (("is", True), False, False),
    ((">=", 0.0), float("nan"), False), (("<=", 1.0), None, False),
])
def test_evaluate_test(test, value, expect):
    assert evaluate_test(test, value) is expect


def test_describe_test():
    assert describe_test(("between", 0.8, 1.25)) == "in [0.8, 1.25]"
    assert describe_test(("rel_near", 1.0, 0.1)) == "within 10% of 1"


def make(tmp_path, outcomes):
    res = Results("bert-init-std", scale="smoke", seed=3)
    for i, _ in enumerate(outcomes):
        res.claim(f"C{i + 1}", f"claim {i}", metric=f"m{i}", test=(">=", 1.0), article="1")
    for i, v in enumerate(outcomes):
        res.check(f"C{i + 1}", v)
    res.compare("q", "s", article="≈ 1", ours=1.234567, key=True)
    return res


@pytest.mark.parametrize("values,verdict", [([1, 2], "reproduced"), ([0, 2], "partly reproduced"),
                                            ([0, 0.5], "not reproduced")])
def test_verdict_follows_the_claims(tmp_path, values, verdict):
    res = make(tmp_path, values)
    assert res.verdict() == verdict
    res.save(tmp_path)
    path = res.saved_path
    rec = json.loads(path.read_text())
    assert rec["verdict"] == verdict and not validate_record(rec, "bert-init-std", "smoke")
    assert rec["comparisons"][0]["ours"] == "1.235"
    assert f"**Verdict: {verdict}**" in res.verdict_markdown()


def test_declaration_errors():
    res = Results("bert-init-std", scale="smoke")
    res.claim("C1", "x", metric="m", test=(">=", 1))
    with pytest.raises(ValueError, match="declared twice"):
        res.claim("C1", "x", metric="m", test=(">=", 1))
    with pytest.raises(ValueError, match="takes 2 argument"):
        res.claim("C2", "x", metric="m", test=("between", 1))
    with pytest.raises(ValueError, match="op in"):
        res.claim("C3", "x", metric="m", test=("~", 1))
    with pytest.raises(KeyError, match="not declared"):
        res.check("C9", 1.0)
    with pytest.raises(RuntimeError, match="without an outcome: C1"):
        res.verdict()
    with pytest.raises(KeyError, match="unknown chapter slug"):
        Results("no-such-article", scale="smoke")
    with pytest.raises(ValueError, match="unknown scale"):
        Results("bert-init-std", scale="xl")


def test_failed_implementation_check_raises():
    res = Results("bert-init-std", scale="smoke")
    res.implementation_check("ok", True)
    with pytest.raises(AssertionError, match="implementation check failed: parity"):
        res.implementation_check("parity", False, "max error 1e-2")


def test_nan_values_are_recorded_as_not_held(tmp_path):
    res = make(tmp_path, [float("nan")])
    res.save(tmp_path)
    rec = json.loads(res.saved_path.read_text())
    assert rec["claims"][0]["held"] is False and rec["claims"][0]["value"] == "nan"
    assert rec["verdict"] == "not reproduced"


def test_validate_record_catches_inconsistency(tmp_path):
    res = make(tmp_path, [1, 2])
    res.save(tmp_path)
    rec = json.loads(res.saved_path.read_text())
    assert validate_record(rec) == []
    bad = dict(rec, verdict="not reproduced")
    assert any("does not follow" in p for p in validate_record(bad))
    assert any("missing key 'claims'" in p for p in validate_record({k: v for k, v in rec.items() if k != "claims"}))
    assert validate_record(rec, scale="full") == ["scale is 'smoke', expected 'full'"]
    no_rows = dict(rec, comparisons=[])
    assert validate_record(no_rows) == ["no results-vs-article rows"]
    page = dict(no_rows, article={"url": None, "date": None, "archive": None})
    assert validate_record(page) == []  # a workbench page has no article to compare with


def test_large_records_get_their_own_file(tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = Results("bert-init-std", scale="large")
    res.claim("C1", "x", metric="m", test=(">=", 0))
    res.check("C1", 1)
    res.compare("q", "s", article=1, ours=1)
    res.save(tmp_path)
    assert res.saved_path.name == "bert-init-std.large.json"


def test_smoke_records_never_land_in_results(monkeypatch):
    monkeypatch.delenv("KEXUE_RESULTS_DIR", raising=False)
    assert book.results_dir("smoke").parts[-2:] == ("_build", "results-smoke")
    assert book.results_dir("full").name == "results"
    assert not math.isnan(0.0)


def test_glue_turns_numpy_scalars_into_plain_numbers(capsys):
    import numpy as np

    from kexue.results import glue
    assert type(glue("x", np.float64(0.25))) is float
    assert type(glue("n", np.int64(3))) is int


def test_markdown_table_matches_a_hand_written_table():
    from kexue.results import markdown_table
    assert markdown_table(["a", "b"], [[1, 0.5], ["x", None]]) == (
        "| a | b |\n|---|---|\n| 1 | 0.5 |\n| x | None |")
    assert markdown_table(["only"], []) == "| only |\n|---|"


# -- registration, kinds, intervals ---------------------------------------------------------------
import subprocess  # noqa: E402

from kexue.results import (NO_ARTICLE_CLAIM, RegistrationError, parse_registration,  # noqa: E402
                           record_matches_registration, registration_state)

REG = """claims:
  - id: A1
    kind: article
    statement: smaller init trains better
    quote: 缩小到标准的1/2，是一个比较靠谱的选择
    section: 初始标准差
    metric: gap
    test: [">", 0]
    control: the standard init, same budget
    seeds: 5
    fails_if: the 90 % interval of the gap reaches 0
    threshold: any positive gap (the article gives no number)
  - id: E1
    kind: extension
    statement: ours
    metric: m2
    test: ["<=", 1.0]
    control: none needed
    seeds: 1
    fails_if: m2 > 1
    threshold: ours
implementation_checks:
  - parity
"""


def git_repo(tmp_path, text=REG, commit=True):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    p = tmp_path / "bert-init-std.claims.yml"
    p.write_text(text, encoding="utf-8")
    if commit:
        env = ["-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(["git", *env, "-C", str(tmp_path), "add", p.name], check=True)
        subprocess.run(["git", *env, "-C", str(tmp_path), "commit", "-q", "-m", "register"], check=True)
    return p


def test_parse_registration_rejects_what_the_contract_forbids():
    assert [c["id"] for c in parse_registration(REG)] == ["A1", "E1"]
    with pytest.raises(ValueError, match="lacks quote"):
        parse_registration(REG.replace("    quote: 缩小到标准的1/2，是一个比较靠谱的选择\n", ""))
    with pytest.raises(ValueError, match="quotes no Chinese"):
        parse_registration(REG.replace("缩小到标准的1/2，是一个比较靠谱的选择", "half is fine"))
    with pytest.raises(ValueError, match="kind 'claim'"):
        parse_registration(REG.replace("kind: extension", "kind: claim"))
    with pytest.raises(ValueError, match="unknown field"):
        parse_registration(REG.replace("    seeds: 1\n", "    seeds: 1\n    seed: 1\n"))
    with pytest.raises(ValueError, match="lacks control"):
        parse_registration(REG.replace("    control: none needed\n", ""))
    with pytest.raises(ValueError, match="takes 2 argument"):
        parse_registration(REG.replace('[">", 0]', '["between", 0]'))


def test_registration_state_follows_git(tmp_path):
    p = git_repo(tmp_path)
    st = registration_state(p)
    assert st["status"] == "committed" and len(st["commit"]) == 40 and st["file"] == p.name
    p.write_text(REG + "\n# edited\n", encoding="utf-8")
    assert registration_state(p)["status"] == "uncommitted"
    assert registration_state(tmp_path / "none.yml")["status"] == "missing"


def test_full_run_refuses_an_uncommitted_registration(tmp_path):
    p = git_repo(tmp_path, commit=False)
    with pytest.raises(RegistrationError, match="uncommitted"):
        Results.registered("bert-init-std", scale="full", path=p)
    res = Results.registered("bert-init-std", scale="smoke", path=p)  # smoke may run a draft
    assert res.registration["status"] == "uncommitted"


def test_verdict_counts_article_claims_alone(tmp_path):
    p = git_repo(tmp_path)
    res = Results.registered("bert-init-std", scale="full", path=p)
    assert res.registration["status"] == "committed" and res.registered_checks == ["parity"]
    res.implementation_check("parity", True)
    res.check("A1", 0.05, interval=(0.01, 0.09), per_seed=[0.02, 0.05, 0.08, 0.04, 0.06])
    res.check("E1", 3.0)  # an extension fails: the verdict does not move
    assert res.verdict() == "reproduced"
    assert res.counts() == {"article": [1, 1], "extension": [0, 1], "implementation": [1, 1]}
    res.compare("q", "s", article="1", ours=1)
    rec = res.record()
    assert rec["registration"]["commit"] == registration_state(p)["commit"]
    assert not validate_record(rec, "bert-init-std", "full")
    assert not record_matches_registration(rec, REG)
    rec["claims"][0]["test"] = [">", -1]
    assert record_matches_registration(rec, REG) == ["A1.test: record has ['>', -1], registration ['>', 0]"]
    md = res.verdict_markdown()
    assert "**Article claims**" in md and "**Extensions**" in md and "1 of 1 article claims held" in md
    with pytest.raises(ValueError, match="come from its registration"):
        res.claim("C9", "x", metric="m", test=(">=", 1))


def test_an_interval_that_crosses_the_bar_fails(tmp_path):
    res = Results.registered("bert-init-std", scale="smoke", path=git_repo(tmp_path))
    assert res.check("A1", 0.05, interval=(-0.01, 0.09)) is False     # point estimate passes
    assert res.check("A1", 0.05, interval=(float("nan"), 0.09)) is False
    assert res.check("A1", 0.05, interval=(0.001, 0.09)) is True
    res.check("E1", 0.5)
    assert res.verdict() == "reproduced"
    res.check("A1", -0.2)
    assert res.verdict() == "not reproduced"


def test_no_article_claim_means_no_verdict(tmp_path):
    only_ext = "claims:\n" + REG.split("  - id: E1\n")[1].join(["  - id: E1\n", ""])
    res = Results.registered("bert-init-std", scale="smoke", path=git_repo(tmp_path, only_ext))
    res.check("E1", 0.5)
    assert res.verdict() == NO_ARTICLE_CLAIM
    res.compare("q", "s", article="1", ours=1)
    assert not validate_record(res.record(), "bert-init-std", "smoke")


def test_markdown_table_escapes_pipes():
    from kexue.results import markdown_table
    t = markdown_table(["mean |Ŵ − W1| / W1", "b"], [["x|y", "two\nlines"]])
    assert "mean \\|Ŵ − W1\\| / W1" in t and "x\\|y" in t and "two lines" in t


def test_claims_markdown_says_so_when_no_claim_is_registered():
    from kexue.results import NO_CLAIMS_TEXT
    res = Results("bert-init-std", scale="smoke")
    assert res.claims_markdown() == NO_CLAIMS_TEXT
    res.claim("C1", "x", metric="m", test=(">", 0))
    assert res.claims_markdown().startswith("| id |")


def test_glue_all_returns_nothing():
    from kexue.results import glue_all
    assert glue_all() is None


def test_a_claim_registered_for_large_is_carried_unscored_at_full(tmp_path):
    """``scales: [large]``: at full the claim is in the record, unscored, outside verdict and counts;
    at large it is scored like any other; checking it at full is an error."""
    reg = REG.replace("    threshold: any positive gap (the article gives no number)\n",
                      "    threshold: any positive gap (the article gives no number)\n    scales: [large]\n")
    with pytest.raises(ValueError, match="scales is a non-empty list"):
        parse_registration(reg.replace("scales: [large]", "scales: [huge]"))
    p = git_repo(tmp_path, reg)
    res = Results.registered("bert-init-std", scale="full", path=p)
    assert not res.scored("A1") and res.scored("E1")
    with pytest.raises(ValueError, match="registered for scale"):
        res.check("A1", 0.05)
    res.check("E1", 0.5)
    res.implementation_check("parity", True)
    res.compare("q", "s", article="1", ours=1)
    assert res.verdict() == NO_ARTICLE_CLAIM
    assert res.counts()["article"] == [0, 0]
    assert res.counts()["not scored at this scale"] == {"article": 1, "extension": 0}
    md = res.verdict_markdown()
    assert "scored at `large` only" in md and "1 article claim registered for another scale" in md
    rec = res.record()
    assert rec["claims"][0]["held"] is None and rec["claims"][0]["scales"] == ["large"]
    assert not validate_record(rec, "bert-init-std", "full")
    assert not record_matches_registration(rec, reg)
    bad = json.loads(json.dumps(rec))
    bad["claims"][0]["held"] = True
    assert any("registered for ['large'] but scored" in x for x in validate_record(bad))
    big = Results.registered("bert-init-std", scale="large", path=p)
    big.check("A1", 0.05, interval=(0.01, 0.09))
    big.check("E1", 0.5)
    assert big.verdict() == "reproduced" and big.counts()["article"] == [1, 1]
    big.compare("q", "s", article="1", ours=1)
    assert not validate_record(big.record(), "bert-init-std", "large")


def test_check_paired_and_check_mean_against_stats():
    import numpy as np

    from kexue import stats
    res = Results("bert-init-std", scale="smoke")
    res.claim("P", "a > b", metric="p", test=(">", 0))
    res.claim("Q", "near", metric="q", test=(">", -1))
    res.claim("M", "mean", metric="m", test=(">", 0))
    a, b = [0.3, 0.5, 0.4, 0.6, 0.2], [0.1, 0.2, 0.3, 0.1, 0.0]
    assert res.check_paired("P", a, b) == stats.paired_interval(a, b) and res.claims["P"].held
    assert np.allclose(res.claims["P"].per_seed, np.subtract(a, b))
    m, lo, hi = res.check_paired("Q", b, a, scale=0.5)
    ref = stats.paired_interval(b, a)
    assert np.allclose((m, lo, hi), np.array(ref) / 0.5)
    assert res.check_mean("M", [0.0, 0.0, 0.0]) == (0.0, 0.0, 0.0) and not res.claims["M"].held
    assert stats.fmt_interval((0.01234, -0.002, 0.03)) == "+0.012 [-0.002, +0.030]"
    assert stats.fmt_interval((1.5, 1.0, 2.0), 2, signed=False) == "1.50 [1.00, 2.00]"
