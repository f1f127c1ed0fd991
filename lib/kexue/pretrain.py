"""Pre-train the book's small Chinese BERT (MLM + NSP) on the 2-core CPU: one resumable command.

    python -m kexue.pretrain --out lib/kexue/models/bert-zh --minutes 90
    python -m kexue.pretrain --out lib/kexue/models/bert-zh --resume                  # after an interruption
    python -m kexue.pretrain --out lib/kexue/models/bert-zh --resume --extend-tokens 20000000

Objective (BERT; "曾被嫌弃的预训练任务NSP…", https://kexue.fm/archives/8671): MLM (15 %, 80/10/10) + NSP,
as :mod:`kexue.bert.objective` defines them (masking, sentence pairs, batches, the loss with the MLM
head on the selected positions only). This module is the command around it: the stage plan
(:class:`Stage`), the checkpoint evaluations (:func:`evaluate`), and :func:`run`, whose named steps
open the folder, split and tokenise the corpus, build model and optimizer, start or resume the
state, plan the stages, train step by step (:func:`train_step`), checkpoint, and write the model card.
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

from .bert import objective
from .bert.objective import TokenisedCorpus
from .optim import adamw_param_groups, warmup_linear
from .models import bert_zh

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
    fresh_optimizer: bool = False   # a new AdamW state (moments zero) at the stage's first step

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
               long_seq_len: int, long_fraction: float, label: str = "main",
               fresh_optimizer: bool = False) -> Stage:
    """Split a token budget (counted as batch × seq_len per step) into short- and long-sequence steps."""
    per_step = batch * seq_len
    total = max(1, round(tokens / per_step))
    n_long = int(round(total * long_fraction)) if long_seq_len > seq_len else 0
    return Stage(start, total - n_long, n_long, lr, warmup, batch, seq_len, long_seq_len, int(tokens), label,
                 fresh_optimizer)


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
    long_seq_len: int | None = None      # also held-out MLM/NSP at this length (keys ``…_<len>``)
    name: str = ""                       # which probe sets (recorded with every evaluation)
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
        lens = [seq_len] + ([sets.long_seq_len] if sets.long_seq_len and sets.long_seq_len != seq_len else [])
        for n in lens:
            suffix = "" if n == seq_len else f"_{n}"
            # the same number of sequences at every length, drawn with the same seed
            rng = np.random.default_rng(sets.seed)
            vocab = objective.vocab_of(tok)
            tot = {"mlm_loss": 0.0, "mlm_correct": 0, "mlm_n": 0, "nsp_correct": 0, "nsp_n": 0}
            for _ in range(sets.heldout_batches):
                b = objective.make_batch(sets.heldout, sets.heldout_batch, n, vocab, rng)
                r = objective.pretraining_loss(model, b)
                tot["mlm_loss"] += float(r["mlm_loss"]) * r["mlm_n"]
                for k in ("mlm_correct", "mlm_n", "nsp_correct"):
                    tot[k] += r[k]
                tot["nsp_n"] += len(b["input_ids"])
            out.update({f"heldout_mlm_loss{suffix}": tot["mlm_loss"] / tot["mlm_n"],
                        f"heldout_mlm_acc{suffix}": tot["mlm_correct"] / tot["mlm_n"],
                        f"heldout_nsp_acc{suffix}": tot["nsp_correct"] / tot["nsp_n"]})
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


def _open(out: Path, resume: bool, cfg: PretrainConfig | None) -> tuple[PretrainConfig, dict | None]:
    """Step 1: the folder. A resumed run takes its config from the checkpoint's state; a new run
    refuses a folder that already holds one, and starts a fresh log."""
    ckpt = out / "checkpoint"
    if resume:
        if not (ckpt / "state.json").exists():
            raise FileNotFoundError(f"nothing to resume in {out.name}/checkpoint; start without --resume")
        state = json.loads((ckpt / "state.json").read_text())
        return PretrainConfig(**state["config"]), state
    if ckpt.exists():
        raise FileExistsError(f"{out.name} already holds a run; pass --resume (or --resume "
                              f"--extend-tokens N), or choose another --out")
    (out / "log.jsonl").unlink(missing_ok=True)
    return cfg or PretrainConfig(), None


def split_documents(documents, seed: int, heldout_fraction: float) -> tuple[list, list]:
    """Step 2: (train, held-out) documents; the held-out ``heldout_fraction`` is drawn with ``seed``
    (a function of the seed and the corpus only, so a resumed run gets the same split)."""
    order = np.random.default_rng([seed, 7]).permutation(len(documents))
    n_held = int(round(len(documents) * heldout_fraction))
    return ([documents[i] for i in sorted(order[n_held:])], [documents[i] for i in sorted(order[:n_held])])


def prepare_data(out: Path, train_docs: list, held_docs: list, min_count: int, eval_sets_fn):
    """Step 3: the vocabulary (built from the training documents once, then read from
    ``out/vocab.txt``), the tokenizer, the tokenised corpora and the evaluation sets."""
    if not (out / "vocab.txt").exists():
        bert_zh.write_vocab(bert_zh.build_vocab(train_docs, min_count), out / "vocab.txt")
    tok = bert_zh.tokenizer(out)
    corpus = objective.tokenise_documents(train_docs, tok)
    heldout = objective.tokenise_documents(held_docs, tok)
    eval_sets = eval_sets_fn(tok, heldout) if eval_sets_fn else EvalSets(heldout=heldout)
    return tok, corpus, heldout, eval_sets


def build_training(tok, cfg: PretrainConfig):
    """Step 4: the model (initialised from ``cfg.seed``, in train mode) and its AdamW optimizer
    (BERT's weight-decay groups, betas (0.9, 0.999), eps 1e-6)."""
    mcfg = bert_zh.config(len(tok.get_vocab()), hidden_dropout_prob=cfg.dropout,
                          attention_probs_dropout_prob=cfg.dropout, **cfg.model)
    from . import resolve_device
    model = bert_zh.build_model(mcfg, cfg.seed).to(resolve_device(None))   # weights drawn on the CPU, then moved
    model.train()
    return mcfg, model, build_optimizer(model, cfg)


def build_optimizer(model, cfg: PretrainConfig):
    """AdamW with BERT's weight-decay groups, betas (0.9, 0.999), eps 1e-6 (moments zero)."""
    return torch.optim.AdamW(adamw_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999),
                             eps=1e-6)


def _load_weights(folder: Path, model) -> None:
    """The weights of a shipped folder (``model.safetensors``, decoder tied) into ``model``."""
    from safetensors.torch import load_file

    missing, unexpected = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}   # shared with other tensors
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"{folder} does not match the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()


def _stage_kw(cfg: PretrainConfig) -> dict:
    return dict(lr=cfg.lr, warmup=cfg.warmup, batch=cfg.batch, seq_len=cfg.seq_len,
                long_seq_len=cfg.long_seq_len, long_fraction=cfg.long_fraction)


def new_state(cfg: PretrainConfig, mcfg, model, n_train_docs: int, n_heldout_docs: int,
              tokens: int | None, minutes: float | None, need_budget: bool = True) -> dict:
    """Step 5a (a new run): seed torch, measure the machine's matmul peak, and start the state with
    one stage of ``tokens`` (or none yet: a ``minutes`` budget is fixed after timing the first steps)."""
    if need_budget and tokens is None and minutes is None:
        raise ValueError("give a budget: --tokens N or --minutes M")
    torch.manual_seed(cfg.seed)
    state = {"config": asdict(cfg), "step": 0, "tokens_seen": 0, "train_seconds": 0.0,
             "wall_seconds": 0.0, "stages": [], "peak_gflops": measure_matmul_peak(cfg.peak_matrix),
             "evals": [], "minutes": minutes, "commands": [], "n_train_docs": n_train_docs,
             "n_heldout_docs": n_heldout_docs, "vocab_size": mcfg.vocab_size,
             "n_params": sum(p.numel() for p in model.parameters()),
             "flops_per_token": bert_zh.train_flops_per_token(mcfg, cfg.seq_len)}
    if tokens is not None:
        state["stages"].append(asdict(make_stage(0, tokens, **_stage_kw(cfg))))
    return state


def resume_state(out: Path, state: dict, model, opt) -> dict:
    """Step 5b (a resumed run): weights, optimizer, torch RNG and state from the checkpoint; the log
    records of steps after it are dropped (those steps are redone)."""
    state = {**state, **_load_checkpoint(out / "checkpoint", model, opt)}
    _drop_log_after(out / "log.jsonl", state["step"])
    return state


def plan_stages(state: dict, cfg: PretrainConfig, extend_tokens: int | None = None,
                stage_tokens: int | None = None) -> list[Stage]:
    """Step 6: the stage plan. ``stage_tokens`` re-budgets the unfinished last stage (its decay is
    recomputed for the new end; recorded in ``state["rebudgets"]``); ``extend_tokens`` appends a new
    stage (re-warm-up, linear decay) after the last. Updates ``state["stages"]``."""
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
        state.setdefault("rebudgets", []).append(
            {"step": state["step"], "stage": last.label, "from_tokens": last.tokens, "to_tokens": int(stage_tokens)})
    if extend_tokens:
        start = stages[-1].end if stages else state["step"]
        stages.append(make_stage(start, extend_tokens, label=f"extension {len(stages)}", **_stage_kw(cfg)))
    state["stages"] = [asdict(s) for s in stages]
    return stages


# ------------------------------------------------------------------------------- the recipe

RECIPE_STAGE_KEYS = {"label", "tokens", "long_fraction", "fresh_optimizer", "rebudgets", "lr"}


def load_recipe(path) -> dict:
    """A recorded recipe (JSON): ``config`` (the :class:`PretrainConfig` fields), ``stages`` (each
    ``{"label", "tokens", optional "long_fraction", "lr", "fresh_optimizer", "rebudgets": [{"step",
    "tokens"}]}``, run in order, each starting where the last ended), optional ``heldout_fraction``
    and ``min_count``. ``python -m kexue.pretrain --recipe FILE --out DIR`` replays it from scratch."""
    recipe = json.loads(Path(path).read_text())
    unknown = set(recipe.get("config", {})) - set(PretrainConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"recipe {path}: unknown config keys {sorted(unknown)}")
    if not recipe.get("stages"):
        raise ValueError(f"recipe {path}: no stages")
    for sp in recipe["stages"]:
        bad = set(sp) - RECIPE_STAGE_KEYS
        if bad or "label" not in sp or "tokens" not in sp:
            raise ValueError(f"recipe {path}: stage {sp} needs 'label' and 'tokens' (allowed keys {sorted(RECIPE_STAGE_KEYS)})")
    labels = [sp["label"] for sp in recipe["stages"]]
    if len(set(labels)) != len(labels):
        raise ValueError(f"recipe {path}: stage labels repeat: {labels}")
    return recipe


def stage_from_spec(spec: dict, start: int, cfg: PretrainConfig, tokens: int | None = None) -> Stage:
    """The :class:`Stage` a recipe entry describes, starting at ``start`` (``tokens`` overrides its
    budget: a re-budget)."""
    kw = _stage_kw(cfg)
    kw["long_fraction"] = spec.get("long_fraction", cfg.long_fraction)
    kw["lr"] = spec.get("lr", cfg.lr)
    return make_stage(start, int(tokens if tokens is not None else spec["tokens"]), label=spec["label"],
                      fresh_optimizer=bool(spec.get("fresh_optimizer", False)), **kw)


def final_plan(recipe: dict, cfg: PretrainConfig) -> list[Stage]:
    """Every recipe stage at its final budget (after its last re-budget), chained: where each one
    starts and ends."""
    out, start = [], 0
    for sp in recipe["stages"]:
        rb = sp.get("rebudgets") or []
        st = stage_from_spec(sp, start, cfg, rb[-1]["tokens"] if rb else None)
        out.append(st)
        start = st.end
    return out


def apply_recipe(state: dict, stages: list[Stage], cfg: PretrainConfig) -> None:
    """Before the step ``state["step"]``: apply a re-budget of the recipe that falls on it, and
    start the recipe's next stage when the last one has ended (updates ``stages`` and the state)."""
    recipe, step = state["recipe"], state["step"]
    done = {s.label for s in stages}
    if stages and step >= stages[-1].end:
        nxt = [sp for sp in recipe["stages"] if sp["label"] not in done]
        if nxt:
            stages.append(stage_from_spec(nxt[0], stages[-1].end, cfg))
    elif not stages:
        stages.append(stage_from_spec(recipe["stages"][0], 0, cfg))
    last = stages[-1]
    spec = next(sp for sp in recipe["stages"] if sp["label"] == last.label)
    applied = {(r["stage"], r["step"]) for r in state.get("rebudgets", [])}
    for rb in spec.get("rebudgets") or []:
        if rb["step"] == step and (last.label, step) not in applied:
            new = stage_from_spec(spec, last.start, cfg, rb["tokens"])
            if not (new.start <= step < new.end):
                raise ValueError(f"recipe: re-budget of '{last.label}' at step {step} to {rb['tokens']} tokens ends it before that step")
            state.setdefault("rebudgets", []).append(
                {"step": step, "stage": last.label, "from_tokens": last.tokens, "to_tokens": int(rb["tokens"])})
            stages[-1] = last = new
    state["stages"] = [asdict(s) for s in stages]


def inherit_stages(state: dict, recipe: dict, cfg: PretrainConfig, src: Path, from_stage: str) -> list[dict]:
    """Start a recipe at stage ``from_stage`` from the weights in ``src`` (the end of the stage before
    it, e.g. the shipped model): the earlier stages are recorded at their final budgets, the step and
    token count come from ``src``'s log (whose ``done`` record must sit at that stage's start), and
    that log's records are returned to head the new log. The stage must start a fresh optimizer,
    which makes this the same computation as the replay from scratch, if the replay is exact."""
    labels = [sp["label"] for sp in recipe["stages"]]
    if from_stage not in labels:
        raise ValueError(f"--from-stage {from_stage!r} is not a stage of the recipe ({labels})")
    k = labels.index(from_stage)
    if k == 0 or not recipe["stages"][k].get("fresh_optimizer"):
        raise ValueError(f"stage {from_stage!r} must be a later stage with fresh_optimizer: true "
                         "(the optimizer state of the earlier stages is not shipped)")
    plan = final_plan(recipe, cfg)
    start = plan[k].start
    recs = [json.loads(l) for l in open(src / "log.jsonl") if l.strip()]
    done = [r for r in recs if r["event"] == "done"]
    if not done or done[-1]["step"] != start:
        raise ValueError(f"{src}/log.jsonl does not end at step {start}, where stage {from_stage!r} starts")
    state["stages"] = [asdict(s) for s in plan[:k]]
    state["rebudgets"] = []
    for sp in recipe["stages"][:k]:
        prev = sp["tokens"]
        for rb in sp.get("rebudgets") or []:
            state["rebudgets"].append({"step": rb["step"], "stage": sp["label"], "from_tokens": prev,
                                       "to_tokens": rb["tokens"]})
            prev = rb["tokens"]
    state["step"], state["tokens_seen"] = start, int(done[-1]["tokens"])
    state["inherited"] = {"from": str(src), "step": start, "tokens": int(done[-1]["tokens"]),
                          "wall_seconds": float(done[-1].get("wall_seconds", 0.0))}
    state["evals"] = [r for r in recs if r["event"] == "eval"]
    return [r for r in recs if r["event"] != "done"]


def train_step(model, opt, corpus: TokenisedCorpus, vocab: objective.Vocab, stage: Stage, step: int,
               cfg: PretrainConfig) -> tuple[dict, int, int, int, float]:
    """Step 7: one optimizer step at global ``step``: the stage's learning rate and batch shape, the
    batch drawn from a generator seeded by (seed, step) (so the data position is the step counter),
    MLM + NSP loss, clipping, AdamW. Returns (loss dict, batch size, seq len, tokens, seconds)."""
    bsz, seq = stage.shape(step)
    for group in opt.param_groups:
        group["lr"] = stage.lr_at(step)
    t0 = time.perf_counter()
    batch = objective.make_batch(corpus, bsz, seq, vocab, np.random.default_rng([cfg.seed, step]))
    r = objective.pretraining_loss(model, batch)
    opt.zero_grad(set_to_none=True)
    r["loss"].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
    opt.step()
    return r, bsz, seq, int(batch["attention_mask"].sum()), time.perf_counter() - t0


class _Window:
    """Training statistics since the last log record (means over the window's steps)."""

    KEYS = ("mlm", "nsp", "mlm_c", "mlm_n", "nsp_c", "nsp_n", "n", "tok", "t")

    def __init__(self):
        self.v = dict.fromkeys(self.KEYS, 0)
        self.v["mlm"] = self.v["nsp"] = self.v["t"] = 0.0

    def add(self, r: dict, bsz: int, ntok: int, dt: float) -> None:
        v = self.v
        v["mlm"] += r["mlm_loss"].item()
        v["nsp"] += r["nsp_loss"].item()
        v["mlm_c"] += r["mlm_correct"]
        v["mlm_n"] += r["mlm_n"]
        v["nsp_c"] += r["nsp_correct"]
        v["nsp_n"] += bsz
        v["n"] += 1
        v["tok"] += ntok
        v["t"] += dt

    def record(self, state: dict, stage: Stage, step: int, seq: int, mcfg, elapsed: float) -> dict:
        v = self.v
        rate = v["tok"] / v["t"]
        return {"event": "train", "step": state["step"], "tokens": state["tokens_seen"], "seq": seq,
                "lr": stage.lr_at(step), "mlm_loss": v["mlm"] / v["n"], "nsp_loss": v["nsp"] / v["n"],
                "mlm_acc": v["mlm_c"] / max(1, v["mlm_n"]), "nsp_acc": v["nsp_c"] / v["nsp_n"],
                "tokens_per_s": rate, "window_seconds": v["t"],
                "mfu": rate * bert_zh.train_flops_per_token(mcfg, seq) / (state["peak_gflops"] * 1e9),
                "elapsed_s": elapsed}


def budget_from_minutes(cfg: PretrainConfig, minutes: float, calib: dict, spent: float, eval_seconds: float,
                        step: int) -> int:
    """Step 8 (``--minutes``): the token budget that fills the wall-clock budget, from the tokens/s
    measured over the calibration steps, minus the time already spent, the expected evaluations and
    a 30 s margin; the long-sequence phase runs at ≈ 0.65 × the short phase's tokens/s here."""
    rate = calib["tokens"] / calib["seconds"]           # nominal tokens/s at seq_len
    n_evals = math.ceil(minutes / cfg.checkpoint_minutes) + 1
    left = minutes * 60 - spent - n_evals * (eval_seconds + 5) - 30
    eff = rate / (1 - cfg.long_fraction + cfg.long_fraction / 0.65)
    return int(max(left, 0) * eff * 0.97) + step * cfg.batch * cfg.seq_len


def finish(out: Path, model, state: dict, log_path: Path, echo: bool) -> None:
    """Step 9: the shipped folder: the weights (safetensors + sha256), the model card, a done record."""
    bert_zh.save(model, out / "vocab.txt", out, train_config=state["config"])
    write_model_card(out, state)
    _log(log_path, {"event": "done", "step": state["step"], "tokens": state["tokens_seen"],
                    "wall_seconds": state["wall_seconds"]}, echo)


def run(out, documents=None, *, cfg: PretrainConfig | None = None, tokens: int | None = None,
        minutes: float | None = None, resume: bool = False, extend_tokens: int | None = None,
        stage_tokens: int | None = None, eval_sets_fn=None, stop_after_steps: int | None = None,
        heldout_fraction: float = 0.01, min_count: int = 3, echo: bool = True, command: str = "",
        recipe: dict | None = None, init_weights: tuple | None = None) -> dict:
    """Pre-train (or resume, or extend) a ``BertForPreTraining`` into folder ``out``.

    ``documents``: lists of sentences (the pre-training corpus; a fixed ``heldout_fraction`` of the
    documents, chosen with the seed, is kept out for evaluation). Budget: ``tokens`` (deterministic)
    or ``minutes`` (the first steps are timed and the budget fixed in tokens, recorded, so that
    ``--tokens`` reproduces it). ``resume`` continues from ``out/checkpoint``; ``extend_tokens``
    appends a new stage (re-warm-up, linear decay) after the last one; ``stage_tokens`` re-budgets the
    unfinished last stage to that many tokens (its learning-rate decay is recomputed for the new
    end; the stage must still have steps left, and the change is recorded). ``eval_sets_fn(tok, heldout)``
    returns the :class:`EvalSets`. ``stop_after_steps`` simulates an interruption (tests).
    ``recipe`` (:func:`load_recipe`) replaces the budget options: its config and stages, re-budgets
    included, are replayed in one run (a resumed recipe run keeps following it);
    ``init_weights=(folder, stage_label)`` starts the recipe at that stage from the weights in
    ``folder`` (:func:`inherit_stages`).
    Runs on the CPU (fp32, ``cfg.threads`` threads). Returns the final state dict; the steps are
    the functions above, in order (https://kexue.fm/archives/8671)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".gitignore").write_text("checkpoint/\ncheckpoint.old/\ncheckpoint.tmp/\n")
    ckpt, log_path = out / "checkpoint", out / "log.jsonl"
    t_start = time.perf_counter()
    if recipe is not None:
        if resume or tokens is not None or minutes is not None or extend_tokens or stage_tokens:
            raise ValueError("a recipe is its own budget: give no tokens, minutes, extension or re-budget "
                             "(and no resume: resume the folder it writes without the recipe)")
        cfg = PretrainConfig(**recipe.get("config", {}))
        heldout_fraction = recipe.get("heldout_fraction", heldout_fraction)
        min_count = recipe.get("min_count", min_count)
    elif init_weights is not None:
        raise ValueError("init_weights starts a stage of a recipe: give the recipe too")
    torch.set_num_threads((cfg or PretrainConfig()).threads)
    cfg, state = _open(out, resume, cfg)
    torch.set_num_threads(cfg.threads)
    if documents is None:
        raise ValueError("no documents given")
    train_docs, held_docs = split_documents(documents, cfg.seed, heldout_fraction)
    head = None
    if init_weights is not None:
        src = Path(init_weights[0])
        bert_zh.verify_checksums(src)
        shutil.copyfile(src / "vocab.txt", out / "vocab.txt")
        if bert_zh.build_vocab(train_docs, min_count) != [l for l in (src / "vocab.txt").read_text().splitlines() if l]:
            raise ValueError(f"{src}/vocab.txt is not the vocabulary these documents give: another corpus?")
    tok, corpus, heldout, eval_sets = prepare_data(out, train_docs, held_docs, min_count, eval_sets_fn)
    vocab = objective.vocab_of(tok)
    prep_seconds = time.perf_counter() - t_start
    mcfg, model, opt = build_training(tok, cfg)
    if state is None:
        state = new_state(cfg, mcfg, model, len(train_docs), len(held_docs), tokens,
                          minutes if recipe is None else None, need_budget=recipe is None)
        if recipe is not None:
            state["recipe"] = recipe
        if init_weights is not None:
            head = inherit_stages(state, recipe, cfg, src, init_weights[1])
            _load_weights(src, model)
            with open(log_path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in head)
    else:
        state = resume_state(out, state, model, opt)
    state["commands"].append(command or "run()")
    if state.get("recipe") is not None:
        stages = [Stage(**s) for s in state["stages"]]
        apply_recipe(state, stages, cfg)
    else:
        stages = plan_stages(state, cfg, extend_tokens, stage_tokens)
    _log(log_path, {"event": "start", "step": state["step"], "vocab": mcfg.vocab_size,
                    "params": state["n_params"], "train_docs": len(train_docs),
                    "boundaries": int(len(corpus.boundary_doc)), "prep_seconds": prep_seconds,
                    "peak_gflops": state["peak_gflops"]}, echo)

    def do_eval():
        seq = stage_of(stages, max(0, state["step"] - 1))
        r = evaluate(model, tok, eval_sets, seq_len=cfg.seq_len)
        rec = {"event": "eval", "step": state["step"], "tokens": state["tokens_seen"],
               "stage": seq.label if seq and state["step"] else "init", "probes": eval_sets.name, **r}
        state["evals"].append(rec)
        _log(log_path, rec, echo)

    def checkpoint():
        state["wall_seconds"] += time.perf_counter() - t_seg[0]
        t_seg[0] = time.perf_counter()
        _atomic_checkpoint(ckpt, model, opt, state)

    t_seg = [t_start]  # wall time includes data preparation
    if state["step"] == 0 and not state["evals"]:
        do_eval()
    eval_seconds = state["evals"][-1]["eval_seconds"] if state["evals"] else 0.0
    last_ckpt = time.perf_counter()
    win, calib = _Window(), {"steps": 0, "seconds": 0.0, "tokens": 0}
    if minutes is not None and not stages:  # provisional stage until the first steps are timed
        stages.append(make_stage(0, 10 ** 12, label="calibration", **_stage_kw(cfg)))
    while True:
        step = state["step"]
        if state.get("recipe") is not None:
            apply_recipe(state, stages, cfg)
        stage = stage_of(stages, step)
        if (stop_after_steps is not None and step >= stop_after_steps) or stage is None:
            break
        if stage.fresh_optimizer and step == stage.start and step not in state.setdefault("optimizer_resets", []):
            opt = build_optimizer(model, cfg)
            state["optimizer_resets"].append(step)
            if init_weights is not None and not any(e.get("step") == step and e.get("probes") == eval_sets.name
                                                    for e in state["evals"]):
                do_eval()   # the inherited weights on this run's probes: the baseline of the stage
        r, bsz, seq, ntok, dt = train_step(model, opt, corpus, vocab, stage, step, cfg)
        state["step"] = step + 1
        state["tokens_seen"] += ntok
        state["train_seconds"] += dt
        win.add(r, bsz, ntok, dt)
        if stage.label == "calibration":
            if step >= min(3, cfg.calibration_steps - 1):  # skip the first, slower steps
                calib["steps"] += 1
                calib["seconds"] += dt
                calib["tokens"] += bsz * seq
            if calib["steps"] >= cfg.calibration_steps:
                budget = budget_from_minutes(cfg, minutes, calib, time.perf_counter() - t_start,
                                             eval_seconds, state["step"])
                stages[0] = make_stage(0, budget, **_stage_kw(cfg))
                state["stages"] = [asdict(s) for s in stages]
                rate = calib["tokens"] / calib["seconds"]
                state["budget_from_minutes"] = {"minutes": minutes, "calibrated_tokens_per_s": rate,
                                                "tokens": budget}
                _log(log_path, {"event": "budget", "step": state["step"], "tokens_per_s": rate,
                                "budget_tokens": budget, "steps": stages[0].steps}, echo)
        if state["step"] % cfg.log_every == 0:
            _log(log_path, win.record(state, stage, step, seq, mcfg, time.perf_counter() - t_start), echo)
            win = _Window()
        finished_stage = state["step"] == stage.end and stage.label != "calibration"
        if finished_stage or time.perf_counter() - last_ckpt > cfg.checkpoint_minutes * 60:
            do_eval()
            checkpoint()
            last_ckpt = time.perf_counter()

    if stop_after_steps is None or state["step"] < stop_after_steps:  # every stage done
        if not state["evals"] or state["evals"][-1]["step"] != state["step"]:
            do_eval()
        checkpoint()
        finish(out, model, state, log_path, echo)
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
    inh = state.get("inherited") or {"step": 0, "tokens": 0, "wall_seconds": 0.0}
    rate = (state["tokens_seen"] - inh["tokens"]) / max(state["train_seconds"], 1e-9)
    mfu = rate * state["flops_per_token"] / (state["peak_gflops"] * 1e9)
    own = [r for r in train if r["step"] > inh["step"] and "mfu" in r]
    by_len = {}
    for r in own:  # windows of log_every steps, weighted by their time
        w = r.get("window_seconds", 1.0)
        a = by_len.setdefault(r["seq"], [0.0, 0.0])
        a[0] += r["mfu"] * w
        a[1] += w
    cfgj = json.loads((out / "config.json").read_text())
    lines = [
        "# bert-zh: the book's small Chinese BERT (MLM + NSP)", "",
        "Pre-trained by `python -m kexue.pretrain` (library `kexue`, *Scientific Spaces, Reproduced*) "
        "for the chapters on NSP zero-shot (https://kexue.fm/archives/8671), PET, BERT-whitening and CoSENT. "
        "Load with `kexue.models.bert_zh.load()` (checks `sha256`).", "",
        "## Data", "",
        "`kexue.data.chinese.pretraining_documents()`: inews train contents, People's Daily 1998, 三国演义 "
        "(see the book's README, section \"Data and the book's own Chinese BERT\"); no evaluation text. "
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
    if inh["step"]:
        lines += ["", f"This run started at step {inh['step']:,} ({inh['tokens']:,} tokens) from the weights in "
                  f"`{Path(inh['from']).name}` ({inh['wall_seconds'] / 60:.1f} min of earlier training), with a "
                  "fresh optimizer; the numbers below from here on are this run's own."]
    lines += ["", f"Steps {state['step']:,}; tokens processed {state['tokens_seen']:,} (non-padding); "
              f"wall time {state['wall_seconds'] / 60:.1f} min ({state['train_seconds'] / 60:.1f} min in "
              f"training steps); {rate:,.0f} tokens/s; {state['flops_per_token'] / 1e6:.1f} MFLOP/token → "
              f"MFU {mfu:.0%} of the measured fp32 matmul peak {state['peak_gflops']:.0f} GFLOP/s.", "",
              *([("Model FLOPs utilisation of the training steps by sequence length (time-weighted over "
                  "the log windows, against the peak measured at the start of the same run): "
                  + ", ".join(f"{n} tokens {a[0] / a[1]:.0%}" for n, a in sorted(by_len.items())) + "."), ""]
                if by_len else []),
              f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}, Python {platform.python_version()}.", ""]
    if last:
        lines += [f"Last logged training window: MLM loss {last['mlm_loss']:.3f}, NSP loss "
                  f"{last['nsp_loss']:.3f}, MLM accuracy {last['mlm_acc']:.3f}, NSP accuracy {last['nsp_acc']:.3f}.", ""]
    keys = [k for k in ("heldout_mlm_loss", "heldout_mlm_acc", "heldout_nsp_acc", "thucnews_nsp_first",
                        "thucnews_nsp_second", "thucnews_pet_calibrated", "stsb_mean_whitened")
            if any(k in e for e in state["evals"])]
    keys = keys[:3] + [k + "_128" for k in keys[:3] if any(k + "_128" in e for e in state["evals"])] + keys[3:]
    lines += ["## Evaluations (every checkpoint)", "",
              "| step | tokens | stage | probes | " + " | ".join(keys) + " |", "|---" * (4 + len(keys)) + "|"]
    for e in state["evals"]:
        lines.append(f"| {e['step']} | {e['tokens']:,} | {e['stage']} | {e.get('probes') or 'original'} | "
                     + " | ".join(f"{e[k]:.3f}" if k in e else "" for k in keys) + " |")
    lines += ["", "Probes 'original': 20 THUCNews dev headlines per topic drawn from all of dev; 'disjoint': 20 per "
              "topic from the dev headlines outside the nsp-zero-shot chapter's prompt-selection subset "
              "(`kexue.pretrain.PROMPT_SELECTION_DEV`), with held-out MLM/NSP also at 128 tokens (columns `_128`). "
              "THUCNews: NSP zero-shot with the prompt 这是一则{标签}新闻。 first or second (chance 0.10); "
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


# The nsp-zero-shot chapter chooses its prompts on ``fixed_subset(len(dev), 400, 0)`` of THUCNews dev;
# the checkpoint probes use dev headlines outside that subset, so that choosing a checkpoint, choosing
# a prompt and testing never see the same headline (issue 18 §3).
PROMPT_SELECTION_DEV = {"thucnews": (400, 0)}
PROBES = "disjoint"   # the name of these probe sets in the log (the shipped run's older probes have none)


def checkpoint_probe_indices(labels, per_label: int, seed: int, exclude: tuple[int, int] | None = None) -> np.ndarray:
    """Sorted indices of ``per_label`` items per label among those not in ``fixed_subset(len(labels),
    *exclude)`` (a chapter's prompt-selection subset), drawn with ``seed``."""
    from .zeroshot import fixed_subset, stratified_subsample

    y = np.asarray(labels)
    keep = np.ones(len(y), bool)
    if exclude is not None:
        keep[fixed_subset(len(y), *exclude)] = False
    rest = np.flatnonzero(keep)
    return np.sort(rest[stratified_subsample(y[rest], per_label, seed)])


def default_eval_sets(tok, heldout, seed: int = 1234, thucnews_per_label: int = 20,
                      stsb_pairs: int = 500, whitening_sentences: int = 1000,
                      long_seq_len: int | None = 128) -> EvalSets:
    """The book's checkpoint evaluations on the real data (``kexue.data.chinese``): held-out MLM/NSP
    at 64 and ``long_seq_len`` tokens, THUCNews dev (``thucnews_per_label`` headlines per topic, none
    of them in the nsp-zero-shot chapter's prompt-selection subset :data:`PROMPT_SELECTION_DEV`),
    STS-B valid (``stsb_pairs``), whitening fitted on ``whitening_sentences`` STS-B train sentences;
    subsamples fixed by ``seed``."""
    from .data import chinese

    heads, labels = zip(*chinese.thucnews("dev"))
    names = list(chinese.THUCNEWS_LABELS_ZH)   # 教育 娱乐 … in the order of the label indices
    y = np.array([int(l) for l in labels])
    pick = checkpoint_probe_indices(y, thucnews_per_label, seed, PROMPT_SELECTION_DEV["thucnews"])
    rng = np.random.default_rng(seed)
    valid = list(chinese.stsb_zh("valid"))
    vi = np.sort(rng.choice(len(valid), min(stsb_pairs, len(valid)), replace=False))
    train = list(chinese.stsb_zh("train"))
    sents = sorted({s for a, b, _ in train for s in (a, b)})
    wi = np.sort(rng.choice(len(sents), min(whitening_sentences, len(sents)), replace=False))
    return EvalSets(heldout=heldout, thucnews=([heads[i] for i in pick], y[pick], names),
                    stsb=([valid[i][0] for i in vi], [valid[i][1] for i in vi],
                          np.array([float(valid[i][2]) for i in vi]), [sents[i] for i in wi]),
                    seed=seed, long_seq_len=long_seq_len, name=PROBES)


def thucnews_probe_indices(labels, per_label: int = 20, seed: int = 1234, *, shipped_run: bool = False) -> np.ndarray:
    """Indices into THUCNews dev (``labels``: its label indices) of the checkpoint probes that
    :func:`default_eval_sets` draws with its defaults: outside :data:`PROMPT_SELECTION_DEV`, or with
    ``shipped_run=True`` the older probes the shipped run was evaluated (and its checkpoint chosen)
    with, drawn from all of dev. For the nsp-zero-shot chapter's disjointness check
    (https://kexue.fm/archives/8671)."""
    if shipped_run:
        from .zeroshot import stratified_subsample

        return np.sort(stratified_subsample(np.asarray(labels), per_label, seed))
    return checkpoint_probe_indices(labels, per_label, seed, PROMPT_SELECTION_DEV["thucnews"])


def prompt_selection_indices(name: str, n_items: int, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of the dev subset (``n`` of ``n_items``) on which the nsp-zero-shot chapter
    chooses its prompts for set ``name``. For a set in :data:`PROMPT_SELECTION_DEV` it is drawn with
    ``seed`` *inside* that fixed subset (the whole of it at its size, whatever the seed), so that it
    never meets the checkpoint probes drawn outside it; for another set, ``fixed_subset(n_items, n,
    seed)`` (https://kexue.fm/archives/8671)."""
    from .zeroshot import fixed_subset

    if name not in PROMPT_SELECTION_DEV:
        return fixed_subset(n_items, n, seed)
    pool = fixed_subset(n_items, *PROMPT_SELECTION_DEV[name])
    return pool[fixed_subset(len(pool), n, seed)]


def recipe_with_tokens(recipe: dict, tokens: int, threads: int | None = None) -> dict:
    """The recipe with every stage's budget set to ``tokens``, no re-budgets, and optionally another
    thread count (a smoke-size stand-in of a recorded recipe; https://kexue.fm/archives/8671,
    chapter nsp-zero-shot)."""
    stages = [{k: v for k, v in sp.items() if k != "rebudgets"} | {"tokens": int(tokens)} for sp in recipe["stages"]]
    config = dict(recipe.get("config", {}), **({"threads": int(threads)} if threads is not None else {}))
    return {**recipe, "config": config, "stages": stages}


def pretrained_from_recipe(recipe, out, documents=None, *, eval_sets_fn=None, echo: bool = False) -> Path:
    """The folder ``out`` holding the model that ``recipe`` (a dict or a recipe file) pre-trains from
    scratch, as ``python -m kexue.pretrain --recipe FILE --out OUT`` writes it. A finished run of the
    same recipe there is used as is (nothing trained); an unfinished one is resumed; a folder holding
    another run is an error; otherwise the recipe runs (``documents``: the corpus, by default
    ``kexue.data.chinese.pretraining_documents()``). Load the result with ``bert_zh.load(out)``.
    For the nsp-zero-shot chapter's model-size extension (https://kexue.fm/archives/8671)."""
    if not isinstance(recipe, dict):
        recipe = load_recipe(recipe)
    out = Path(out)
    state_path = out / "checkpoint" / "state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())
        if state.get("recipe") != recipe:
            raise FileExistsError(f"{out} holds another pre-training run (not this recipe); choose another folder")
        done = [json.loads(l) for l in open(out / "log.jsonl") if '"done"' in l]
        if done and done[-1]["step"] == state["step"] and (out / "model.safetensors").exists():
            return out
    if documents is None:
        from .data import chinese

        documents = chinese.pretraining_documents()
    threads = torch.get_num_threads()   # run() sets the recipe's thread count; the caller keeps its own
    try:
        _run_recipe(recipe, out, documents, state_path.exists(), eval_sets_fn, echo)
    finally:
        torch.set_num_threads(threads)
    return out


def _run_recipe(recipe: dict, out: Path, documents, resume: bool, eval_sets_fn, echo: bool) -> None:
    if resume:
        run(out, documents, resume=True, eval_sets_fn=eval_sets_fn, echo=echo, command="pretrained_from_recipe (resume)",
            heldout_fraction=recipe.get("heldout_fraction", 0.01), min_count=recipe.get("min_count", 3))
    else:
        run(out, documents, recipe=recipe, eval_sets_fn=eval_sets_fn, echo=echo, command="pretrained_from_recipe")


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
    p.add_argument("--recipe", help="replay a recorded recipe (JSON: config and stages) from scratch into --out")
    p.add_argument("--from-stage", help="with --recipe and --init-weights: start at this stage")
    p.add_argument("--init-weights", help="with --recipe --from-stage: the weights the stage starts from (a shipped folder)")
    a = p.parse_args(argv)
    if a.recipe:
        if a.resume or a.tokens or a.minutes or a.extend_tokens or a.stage_tokens:
            p.error("--recipe is its own budget: no --resume, --tokens, --minutes, --extend-tokens or --stage-tokens")
        if bool(a.from_stage) != bool(a.init_weights):
            p.error("--from-stage and --init-weights go together")
    elif a.from_stage or a.init_weights:
        p.error("--from-stage/--init-weights need --recipe")
    if a.extend_tokens and not a.resume:
        p.error("--extend-tokens needs --resume (it extends an existing run)")
    if a.stage_tokens and not a.resume:
        p.error("--stage-tokens needs --resume (it re-budgets the unfinished stage of a run)")
    if not a.resume and not a.recipe and a.tokens is None and a.minutes is None:
        p.error("give a budget: --tokens N or --minutes M (or --recipe FILE)")
    cfg = PretrainConfig(**{k: getattr(a, k) for k in ("seed", "batch", "seq_len", "long_seq_len",
                            "long_fraction", "lr", "warmup", "weight_decay", "clip", "dropout", "threads",
                            "log_every", "checkpoint_minutes")})
    torch.set_num_threads(cfg.threads)
    from .data import chinese

    docs = chinese.pretraining_documents()
    eval_fn = None if a.no_task_eval else default_eval_sets
    command = "python -m kexue.pretrain " + " ".join(sys.argv[1:] if argv is None else argv)
    if a.recipe:
        run(a.out, docs, recipe=load_recipe(a.recipe), eval_sets_fn=eval_fn, command=command,
            init_weights=(a.init_weights, a.from_stage) if a.init_weights else None)
        return
    run(a.out, docs, cfg=cfg, tokens=int(a.tokens) if a.tokens else None, minutes=a.minutes,
        resume=a.resume, extend_tokens=int(a.extend_tokens) if a.extend_tokens else None,
        stage_tokens=int(a.stage_tokens) if a.stage_tokens else None, eval_sets_fn=eval_fn, command=command)


if __name__ == "__main__":
    main()
