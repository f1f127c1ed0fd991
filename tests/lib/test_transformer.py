"""Tests of kexue.transformer: parity with transformers' BERT, the init, the probes."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kexue.init import truncated_normal_std
from kexue.transformer import (BertMLM, EncoderLayer, TransformerEncoder, identity_path_error, init_grad_norms, probe_init,
                               init_bert_, layer_grad_norms, random_target_mlm_loss,
                               residual_profile, SelfAttention, standardize)

transformers = pytest.importorskip("transformers")
from transformers import BertConfig  # noqa: E402
from transformers.models.bert.modeling_bert import BertLayer, BertLMPredictionHead  # noqa: E402


def _config(d=16, heads=4, ffn=24, vocab=11):
    return BertConfig(vocab_size=vocab, hidden_size=d, num_attention_heads=heads,
                      intermediate_size=ffn, hidden_act="gelu", hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12,
                      attn_implementation="eager")


def _copy(dst, src):
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


def _load_from_hf(layer: EncoderLayer, hf: BertLayer):
    a = hf.attention
    for mine, theirs in ((layer.attn.q, a.self.query), (layer.attn.k, a.self.key),
                         (layer.attn.v, a.self.value), (layer.attn.o, a.output.dense),
                         (layer.ln1, a.output.LayerNorm), (layer.ffn.fc1, hf.intermediate.dense),
                         (layer.ffn.fc2, hf.output.dense), (layer.ln2, hf.output.LayerNorm)):
        _copy(mine, theirs)


def _randomise(module, gen):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3 + (p.ndim == 1) * 0.1)


def test_post_ln_layer_matches_transformers_bert_layer_float64():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    hf = BertLayer(_config()).double().eval()
    _randomise(hf, gen)  # non-trivial LN gains/biases and biases too
    mine = EncoderLayer(16, 4, 24, norm="post").double()
    _load_from_hf(mine, hf)
    x = torch.randn(3, 7, 16, generator=gen, dtype=torch.float64)
    ref = hf(x)
    ref = ref[0] if isinstance(ref, tuple) else ref
    torch.testing.assert_close(mine(x), ref, rtol=1e-12, atol=1e-12)


def test_mlm_head_matches_transformers_prediction_head_float64():
    gen = torch.Generator().manual_seed(2)
    cfg = _config()
    hf = BertLMPredictionHead(cfg).double().eval()
    _randomise(hf, gen)
    model = BertMLM(11, 1, 16, 4, 24, head_transform=True).double()
    with torch.no_grad():
        model.encoder.tok_emb.weight.copy_(hf.decoder.weight)  # tied decoder
        hf.decoder.bias.copy_(hf.bias)
        model.head.bias.copy_(hf.bias)
    _copy(model.head.dense, hf.transform.dense)
    _copy(model.head.ln, hf.transform.LayerNorm)
    h = torch.randn(5, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(model.head(h), hf(h), rtol=1e-12, atol=1e-12)


def test_pre_ln_layer_is_x_plus_branch_of_normalised_x():
    torch.manual_seed(3)
    layer = EncoderLayer(8, 2, 12, norm="pre").double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    h = x + layer.attn(layer.ln1(x))
    ref = h + layer.ffn(layer.ln2(h))
    torch.testing.assert_close(layer(x), ref)
    with pytest.raises(ValueError):
        EncoderLayer(8, 2, 12, norm="mid")


def test_attention_matches_a_per_head_loop():
    torch.manual_seed(4)
    layer = EncoderLayer(8, 2, 12).double()
    att = layer.attn
    x = torch.randn(1, 4, 8, dtype=torch.float64)
    heads = []
    for h in range(2):
        sl = slice(4 * h, 4 * h + 4)
        q, k, v = att.q(x)[0, :, sl], att.k(x)[0, :, sl], att.v(x)[0, :, sl]
        w = torch.softmax(q @ k.T / 2.0, dim=-1)
        heads.append(w @ v)
    torch.testing.assert_close(att(x)[0], att.o(torch.cat(heads, -1)))


def test_init_bert_truncated_std_bounds_and_zero_biases():
    model = BertMLM(3000, 2, 64, 4, 256, max_len=16)
    init_bert_(model, std=0.02, trunc=True, generator=torch.Generator().manual_seed(0))
    w = torch.cat([model.encoder.tok_emb.weight.flatten(), model.encoder.layers[0].ffn.fc1.weight.flatten()])
    assert w.abs().max() <= 0.04 + 1e-7  # truncated at ±2σ, not at torch's default ±2
    assert abs(w.std().item() - 0.02 * truncated_normal_std(2.0)) < 4e-4  # 0.0176, not 0.02
    assert abs(truncated_normal_std(2.0) - 1 / 1.1368472) < 1e-6
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
    assert all(torch.all(ln.weight == 1) for ln in model.encoder.encoder_layer_norms())
    assert model.head.embedding.weight is model.encoder.tok_emb.weight  # tied decoder


def test_init_bert_plain_normal_is_not_truncated():
    model = BertMLM(3000, 1, 64, 4, 256, max_len=16)
    init_bert_(model, std=0.02, trunc=False, generator=torch.Generator().manual_seed(0))
    w = model.encoder.tok_emb.weight
    assert w.abs().max() > 0.06
    assert abs(w.std().item() - 0.02) < 4e-4


def test_mlm_loss_equals_full_logit_cross_entropy():
    torch.manual_seed(5)
    model = BertMLM(13, 2, 16, 2, 32, max_len=8, head_transform=False).double()
    init_bert_(model, 0.2)
    ids = torch.randint(0, 13, (3, 8))
    labels = torch.full_like(ids, -100)
    labels[:, ::3] = torch.randint(0, 13, labels[:, ::3].shape)
    ref = F.cross_entropy(model(ids).reshape(-1, 13), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(model.mlm_loss(ids, labels), ref)


def test_standardize_is_layer_norm_without_affine():
    x = torch.randn(4, 6, 10, dtype=torch.float64)
    torch.testing.assert_close(standardize(x), F.layer_norm(x, (10,), eps=0.0))


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_residual_profile_without_branches_is_the_identity(norm):
    enc = TransformerEncoder(50, 3, 16, 2, 32, max_len=8, norm=norm).double()
    init_bert_(enc, 0.05)
    with torch.no_grad():  # zero output projections: every branch F_l is exactly 0
        for layer in enc.layers:
            layer.attn.o.weight.zero_()
            layer.ffn.fc2.weight.zero_()
    prof = residual_profile(enc, torch.randint(0, 50, (4, 8)))
    assert len(prof["s"]) == 6
    for key in ("s", "rho_pred", "rho_meas", "branch_weight"):
        assert prof[key] == pytest.approx([1.0] * 6, abs=1e-9), key
    assert prof["branch_var"] == pytest.approx([0.0] * 6, abs=1e-12)
    assert 1 / math.sqrt(4 * 8 * 16) < prof["floor"] < 3 / math.sqrt(4 * 8 * 16)
    with pytest.raises(ValueError):
        residual_profile(enc, torch.randint(0, 50, (1, 8)))


def test_residual_profile_matches_a_manual_computation():
    torch.manual_seed(6)
    enc = TransformerEncoder(50, 2, 16, 2, 32, max_len=8, norm="post").double()
    init_bert_(enc, 0.3, trunc=False)
    ids = torch.randint(0, 50, (3, 8))
    prof = residual_profile(enc, ids)
    x = enc.emb_ln(enc.tok_emb(ids) + enc.pos_emb(torch.arange(8)))
    x0, s = x, []
    for layer in enc.layers:
        for branch, ln in ((layer.attn, layer.ln1), (layer.ffn, layer.ln2)):
            f = branch(x)
            s.append(((x + f).std() / x.std()).item())
            x = ln(x + f)
    assert prof["s"] == pytest.approx(s, rel=1e-10)
    assert prof["rho_pred"] == pytest.approx(torch.cumprod(1 / torch.tensor(s, dtype=torch.float64), 0).tolist(), rel=1e-10)
    xc = x0 - x0.mean(0)  # batch-centred: the shared position embeddings drop out
    assert prof["rho_meas"][-1] == pytest.approx(((x * xc).sum() / (xc * xc).sum()).item(), rel=1e-8)
    assert prof["floor"] == pytest.approx(1 / xc.norm().item())
    inv = [1 / v for v in s]  # Post-LN: the branch of sublayer k is divided by every later s_j
    assert prof["branch_weight"][0] == pytest.approx(math.prod(inv[1:]))
    assert prof["branch_weight"][-1] == pytest.approx(1.0)


def test_post_ln_identity_path_decays_as_predicted_at_large_init():
    torch.manual_seed(7)
    enc = TransformerEncoder(500, 4, 256, 4, 1024, max_len=32, norm="post")
    init_bert_(enc, 1 / math.sqrt(256), trunc=False)
    prof = residual_profile(enc, torch.randint(0, 500, (16, 32)))
    err, n = identity_path_error(prof)
    assert n >= 3 and err < 0.1
    assert prof["rho_pred"][-1] < 0.5  # branch variance ~ input variance: strong decay


def test_identity_path_error_skips_unresolvable_sublayers():
    prof = {"rho_pred": [0.5, 0.009, 1e-4], "rho_meas": [0.55, 0.018, -3e-3], "floor": 1e-3}
    assert identity_path_error(prof) == (pytest.approx(0.1), 1)
    assert identity_path_error(prof, min_snr=5) == (pytest.approx(1.0), 2)
    assert math.isnan(identity_path_error(prof, min_snr=1e4)[0])


def test_layer_grad_norms_match_manual_and_require_backward():
    torch.manual_seed(8)
    model = BertMLM(40, 2, 16, 2, 32, max_len=8)
    init_bert_(model, 0.1)
    ids = torch.randint(0, 40, (4, 8))
    with pytest.raises(RuntimeError):
        layer_grad_norms(model.encoder)
    loss = random_target_mlm_loss(model, ids, mask_prob=0.5, generator=torch.Generator().manual_seed(0))
    loss.backward()
    norms = layer_grad_norms(model.encoder)
    layer = model.encoder.layers[1]
    mats = [layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.o, layer.ffn.fc1, layer.ffn.fc2]
    ref = math.sqrt(sum((m.weight.grad ** 2).sum().item() for m in mats))
    assert len(norms) == 2 and norms[1] == pytest.approx(ref, rel=1e-6)


def test_layer_norm_gammas_names_and_values():
    model = BertMLM(20, 2, 8, 2, 16, max_len=4, head_transform=True)
    init_bert_(model)
    with torch.no_grad():
        model.encoder.layers[1].ln2.weight.fill_(3.0)
    g = model.layer_norm_gammas()
    assert list(g) == ["emb", "L1.ln1", "L1.ln2", "L2.ln1", "L2.ln2", "head"]
    assert g["L2.ln2"] == 3.0 and g["head"] == 1.0
    assert "final" in BertMLM(20, 1, 8, 2, 16, max_len=4, norm="pre").layer_norm_gammas()


def test_probe_init_returns_profile_and_gradients():
    ids = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(0))
    out = probe_init(ids, norm="pre", std=0.02, trunc=True, n_layers=3, d=16, heads=2, ffn=32,
                     vocab=30, generator=torch.Generator().manual_seed(1))
    assert len(out["grad_norms"]) == 3 and len(out["rho_meas"]) == 6
    assert all(g > 0 for g in out["grad_norms"])
    assert out["loss"] == pytest.approx(math.log(30), rel=0.05)  # near-uniform logits at 0.02


def test_probe_init_device_argument_keeps_the_cpu_numbers():
    """device="cpu" gives the default path's profile and gradients (chapter bert-init-std)."""
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    kw = dict(norm="post", std=0.02, trunc=True, n_layers=2, d=16, heads=2, ffn=32, vocab=50)
    a = probe_init(ids, generator=torch.Generator().manual_seed(1), **kw)
    b = probe_init(ids, generator=torch.Generator().manual_seed(1), device="cpu", **kw)
    assert a["rho_meas"] == b["rho_meas"] and a["grad_norms"] == b["grad_norms"] and a["loss"] == b["loss"]


def test_init_grad_norms_repeat_a_manual_draw_per_seed():
    """Each row is the layer_grad_norms of a fresh model initialised and probed from its own seed."""
    ids = torch.randint(0, 30, (2, 8), generator=torch.Generator().manual_seed(0))
    kw = dict(n_layers=3, d=16, heads=2, ffn=32, vocab=30)
    out = init_grad_norms(ids, norm="post", std=0.05, trunc=False, seeds=[4, 9], **kw)
    assert out.shape == (2, 3)
    for row, seed in zip(out, (4, 9)):
        gen = torch.Generator().manual_seed(seed)
        model = BertMLM(30, 3, 16, 2, 32, max_len=8, norm="post")
        init_bert_(model, 0.05, False, generator=gen)
        random_target_mlm_loss(model, ids, generator=gen).backward()
        np.testing.assert_allclose(row, layer_grad_norms(model.encoder), rtol=1e-12)
    assert not np.allclose(out[0], out[1])  # independent draws


def test_attention_builder_is_compatible_and_replaces_the_sublayer():
    """``attn=None`` keeps the softmax SelfAttention (same draws, same output as passing the softmax
    builder explicitly); a custom builder is called as attn(d, heads) in every layer."""
    torch.manual_seed(0)
    a = BertMLM(30, 2, 16, 2, 32, max_len=8)
    torch.manual_seed(0)
    b = BertMLM(30, 2, 16, 2, 32, max_len=8, attn=lambda d, h: SelfAttention(d, h))
    ids = torch.randint(0, 30, (3, 8))
    assert torch.equal(a(ids), b(ids))
    calls = []

    class Half(torch.nn.Module):
        def __init__(self, d, h):
            super().__init__()
            calls.append((d, h))

        def forward(self, x):
            return 0.5 * x

    enc = TransformerEncoder(30, 3, 16, 4, 32, max_len=8, attn=Half)
    assert calls == [(16, 4)] * 3 and all(isinstance(layer.attn, Half) for layer in enc.layers)
    assert enc(ids).shape == (3, 8, 16)
