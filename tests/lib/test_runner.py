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
