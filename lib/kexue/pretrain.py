"""Pre-train the book's small Chinese BERT (MLM + NSP) on the 2-core CPU: one resumable command.

    python -m kexue.pretrain --out lib/kexue/models/bert-zh --minutes 90
    python -m kexue.pretrain --out lib/kexue/models/bert-zh --resume                  # after an interruption
    python -m kexue.pretrain --out lib/kexue/models/bert-zh --resume --extend-tokens 20000000

Objective (BERT; "曾被嫌弃的预训练任务NSP…", https://kexue.fm/archives/8671): the sum of
- MLM: 15 % of the non-special tokens are selected; a selected token becomes [MASK] (80 %), a random
  non-special token (10 %) or stays (10 %); cross-entropy on the selected positions, computed with the
  MLM head on those positions only (``model.cls.predictions(hidden[selected])``: the same loss as the
  full head, ≈ 1.5 × faster here);
- NSP: sentence B is the genuinely following text of the same document (label 0, 50 %) or a span
  starting at a sentence of a random other document (label 1).
Sequences are 64 tokens for most steps and 128 for a final ``--long-fraction`` of each stage, so
that position embeddings 64–127 are trained. fp32, 2 threads (bf16 autocast is 30–40 × slower on
this CPU). AdamW with BERT's warm-up + linear decay per stage, gradient clipping 1.0.

Each step's batch and masks come from a NumPy generator seeded by (seed, step), so the data position
is the step counter and a resumed run continues bit for bit. Checkpoints (``<out>/checkpoint/``):
weights in safetensors, optimizer state in a tensor-only ``optimizer.pt`` (loaded with
``weights_only=True``), everything else (step, stages, RNG, budget) in ``state.json``.
The chapters load the result with :func:`kexue.models.bert_zh.load`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .mlm import IGNORE, adamw_param_groups, warmup_linear
from .models import bert_zh

# --------------------------------------------------------------------------------------- data


@dataclass
class TokenisedCorpus:
    """Documents as flat token-id arrays plus the offsets where their sentences start
    (``bounds[d]`` = [0, end of sentence 1, …, len]); built by :func:`tokenise_documents`."""

    tokens: list            # per document: np.int32 array of token ids (no special tokens)
    bounds: list            # per document: np.int64 array of sentence boundaries, first 0, last len
    boundary_doc: np.ndarray = field(default=None)   # every internal boundary: its document …
    boundary_pos: np.ndarray = field(default=None)   # … and its offset in that document

    def __post_init__(self):
        docs, pos = [], []
        for d, b in enumerate(self.bounds):
            docs.extend([d] * (len(b) - 2))
            pos.extend(b[1:-1])
        self.boundary_doc = np.asarray(docs, dtype=np.int64)
        self.boundary_pos = np.asarray(pos, dtype=np.int64)


def tokenise_documents(documents, tok) -> TokenisedCorpus:
    """Token ids of every sentence (no special tokens); empty sentences dropped; documents with
    fewer than two sentences dropped (they give no NSP positive)."""
    flat = [s for doc in documents for s in doc]
    # the Rust tokenizer directly: fast, and no "longer than model_max_length" warning
    ids = [e.ids for e in tok.backend_tokenizer.encode_batch(flat, add_special_tokens=False)] if flat else []
    tokens, bounds, i = [], [], 0
    for doc in documents:
        sents = [np.asarray(x, dtype=np.int32) for x in ids[i:i + len(doc)] if len(x)]
        i += len(doc)
        if len(sents) < 2:
            continue
        tokens.append(np.concatenate(sents))
        bounds.append(np.cumsum([0] + [len(s) for s in sents]))
    return TokenisedCorpus(tokens, bounds)


def nsp_pair(corpus: TokenisedCorpus, boundary: int, is_next: bool, seq_len: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sentence pair (A, B) around internal boundary number ``boundary``: A = the last
    ⌊(seq_len−3)/2⌋ tokens before the boundary (A ends where a sentence ends); B = the tokens right
    after it (``is_next``) or, for a negative, the tokens from a random sentence start of a random
    *other* document; B is cut so that [CLS] A [SEP] B [SEP] fits ``seq_len``."""
    d, p = corpus.boundary_doc[boundary], corpus.boundary_pos[boundary]
    room = seq_len - 3
    a = corpus.tokens[d][max(0, p - room // 2):p]
    if is_next:
        b = corpus.tokens[d][p:p + room - len(a)]
    else:
        n = len(corpus.tokens)
        o = int(rng.integers(n - 1))
        o += o >= d  # uniform over the other documents
        starts = corpus.bounds[o][:-1]
        s = starts[int(rng.integers(len(starts)))]
        b = corpus.tokens[o][s:s + room - len(a)]
    return a, b


def mask_tokens(ids: np.ndarray, special: np.ndarray, vocab_size: int, n_special: int,
                rng: np.random.Generator, prob: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """BERT's corruption over the positions where ``special`` is False: each is selected with
    probability ``prob``; a selected token becomes [MASK] (id 4) with prob. 0.8, a uniformly random
    non-special token (ids ``n_special``..V−1) with prob. 0.1, and stays with prob. 0.1. Returns
    (inputs, labels), labels = −100 where not selected (https://kexue.fm/archives/8671)."""
    sel = (rng.random(ids.shape) < prob) & ~special
    r = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[sel & (r < 0.8)] = SPECIAL_ID["[MASK]"]
    rnd = sel & (r >= 0.8) & (r < 0.9)
    inputs[rnd] = rng.integers(n_special, vocab_size, int(rnd.sum()))
    labels = np.where(sel, ids, IGNORE)
    return inputs, labels


SPECIAL_ID = {t: i for i, t in enumerate(bert_zh.SPECIAL_TOKENS)}


def make_batch(corpus: TokenisedCorpus, batch: int, seq_len: int, vocab_size: int,
               rng: np.random.Generator) -> dict:
    """One pre-training batch: ``batch`` NSP pairs (half positives in expectation) over boundaries
    drawn uniformly, packed as [CLS] A [SEP] B [SEP], padded to the longest, then masked with
    :func:`mask_tokens`. Returns torch tensors input_ids, token_type_ids, attention_mask, labels,
    next_sentence_label (0 = B follows A)."""
    bnd = rng.integers(len(corpus.boundary_doc), size=batch)
    is_next = rng.random(batch) < 0.5
    pairs = [nsp_pair(corpus, int(b), bool(n), seq_len, rng) for b, n in zip(bnd, is_next)]
    width = max(len(a) + len(b) + 3 for a, b in pairs)
    ids = np.zeros((batch, width), dtype=np.int64)
    typ = np.zeros((batch, width), dtype=np.int64)
    att = np.zeros((batch, width), dtype=np.int64)
    cls, sep = SPECIAL_ID["[CLS]"], SPECIAL_ID["[SEP]"]
    for i, (a, b) in enumerate(pairs):
        row = np.concatenate([[cls], a, [sep], b, [sep]])
        ids[i, :len(row)] = row
        typ[i, len(a) + 2:len(row)] = 1
        att[i, :len(row)] = 1
    special = ids < len(bert_zh.SPECIAL_TOKENS)
    inputs, labels = mask_tokens(ids, special, vocab_size, len(bert_zh.SPECIAL_TOKENS), rng)
    return {"input_ids": torch.from_numpy(inputs), "token_type_ids": torch.from_numpy(typ),
            "attention_mask": torch.from_numpy(att), "labels": torch.from_numpy(labels),
            "next_sentence_label": torch.from_numpy((~is_next).astype(np.int64))}


# ------------------------------------------------------------------------------------- losses


def pretraining_loss(model, batch: dict) -> dict:
    """MLM + NSP loss of ``BertForPreTraining`` with the MLM head applied to the labelled positions
    only: L = CE(cls.predictions(h[sel]), y[sel]) + CE(cls.seq_relationship(pooled), nsp).
    Equal to HF's full-head loss (tested); returns the tensors loss, mlm_loss, nsp_loss and the
    counts mlm_correct, mlm_n, nsp_correct."""
    hidden, pooled = model.bert(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                                attention_mask=batch["attention_mask"])[:2]
    labels = batch["labels"]
    sel = labels != IGNORE
    mlm_logits = model.cls.predictions(hidden[sel])
    mlm_loss = F.cross_entropy(mlm_logits, labels[sel])
    nsp_logits = model.cls.seq_relationship(pooled)
    nsp_loss = F.cross_entropy(nsp_logits, batch["next_sentence_label"])
    with torch.no_grad():
        mlm_correct = int((mlm_logits.argmax(-1) == labels[sel]).sum())
        nsp_correct = int((nsp_logits.argmax(-1) == batch["next_sentence_label"]).sum())
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
            "mlm_correct": mlm_correct, "mlm_n": int(sel.sum()), "nsp_correct": nsp_correct}


# ----------------------------------------------------------------------------------- schedule


@dataclass
class Stage:
    """A stretch of training with its own warm-up and linear decay: ``steps_short`` steps at
    ``seq_len`` (batch ``batch``), then ``steps_long`` at ``long_seq_len`` (batch scaled to keep
    tokens per step). ``start`` is the global step where it begins."""

    start: int
    steps_short: int
    steps_long: int
    lr: float
    warmup: int
    batch: int
    seq_len: int
    long_seq_len: int
    tokens: int = 0            # the token budget it was made from (batch × seq per step)
    label: str = "main"

    @property
    def steps(self) -> int:
        return self.steps_short + self.steps_long

    @property
    def end(self) -> int:
        return self.start + self.steps

    def shape(self, step: int) -> tuple[int, int]:
        """(batch, seq_len) of global ``step``."""
        if step - self.start < self.steps_short:
            return self.batch, self.seq_len
        return max(1, self.batch * self.seq_len // self.long_seq_len), self.long_seq_len

    def lr_at(self, step: int) -> float:
        return self.lr * warmup_linear(step - self.start, min(self.warmup, max(1, self.steps // 10)),
                                       self.steps)


def make_stage(start: int, tokens: int, *, lr: float, warmup: int, batch: int, seq_len: int,
               long_seq_len: int, long_fraction: float, label: str = "main") -> Stage:
    """Split a token budget (counted as batch × seq_len per step) into short- and long-sequence steps."""
    per_step = batch * seq_len
    total = max(1, round(tokens / per_step))
    n_long = int(round(total * long_fraction)) if long_seq_len > seq_len else 0
    return Stage(start, total - n_long, n_long, lr, warmup, batch, seq_len, long_seq_len, int(tokens), label)


def stage_of(stages: list[Stage], step: int) -> Stage | None:
    for s in stages:
        if s.start <= step < s.end:
            return s
    return None


# --------------------------------------------------------------------------------- evaluation


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul throughput of this machine (GFLOP/s): 2n³ / best time of ``repeats``
    n×n products with the current thread count; the denominator of the model FLOPs utilisation."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


@dataclass
class EvalSets:
    """What each checkpoint is evaluated on (each part optional): held-out pre-training documents
    (MLM and NSP accuracy), THUCNews dev headlines (NSP zero-shot, PET), STS-B valid pairs (+ train
    sentences to fit the whitening). Sizes are fixed subsamples so one evaluation stays ≤ 30 s."""

    heldout: TokenisedCorpus | None = None
    heldout_batches: int = 8
    heldout_batch: int = 64
    thucnews: tuple | None = None        # (headlines, label indices, label names)
    stsb: tuple | None = None            # (s1, s2, scores, whitening sentences)
    seed: int = 1234


@torch.no_grad()
def evaluate(model, tok, sets: EvalSets, seq_len: int = 64) -> dict:
    """Held-out MLM accuracy/loss and NSP accuracy (fixed batches drawn with ``sets.seed``),
    THUCNews NSP zero-shot accuracy (prompt first and second, raw and calibrated) and PET, and STS-B
    Spearman with mean pooling, raw and whitened."""
    from . import sentemb, zeroshot

    model.eval()
    out, t0 = {}, time.perf_counter()
    if sets.heldout is not None and len(sets.heldout.boundary_doc):
        rng = np.random.default_rng(sets.seed)
        tot = {"mlm_loss": 0.0, "mlm_correct": 0, "mlm_n": 0, "nsp_correct": 0, "nsp_n": 0}
        for _ in range(sets.heldout_batches):
            b = make_batch(sets.heldout, sets.heldout_batch, seq_len, model.config.vocab_size, rng)
            r = pretraining_loss(model, b)
            tot["mlm_loss"] += float(r["mlm_loss"]) * r["mlm_n"]
            for k in ("mlm_correct", "mlm_n", "nsp_correct"):
                tot[k] += r[k]
            tot["nsp_n"] += len(b["input_ids"])
        out.update(heldout_mlm_loss=tot["mlm_loss"] / tot["mlm_n"],
                   heldout_mlm_acc=tot["mlm_correct"] / tot["mlm_n"],
                   heldout_nsp_acc=tot["nsp_correct"] / tot["nsp_n"])
    if sets.thucnews is not None:
        texts, y, names = sets.thucnews
        for order in ("first", "second"):
            s = zeroshot.nsp_label_scores(model, tok, texts, names, order=order)
            out[f"thucnews_nsp_{order}"] = zeroshot.accuracy(s, y)
            out[f"thucnews_nsp_{order}_calibrated"] = zeroshot.accuracy(zeroshot.calibrate(s), y)
        s = zeroshot.pet_label_scores(model, tok, texts, names)
        out["thucnews_pet"] = zeroshot.accuracy(s, y)
        out["thucnews_pet_calibrated"] = zeroshot.accuracy(zeroshot.calibrate(s), y)
    if sets.stsb is not None:
        s1, s2, scores, white = sets.stsb
        r = sentemb.sts_spearman(model, tok, s1, s2, scores, whiten_sentences=white)
        out["stsb_mean"], out["stsb_mean_whitened"] = r["raw"], r["whitened"]
    out["eval_seconds"] = time.perf_counter() - t0
    model.train()
    return out


# ---------------------------------------------------------------------------------- the run


@dataclass
class PretrainConfig:
    """Every knob of a pre-training run (the CLI's defaults are the book's run)."""

    seed: int = 0
    batch: int = 64
    seq_len: int = 64
    long_seq_len: int = 128
    long_fraction: float = 0.1
    lr: float = 1e-3
    warmup: int = 500
    weight_decay: float = 0.01
    clip: float = 1.0
    dropout: float = 0.0
    threads: int = 2
    log_every: int = 50
    checkpoint_minutes: float = 10.0
    calibration_steps: int = 30                 # --minutes: steps timed before the budget is fixed
    peak_matrix: int = 2048                     # size of the matmul that measures the fp32 peak
    model: dict = field(default_factory=dict)   # overrides of bert_zh.SMALL (tests: a micro model)


def _atomic_checkpoint(ckpt: Path, model, opt, state: dict) -> None:
    from safetensors.torch import save_file

    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # the MLM decoder is tied to the word embeddings: store one copy
    sd.pop("cls.predictions.decoder.weight", None)
    save_file(sd, str(tmp / "model.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    torch.save({"torch_rng": torch.get_rng_state()}, tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        ckpt.rename(old)
    tmp.rename(ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(ckpt: Path, model, opt) -> dict:
    from safetensors.torch import load_file

    sd = load_file(str(ckpt / "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(k != "cls.predictions.decoder.weight" for k in missing):
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True)["torch_rng"])
    return json.loads((ckpt / "state.json").read_text())


def _drop_log_after(path: Path, step: int) -> None:
    """Remove the records of steps after ``step`` (an interrupted run's last minutes, redone on resume)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    keep = [l for l in lines if not l.strip() or json.loads(l).get("step", 0) <= step]
    if len(keep) != len(lines):
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def _log(path: Path, rec: dict, echo: bool = True) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    if echo:
        keys = [k for k in rec if k not in ("event",)]
        print(rec["event"], " ".join(f"{k}={rec[k]:.4g}" if isinstance(rec[k], float) else f"{k}={rec[k]}"
                                     for k in keys), flush=True)


def run(out, documents=None, *, cfg: PretrainConfig | None = None, tokens: int | None = None,
        minutes: float | None = None, resume: bool = False, extend_tokens: int | None = None,
        stage_tokens: int | None = None, eval_sets_fn=None, stop_after_steps: int | None = None, heldout_fraction: float = 0.01,
        min_count: int = 3, echo: bool = True, command: str = "") -> dict:
    """Pre-train (or resume, or extend) a ``BertForPreTraining`` into folder ``out``.

    ``documents``: lists of sentences (the pre-training corpus; a fixed ``heldout_fraction`` of the
    documents, chosen with the seed, is kept out for evaluation). Budget: ``tokens`` (deterministic)
    or ``minutes`` (the first steps are timed and the budget fixed in tokens, recorded, so that
    ``--tokens`` reproduces it). ``resume`` continues from ``out/checkpoint``; ``extend_tokens``
    appends a new stage (re-warm-up, linear decay) after the last one; ``stage_tokens`` re-budgets the
    unfinished last stage to that many tokens (its learning-rate decay is recomputed for the new
    end; the stage must still have steps left, and the change is recorded). ``eval_sets_fn(tok, heldout)``
    returns the :class:`EvalSets`. ``stop_after_steps`` simulates an interruption (tests).
    Returns the final state dict (https://kexue.fm/archives/8671)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("checkpoint/\ncheckpoint.old/\ncheckpoint.tmp/\n")
    ckpt = out / "checkpoint"
    log_path = out / "log.jsonl"
    t_start = time.perf_counter()
    torch.set_num_threads((cfg or PretrainConfig()).threads)

    if resume:
        if not (ckpt / "state.json").exists():
            raise FileNotFoundError(f"nothing to resume in {out.name}/checkpoint; start without --resume")
        state = json.loads((ckpt / "state.json").read_text())
        cfg = PretrainConfig(**state["config"])
    else:
        cfg = cfg or PretrainConfig()
        if ckpt.exists():
            raise FileExistsError(f"{out.name} already holds a run; pass --resume (or --resume "
                                  f"--extend-tokens N), or choose another --out")
        log_path.unlink(missing_ok=True)
        state = None
    torch.set_num_threads(cfg.threads)
    if documents is None:
        raise ValueError("no documents given")

    # held-out split and vocabulary: functions of the seed and the corpus only
    order = np.random.default_rng([cfg.seed, 7]).permutation(len(documents))
    n_held = int(round(len(documents) * heldout_fraction))
    held_docs = [documents[i] for i in sorted(order[:n_held])]
    train_docs = [documents[i] for i in sorted(order[n_held:])]
    if not (out / "vocab.txt").exists():
        bert_zh.write_vocab(bert_zh.build_vocab(train_docs, min_count), out / "vocab.txt")
    tok = bert_zh.tokenizer(out)
    corpus = tokenise_documents(train_docs, tok)
    heldout = tokenise_documents(held_docs, tok)
    eval_sets = eval_sets_fn(tok, heldout) if eval_sets_fn else EvalSets(heldout=heldout)
    prep_seconds = time.perf_counter() - t_start

    mcfg = bert_zh.config(len(tok.get_vocab()), hidden_dropout_prob=cfg.dropout,
                          attention_probs_dropout_prob=cfg.dropout, **cfg.model)
    model = bert_zh.build_model(mcfg, cfg.seed)
    model.train()
    opt = torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                            eps=1e-6)
    new_stage = dict(lr=cfg.lr, warmup=cfg.warmup, batch=cfg.batch, seq_len=cfg.seq_len,
                     long_seq_len=cfg.long_seq_len, long_fraction=cfg.long_fraction)
    if state is None:
        torch.manual_seed(cfg.seed)
        peak = measure_matmul_peak(cfg.peak_matrix)
        state = {"config": asdict(cfg), "step": 0, "tokens_seen": 0, "train_seconds": 0.0,
                 "wall_seconds": 0.0, "stages": [], "peak_gflops": peak, "evals": [],
                 "minutes": minutes, "commands": [], "n_train_docs": len(train_docs),
                 "n_heldout_docs": len(held_docs), "vocab_size": mcfg.vocab_size,
                 "n_params": sum(p.numel() for p in model.parameters()),
                 "flops_per_token": bert_zh.train_flops_per_token(mcfg, cfg.seq_len)}
        if tokens is not None:
            state["stages"].append(asdict(make_stage(0, tokens, **new_stage)))
        elif minutes is None:
            raise ValueError("give a budget: --tokens N or --minutes M")
    else:
        state = {**state, **_load_checkpoint(ckpt, model, opt)}
        _drop_log_after(log_path, state["step"])  # steps after the checkpoint are redone
    state["commands"].append(command or "run()")
    stages = [Stage(**s) for s in state["stages"]]
    if stage_tokens:
        if extend_tokens:
            raise ValueError("give either extend_tokens (a new stage) or stage_tokens (re-budget the last)")
        if not stages:
            raise ValueError("no stage to re-budget")
        last = stages[-1]
        new = make_stage(last.start, stage_tokens, lr=last.lr, warmup=last.warmup, batch=last.batch,
                         seq_len=last.seq_len, long_seq_len=last.long_seq_len,
                         long_fraction=cfg.long_fraction, label=last.label)
        if not (last.start <= state["step"] < new.end):
            raise ValueError(f"stage '{last.label}' is at step {state['step']}; a budget of {stage_tokens} "
                             f"tokens would end it at step {new.end}: give a larger budget")
        stages[-1] = new
        state["stages"] = [asdict(s) for s in stages]
        state.setdefault("rebudgets", []).append(
            {"step": state["step"], "stage": last.label, "from_tokens": last.tokens, "to_tokens": int(stage_tokens)})
    if extend_tokens:
        start = stages[-1].end if stages else state["step"]
        stages.append(make_stage(start, extend_tokens, label=f"extension {len(stages)}", **new_stage))
        state["stages"] = [asdict(s) for s in stages]
    _log(log_path, {"event": "start", "step": state["step"], "vocab": mcfg.vocab_size,
                    "params": state["n_params"], "train_docs": len(train_docs),
                    "boundaries": int(len(corpus.boundary_doc)), "prep_seconds": prep_seconds,
                    "peak_gflops": state["peak_gflops"]}, echo)

    def do_eval():
        seq = stage_of(stages, max(0, state["step"] - 1))
        r = evaluate(model, tok, eval_sets, seq_len=cfg.seq_len)
        rec = {"event": "eval", "step": state["step"], "tokens": state["tokens_seen"],
               "stage": seq.label if seq and state["step"] else "init", **r}
        state["evals"].append(rec)
        _log(log_path, rec, echo)
        return r

    def checkpoint():
        state["wall_seconds"] += time.perf_counter() - t_seg[0]
        t_seg[0] = time.perf_counter()
        _atomic_checkpoint(ckpt, model, opt, state)

    t_seg = [t_start]  # wall time includes data preparation
    if state["step"] == 0 and not state["evals"]:
        do_eval()
    eval_seconds = state["evals"][-1]["eval_seconds"] if state["evals"] else 0.0
    last_ckpt = time.perf_counter()
    win = {"mlm": 0.0, "nsp": 0.0, "mlm_c": 0, "mlm_n": 0, "nsp_c": 0, "nsp_n": 0, "n": 0, "tok": 0, "t": 0.0}
    calib = {"steps": 0, "seconds": 0.0, "tokens": 0}

    if minutes is not None and not stages:  # provisional stage until the first steps are timed
        st = make_stage(0, 10 ** 12, **new_stage)
        st.label = "calibration"
        stages.append(st)
    while True:
        step = state["step"]
        if stop_after_steps is not None and step >= stop_after_steps:
            break
        stage = stage_of(stages, step)
        if stage is None:
            break
        bsz, seq = stage.shape(step)
        for gsrc in opt.param_groups:
            gsrc["lr"] = stage.lr_at(step)
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, step])
        batch = make_batch(corpus, bsz, seq, mcfg.vocab_size, rng)
        r = pretraining_loss(model, batch)
        opt.zero_grad(set_to_none=True)
        r["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        dt = time.perf_counter() - t0
        ntok = int(batch["attention_mask"].sum())
        state["step"] = step + 1
        state["tokens_seen"] += ntok
        state["train_seconds"] += dt
        win["mlm"] += r["mlm_loss"].item()
        win["nsp"] += r["nsp_loss"].item()
        win["mlm_c"] += r["mlm_correct"]
        win["mlm_n"] += r["mlm_n"]
        win["nsp_c"] += r["nsp_correct"]
        win["nsp_n"] += bsz
        win["n"] += 1
        win["tok"] += ntok
        win["t"] += dt
        if stage.label == "calibration":
            if step >= min(3, cfg.calibration_steps - 1):  # skip the first, slower steps
                calib["steps"] += 1
                calib["seconds"] += dt
                calib["tokens"] += bsz * seq
            if calib["steps"] >= cfg.calibration_steps:
                rate = calib["tokens"] / calib["seconds"]           # nominal tokens/s at seq_len
                spent = time.perf_counter() - t_start
                n_evals = math.ceil(minutes / cfg.checkpoint_minutes) + 1
                left = minutes * 60 - spent - n_evals * (eval_seconds + 5) - 30
                # the 128-token phase ran at ≈ 0.65 × the tokens/s of the 64-token one here
                eff = rate / (1 - cfg.long_fraction + cfg.long_fraction / 0.65)
                budget = int(max(left, 0) * eff * 0.97) + state["step"] * cfg.batch * cfg.seq_len
                stages[0] = make_stage(0, budget, **new_stage)
                state["stages"] = [asdict(s) for s in stages]
                state["budget_from_minutes"] = {"minutes": minutes, "calibrated_tokens_per_s": rate,
                                                "tokens": budget}
                _log(log_path, {"event": "budget", "step": state["step"], "tokens_per_s": rate,
                                "budget_tokens": budget, "steps": stages[0].steps}, echo)
        if state["step"] % cfg.log_every == 0:
            rate = win["tok"] / win["t"]
            _log(log_path, {"event": "train", "step": state["step"], "tokens": state["tokens_seen"],
                            "seq": seq, "lr": stage.lr_at(step), "mlm_loss": win["mlm"] / win["n"],
                            "nsp_loss": win["nsp"] / win["n"], "mlm_acc": win["mlm_c"] / max(1, win["mlm_n"]),
                            "nsp_acc": win["nsp_c"] / win["nsp_n"], "tokens_per_s": rate,
                            "mfu": rate * bert_zh.train_flops_per_token(mcfg, seq) / (state["peak_gflops"] * 1e9),
                            "elapsed_s": time.perf_counter() - t_start}, echo)
            win = dict.fromkeys(win, 0)
        finished_stage = state["step"] == stage.end and stage.label != "calibration"
        if finished_stage or time.perf_counter() - last_ckpt > cfg.checkpoint_minutes * 60:
            do_eval()
            checkpoint()
            last_ckpt = time.perf_counter()

    if stop_after_steps is None or state["step"] < stop_after_steps:  # every stage done
        if not state["evals"] or state["evals"][-1]["step"] != state["step"]:
            do_eval()
        checkpoint()
        bert_zh.save(model, out / "vocab.txt", out, train_config=state["config"])
        write_model_card(out, state)
        _log(log_path, {"event": "done", "step": state["step"], "tokens": state["tokens_seen"],
                        "wall_seconds": state["wall_seconds"]}, echo)
    else:
        checkpoint()
    return state


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_model_card(out: Path, state: dict) -> None:
    """``README.md`` of the weights folder: data, config, commands, stages, steps, tokens, times,
    machine, losses and every evaluation."""
    cfg = state["config"]
    train = [json.loads(l) for l in open(out / "log.jsonl") if '"event": "train"' in l]
    last = train[-1] if train else {}
    rate = state["tokens_seen"] / max(state["train_seconds"], 1e-9)
    mfu = rate * state["flops_per_token"] / (state["peak_gflops"] * 1e9)
    cfgj = json.loads((out / "config.json").read_text())
    lines = [
        "# bert-zh: the book's small Chinese BERT (MLM + NSP)", "",
        "Pre-trained by `python -m kexue.pretrain` (library `kexue`, *Scientific Spaces, Reproduced*) "
        "for the chapters on NSP zero-shot (https://kexue.fm/archives/8671), PET, BERT-whitening and CoSENT. "
        "Load with `kexue.models.bert_zh.load()` (checks `sha256`).", "",
        "## Data", "",
        "`kexue.data.chinese.pretraining_documents()`: inews train contents, People's Daily 1998, 三国演义 "
        "(see the book's DATA.md); no evaluation text. "
        f"{state['n_train_docs']} training documents, {state['n_heldout_docs']} held out (seed {cfg['seed']}) "
        "for the MLM/NSP accuracies below.", "",
        "## Model", "",
        f"`BertForPreTraining`, {cfgj['num_hidden_layers']} layers × {cfgj['hidden_size']} hidden, "
        f"{cfgj['num_attention_heads']} heads, FFN {cfgj['intermediate_size']}, max positions "
        f"{cfgj['max_position_embeddings']}, vocabulary {cfgj['vocab_size']} characters (seen ≥ 3 times + 5 specials), "
        f"{state['n_params']:,} parameters. Pre-trained with dropout {cfg['dropout']}; the saved config has "
        "BERT's 0.1 for fine-tuning.", "",
        "## Training", "",
        f"Commands: {'; '.join('`' + c + '`' for c in state['commands'])}", "",
        f"MLM 15 % (80/10/10) + NSP (50 % true next text of the same document), AdamW lr {cfg['lr']}, "
        f"weight decay {cfg['weight_decay']}, clip {cfg['clip']}, batch {cfg['batch']} × {cfg['seq_len']} "
        f"tokens, last {cfg['long_fraction']:.0%} of each stage at {cfg['long_seq_len']} tokens, fp32, "
        f"{cfg['threads']} threads, seed {cfg['seed']}.", "",
        "| stage | start step | steps (short + long) | token budget | peak lr |", "|---|---|---|---|---|",
    ]
    for s in state["stages"]:
        lines.append(f"| {s['label']} | {s['start']} | {s['steps_short']} + {s['steps_long']} | "
                     f"{s['tokens']:,} | {s['lr']} |")
    for r in state.get("rebudgets", []):
        lines += ["", f"Stage '{r['stage']}' was re-budgeted at step {r['step']:,} from {r['from_tokens']:,} to "
                  f"{r['to_tokens']:,} tokens (`--resume --stage-tokens`); its learning-rate decay from that "
                  "step follows the new end."]
    lines += ["", f"Steps {state['step']:,}; tokens processed {state['tokens_seen']:,} (non-padding); "
              f"wall time {state['wall_seconds'] / 60:.1f} min ({state['train_seconds'] / 60:.1f} min in "
              f"training steps); {rate:,.0f} tokens/s; {state['flops_per_token'] / 1e6:.1f} MFLOP/token → "
              f"MFU {mfu:.0%} of the measured fp32 matmul peak {state['peak_gflops']:.0f} GFLOP/s.", "",
              f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, Python {platform.python_version()}.", ""]
    if last:
        lines += [f"Last logged training window: MLM loss {last['mlm_loss']:.3f}, NSP loss "
                  f"{last['nsp_loss']:.3f}, MLM accuracy {last['mlm_acc']:.3f}, NSP accuracy {last['nsp_acc']:.3f}.", ""]
    keys = [k for k in ("heldout_mlm_loss", "heldout_mlm_acc", "heldout_nsp_acc", "thucnews_nsp_first",
                        "thucnews_nsp_second", "thucnews_pet_calibrated", "stsb_mean_whitened")
            if any(k in e for e in state["evals"])]
    lines += ["## Evaluations (every checkpoint)", "",
              "| step | tokens | stage | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    for e in state["evals"]:
        lines.append(f"| {e['step']} | {e['tokens']:,} | {e['stage']} | "
                     + " | ".join(f"{e[k]:.3f}" if k in e else "" for k in keys) + " |")
    lines += ["", "THUCNews: NSP zero-shot with the prompt 这是一则{标签}新闻。 first or second (chance 0.10); "
              "STS-B: Chinese STS-B valid, Spearman of cosines after mean pooling + whitening fitted on "
              "train sentences. Full log: `log.jsonl`.", ""]
    (out / "README.md").write_text("\n".join(lines))


def read_log(folder) -> dict:
    """The ``log.jsonl`` of a run as columns: ``{"train": {key: np.array}, "eval": {key: np.array},
    "budget": [...], "done": [...]}`` (a key missing from some records is NaN there); for the
    workbench page's curves (https://kexue.fm/archives/8671)."""
    recs = [json.loads(l) for l in open(Path(folder) / "log.jsonl") if l.strip()]
    out = {}
    for kind in ("train", "eval"):
        rows = [r for r in recs if r["event"] == kind]
        keys = sorted({k for r in rows for k in r if isinstance(r[k], (int, float)) and not isinstance(r[k], bool)})
        out[kind] = {k: np.array([r.get(k, np.nan) for r in rows], dtype=float) for k in keys}
        out[kind]["stage"] = [r.get("stage", "") for r in rows]
    for kind in ("start", "budget", "done"):
        out[kind] = [r for r in recs if r["event"] == kind]
    return out


# ------------------------------------------------------------------------------------ the CLI


def default_eval_sets(tok, heldout, seed: int = 1234, thucnews_per_label: int = 20,
                      stsb_pairs: int = 500, whitening_sentences: int = 1000) -> EvalSets:
    """The book's checkpoint evaluations on the real data (``kexue.data.chinese``): THUCNews dev
    (``thucnews_per_label`` headlines per topic), STS-B valid (``stsb_pairs``), whitening fitted on
    ``whitening_sentences`` STS-B train sentences; subsamples fixed by ``seed``."""
    from .data import chinese
    from .zeroshot import stratified_subsample

    heads, labels = zip(*chinese.thucnews("dev"))
    names = list(chinese.THUCNEWS_LABELS_ZH)   # 教育 娱乐 … in the order of the label indices
    y = np.array([int(l) for l in labels])
    pick = stratified_subsample(y, thucnews_per_label, seed)
    rng = np.random.default_rng(seed)
    valid = list(chinese.stsb_zh("valid"))
    vi = np.sort(rng.choice(len(valid), min(stsb_pairs, len(valid)), replace=False))
    train = list(chinese.stsb_zh("train"))
    sents = sorted({s for a, b, _ in train for s in (a, b)})
    wi = np.sort(rng.choice(len(sents), min(whitening_sentences, len(sents)), replace=False))
    return EvalSets(heldout=heldout, thucnews=([heads[i] for i in pick], y[pick], names),
                    stsb=([valid[i][0] for i in vi], [valid[i][1] for i in vi],
                          np.array([float(valid[i][2]) for i in vi]), [sents[i] for i in wi]),
                    seed=seed)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m kexue.pretrain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the weights, vocab, log, card and checkpoint")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tokens", type=float, help="token budget (batch × seq per step); deterministic")
    g.add_argument("--minutes", type=float, help="wall-clock budget; fixed as a token budget after timing the first steps")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    p.add_argument("--extend-tokens", type=float, help="with --resume: add a stage of this many tokens")
    p.add_argument("--stage-tokens", type=float,
                   help="with --resume: re-budget the unfinished last stage to this many tokens")
    d = PretrainConfig()
    for k in ("seed", "batch", "seq_len", "long_seq_len", "long_fraction", "lr", "warmup", "weight_decay",
              "clip", "dropout", "threads", "log_every", "checkpoint_minutes"):
        p.add_argument("--" + k.replace("_", "-"), type=type(getattr(d, k)), default=getattr(d, k))
    p.add_argument("--no-task-eval", action="store_true", help="evaluate held-out MLM/NSP only (no THUCNews/STS-B)")
    a = p.parse_args(argv)
    if a.extend_tokens and not a.resume:
        p.error("--extend-tokens needs --resume (it extends an existing run)")
    if a.stage_tokens and not a.resume:
        p.error("--stage-tokens needs --resume (it re-budgets the unfinished stage of a run)")
    if not a.resume and a.tokens is None and a.minutes is None:
        p.error("give a budget: --tokens N or --minutes M")
    cfg = PretrainConfig(**{k: getattr(a, k) for k in ("seed", "batch", "seq_len", "long_seq_len",
                            "long_fraction", "lr", "warmup", "weight_decay", "clip", "dropout", "threads",
                            "log_every", "checkpoint_minutes")})
    torch.set_num_threads(cfg.threads)
    from .data import chinese

    docs = chinese.pretraining_documents()
    eval_fn = None if a.no_task_eval else default_eval_sets
    command = "python -m kexue.pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
    run(a.out, docs, cfg=cfg, tokens=int(a.tokens) if a.tokens else None, minutes=a.minutes,
        resume=a.resume, extend_tokens=int(a.extend_tokens) if a.extend_tokens else None,
        stage_tokens=int(a.stage_tokens) if a.stage_tokens else None, eval_sets_fn=eval_fn, command=command)


if __name__ == "__main__":
    main()
