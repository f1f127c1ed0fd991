"""The GPU must do the work (issue 19 §3), for the six chapters of Part 2 written last:
momentum-grad-accum, lion-tiger-embedding, simsiam-dynamics, gradient-penalty-inequality,
multitask-loss, multitask-gradient. Each test runs the library paths its chapter calls, at tiny size,
with kexue's current device set to the fake second device of ``test_device`` (``gpu``: any CPU tensor
meeting a device tensor raises, and no matrix product may run on plain CPU tensors)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import kexue


def _harness():
    """``tests/lib/test_device.py`` as a module, the one pytest imported if it did (its torch.library
    registrations must run once only)."""
    for name, mod in list(sys.modules.items()):
        if name.endswith("test_device") and hasattr(mod, "fake_gpu"):
            return mod
    spec = importlib.util.spec_from_file_location("tests.lib.test_device", Path(__file__).with_name("test_device.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


_H = _harness()
on_device, OnDevice, DeviceMismatch = _H.on_device, _H.OnDevice, _H.DeviceMismatch


fake_gpu, gpu = _H.fake_gpu, _H.gpu     # the harness and its fixture, shared with test_device

pytestmark = pytest.mark.usefixtures("one_thread")


class Reached(Exception):
    """Raised by a stand-in to stop a path once its device work was checked."""


def _digits(n_train=40, n_dev=20):
    from kexue.optim.accum import image_split
    return image_split("digits", n_train=n_train, n_dev=n_dev, seed=0, device=kexue.resolve_device())


def test_guard_still_catches_a_model_left_on_the_cpu():
    with fake_gpu():
        lin = torch.nn.Linear(3, 2).to(device=kexue.resolve_device(), dtype=torch.float64)
        assert on_device(lin) and lin.weight.dtype == torch.float64
    with fake_gpu() as mode:
        torch.nn.Linear(3, 2)(torch.randn(4, 3))
        assert mode.cpu_matmuls == 1
    with fake_gpu():
        x = torch.randn(4, 3).to(kexue.resolve_device())
        with pytest.raises(DeviceMismatch):
            torch.nn.Linear(3, 2)(x)


# -- momentum-grad-accum ------------------------------------------------------------------------------
def test_momentum_grad_accum_paths(gpu):
    from kexue.optim import accum
    data = _digits()
    assert isinstance(data["X_train"], OnDevice)
    X64, y64 = data["X_train"].double(), data["y_train"]
    ex = accum.exactness(X64, y64, sizes=[64, 8, 10], micro_batch=4, k=2, updates=2, seed=0,
                         lr_sgdm=0.2, lr_adam=1e-3, lr_tiger=1e-3)
    assert ex["sgdm"]["folded_vs_batch"] < 1e-10 and ex["tiger"]["folded_vs_batch"] < 1e-10
    assert np.isfinite(accum.v_ratio(X64, y64, sizes=[64, 8, 10], micro_batch=4, k=2, cycles=2, seed=0))
    for arm in ("every_step", "folded", "sparse", "ema_tilde", "large_batch", "adam_folded", "adam_explicit"):
        r = accum.tune_then_seeds(arm, data, lrs=[0.05], seeds=[0], sizes=[64, 8, 10], micro_batch=4,
                                  k=2, epochs=0.2, device=kexue.resolve_device())
        assert 0 <= r["runs"][0]["test"] <= 1
    r = accum.train_arm("folded", data, lr=0.05, seed=0, sizes=[64, 8, 10], micro_batch=4, k=2, epochs=0.2)
    assert 0 <= r["test"] <= 1                            # no device given: the data's


# -- lion-tiger-embedding -----------------------------------------------------------------------------
def _windows(n, V, context, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (n, context)), rng.integers(0, V, n)


@pytest.mark.parametrize("device", [None, "current"])
def test_lion_tiger_embedding_paths(gpu, device):
    from kexue import lm
    from kexue.optim.sign import embedding_outlier_report
    V, c = 30, 4
    data = {"train": _windows(64, V, c, 0), "dev": _windows(16, V, c, 1), "test": _windows(16, V, c, 2)}
    counts = lm.context_counts(data["train"][0], V)
    kw = {} if device is None else {"device": kexue.resolve_device()}   # the default: the current device
    for arm in lm.ARMS:
        out = lm.train_arm(arm, data, vocab_size=V, dim=8, hidden=8, context=c, steps=2, batch=16, lr=6e-3,
                           weight_decay=2.0, eval_every=1, seed=0, **kw)
        assert np.isfinite(out["test_nll"]).all() and not isinstance(out["E"], OnDevice)
        embedding_outlier_report(out["E"], counts, 2.0)


# -- simsiam-dynamics ---------------------------------------------------------------------------------
def test_simsiam_dynamics_paths(gpu, monkeypatch):
    # forward paths on the device (views, encoder, predictor, loss, kNN, linear probe, speeds); the
    # backward is skipped: autograd's formulas make scalars the fake device cannot fill
    from kexue import ssl
    data = _digits(60, 20)
    assert 0 <= ssl.knn_accuracy(data["X_train"], data["y_train"], data["X_test"], data["y_test"], k=3) <= 1
    assert 0 <= ssl.linear_probe(data["X_train"], data["y_train"], data["X_dev"], data["y_dev"], data["X_test"],
                                 data["y_test"], steps=2, seed=0)["test_acc"] <= 1
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **kw: None)
    arch = dict(hidden=16, proj=8, pred_hidden=4)
    for v, bn in (("sg_pred", False), ("no_sg", False), ("no_pred", False), ("fixed_pred", False),
                  ("mean_target", False), ("sg_pred", True)):
        r = ssl.run_simsiam(v, data, shape=(8, 8), epochs=1, batch_size=20, lr=0.05, k=3, probe_steps=2,
                            mean_views=2, seed=0, proj_bn=bn, probe_init=True, **arch)
        assert all(0 <= h["dev"] <= 1 for h in r["history"])


# -- gradient-penalty-inequality ----------------------------------------------------------------------
def test_gradient_penalty_paths(gpu, monkeypatch):
    # probe_terms reads the inequality in a float64 CPU copy on purpose (the same numbers on every
    # device): its CPU products are allowed. random_net_scan, init_spectral_norms and arc_length_run
    # are float64 checks on tiny CPU tensors by design and take no device.
    from kexue import regularization as R
    probe = R.probe_terms

    def cpu_probe(*a, **kw):
        with gpu.cpu_ok():
            return probe(*a, **kw)
    monkeypatch.setattr(R, "probe_terms", cpu_probe)
    data = _digits()
    tr = R.train_with_terms(data, sizes=[64, 8, 10], lr=0.05, epochs=1, seed=0, n_probe=4, readouts=("loss",),
                            batch_size=16, device=kexue.resolve_device())
    assert 0 <= tr["test"] <= 1 and len(tr["history"]) == 2
    for pen in (0.0, 0.1):
        r = R.gd_run(data, sizes=[64, 8, 10], lr=0.1, penalty=pen, stop_loss=0.0, max_steps=2, seed=0, n_eval=8)
        assert np.isfinite(r["dirichlet"]) and 0 <= r["test"] <= 1


# -- multitask-loss -----------------------------------------------------------------------------------
def _tagging():
    from kexue.multitask import loss as M
    rows = [(list("北京举行"), list("BEBE"), ["ns", "ns", "v", "v"], ["B-LOC", "I-LOC", "O", "O"]),
            (list("他来"), list("SS"), ["r", "v"], ["O", "O"])] * 4
    return M.encode_tagging({"train": rows, "dev": rows[:4], "test": rows[:4]})   # on the CPU, as loaded


def test_multitask_loss_arms(gpu, monkeypatch):
    # every arm's forward, losses, weights and scoring on the device; backward skipped (as above)
    from kexue.multitask import loss as M
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **kw: None)
    data = _tagging()
    for arm in M.ARMS:
        r = M.tune_and_run(data, arm, lrs=[0.05], seeds=[0], lr_seed=0, steps=2, batch_size=4, eval_every=1,
                           patience=None, model_cfg={"emb": 4, "width": 4, "layers": 1})   # no device: the current one
        assert set(r["runs"][0]["test"]) <= set(M.TASKS)


# -- multitask-gradient -------------------------------------------------------------------------------
def test_multitask_gradient_arms(gpu, monkeypatch):
    from kexue.data.images import multi_fashion
    from kexue.multitask import gradient as MG
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **kw: None)
    data = multi_fashion(40, 20, 20, source="digits", seed=0)
    data = {k: v.to(kexue.resolve_device()) for k, v in data.items()}
    arms = ["single0", "single1", "sum", "random", "mgda", "frozen", "mgda_ub", "unit"]
    runs = MG.run_arms(data, arms, lrs=[0.2], seeds=[0], dir_every=1, cos_every=1, steps=2, batch_size=8,
                       eval_every=1, patience=None, downsample="stride", device=kexue.resolve_device())
    assert all(0 <= MG.per_seed(runs, a, "worst_test")[0] <= 1 for a in arms)


def test_linear_attention_paths(gpu, monkeypatch):   # linear-attention-infinite
    # Forward paths on the device: both attentions in the model, training batches, masked evaluation,
    # the attention matrices and their ranks, the timing (backward skipped, as above).
    from kexue import attention as A
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **kw: None)
    data = A.task_data("mirror", n_train=16, n_dev=8, n_test=8, length=8, vocab=6, seed=0)
    kw = dict(d=8, heads=2, ffn=16, layers=1, steps=2, batch=4, eval_every=1, patience=None)
    out = A.run_arms(data, {"softmax": ("softmax", None), "linear": ("linear", 8)}, lrs=[1e-2], seeds=[0], **kw)
    for arm in out.values():
        r = arm["runs"][0]
        assert on_device(r["model"]) and np.isfinite(r["test_ce"])
    model = out["softmax"]["runs"][0]["model"]
    probe = data["test"][0][:2]
    assert A.attention_ranks(model, probe).shape == (1, 2, 2)
    assert 1 <= A.max_numerical_rank(out["linear"]["runs"][0]["model"], probe) <= 8
    assert A.timing_ratio(8, 4, "taylor", 2, heads=1, repeats=1)["ratio"] > 0
