"""Tests of the ``mgda`` scheme of kexue.multitask.loss (the min-norm direction of Sener & Koltun 2018,
https://kexue.fm/archives/8896, chapter multitask-gradient) on the tagging problem of chapter
multitask-loss: one plain-SGD step in float64 against a slow reference built from separate
torch.autograd.grad calls, the KKT conditions of the weights, and the arm end to end."""
import numpy as np
import pytest
import torch

from kexue.multitask import loss as M
from kexue.multitask.gradient import min_norm_reference


def _random_tagging(seed=0, n=12, alphabet="北京上海举行会议他来了人民日报新年", max_len=7):
    """A tiny random tagging problem: random characters and random tags, lines of varying length
    (so padding, −100 labels, is exercised)."""
    rng = np.random.default_rng(seed)
    pos_tags, ner_tags = ["n", "v", "r", "ns", "u"], ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    rows = []
    for _ in range(n):
        L = int(rng.integers(2, max_len + 1))
        rows.append(([alphabet[i] for i in rng.integers(0, len(alphabet), L)],
                     [M.SEG_TAGS[i] for i in rng.integers(0, 4, L)],
                     [pos_tags[i] for i in rng.integers(0, len(pos_tags), L)],
                     [ner_tags[i] for i in rng.integers(0, len(ner_tags), L)]))
    return M.encode_tagging({"train": rows, "dev": rows[:4], "test": rows[4:8]})


def _tiny_model(data, seed=0, **cfg):
    heads = {k: len(data["tags"][k]) for k in M.TASKS}
    cfg = {"emb": 6, "width": 5, "layers": 2, **cfg}
    return M.ConvTagger(len(data["vocab"]) + 2, heads, seed=seed, **cfg).double()


def _flat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def _reference(model, part, idx):
    """Per-task gradients by separate autograd.grad calls: shared encoder (n × P) and each head."""
    shared = model.shared_parameters()
    G, head_grads = [], {}
    for i, k in enumerate(M.TASKS):
        _, losses = M.task_losses(model, part, idx, M.TASKS)
        g = torch.autograd.grad(losses[i], shared, allow_unused=True, materialize_grads=True)
        G.append(_flat(g))
        _, losses = M.task_losses(model, part, idx, M.TASKS)
        head_grads[k] = [t.clone() for t in torch.autograd.grad(losses[i], list(model.heads[k].parameters()))]
    return torch.stack(G), head_grads


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_sgd_step_moves_encoder_by_weighted_sum_and_heads_by_own_gradient(seed):
    data = _random_tagging(seed)
    model = _tiny_model(data, seed)
    tr, idx = data["train"], np.arange(8)
    G, head_grads = _reference(model, tr, idx)
    enc0 = _flat(model.shared_parameters()).detach().clone()
    heads0 = {k: [p.detach().clone() for p in model.heads[k].parameters()] for k in M.TASKS}
    others = [p for p in model.parameters()]
    assert sum(p.numel() for p in others) == enc0.numel() + sum(
        sum(p.numel() for p in v) for v in heads0.values())          # encoder + heads = all parameters

    lr = 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    sur, losses, w = M.mgda_loss(model, tr, idx, M.TASKS)
    # the surrogate's value is the plain sum of the losses
    assert abs(float(sur.detach()) - sum(float(L.detach()) for L in losses)) < 1e-12
    opt.zero_grad(set_to_none=True)
    sur.backward()
    opt.step()

    # the weights: on the simplex, min-norm (KKT: <g_i, u> >= ||u||^2), and the reference's optimum
    assert w.shape == (3,) and np.all(w >= 0) and abs(w.sum() - 1) < 1e-12
    u = (torch.as_tensor(w).reshape(-1, 1) * G).sum(0)
    assert float((G @ u).min()) >= float(u @ u) - 1e-10
    a_ref, f_ref = min_norm_reference(G)
    assert abs(float(u @ u) - f_ref) < 1e-10
    # the weights are not trivially uniform on this problem (otherwise the test could not tell mgda from sum)
    assert np.abs(w - 1 / 3).max() > 1e-3

    # encoder moved by exactly -lr * sum_i w_i g_i; each head by -lr * its own full gradient
    enc1 = _flat(model.shared_parameters()).detach()
    assert torch.allclose(enc1 - enc0, -lr * u, atol=1e-12, rtol=0)
    for k in M.TASKS:
        for p0, p1, g in zip(heads0[k], model.heads[k].parameters(), head_grads[k]):
            assert torch.allclose(p1.detach() - p0, -lr * g, atol=1e-12, rtol=0), k


def test_mgda_differs_from_the_weighted_sum_on_the_heads():
    # Σ w_i L_i would move head i by -lr·w_i·∇L_i: the surrogate must not
    data = _random_tagging(3)
    model = _tiny_model(data, 3)
    tr, idx = data["train"], np.arange(8)
    sur, losses, w = M.mgda_loss(model, tr, idx, M.TASKS)
    heads = [list(model.heads[k].parameters()) for k in M.TASKS]
    g_sur = torch.autograd.grad(sur, [p for h in heads for p in h], retain_graph=True)
    g_own = [torch.autograd.grad(L, h, retain_graph=True) for L, h in zip(losses, heads)]
    assert torch.allclose(_flat(g_sur), _flat([g for gs in g_own for g in gs]), atol=1e-13, rtol=0)
    assert not torch.allclose(_flat(g_sur), _flat([wi * g for wi, gs in zip(w, g_own) for g in gs]), atol=1e-6)


def test_loss_combiner_refuses_mgda_and_arms_entry():
    assert "mgda" in M.SCHEMES and M.ARMS["mgda"] == dict(tasks=M.TASKS, scheme="mgda", optimizer="sgd")
    with pytest.raises(ValueError):
        M.LossCombiner("mgda", 3)


def test_head_loss_matches_task_losses():
    data = _random_tagging(4)
    model = _tiny_model(data, 4)
    idx = np.arange(10)
    h, losses = M.task_losses(model, data["train"], idx, M.TASKS)
    labels = M.batch_labels(data["train"], idx, M.TASKS)
    for k, y, L in zip(M.TASKS, labels, losses):
        assert float(M.head_loss(model, h, y, k)) == float(L)


def test_tune_and_run_mgda_end_to_end():
    data = _random_tagging(5, n=12)
    common = dict(steps=6, batch_size=4, eval_every=3, patience=None,
                  model_cfg={"emb": 4, "width": 4, "layers": 1})
    r = M.tune_and_run(data, "mgda", lrs=[0.05, 0.2], seeds=[0, 1], lr_seed=7, **common)
    assert r["lr"] in (0.05, 0.2) and len(r["runs"]) == 2
    for run in r["runs"]:
        assert run["scheme"] == "mgda" and set(run["test"]) == set(M.TASKS)
        w = np.array(run["weights"])
        assert w.shape == (3,) and np.all(w >= 0) and abs(w.sum() - 1) < 1e-9
        assert len(run["weights_by_eval"]) == len(run["raw_losses"]) == 2
        assert np.allclose(np.mean(run["weights_by_eval"], axis=0), w)   # equal intervals: mean of means
        assert abs(sum(run["weights_last"]) - 1) < 1e-9


def test_sum_arm_unchanged_by_the_mgda_code():
    # the plain sum still goes through LossCombiner and returns its weights (all ones)
    data = _random_tagging(6, n=8)
    kw = dict(lr=0.1, steps=2, batch_size=4, eval_every=2, patience=None, seed=0,
              model_cfg={"emb": 4, "width": 4, "layers": 1})
    r = M.train_arm(data, scheme="sum", **kw)
    assert r["weights"] == [1.0, 1.0, 1.0] and "weights_last" not in r

