"""The GPU must do the work (issue 19 §3): on a CUDA machine every chapter's models and batches go to
the device :func:`kexue.setup` chose, and nothing is left behind on the CPU.

This machine has no GPU, so the tests below use a *fake second device*: a tensor subclass that says
it lives on ``meta`` but computes with a CPU tensor inside (:class:`OnDevice`). While
:class:`FakeDevice` is active, ``.to("meta")``, ``Module.to("meta")`` and any factory call with
``device="meta"`` give such tensors; an operation that mixes one with a CPU tensor (other than a
0-dim scalar, an integer index, or a copy: what CUDA itself accepts) raises, ``.numpy()`` of one
raises (as for a CUDA tensor), and every matrix product computed on plain CPU tensors is counted.
So a library path run with ``kexue``'s current device set to ``meta`` fails loudly when a
``.to(device)`` is missing, and the count shows that the heavy work ran on the device.
"""
import contextlib

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

import kexue

FAKE = torch.device("meta")
aten = torch.ops.aten
_COPIES = {aten._to_copy.default, aten.copy_.default}
_INDEXING = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}
_HEAVY = {torch.mm, torch.bmm, torch.matmul, torch.addmm, torch.baddbmm, torch.einsum,
          torch.nn.functional.linear, torch.nn.functional.scaled_dot_product_attention,
          torch.Tensor.__matmul__, torch.Tensor.matmul, torch.Tensor.mm, torch.Tensor.bmm}


class DeviceMismatch(RuntimeError):
    """A CPU tensor met a tensor on the (fake) device."""


class OnDevice(torch.Tensor):
    """A tensor that reports ``device == meta`` and holds its values in a CPU tensor ``inner``."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype,
                                                device=FAKE, requires_grad=inner.requires_grad)
        r.inner = inner
        return r

    def __repr__(self):
        return f"OnDevice({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        cpu = []

        def unwrap(t):
            if isinstance(t, OnDevice):
                return t.inner
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                cpu.append(t)
            return t

        a, k = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        if func is aten._to_copy.default and k.get("device") is not None and torch.device(k["device"]).type == "cpu":
            return func(*a, **k)                       # .cpu(): the one way back
        if cpu and func not in _COPIES and not (
                func in _INDEXING and all(not t.is_floating_point() for t in cpu)):
            shapes = [tuple(t.shape) for t in cpu]
            raise DeviceMismatch(f"{func}: CPU tensor(s) of shape {shapes} used with tensors on the device "
                                 "(a missing .to(device))")
        if k.get("device") is not None:
            k["device"] = torch.device("cpu")
        try:
            out = func(*a, **k)
        except RuntimeError as err:   # name the op: the usual cause is a C++ composite's meta scalar
            metas = [tuple(t.shape) for t in tree_flatten((a, k))[0] if isinstance(t, torch.Tensor) and t.is_meta]
            raise RuntimeError(f"{func} on the fake device (meta operands {metas}): {err}") from None
        if func is aten._local_scalar_dense.default:    # .item()
            return out
        return tree_map(lambda t: OnDevice(t) if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice) else t, out)


# where(cond, scalar, ...) is a C++ composite that turns its Python numbers into tensors on cond's
# device, here meta ones without values; on the fake device they become CPU scalars (as CUDA accepts).
_LIB = torch.library.Library("aten", "IMPL")


def _where_scalars(cond, self, other):
    as_t = lambda v: v if isinstance(v, torch.Tensor) else torch.tensor(v)  # noqa: E731
    return torch.where(cond, as_t(self), as_t(other))


for _overload in ("Scalar", "ScalarSelf", "ScalarOther"):
    _LIB.impl(f"where.{_overload}", _where_scalars, "AutogradMeta")


def _is_fake(dev) -> bool:
    if isinstance(dev, torch.Tensor):
        return isinstance(dev, OnDevice)
    return dev is not None and not isinstance(dev, torch.dtype) and torch.device(dev).type == "meta"


def _cpu_index(i):
    return torch.as_tensor(i) if isinstance(i, (np.ndarray, list)) else i


class FakeDevice(TorchFunctionMode):
    """Route ``meta`` placements to :class:`OnDevice` and count CPU matrix products (``cpu_matmuls``)."""

    def __init__(self, strict: bool = False):
        super().__init__()
        self.cpu_matmuls, self.device_matmuls, self.strict, self._cpu_ok = 0, 0, strict, 0

    @contextlib.contextmanager
    def cpu_ok(self):
        """A region whose CPU matrix products are deliberate (draws kept on the CPU so that the
        numbers are the same on every device); they are not counted."""
        self._cpu_ok += 1
        try:
            yield
        finally:
            self._cpu_ok -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch._C._nn._parse_to:          # Module.to(device=<fake>, dtype=...): parse as given
            return func(*args, **(kwargs or {}))
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and isinstance(args[0], OnDevice):
            # a NumPy or list index becomes an index tensor on the indexed tensor's device, which on the
            # fake device holds no values (CUDA copies it): give it as a CPU integer tensor (allowed)
            key = tuple(map(_cpu_index, args[1])) if isinstance(args[1], tuple) else _cpu_index(args[1])
            args = (args[0], key, *args[2:])
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if func in _HEAVY:
            flat = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
            if any(isinstance(t, OnDevice) for t in flat):
                self.device_matmuls += 1
            elif not self._cpu_ok and any(t.dim() >= 2 and t.is_floating_point() for t in flat):
                self.cpu_matmuls += 1
                if self.strict:
                    raise DeviceMismatch(f"{name}: a matrix product on CPU tensors while the device is "
                                         f"{kexue.current_device()!r} (a model or batch never moved)")
        if name == "to" and args and isinstance(args[0], torch.Tensor) and not isinstance(args[0], OnDevice):
            target, rest = kwargs.get("device"), []
            if "device" in kwargs:
                kwargs["device"] = "cpu"
            for x in args[1:]:
                if isinstance(x, (str, torch.device)):   # .to(device, ...): computed on the CPU inside
                    target, x = x, "cpu"
                elif isinstance(x, torch.Tensor):        # .to(other): its device and dtype
                    target, x = x, x.dtype
                rest.append(x)
            out = func(args[0], *rest, **kwargs)
            return OnDevice(out.detach().requires_grad_(out.requires_grad)) if _is_fake(target) else out
        if name in ("numpy", "__array__") and args and isinstance(args[0], OnDevice):
            raise TypeError("can't convert a tensor on the device to numpy: call .cpu() first (as on CUDA)")
        if name == "tolist" and args and isinstance(args[0], OnDevice):
            return args[0].inner.tolist()
        if func in (torch.where, torch.Tensor.where) and any(isinstance(a, OnDevice) for a in args):
            # a Python number would become a meta scalar in C++ (no values): pass it as a CPU scalar
            args = tuple(torch.tensor(a) if isinstance(a, (int, float)) and not isinstance(a, bool) else a
                         for a in args)
        if func is torch.nn.functional.cosine_similarity and any(isinstance(a, OnDevice) for a in args):
            a, b = args[:2]                            # its C++ composite makes meta scalars too
            dim = kwargs.get("dim", args[2] if len(args) > 2 else 1)
            return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim)).clamp_min(1e-8)
        if _is_fake(kwargs.get("device")):
            kwargs["device"] = "cpu"
            out = func(*args, **kwargs)
            return tree_map(lambda t: OnDevice(t) if isinstance(t, torch.Tensor) else t, out)
        return func(*args, **kwargs)


class _GeneratorMeta(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, _TorchGenerator)


_TorchGenerator = torch.Generator


class _FakeAwareGenerator(metaclass=_GeneratorMeta):
    """``torch.Generator(device=<fake>)`` gives a CPU generator (what drives the fake device's CPU
    tensors), as ``torch.Generator(device="cuda")`` gives a CUDA one; any other device as before."""

    def __new__(cls, device="cpu"):
        return _TorchGenerator("cpu" if _is_fake(device) else device)


@contextlib.contextmanager
def fake_gpu(strict: bool = False):
    """kexue's current device is the fake one, as after ``setup()`` on a CUDA machine."""
    old = kexue._CURRENT_DEVICE
    kexue._CURRENT_DEVICE = "meta"
    mode = FakeDevice(strict)
    torch.Generator = _FakeAwareGenerator
    try:
        with mode:
            yield mode
    finally:
        torch.Generator = _TorchGenerator
        kexue._CURRENT_DEVICE = old


def on_device(module) -> bool:
    return all(isinstance(p, OnDevice) for p in module.parameters())


@pytest.fixture
def gpu():
    """Run the test body on the fake device; afterwards no matrix product may have run on the CPU."""
    with fake_gpu(strict=True) as mode:
        yield mode
    assert mode.cpu_matmuls == 0, f"{mode.cpu_matmuls} matrix products ran on the CPU"
    assert mode.device_matmuls > 0, "nothing ran on the device"


pytestmark = pytest.mark.usefixtures("one_thread")


# -- the guard itself ---------------------------------------------------------------------------------
def test_guard_catches_a_batch_left_on_the_cpu():
    with fake_gpu() as mode:
        lin = torch.nn.Linear(3, 2).to(kexue.resolve_device())
        assert on_device(lin) and lin.weight.device.type == "meta"
        x = torch.randn(4, 3).to(kexue.resolve_device())
        y = lin(x)
        y.sum().backward()                              # autograd and optimizers work on it
        torch.optim.AdamW(lin.parameters(), lr=0.1).step()
        assert isinstance(lin.weight.grad, OnDevice) and y.device.type == "meta"
        assert np.isfinite(y.sum().item()) and y.detach().cpu().numpy().shape == (4, 2)
        with pytest.raises(DeviceMismatch, match="missing .to"):
            lin(torch.randn(4, 3))                      # the batch was not moved
        with pytest.raises(TypeError, match="numpy"):
            y.detach().numpy()                          # no .cpu() first
        z = torch.zeros(2, 3, device=kexue.resolve_device()) + 1
        assert isinstance(z, OnDevice) and z.sum().item() == 6.0
        assert mode.device_matmuls == 2 and mode.cpu_matmuls == 0
    with fake_gpu() as mode:
        torch.nn.Linear(3, 2)(torch.randn(4, 3))        # a model never moved: all on the CPU
        assert mode.cpu_matmuls == 1 and mode.device_matmuls == 0


def test_current_device_follows_setup(monkeypatch, capsys):
    monkeypatch.setattr(kexue, "_CURRENT_DEVICE", None)
    assert kexue.current_device() == "cpu" and kexue.resolve_device() == torch.device("cpu")
    monkeypatch.delenv("KEXUE_DEVICE", raising=False)
    assert kexue.setup(0, "smoke") == "cpu" == kexue.current_device()
    assert kexue.resolve_device("meta") == FAKE                 # an explicit device wins
    monkeypatch.setattr(kexue, "_CURRENT_DEVICE", "cuda")       # as after setup() on a CUDA machine
    assert kexue.resolve_device() == torch.device("cuda") and kexue.current_device() == "cuda"


# -- chapter paths, on the fake device ----------------------------------------------------------------
def test_mlm_runs_on_the_current_device(gpu):        # bert-init-std, xavier-averaging
    from kexue import init, mlm
    corpus = mlm.markov_corpus(vocab=7, order=2, n_tokens=4000, seed=3, successors=3, chain_length=256,
                               eval_tokens=256)
    evals = mlm.fixed_eval_batches(corpus, 2, 4, 16, seed=1)
    kw = dict(n_layers=1, d=16, heads=2, ffn=32, seq_len=16, steps=3, batch=4, lr=1e-3, warmup=1,
              eval_batches=evals, eval_every=1)
    out = mlm.run_mlm(corpus, **kw)
    assert np.isfinite(out["gamma_ratio"])
    mlm.run_mlm_many(corpus, [dict(kw, seed=1)], workers=1)
    init.run_mlm_ffn_rule(corpus, mode="fan_in", **kw)


def test_gans_and_feature_classifier(gpu):          # wgan-critique
    from kexue import gan
    X = np.random.default_rng(0).random((64, 16)).astype(np.float32)
    for kind in ("wgan_gp", "ctransform", "sn_gan"):
        r = gan.train_gan(kind, X, steps=2, batch_size=8, z_dim=4, hidden=8, n_critic=1, eval_every=1,
                          eval_batch=16, seed=0)
        assert on_device(r["G"]) and np.isfinite(r["log"]["exact_w1"]).all()
    s = gan.sample(r["G"], 5, 4, seed=1)
    assert s.shape == (5, 16)
    outs = gan.train_gans([dict(kind="wgan_gp", seed=1)], X, steps=1, batch_size=8, z_dim=4, hidden=8,
                          n_critic=1, eval_every=1, eval_batch=8)
    assert on_device(outs[0]["G"])
    clf = gan.train_feature_classifier(X, np.arange(64) % 3, epochs=1, feat_dim=8, batch_size=16)
    assert on_device(clf) and 0 <= gan.classifier_accuracy(clf, X, np.arange(64) % 3) <= 1
    assert clf.features(X).shape == (64, 8)


def test_rnn_paths(gpu, monkeypatch):              # rnn-gradients
    from kexue import rnn as R
    draws = R._simple_rnn_draws

    def cpu_draws(*a, **kw):                         # u = W x is drawn on the CPU on purpose
        with gpu.cpu_ok():
            return draws(*a, **kw)
    monkeypatch.setattr(R, "_simple_rnn_draws", cpu_draws)
    assert np.isfinite(R.gradient_norms_through_time("tanh", 1.5, hidden=8, T=6, draws=2, seed=1)).all()
    R.weight_gradient_contributions("tanh", 1.2, hidden=8, T=6, draws=2, seed=4)
    # jacobian_table and long_range_norms (torch.func.vmap/jacrev) are left out: functorch does not see through the fake device
    out = R.train_adding("lstm", 4, members=2, hidden=8, steps=3, batch=8, lr=1e-2, eval_every=1,
                         eval_batch=16, seed=0)
    assert np.isfinite(out["eval_mse"]).all()
    assert np.isfinite(R.mean_forget_gate(out["params"], 4, n=8)).all()


def test_propagation_and_train(gpu):                # xavier-averaging
    from kexue import propagation as P
    from kexue import train as T
    P.monte_carlo_gains(lambda g: P.make_linear(8, 8, "fan_in", generator=g), 8, batch=16, repeats=2, seed=3)
    P.profile_over_draws([8, 8, 8], "tanh", "arith", batch=16, repeats=2, seed=1)
    data = {k: v for k, v in P.spirals_split(60, 30, 30, seed=0).items()}      # on the CPU, as returned
    grid = P.rule_lr_grid([2, 8, 8, 2], "tanh", ["arith"], data, lrs=[1e-2], seeds=[0], steps=3,
                          batch_size=16, eval_every=1)
    assert 0 <= grid["arith"][0]["test_acc"] <= 1
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    model.to(kexue.resolve_device())
    r = T.train_classifier(model, data, lr=0.05, epochs=1, batch_size=16)
    assert 0 <= r.test_acc <= 1


def test_kernels_follow_the_data():                 # sgd-kernel-machine
    """kexue.kernels computes per-sample gradients with torch.func (vmap, grad), which the fake
    device does not see through: here the guard checks placement only (the outputs on the device)."""
    from kexue import kernels as Kn
    ctx = fake_gpu()
    ctx.__enter__()
    dev = kexue.resolve_device()
    x, y = (t.to(dev) for t in Kn.make_sine_regression(8, 0.1, seed=0))
    xp = torch.linspace(-1.2, 1.2, 5, dtype=torch.float64, device=dev)[:, None]
    model = Kn.NTKMLP([1, 6, 6, 1], generator=torch.Generator().manual_seed(0)).to(dev)
    out = Kn.train_with_path_kernel(model, x, y, xp, lr=0.01, steps=3, batch_size=4)
    try:
        assert out["path_K"].device.type == "meta"
        Kn.width_drift([4], x, y, xp, seeds=[0], steps=2, lr=0.01)
    finally:
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="module")
def micro_bert(char_tokenizer):
    from kexue.models import bert_zh
    texts = ["这本书很好看", "质量太差了", "物流很快", "不喜欢", "还行吧", "非常满意"]
    tok = char_tokenizer("".join(texts) + "很不满意好差这是一则新闻。感觉")
    cfg = bert_zh.config(len(tok), num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)
    # eager attention: SDPA's C++ composite makes its mask scalars from the input's options, which the
    # fake device cannot fill (a limit of the guard, not of the library: the model code is the same)
    cfg._attn_implementation = "eager"
    return cfg, tok, texts


def test_bert_paths_follow_the_model(gpu, micro_bert):   # nsp-zero-shot, p-tuning, encoders, bert-zh
    from kexue import ptuning, sentemb, zeroshot
    from kexue.models import bert_zh
    cfg, tok, texts = micro_bert
    model = bert_zh.build_model(cfg, 0).to(kexue.resolve_device()).eval()
    assert on_device(bert_zh.random_init_like(model, 1))
    zeroshot.nsp_label_scores(model, tok, texts, ["好", "差"], batch_size=4)
    zeroshot.pet_label_scores(model, tok, texts, ["好", "差"], batch_size=4)
    X = sentemb.encode(model, tok, texts, batch_size=4)
    assert X.shape == (6, 16)
    # cosent_fit's forward (its backward's C++ formulas make meta scalars the fake device cannot fill)
    loss = sentemb._cosent_batch_loss(model, tok, texts[:3], texts[3:], torch.tensor([0.0, 1.0, 2.0]), [0, 1, 2],
                                      pooling="mean", max_length=32, scale=20.0)
    assert loss.device.type == "meta" and np.isfinite(loss.item())
    assert np.isfinite(sentemb.pair_spearman(model, tok, texts[:3], texts[3:], [0.0, 1.0, 2.0]))
    data = list(zip(texts, [1, 0, 1, 0, 1, 1]))
    for kw in (dict(head="cls", lr=1e-3), dict(n_prompt=4, template=ptuning.prompt_template(2, 2), lstm=True)):
        r = ptuning.few_shot_run(model, tok, data, data, data, steps=2, batch_size=3, eval_every=1,
                                 max_length=32, **kw)
        assert 0 <= r["test_acc"] <= 1


def test_loaders_default_to_the_current_device(gpu, micro_bert, tmp_path):
    from kexue.models import bert_zh, encoders, gemma
    cfg, tok, texts = micro_bert
    folder = tmp_path / "bert"
    bert_zh.build_model(cfg, 0).save_pretrained(folder)         # written outside the fake device
    eager = dict(verify=False, with_tokenizer=False, attn_implementation="eager")
    assert on_device(bert_zh.load(folder, **eager))
    assert not on_device(bert_zh.load(folder, device="cpu", **eager))
    tok.bos_token = "[CLS]"
    lm = gemma.tiny_causal_lm(len(tok), hidden=16, layers=2, seed=0)
    assert on_device(lm)
    lm.config._attn_implementation = "eager"                    # as for BERT above
    enc = encoders.GemmaEncoder(lm, tok, layer=1, cache=False)
    assert enc.encode(texts, batch_size=4).shape == (6, 16)


def test_finetune_bench_follows_the_model(gpu, micro_bert):
    from kexue import finetune_bench as fb
    from kexue.models import bert_zh
    cfg, tok, texts = micro_bert
    ids = {s: fb.encode_texts(tok, texts, 16) for s in ("train", "dev", "test")}
    labels = {s: [1, 0, 1, 0, 1, 1] for s in ids}
    fcfg = dict(fb.DEFAULT_CONFIG, batch_size=4, eval_every=1, patience=2)
    clf, info = fb.finetune_classifier(bert_zh.build_model(cfg, 0).to(kexue.resolve_device()), ids, labels, 2,
                                       lr=1e-3, seed=0, steps=2, cfg=fcfg)
    assert on_device(clf)


def test_pretrain_builds_on_the_current_device(gpu, micro_bert):
    from kexue import pretrain
    from kexue.bert import objective
    cfg, tok, texts = micro_bert
    pcfg = pretrain.PretrainConfig(model=dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                              intermediate_size=32, max_position_embeddings=64))
    mcfg, model, opt = pretrain.build_training(tok, pcfg)
    assert on_device(model)
    batch = {k: torch.as_tensor(v) for k, v in {
        "input_ids": [[2, 5, 6, 3]], "token_type_ids": [[0, 0, 0, 0]], "attention_mask": [[1, 1, 1, 1]],
        "labels": [[-100, 6, -100, -100]], "next_sentence_label": [0]}.items()}
    r = objective.pretraining_loss(model, batch)
    r["loss"].backward()
    opt.step()


def _transformer_follows():
    from kexue import transformer
    return "resolve_device" in vars(transformer)


@pytest.mark.skipif(not _transformer_follows(), reason="kexue.transformer does not follow the current device "
                    "yet (the patch scratch/s12/helper-D-transformer.patch)")
def test_transformer_probes(gpu):                    # bert-init-std
    from kexue import transformer as Tr
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    kw = dict(norm="post", std=0.02, trunc=True, n_layers=1, d=16, heads=2, ffn=32, vocab=50)
    out = Tr.probe_init(ids, generator=torch.Generator().manual_seed(1), **kw)
    assert np.isfinite(out["loss"])
    assert np.isfinite(Tr.init_grad_norms(ids, seeds=[0, 1], **kw)).all()


def test_contrastive_runs_on_the_data_device(gpu, monkeypatch):   # flatnce
    # The forward paths on the device: the loss and its float32/float64 rounding report at every step,
    # the dev kNN. (The backward of the −∞-masked scores has C++ formulas that make
    # scalars the fake device cannot fill; a real CUDA device runs them.)
    from kexue import contrastive as C
    from kexue.optim.accum import image_split
    data = image_split("digits", n_train=40, n_dev=20, seed=0, device=kexue.resolve_device())

    class Reached(Exception):
        pass

    def forward_only(model, loss_on, n, *, evaluate, **kw):
        assert on_device(model)
        assert np.isfinite(float(loss_on(np.arange(8), None)))
        assert 0 <= evaluate() <= 1
        raise Reached

    monkeypatch.setattr(C, "train_two_view", forward_only)
    with pytest.raises(Reached):
        C.run_contrastive(data, loss="flatnce", batch_size=8, steps=2, tau=0.1, lr=1e-3, eval_every=1,
                          seed=0, hidden=16, feat=8, proj=4, k=3, probe_steps=2)


def test_entropy_stream_follows_the_model(gpu, micro_bert):   # entropy-normalization
    from kexue import entropy
    from kexue.models import bert_zh
    cfg, tok, texts = micro_bert
    model = bert_zh.build_model(cfg, 0).to(kexue.resolve_device()).eval()
    s = entropy.mlm_distributions(model, tok, texts[:2], batch_size=4)
    assert s["logp"].shape[0] == len(s["true"]) > 0 and np.allclose(np.exp(s["logp"]).sum(1), 1)


def test_topk_selection_task_on_the_device(gpu, monkeypatch):   # topk-smooth
    # Forward paths on the device (teacher, scorer, sampled batches, every soft mask, the hard-top-k
    # recall); backward is skipped: autograd's where() formulas make scalars the fake device cannot
    # fill, and the one custom backward (σ-ThreTopK) uses only its saved tensor.
    from kexue import topk as T
    monkeypatch.setattr(torch.Tensor, "backward", lambda self, *a, **kw: None)
    R = T.run_selection(["ThreTopK σ, implicit ∇λ", "ThreTopK exp"], [1e-2], [0], n_items=6, k=2, d=3,
                        steps=2, n_eval=4, batch=4, eval_every=1)
    assert all(0 <= v <= 1 for m in R.values() for v in m["test"])
