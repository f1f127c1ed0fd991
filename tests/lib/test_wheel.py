"""A regular (non-editable) install of the library: the wheel carries the book's BERT weights as
package data, and ``kexue.models.bert_zh.load()`` works from outside the repository (issue 19 §4).

Offline on purpose: the wheel is built from a copy of the library with the build backend already in
the test's environment (``pip wheel --no-build-isolation --no-index --no-deps``) and installed into a
fresh virtualenv (``--without-pip``) that sees this environment's packages through a ``.pth`` line
(torch, transformers; but not the editable ``kexue``, whose own ``.pth`` is not processed there) with
``pip install --no-index --no-deps --ignore-installed`` (nothing outside the new venv is touched).
About 15 s: a 19 MB wheel, then one process that imports torch and transformers."""
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BERT = ROOT / "lib" / "kexue" / "models" / "bert-zh"
SHIPPED = ("model.safetensors", "config.json", "vocab.txt", "sha256", "tokenizer.json",
           "tokenizer_config.json", "README.md")


def _copy_source(dst: Path) -> Path:
    """What the wheel is built from, copied so that the build writes nothing into the checkout."""
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, dst / f)
    shutil.copytree(ROOT / "lib" / "kexue", dst / "lib" / "kexue",
                    ignore=shutil.ignore_patterns("__pycache__", "checkpoint*", "*.egg-info"))
    return dst


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = _copy_source(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                        "--no-build-isolation", "--disable-pip-version-check", str(src), "-w", str(dist)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = dist.glob("kexue-*.whl")
    return whl


def test_wheel_ships_the_bert_weights(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for f in SHIPPED:
            assert f"kexue/models/bert-zh/{f}" in names, f
        assert "kexue/articles.yml" in names
        assert not any("checkpoint" in n or n.endswith("log.jsonl") for n in names)
        shipped = hashlib.sha256(z.read("kexue/models/bert-zh/model.safetensors")).hexdigest()
    assert shipped == hashlib.sha256((BERT / "model.safetensors").read_bytes()).hexdigest()


def test_installed_wheel_loads_the_bert_outside_the_repository(wheel, tmp_path, fresh_venv):
    py = fresh_venv.python
    site = fresh_venv.site
    probe = "import importlib.util as u; print(u.find_spec('kexue'))"
    before = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert before.stdout.strip() == "None", before.stdout  # a venv that did not have kexue
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
                        "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import kexue, torch\n"
            "from kexue.models import bert_zh\n"
            "model, tok = bert_zh.load()\n"
            "ids = tok('科学空间', return_tensors='pt')\n"
            "with torch.no_grad(): out = model(**ids)\n"
            "print(kexue.__file__)\n"
            "print(bert_zh.DEFAULT_DIR)\n"
            "print(tuple(out.prediction_logits.shape), sum(p.numel() for p in model.parameters()))\n")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    kexue_file, folder, shape = r.stdout.strip().splitlines()[-3:]
    assert kexue_file.startswith(str(site)) and folder.startswith(str(site))  # the installed copy
    assert ROOT not in Path(kexue_file).parents
    assert shape.startswith("(1, 6, ")  # [CLS] 4 characters [SEP]


def test_missing_weights_say_where_they_ship(tmp_path):
    from kexue.models import bert_zh
    with pytest.raises(bert_zh.MissingWeightsError) as e:
        bert_zh.load(tmp_path / "nothing-here")
    msg = str(e.value)
    assert str(tmp_path / "nothing-here") in msg and "lib/kexue/models/bert-zh" in msg
    assert "pip install ." in msg and msg.index("They ship") < msg.index("re-create them from scratch")
    default = bert_zh.missing_weights_message(tmp_path, default=True)
    assert "Reinstall the library from a checkout" in default
