"""kexue's scale / device / seeding conventions."""
import random

import numpy as np
import pytest
import torch

import kexue


def test_resolve_scale_default_env_and_errors(monkeypatch):
    monkeypatch.delenv("KEXUE_SCALE", raising=False)
    assert kexue.resolve_scale() == "full"
    monkeypatch.setenv("KEXUE_SCALE", "smoke")
    assert kexue.resolve_scale() == "smoke"
    monkeypatch.setenv("KEXUE_SCALE", "tiny")
    with pytest.raises(ValueError, match="unknown scale 'tiny'.*smoke, full, large"):
        kexue.resolve_scale()


def test_config_for_missing_scale_names_the_available_ones():
    table = {"smoke": {"n": 1}, "full": {"n": 10}}
    assert kexue.config_for(table, "full") == {"n": 10}
    with pytest.raises(ValueError, match="no 'large' scale; it has: smoke, full"):
        kexue.config_for(table, "large")
    with pytest.raises(ValueError, match="unknown scale"):
        kexue.config_for(table, "medium")


def test_large_on_cpu_warns(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="sized for a CUDA GPU and may take hours.*scale 'full'"):
        kexue.config_for({"large": {"n": 1}}, "large")
    with pytest.warns(UserWarning, match="takes about 38 min on a 2-core CPU.*scale 'full'"):
        assert kexue.config_for({"large": {"n": 1}}, "large", large_cpu_minutes=37.8) == {"n": 1}


def test_device_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("KEXUE_DEVICE", raising=False)
    assert kexue.device() == "cpu"
    monkeypatch.setenv("KEXUE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="unset KEXUE_DEVICE"):
        kexue.device()
    monkeypatch.setenv("KEXUE_DEVICE", "tpu")
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        kexue.device()


def test_setup_seeds_everything_and_prints_one_line(capsys):
    draws = []
    for _ in range(2):
        kexue.setup(123, "smoke")
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    kexue.setup(124, "smoke")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != draws[0]
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "device cpu" in line and f"torch {torch.__version__}" in line and "scale smoke" in line
