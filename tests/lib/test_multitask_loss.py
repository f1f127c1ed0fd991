"""Tests of kexue.multitask.loss (chapter multitask-loss, https://kexue.fm/archives/8870): the
invariances fixed by algebra, the priors against closed forms, the tagger's scoring helpers."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kexue.multitask import loss as M


# ------------------------------------------------------------------ priors against closed forms

def test_prior_ce_closed_form_and_uniform():
    assert M.prior_loss_ce([0, 1, 2, 3], 4) == pytest.approx(math.log(4), abs=1e-15)
    y = [0] * 9 + [1]
    assert M.prior_loss_ce(y, 3) == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)), abs=1e-15)
    assert M.prior_loss_ce([2, 2, 2], 3) == 0.0


def test_prior_mse_and_bce_closed_forms():
    y = np.array([1.0, 2.0, 3.0, 6.0])
    assert M.prior_loss_mse(y) == pytest.approx(((y - y.mean()) ** 2).mean(), abs=1e-15)
    Y = np.array([[1, 0], [0, 0], [1, 0], [1, 1]])
    h = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q))
    assert M.prior_loss_bce(Y) == pytest.approx((h(0.75) + h(0.25)) / 2, abs=1e-15)


def test_marginal_predictor_has_prior_normalised_loss_exactly_one():
    rng = np.random.default_rng(0)
    y = rng.choice(7, size=500, p=[.4, .2, .1, .1, .1, .05, .05])
    p = np.bincount(y, minlength=7) / len(y)
    logits = torch.tensor(np.log(np.where(p > 0, p, 1e-300)), dtype=torch.float64).expand(len(y), 7)
    ce = F.cross_entropy(logits, torch.tensor(y)).item()
    assert abs(ce / M.prior_loss_ce(y, 7) - 1) < 1e-9
    t = rng.normal(size=300) * 1000 + 5
    mse = float(((t - t.mean()) ** 2).mean())
    assert abs(mse / M.prior_loss_mse(t) - 1) < 1e-12
    Y = (rng.random((200, 3)) < [.1, .5, .8]).astype(float)
    q = torch.tensor(Y.mean(0)).expand(200, 3)
    bce = F.binary_cross_entropy(q, torch.tensor(Y)).item()
    assert abs(bce / M.prior_loss_bce(Y) - 1) < 1e-9


def test_prior_weights_do_not_depend_on_the_initialisation():
    y = np.random.default_rng(1).integers(0, 5, 400)
    a = M.LossCombiner("prior", 1, priors=[M.prior_loss_ce(y, 5)])
    b = M.LossCombiner("prior", 1, priors=[M.prior_loss_ce(y, 5)])
    a([torch.tensor(3.0)]), b([torch.tensor(0.2)])      # two models at different initial losses
    assert a.last_weights.tolist() == b.last_weights.tolist() == [1 / M.prior_loss_ce(y, 5)]


# ------------------------------------------------------------------ combiners: values and gradients

def test_schemes_weights_by_autograd():
    x = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    mk = lambda: [x[0] ** 2 * 3, (x[1] - 1) ** 2 + 0.5]
    Ls = [float(v.detach()) for v in mk()]
    for scheme, kw, w in [("sum", {}, [1, 1]), ("fixed", {"weights": [.3, 2]}, [.3, 2]),
                          ("prior", {"priors": [2.0, 4.0]}, [.5, .25]),
                          ("realtime", {"eps": 0.0}, [1 / Ls[0], 1 / Ls[1]])]:
        c = M.LossCombiner(scheme, 2, **kw)
        g, = torch.autograd.grad(c(mk()), x)
        gi = [torch.autograd.grad(L, x)[0] for L in mk()]
        assert torch.allclose(g, w[0] * gi[0] + w[1] * gi[1], atol=1e-14, rtol=0), scheme
        assert np.allclose(c.last_weights, w)
    c = M.LossCombiner("init", 2, eps=0.0)
    c(mk())
    with torch.no_grad():
        x += 0.1
    g, = torch.autograd.grad(c(mk()), x)
    gi = [torch.autograd.grad(L, x)[0] for L in mk()]
    assert torch.allclose(g, gi[0] / Ls[0] + gi[1] / Ls[1], atol=1e-14, rtol=0)


def test_gradnorm_is_a_sum_of_unit_vectors():
    x = torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64, requires_grad=True)
    mk = lambda: [(x ** 2).sum() * 100, (x[1] - 3) ** 2 + 7]
    c = M.LossCombiner("gradnorm", 2, eps=0.0)
    g, = torch.autograd.grad(c(mk(), shared=x), x)
    gi = [torch.autograd.grad(L, x)[0] for L in mk()]
    assert torch.allclose(g, sum(v / v.norm() for v in gi), atol=1e-14, rtol=0)


def test_gradnorm_over_several_tensors_normalises_the_concatenated_gradient():
    # the chapter passes all the model's parameters: the norm is over their concatenation, and a
    # tensor a loss does not use (another task's head) contributes nothing
    a = torch.tensor([0.5, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[1.0, 3.0], [0.2, -1.0]], dtype=torch.float64, requires_grad=True)
    c_ = torch.tensor([4.0], dtype=torch.float64, requires_grad=True)
    mk = lambda: [(a ** 2).sum() * 50 + (b[0] * a).sum(), ((b - 1) ** 2).sum() + 3 * (c_ ** 2).sum() + 9]
    c = M.LossCombiner("gradnorm", 2, eps=0.0)
    g = torch.autograd.grad(c(mk(), shared=[a, b, c_]), [a, b, c_])
    flat = lambda gs: torch.cat([x.reshape(-1) for x in gs])
    ref = []
    for L in mk():
        gi = torch.autograd.grad(L, [a, b, c_], allow_unused=True)
        gi = [torch.zeros_like(t) if x is None else x for x, t in zip(gi, (a, b, c_))]
        ref.append(flat(gi) / flat(gi).norm())
    assert torch.allclose(flat(g), ref[0] + ref[1], atol=1e-14, rtol=0)
    norms = [flat(torch.autograd.grad(L, [a, b, c_], allow_unused=True, materialize_grads=True)).norm().item()
             for L in mk()]
    assert np.allclose(c.last_weights, [1 / n for n in norms], rtol=1e-14)


def test_train_arm_gradnorm_options():
    rows = [(list("北京举行"), list("BEBE"), ["ns", "ns", "v", "v"], ["B-LOC", "I-LOC", "O", "O"]),
            (list("他来"), list("SS"), ["r", "v"], ["O", "O"])] * 4
    data = M.encode_tagging({"train": rows, "dev": rows[:4], "test": rows[:4]})
    kw = dict(scheme="gradnorm", lr=0.05, steps=4, batch_size=4, eval_every=2, patience=None, seed=0,
              model_cfg={"emb": 4, "width": 4, "layers": 1})
    w_p, w_h = M.train_arm(data, **kw)["weights"], M.train_arm(data, gradnorm_wrt="h", **kw)["weights"]
    assert len(w_p) == len(w_h) == 3 and not np.allclose(w_p, w_h)
    with pytest.raises(ValueError):
        M.train_arm(data, gradnorm_wrt="nope", **kw)


def test_uncertainty_optimum_is_sigma2_equals_loss():
    u = M.UncertaintyWeighting(2).double()
    L = [torch.tensor(0.3, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)]
    opt = torch.optim.SGD(u.parameters(), lr=0.5)
    for _ in range(2000):
        opt.zero_grad()
        u(L).backward()
        opt.step()
    assert np.allclose(u.sigma2, [0.3, 4.0], rtol=1e-8)
    # value = ½ Σ log L_i + n/2 at the optimum: the real-time objective up to a constant
    assert float(u(L)) == pytest.approx(0.5 * (math.log(0.3) + math.log(4.0)) + 1.0, abs=1e-10)


def test_bad_arguments():
    with pytest.raises(ValueError):
        M.LossCombiner("nope", 2)
    with pytest.raises(ValueError):
        M.LossCombiner("prior", 2)
    with pytest.raises(ValueError):
        M.LossCombiner("gradnorm", 1)([torch.tensor(1.0, requires_grad=True)])


# ------------------------------------------------------------------ invariances on a tiny tagger

def _tiny(seed=0):
    torch.manual_seed(seed)
    model = M.ConvTagger(30, {"seg": 4, "pos": 6, "ner": 3}, emb=8, width=8, layers=2, seed=seed).double()
    g = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randint(2, 30, (4, 7), generator=g),
                [torch.randint(0, n, (4, 7), generator=g) for n in (4, 6, 3)]) for _ in range(200)]
    return model, batches


def _loss_fn(scale=1.0, shift=0.0, task=1):
    def f(model, b):
        ids, ys = b
        h, logits = model(ids)
        losses = [F.cross_entropy(logits[k].reshape(-1, logits[k].shape[-1]), y.reshape(-1))
                  for k, y in zip(("seg", "pos", "ner"), ys)]
        losses[task] = losses[task] * scale + shift
        return h, losses
    return f


def _run(scheme, eps=1e-8, **kw):
    model, batches = _tiny()
    return M.sgd_trajectory(model, batches, _loss_fn(**kw), M.LossCombiner(scheme, 3, eps=eps), lr=0.05)[-1]


def _gap(a, b):
    return float(torch.nan_to_num((a - b).abs(), nan=math.inf).max())


def test_realtime_sgd_trajectory_unchanged_when_pos_loss_is_scaled_by_1000():
    base, scaled = _run("realtime"), _run("realtime", scale=1000.0)
    assert _gap(base, scaled) < 1e-8
    # the plain sum is not invariant (with the POS loss x 1000 it even diverges)
    assert _gap(_run("sum"), _run("sum", scale=1000.0)) > 1e-3


def test_shift_changes_realtime_but_not_gradnorm():
    assert _gap(_run("realtime"), _run("realtime", shift=5.0)) > 1e-3
    assert _gap(_run("gradnorm"), _run("gradnorm", shift=5.0)) < 1e-10
    # gradnorm is scale-invariant too (exactly with eps = 0; eps is absolute on a small gradient)
    assert _gap(_run("gradnorm", eps=0.0), _run("gradnorm", eps=0.0, scale=1000.0)) < 1e-8


# ------------------------------------------------------------------ tagging helpers

def test_bmes_words_and_span_f1():
    assert M.bmes_words(list("BESBME")) == {(0, 2), (2, 3), (3, 6)}
    assert M.bmes_words(list("MMS")) == {(0, 2), (2, 3)}
    assert M.span_f1([{(0, 1), (1, 3)}], [{(0, 1), (1, 2)}]) == pytest.approx(0.5)
    assert M.span_f1([set()], [set()]) == 1.0


def test_encode_and_train_arm_tiny():
    rows = [(list("北京举行"), list("BEBE"), ["ns", "ns", "v", "v"], ["B-LOC", "I-LOC", "O", "O"]),
            (list("他来"), list("SS"), ["r", "v"], ["O", "O"])] * 8
    data = M.encode_tagging({"train": rows, "dev": rows[:4], "test": rows[:4]})
    assert data["train"]["ids"].shape == (16, 4) and data["tags"]["ner"][0] == "O"
    assert int((data["train"]["seg"] == -100).sum()) == 8 * 2
    r = M.train_arm(data, scheme="gradnorm", lr=0.1, steps=60, batch_size=4, eval_every=20, patience=None,
                    seed=0, model_cfg={"emb": 8, "width": 8, "layers": 2})
    assert set(r["test"]) == {"seg", "pos", "ner"} and r["test"]["seg"] > 0.9
    w = M.dirichlet_weights(3, 0)
    assert sum(w) == pytest.approx(3) and min(w) > 0


def test_library_invariance_gap_matches_the_reference_runs():
    assert M.invariance_gap("realtime", scale=1000.0) == _gap(_run("realtime"), _run("realtime", scale=1000.0))
    assert M.invariance_gap("gradnorm", shift=5.0) < 1e-10 < 1e-3 < M.invariance_gap("realtime", shift=5.0)


def test_marginal_normalised_losses_are_one():
    rows = [(list("北京举行"), list("BEBE"), ["ns", "ns", "v", "v"], ["B-LOC", "I-LOC", "O", "O"]),
            (list("他来了"), list("SSS"), ["r", "v", "u"], ["O", "O", "O"])] * 3
    data = M.encode_tagging({"train": rows, "dev": rows, "test": rows})
    assert all(abs(v - 1) < 1e-9 for v in M.marginal_normalised_losses(data).values())
    r = M.tune_and_run(data, "random", lrs=[0.1, 0.3], seeds=[0, 1], lr_seed=5, steps=10, batch_size=3,
                       eval_every=5, patience=None, model_cfg={"emb": 4, "width": 4, "layers": 1})
    assert r["lr"] in (0.1, 0.3) and len(r["runs"]) == 2 and r["runs"][0]["weights"] != r["runs"][1]["weights"]


def test_arm_table_gap_pairs_seeds():
    run = lambda sc, tasks: {"tasks": tasks, "test": sc, "best_step": 1}
    res = {"sum": {"lr": .1, "runs": [run({"seg": .5, "pos": .4, "ner": .2}, M.TASKS)]},
           **{f"single_{k}": {"lr": .1, "runs": [run({k: 1.0 if k != "ner" else 0.4}, (k,))]} for k in M.TASKS}}
    t = M.arm_table(res)
    assert t["sum"]["gap"] == [pytest.approx(((1 - .5) + (1 - .4) + (.4 - .2) / .4) / 3)]
    assert t["single_ner"]["gap"] is None and t["single_ner"]["test"] == {"ner": [0.4]}
