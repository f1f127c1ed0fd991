"""Shared fixtures of the library tests."""
import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one torch thread avoids oversubscription when other jobs share the 2 cores
    (measured here: up to 60× faster than two threads under contention)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    """``char_tokenizer(text)``: the book's BERT tokenizer (``kexue.models.bert_zh``) over a vocabulary
    of the special tokens and the distinct characters of ``text``."""
    from kexue.models import bert_zh

    def make(text: str):
        d = tmp_path_factory.mktemp("vocab")
        bert_zh.write_vocab(list(bert_zh.SPECIAL_TOKENS) + sorted(set(text)), d)
        return bert_zh.tokenizer(d)
    return make


@pytest.fixture
def fresh_venv(tmp_path):
    """A new virtualenv (no pip), as ``.python`` and its ``.site`` (site-packages), that sees this environment's installed packages
    through one .pth line but not the editable ``kexue`` (its finder is not a plain path), so that
    installing the book there can be tested offline: a kernel or a process that did not have it."""
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path
    from types import SimpleNamespace

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return SimpleNamespace(python=py, site=site)
