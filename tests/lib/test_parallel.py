"""kexue.parallel: runs side by side in one-thread processes give the serial results, in order."""
import numpy as np
import pytest
import torch

from kexue import gan, parallel


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).random((64, 16), dtype=np.float32)


def _serial(runs, shared):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same arithmetic, same bits
    try:
        return parallel.run_many(gan.train_gan, runs, workers=1, shared=shared)
    finally:
        torch.set_num_threads(threads)


def test_run_many_matches_serial_in_order_with_shared_data(X):
    kw = dict(kind="wgan_gp", steps=3, batch_size=8, z_dim=4, hidden=8, n_critic=2, eval_every=3, eval_batch=8)
    runs = [dict(kw, seed=s) for s in (0, 1, 2)]
    shared = {"X": X, "eval_real": X}
    par = parallel.run_many(gan.train_gan, runs, workers=2, shared=shared)
    seq = _serial(runs, shared)
    assert len(par) == 3
    for a, b in zip(par, seq):
        for k in ("exact_w1", "estimate"):
            np.testing.assert_array_equal(a["log"][k], b["log"][k])
        for pa, pb in zip(a["G"].parameters(), b["G"].parameters()):
            assert torch.equal(pa, pb)
    assert not np.array_equal(par[0]["log"]["exact_w1"], par[1]["log"]["exact_w1"])  # seeds differ


def test_run_many_errors_say_what_to_do(X):
    with pytest.raises(ValueError, match="at least 1"):
        parallel.run_many(gan.train_gan, [{}], workers=0)
    with pytest.raises(ValueError, match="GPU"):
        parallel.run_many(gan.train_gan, [dict(device="cuda"), dict(device="cuda")], workers=2, shared={"X": X})
    with pytest.raises(ValueError, match="give each once"):
        parallel.run_many(gan.train_gan, [dict(X=X)], shared={"X": X})
    with pytest.raises(TypeError):  # a worker's exception reaches the caller
        parallel.run_many(gan.train_gan, [dict(bogus=1), dict(bogus=2)], workers=2, shared={"X": X})


def test_default_workers():
    assert parallel.default_workers("cuda") == 1
    assert parallel.default_workers("meta") == 1
    assert 1 <= parallel.default_workers("cpu") <= 2
    assert parallel.default_workers(None, limit=1) == 1
