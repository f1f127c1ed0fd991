"""kexue.contrastive: the NT-Xent two-view run of chapter flatnce (archive 8586) on tiny inputs."""
import numpy as np
import pytest
import torch

from kexue import contrastive as C
from kexue import losses as L


def _data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, 64, generator=g)
    y = torch.arange(n) % 3
    return {"X_train": X[:30], "y_train": y[:30], "X_dev": X[30:45], "y_dev": y[30:45],
            "X_test": X[45:], "y_test": y[45:]}


def test_grad_cosine_matches_manual_float64():
    torch.manual_seed(0)
    m = C.ContrastiveNet(64, 16, 8, 4)
    v1, v2 = torch.rand(5, 64), torch.rand(5, 64)
    out = C.grad_cosine(m, v1, v2, "infonce", tau=0.5)
    assert 0.999999 < out["cos"] <= 1 + 1e-9
    m64 = C.ContrastiveNet(64, 16, 8, 4).double()
    m64.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    s, pos = L.in_batch_scores(m64(v1.double()), m64(v2.double()), 0.5)
    g = torch.autograd.grad(L.infonce(s, pos), list(m64.parameters()))
    assert abs(out["norm64"] - float(torch.cat([x.reshape(-1) for x in g]).norm())) < 1e-12


def test_run_is_deterministic_and_views_shared_across_dtypes():
    d = _data()
    kw = dict(batch_size=4, steps=6, tau=0.5, lr=1e-3, eval_every=3, probe_steps=10, k=3, seed=1)
    a = C.run_contrastive(d, loss="infonce", **kw)
    b = C.run_contrastive(d, loss="infonce", **kw)
    assert a["probe"] == b["probe"] and np.array_equal(a["diag"]["loss"], b["diag"]["loss"])
    c = C.run_contrastive(d, loss="infonce", dtype=torch.float64, **kw)
    # same init, same batches, same views: float64 and float32 losses agree to float32 rounding
    assert np.allclose(a["diag"]["loss"], c["diag"]["loss"], rtol=1e-4)
    assert np.allclose(c["diag"]["loss"], c["diag"]["loss64"], rtol=1e-5)
    f = C.run_contrastive(d, loss="flatnce", optimizer="sgd", diag_every=2, probe_init=True, **kw)
    assert len(f["diag"]["loss"]) == 3 and 0 <= f["probe_init"] <= 1
    assert len(a["history"]) == 2 and all(0.99 < h["cos"] <= 1 + 1e-9 for h in a["history"])
    with pytest.raises(ValueError):
        C.run_contrastive(d, loss="ce", **kw)


def test_late_summaries():
    assert C.late({"x": [1, 1, 3, 5]}, "x") == 4.0
    hist = [{"step": s, "cos": c} for s, c in [(10, 0.1), (20, 0.2), (30, 0.5), (40, 0.7)]]
    assert C.late_grad_cos(hist) == pytest.approx(0.6)


def test_grid_and_tuning():
    d = _data()
    kw = dict(steps=4, tau=0.5, eval_every=2, probe_steps=5, k=3)
    g = C.run_grid(d, {"a": {"loss": "infonce"}, "b": {"loss": "flatnce", "diag_every": "auto"}}, [2, 4], [0, 1],
                   lr=1e-3, **kw)
    assert set(g) == {"a", "b"} and set(g["a"]) == {2, 4} and len(g["b"][4]) == 2
    one = C.run_contrastive(d, loss="flatnce", batch_size=4, lr=1e-3, seed=1, **kw)
    assert one["probe"] == g["b"][4][1]["probe"]
    t = C.tuned_runs(d, lrs=[1e-3, 1e-2], seeds=[0, 1], loss="infonce", batch_size=4, optimizer="sgd", **kw)
    assert t["lr"] in (1e-3, 1e-2) and len(t["runs"]) == 2 and len(t["dev_by_lr"]) == 2
    assert t["dev_by_lr"][[1e-3, 1e-2].index(t["lr"])] == max(t["dev_by_lr"])
