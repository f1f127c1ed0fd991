"""The chapter runner's command line: parameter parsing and clear errors."""
import pytest

from kexue.runner import _parse_value, main


@pytest.mark.parametrize("text,value", [("3", 3), ("0.5", 0.5), ("True", True), ("None", None),
                                        ("smoke", "smoke")])
def test_parse_value(text, value):
    assert _parse_value(text) == value


def test_unknown_chapter_is_a_clear_error(capsys):
    assert main(["no-such-chapter", "--scale", "smoke"]) == 2
    assert "no chapter 'no-such-chapter' in _toc.yml" in capsys.readouterr().err


def test_unknown_scale_is_a_clear_error(capsys):
    assert main(["bert-init-std", "--scale", "medium"]) == 2
    assert "unknown scale 'medium'" in capsys.readouterr().err


def test_unknown_parameter_is_a_clear_error(capsys):
    assert main(["bert-init-std", "--scale", "smoke", "-p", "lr", "0.1"]) == 2
    assert "declares no parameter(s) lr" in capsys.readouterr().err


@pytest.mark.parametrize("scale,expected", [("smoke", 1800), ("full", 1800), ("large", 4 * 3600)])
def test_cell_timeout_by_scale(monkeypatch, scale, expected):
    """A large run's cells may take far longer on a CPU than the 30 minutes allowed at smoke and full
    (the p-tuning GPT cell with three seeds took over 30 minutes and was cut)."""
    import papermill

    from kexue import runner

    seen = {}

    def fake_execute(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop before executing")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    with pytest.raises(RuntimeError, match="stop before executing"):
        runner.run_chapter("bert-init-std", scale, require_registration=False)
    assert seen["execution_timeout"] == expected
    with pytest.raises(RuntimeError, match="stop before executing"):
        runner.run_chapter("bert-init-std", scale, cell_timeout=7, require_registration=False)
    assert seen["execution_timeout"] == 7
