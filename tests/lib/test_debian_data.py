"""tools/debian_data.sh (`make data`): Debian's dataset-fashion-mnist installed as root where apt-get
exists, the exact command printed otherwise, and `make data` never failed by it (issue 19 §5).
The system's commands (id, dpkg-query, apt-get) are replaced by fakes on PATH, so nothing is installed."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "debian_data.sh"
BASH = shutil.which("bash")


def fake_bin(tmp_path, *, uid=0, installed=False, apt=True, apt_fails=0):
    """A PATH holding only grep and fakes; apt-get appends its arguments to apt.log and fails its
    first ``apt_fails`` calls."""
    b = tmp_path / "bin"
    b.mkdir()
    (b / "grep").symlink_to(shutil.which("grep"))
    fakes = {"id": f'echo {uid}',
             "dpkg-query": 'echo -n "install ok installed"' if installed else "exit 1"}
    if apt:
        fakes["apt-get"] = (f'echo "$@" >> {tmp_path}/apt.log; n=$(wc -l < {tmp_path}/apt.log); '
                            f'[ "$n" -gt {apt_fails} ]')
        (b / "wc").symlink_to(shutil.which("wc"))
    for name, body in fakes.items():
        (b / name).write_text(f"#!{BASH}\n{body}\n")
        (b / name).chmod(0o755)
    return b


def run(tmp_path, **kw):
    b = fake_bin(tmp_path, **kw)
    r = subprocess.run([BASH, str(SCRIPT)], capture_output=True, text=True, env={"PATH": str(b)})
    log = tmp_path / "apt.log"
    return r, (log.read_text().splitlines() if log.exists() else [])


def test_installed_does_nothing(tmp_path):
    r, apt = run(tmp_path, installed=True)
    assert r.returncode == 0 and apt == [] and "dataset-fashion-mnist installed" in r.stdout


def test_root_with_apt_installs_it(tmp_path):
    r, apt = run(tmp_path, uid=0)
    assert r.returncode == 0, r.stderr
    assert apt == ["install -y -q --no-install-recommends dataset-fashion-mnist"]
    assert "installed dataset-fashion-mnist" in r.stdout


def test_root_with_stale_lists_updates_then_installs(tmp_path):
    r, apt = run(tmp_path, uid=0, apt_fails=1)
    assert r.returncode == 0
    assert apt == ["install -y -q --no-install-recommends dataset-fashion-mnist", "update -q",
                   "install -y -q --no-install-recommends dataset-fashion-mnist"]


def test_root_offline_does_not_fail(tmp_path):
    r, apt = run(tmp_path, uid=0, apt_fails=99)
    assert r.returncode == 0 and len(apt) == 2
    assert "could not install dataset-fashion-mnist" in r.stdout
    assert "apt-get install -y dataset-fashion-mnist" in r.stdout


def test_not_root_prints_the_exact_command(tmp_path):
    r, apt = run(tmp_path, uid=1000)
    assert r.returncode == 0 and apt == []
    assert "  sudo apt-get install -y dataset-fashion-mnist" in r.stdout.splitlines()


def test_no_apt_get_says_so(tmp_path):
    r, apt = run(tmp_path, uid=1000, apt=False)
    assert r.returncode == 0 and "no apt-get" in r.stdout


def test_make_data_runs_it_first():
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\ndata: setup\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in recipe.splitlines()]
    assert lines[0] == "@bash tools/debian_data.sh" and "kexue.data.prepare" in lines[1]
