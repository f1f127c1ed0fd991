"""The chapter runner's command line: parameter parsing and clear errors."""
import os
from pathlib import Path

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


# --- issue 19 §5: which checkout runs, a scale error that names --scale, a quiet kernel -------------

def test_unknown_scale_names_the_flag_the_variable_and_papermill(capsys):
    assert main(["bert-init-std", "--scale", "huge"]) == 2
    err = capsys.readouterr().err
    assert "unknown scale 'huge' from --scale huge" in err
    for hint in ("--scale smoke | full | large", "KEXUE_SCALE", "papermill", "make run"):
        assert hint in err


def test_unknown_scale_from_the_environment_says_so(capsys, monkeypatch):
    monkeypatch.setenv("KEXUE_SCALE", "huge")
    assert main(["bert-init-std"]) == 2
    err = capsys.readouterr().err
    assert "$KEXUE_SCALE='huge' (--scale was not given)" in err and "--scale" in err


def test_check_scale_names_the_flag():
    from kexue import check_scale
    with pytest.raises(ValueError, match=r"--scale full.*KEXUE_SCALE.*papermill"):
        check_scale("huge")


def test_checkout_of_searches_upwards_only(tmp_path):
    from kexue import book
    from kexue.runner import checkout_of
    root = book.repo_root()
    assert checkout_of(root / "chapters") == root
    assert checkout_of(tmp_path) is None
    assert book.repo_root(tmp_path) == root  # the fallback that kexue-run must not write back into


def test_outside_the_repository_says_which_checkout_and_refuses_to_write_back(capsys, monkeypatch, tmp_path):
    """Started outside the repository, kexue-run finds the chapter in the installed library's
    checkout: it says so, and a (default) write-back is refused with what to do, before anything runs."""
    import papermill

    from kexue import book
    root = book.repo_root()
    monkeypatch.chdir(tmp_path)

    def must_not_run(*args, **kwargs):
        raise AssertionError("papermill must not start")

    monkeypatch.setattr(papermill, "execute_notebook", must_not_run)
    assert main(["bert-init-std"]) == 2  # full scale, no -p: write-back by default
    err = capsys.readouterr().err
    assert f"running chapters/01-signal-propagation/bert-init-std.ipynb from the checkout {root}" in err
    assert "not inside a checkout of the book" in err
    assert "refusing to write back" in err and f"cd {root}" in err and "--no-write-back" in err
    assert main(["bert-init-std", "--scale", "full", "--write-back"]) == 2


def test_outside_the_repository_without_write_back_keeps_the_record_out_of_that_checkout(monkeypatch, tmp_path):
    import os

    import papermill

    from kexue import book, runner
    root = book.repo_root()
    monkeypatch.chdir(tmp_path)
    seen = {}

    def fake_execute(*args, **kwargs):
        seen["results_dir"] = os.environ.get("KEXUE_RESULTS_DIR")
        seen.update(kwargs)
        raise RuntimeError("stop before executing")

    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    with pytest.raises(RuntimeError, match="stop before executing"):
        runner.run_chapter("bert-init-std", "smoke", output=tmp_path / "out.ipynb")
    assert seen["results_dir"] == str(tmp_path)
    assert root not in Path(seen["results_dir"]).resolve().parents
    inside = runner.checkout_of(Path(seen["cwd"]))
    assert inside == root  # the chapter still runs from its own folder


def test_kernel_config_uses_ipc_with_sockets_in_a_folder_of_their_own(tmp_path):
    from kexue.runner import kernel_config
    c = kernel_config(tmp_path)
    if os.name != "nt":
        assert c.KernelManager.transport == "ipc"
        assert c.KernelManager.ip == str(tmp_path.resolve() / "kernel")  # absolute: never the chapter's folder


def test_a_run_prints_no_tcp_encryption_warning(tmp_path, capfd):
    """ipykernel warns "Kernel is running over TCP without encryption" on stderr for every TCP kernel;
    the runner starts its kernels over IPC (measured: the warning came with every smoke run before)."""
    import nbformat

    from kexue import runner
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('scale = "full"\nseed = 0', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print('ran', scale, 6 * 7)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "toy.ipynb"
    nbformat.write(nb, path)
    info = runner.run_chapter(path, "smoke", output=tmp_path / "out.ipynb", results_dir=tmp_path,
                              require_registration=False)
    out = nbformat.read(info["output"], as_version=4)
    assert "ran smoke 42" in out.cells[-1].outputs[0]["text"]
    err = capfd.readouterr().err
    assert "without encryption" not in err, err[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb", "toy.ipynb"]  # no socket files left
