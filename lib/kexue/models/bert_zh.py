"""The book's own small Chinese BERT: a character-level vocabulary, the model configuration, saving
with a checksum, and loading through ``from_pretrained``.

No Chinese BERT with its MLM and NSP heads is available offline (README, "Data and the book's own Chinese BERT"), so the book pre-trains
one (``python -m kexue.pretrain``, :mod:`kexue.pretrain`) and the chapters load it with :func:`load`.
Used by the chapters on NSP zero-shot (https://kexue.fm/archives/8671), PET, BERT-whitening
(https://kexue.fm/archives/8069) and CoSENT (https://kexue.fm/archives/8847).

Tokenisation is BERT's own (``transformers.BertTokenizerFast``): every CJK character is its own
word; other text (Latin letters, digits) is split into words on whitespace and punctuation and then
into single characters by WordPiece, which is why the vocabulary holds ``##c`` for every character
``c`` seen inside such a word. Note for transformers 5: the tokenizer takes the vocabulary file as
``vocab=path`` (the v4 keyword ``vocab_file=`` is silently ignored there); :func:`tokenizer` handles it.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ..data.sources import sha256_file

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEFAULT_DIR = Path(__file__).resolve().parent / "bert-zh"
PRETRAIN_COMMAND = ("python -m kexue.pretrain --out lib/kexue/models/bert-zh --minutes 90   "
                    "(about 90 minutes on a 2-core CPU; see `python -m kexue.pretrain --help`)")
WEIGHT_FILES = ("model.safetensors", "config.json", "vocab.txt")
REPO_FOLDER = "lib/kexue/models/bert-zh"
"""Where the shipped weights live in a checkout of the book's repository (committed there, and
package data of the ``kexue`` wheel built from it: ``pip install .`` installs them beside this module)."""
DO_LOWER_CASE = True
MAX_LENGTH = 128

# The book's architecture (research/pilot-bert.md): 4 layers x 256 hidden, 4 heads, FFN 1024.
SMALL = dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
             max_position_embeddings=MAX_LENGTH)


class MissingWeightsError(FileNotFoundError):
    """The book's BERT weights are not where they were looked for; the message says where they are."""


def missing_weights_message(folder, default: bool) -> str:
    """Where the weights are looked for, where they ship, and what to do, in that order; pre-training
    from scratch comes last, as the way to re-create them, not to get them."""
    where = (f"the book's Chinese BERT weights are not in {folder} (no model.safetensors there)")
    ships = (f"They ship with the book: committed in its repository at {REPO_FOLDER}/ and installed with "
             "the library by `pip install .` or `pip install -e .` from a full checkout (they are package "
             "data of the kexue wheel).")
    if default:
        todo = ("Reinstall the library from a checkout (a copy without that folder, e.g. an old wheel, "
                f"lacks them), or pass the folder: bert_zh.load('<checkout>/{REPO_FOLDER}').")
    else:
        todo = (f"Pass a folder that holds model.safetensors, config.json, vocab.txt and sha256, e.g. "
                f"'<checkout>/{REPO_FOLDER}', or call bert_zh.load() with no path for the installed copy.")
    return f"{where}. {ships} {todo} Only to re-create them from scratch: {PRETRAIN_COMMAND}"


def _normalizer_and_pretokenizer():
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    return (BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                           lowercase=DO_LOWER_CASE), BertPreTokenizer())


def char_units(text: str) -> list[str]:
    """The vocabulary units of ``text`` exactly as the BERT tokenizer will look them up: the
    text is normalised (lower case, accents stripped, CJK characters isolated) and split into words;
    each word contributes its first character ``c`` and then ``##c`` for each later character."""
    norm, pre = _normalizer_and_pretokenizer()
    units = []
    for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
        units.append(word[0])
        units.extend("##" + c for c in word[1:])
    return units


def build_vocab(documents, min_count: int = 3) -> list[str]:
    """Character vocabulary: the five special tokens, then every unit of :func:`char_units` seen at
    least ``min_count`` times in ``documents`` (lists of sentences), most frequent first (ties by
    code point, so the result is deterministic). Built from the pre-training corpus only."""
    counts: Counter = Counter()
    for doc in documents:
        counts.update(char_units("\n".join(doc)))
    kept = sorted((u for u, n in counts.items() if n >= min_count and u not in SPECIAL_TOKENS),
                  key=lambda u: (-counts[u], u))
    return list(SPECIAL_TOKENS) + kept


def write_vocab(vocab: list[str], path) -> Path:
    """Write ``vocab.txt`` (one token per line, id = line number); ``path`` is a file or a folder."""
    path = Path(path)
    if path.is_dir() or path.suffix != ".txt":
        path.mkdir(parents=True, exist_ok=True)
        path = path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return path


def tokenizer(vocab_path, max_length: int = MAX_LENGTH):
    """``transformers.BertTokenizerFast`` over a ``vocab.txt`` (file or folder holding it), with
    Chinese characters tokenised one by one and lower-casing (https://kexue.fm/archives/8671)."""
    from transformers import BertTokenizerFast

    vocab_path = Path(vocab_path)
    if vocab_path.is_dir():
        vocab_path = vocab_path / "vocab.txt"
    # transformers >= 5 reads the file from `vocab=`; v4 reads `vocab_file=`.
    import transformers
    key = "vocab" if int(transformers.__version__.split(".")[0]) >= 5 else "vocab_file"
    tok = BertTokenizerFast(**{key: str(vocab_path)}, tokenize_chinese_chars=True,
                            do_lower_case=DO_LOWER_CASE)
    tok.model_max_length = max_length
    return tok


def config(vocab_size: int, **overrides):
    """``transformers.BertConfig`` of the book's small BERT (:data:`SMALL`, post-LN, GELU, BERT's
    0.02 init), ``overrides`` replacing any field (e.g. a micro model for tests)."""
    from transformers import BertConfig

    kw = dict(SMALL, vocab_size=vocab_size, type_vocab_size=2, pad_token_id=0)
    kw.update(overrides)
    return BertConfig(**kw)


def build_model(cfg, seed: int = 0):
    """A freshly initialised ``BertForPreTraining`` (MLM + NSP heads, decoder tied to the input
    embeddings), with the initial weights a function of ``seed`` only."""
    import torch
    from transformers import BertForPreTraining

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertForPreTraining(cfg)
    return model


def random_init_like(model, seed: int = 0):
    """The control network: a fresh ``BertForPreTraining`` with ``model``'s config, initialised from
    ``seed`` (no pre-training at all), in eval mode on ``model``'s device; the "same model at random
    initialisation" of the chapters ``nsp-zero-shot`` and ``p-tuning`` (https://kexue.fm/archives/8671)."""
    return build_model(model.config, seed).to(next(model.parameters()).device).eval()


def matmul_params(cfg) -> int:
    """Weights that take part in a matmul per token in the encoder: per layer 4·d² (Q, K, V, O) +
    2·d·d_ff (FFN), plus the pooler d²; embeddings are look-ups and excluded."""
    d, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return n * (4 * d * d + 2 * d * f)


def train_flops_per_token(cfg, seq_len: int, mask_fraction: float = 0.15) -> float:
    """Training FLOPs per token (forward + backward = 3 × forward, 2 FLOPs per multiply-add):
    6·N_matmul + 6·n_layers·seq·d (attention scores and weighted sum), plus the MLM head
    (d² transform + d·V decoder) on the ``mask_fraction`` of positions that carry a label."""
    d, n, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    encoder = 6 * matmul_params(cfg) + 6 * n * seq_len * d
    head = 6 * (d * d + d * v) * mask_fraction
    return float(encoder + head)


def _quiet_transformers() -> None:
    """No progress bars from transformers' save/load (they would fill notebook outputs)."""
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()


def write_checksums(folder) -> Path:
    """Write ``sha256`` (``<hex>  <file>`` lines, the ``sha256sum`` format) for the shipped files."""
    folder = Path(folder)
    lines = [f"{sha256_file(folder / name)}  {name}" for name in WEIGHT_FILES if (folder / name).exists()]
    out = folder / "sha256"
    out.write_text("\n".join(lines) + "\n")
    return out


def verify_checksums(folder) -> None:
    """Raise ``ValueError`` when a file listed in ``folder/sha256`` differs from its checksum."""
    folder = Path(folder)
    for line in (folder / "sha256").read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        if sha256_file(folder / name) != digest:
            raise ValueError(f"checksum mismatch for {name} in the BERT folder {folder}: the weights are "
                             f"corrupt or were changed; restore them from the repository (`git checkout -- "
                             f"{REPO_FOLDER}` in a checkout, or reinstall the library), or re-create them "
                             f"with {PRETRAIN_COMMAND}")


def save(model, vocab_path, folder, *, train_config: dict | None = None) -> Path:
    """Save ``model`` with ``save_pretrained`` (safetensors), copy ``vocab.txt``, save the tokenizer
    config and write the ``sha256`` file. Dropout fields of the saved config are set back to BERT's
    0.1 (pre-training may run without dropout) so that fine-tuning starts from the usual setting."""
    _quiet_transformers()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    saved = {k: getattr(cfg, k) for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.1
    try:
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        for k, v in saved.items():
            setattr(cfg, k, v)
    vocab_path = Path(vocab_path)
    if vocab_path.is_dir():
        vocab_path = vocab_path / "vocab.txt"
    if vocab_path.resolve() != (folder / "vocab.txt").resolve():
        (folder / "vocab.txt").write_bytes(vocab_path.read_bytes())
    tokenizer(folder).save_pretrained(folder)
    if train_config is not None:
        (folder / "pretrain_config.json").write_text(json.dumps(train_config, indent=1, ensure_ascii=False))
    write_checksums(folder)
    return folder


def load(path=None, *, verify: bool = True, with_tokenizer: bool = True, device=None, **kwargs):
    """Load the book's Chinese BERT as ``(BertForPreTraining, tokenizer)`` (or the model only with
    ``with_tokenizer=False``).

    ``path``: a local folder (default ``lib/kexue/models/bert-zh/``, shipped with the book), or a hub
    model id, which goes through the same ``from_pretrained`` where a network exists. A local folder's
    ``sha256`` file is verified first. Missing weights raise :class:`MissingWeightsError` naming the
    folder they ship in (:func:`missing_weights_message`). ``device`` (e.g. the one :func:`kexue.setup` returns): where the model
    is put (default: :func:`kexue.current_device`, the CPU before any ``setup``). ``kwargs`` go to ``from_pretrained`` (e.g. ``hidden_dropout_prob``)
    (https://kexue.fm/archives/8671, chapters on NSP zero-shot, PET, whitening and CoSENT)."""
    from transformers import AutoTokenizer, BertForPreTraining

    _quiet_transformers()
    folder = Path(path) if path is not None else DEFAULT_DIR
    local = path is None or folder.exists() or not _looks_like_hub_id(str(path))
    if local:
        if not (folder / "model.safetensors").exists():
            raise MissingWeightsError(missing_weights_message(folder, default=path is None))
        if verify and (folder / "sha256").exists():
            verify_checksums(folder)
        elif verify:
            raise MissingWeightsError(f"no sha256 file next to the weights in {folder}; copy the whole folder "
                                      f"{REPO_FOLDER}/ of a checkout (or pass verify=False), or re-create "
                                      f"it with {PRETRAIN_COMMAND}")
        model = BertForPreTraining.from_pretrained(folder, use_safetensors=True, **kwargs)
        tok = tokenizer(folder) if with_tokenizer else None
    else:  # a hub id: only where a network exists
        model = BertForPreTraining.from_pretrained(str(path), **kwargs)
        tok = AutoTokenizer.from_pretrained(str(path)) if with_tokenizer else None
    from .. import resolve_device
    model.to(resolve_device(device))
    model.eval()
    return (model, tok) if with_tokenizer else model


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return (len(parts) == 2 and all(parts) and not s.startswith((".", "~"))
            and not Path(s).exists())
