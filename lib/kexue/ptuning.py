"""P-tuning: learned continuous prompt tokens for a masked language model, the article's gradient-mask
trick, the LSTM prompt encoder, and the few-shot training and evaluation around them.

Source: "P-tuning:自动构建模版,释放语言模型潜能", https://kexue.fm/archives/8295 (chapter
``p-tuning``), after X. Liu et al., "GPT Understands, Too", arXiv 2103.10385.

A cloze template ``[CLS] [P1]..[P4] [MASK] [P5]..[P8] text [SEP]`` is read by the MLM head at the
[MASK] position; the label words 很 (positive) / 不 (negative) are the verbalizer. The prompt tokens
[P1]..[P8] are new rows appended to the word-embedding table. With the whole model frozen, only those
rows learn: the article makes every other row's gradient zero with

    E' = E ⊙ M + sg(E) ⊙ (1 − M)                                            (eq. 1)

where M is 1 on the prompt rows and 0 elsewhere and sg is stop-gradient. E' equals E in the forward
pass, and ∂L/∂E = M ⊙ ∂L/∂E', zero outside the prompt rows (:func:`masked_rows`).
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import stats
from .bert.batching import batches_by_length, pad_right
from .bert.heads import ClsHeadClassifier, classifier_logits, device_of, label_word_logits
from .bert.objective import IGNORE, Vocab, mask_tokens, vocab_of
from .train import fit
from .zeroshot import accuracy, fixed_subset, pet_label_scores
from .zeroshot import calibrate as zeroshot_calibrate

LABEL_WORDS = ("不", "很")   # verbalizer, index = label: 0 negative (不满意), 1 positive (很满意)


def prompt_tokens(n_prompt: int) -> list[str]:
    """The names of the prompt tokens, ``[P1]`` … ``[Pn]``."""
    return [f"[P{i}]" for i in range(1, n_prompt + 1)]


def prompt_template(n_left: int = 4, n_right: int = 4) -> str:
    """The article's template ``[P1]..[P_l] {mask} [P_l+1]..[P_l+r]`` (text follows it), in the
    ``{mask}`` form that :func:`kexue.zeroshot.pet_label_scores` reads
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    names = prompt_tokens(n_left + n_right)
    return "".join(names[:n_left]) + "{mask}" + "".join(names[n_left:])


def add_prompt_tokens(tok, n_prompt: int):
    """A copy of ``tok`` that knows ``[P1]``..``[Pn]`` as special tokens with ids V..V+n−1 (V = the
    base vocabulary size), so that templates holding them are tokenised like any other text. The
    caller's tokenizer is left unchanged (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    new = copy.deepcopy(tok)
    v = len(tok)
    new.add_special_tokens({"additional_special_tokens": prompt_tokens(n_prompt)})
    ids = new.convert_tokens_to_ids(prompt_tokens(n_prompt))
    if ids != list(range(v, v + n_prompt)):
        raise ValueError(f"prompt tokens got ids {ids}, expected {v}..{v + n_prompt - 1}")
    return new


def masked_rows(weight: torch.Tensor, row_mask: torch.Tensor) -> torch.Tensor:
    """Eq. (1): W ⊙ M + sg(W) ⊙ (1 − M) with a (rows, 1) 0/1 mask M. The value equals W bit for
    bit (x·1 + x·0 = x in floating point); the gradient reaching W is M ⊙ (upstream gradient), so
    rows with M = 0 get exactly zero (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    return weight * row_mask + weight.detach() * (1.0 - row_mask)


class LSTMPromptEncoder(nn.Module):
    """The P-tuning paper's prompt encoder: n free input vectors → 2-layer bi-LSTM (d/2 per
    direction) → MLP (d → d → d, ReLU) → the n prompt embeddings. The prompt vectors are then
    coupled through the LSTM instead of being independent rows (arXiv 2103.10385, §3;
    https://kexue.fm/archives/8295, chapter ``p-tuning``)."""

    def __init__(self, n_prompt: int, d: int, init: torch.Tensor | None = None):
        super().__init__()
        self.inputs = nn.Parameter(init.clone() if init is not None else torch.randn(n_prompt, d) * 0.02)
        self.lstm = nn.LSTM(d, d // 2, num_layers=2, bidirectional=True, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))

    def forward(self) -> torch.Tensor:
        return self.mlp(self.lstm(self.inputs[None])[0])[0]


class PromptEmbedding(nn.Module):
    """A word-embedding table of V + n rows (the base V rows, then n prompt rows), looked up through
    eq. (1) so that only the rows where ``row_mask`` is 1 can learn. With ``encoder`` the prompt rows
    come from an :class:`LSTMPromptEncoder` instead and the table itself is frozen
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""

    def __init__(self, base_weight: torch.Tensor, prompt_init: torch.Tensor, *, train_base: bool = False,
                 encoder: LSTMPromptEncoder | None = None):
        super().__init__()
        self.n_base, self.n_prompt = base_weight.shape[0], prompt_init.shape[0]
        self.weight = nn.Parameter(torch.cat([base_weight.detach(), prompt_init.detach()]).clone())
        mask = torch.zeros(self.n_base + self.n_prompt, 1, dtype=self.weight.dtype)
        if train_base:
            mask[:self.n_base] = 1.0
        if encoder is None:       # with an encoder the table's prompt rows are not used
            mask[self.n_base:] = 1.0
        self.weight.requires_grad_(bool(mask.any()))
        self.register_buffer("row_mask", mask)
        self.encoder = encoder

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def base_rows(self) -> torch.Tensor:
        """The first V rows of E' (the ordinary tokens), what the tied MLM decoder reads."""
        return masked_rows(self.weight[:self.n_base], self.row_mask[:self.n_base])

    def table(self) -> torch.Tensor:
        """E' of eq. (1), with the prompt rows replaced by the encoder's output when there is one."""
        w = masked_rows(self.weight, self.row_mask)
        if self.encoder is not None:
            w = torch.cat([w[:self.n_base], self.encoder().to(w.dtype)])
        return w

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.table())

    def trainable_count(self) -> int:
        """Entries that can change: (rows with M = 1) × d, plus the encoder's parameters."""
        n = int(self.row_mask.sum().item()) * self.embedding_dim if self.weight.requires_grad else 0
        if self.encoder is not None:
            n += sum(p.numel() for p in self.encoder.parameters())
        return n


class TiedDecoder(nn.Module):
    """The MLM decoder of a prompted BERT: logits = h · E'[:V]ᵀ + b, reading the ordinary rows of the
    :class:`PromptEmbedding` that replaced the input embeddings, so that input and output embeddings
    stay one matrix when the model is trained (BERT ties them; a decoder keeping the original matrix
    would drift apart from a trained input copy). ``weight`` is that (V, d) view
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""

    def __init__(self, prompt_embedding: PromptEmbedding, bias: torch.Tensor | None):
        super().__init__()
        object.__setattr__(self, "_pe", prompt_embedding)  # not a submodule: it lives in bert.embeddings
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        return self._pe.base_rows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def attach_prompts(model, tok, n_prompt: int, *, train_model: bool = False, lstm: bool = False,
                   seed: int = 0) -> PromptEmbedding:
    """Give a ``BertForPreTraining`` n prompt tokens (ids V..V+n−1) in place. The prompt rows start
    as copies of the embeddings of n random ordinary (non-special) tokens of ``tok``'s vocabulary,
    drawn with ``seed``. ``train_model=False`` freezes
    every weight (the model is put in eval mode: dropout off) so that only the prompt rows learn
    (P-tuning with a frozen model); ``True`` trains all weights too. The MLM decoder is replaced by a
    :class:`TiedDecoder` on the new table's first V rows, so input and output embeddings stay tied
    while they train (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    base = model.bert.embeddings.word_embeddings.weight
    ordinary = torch.as_tensor(vocab_of(tok).ordinary_ids)
    ordinary = ordinary[ordinary < base.shape[0]]
    gen = torch.Generator().manual_seed(seed)
    rows = ordinary[torch.randperm(len(ordinary), generator=gen)[:n_prompt]]
    init = base.detach()[rows.to(base.device)].clone()
    for p in model.parameters():
        p.requires_grad_(train_model)
    enc = None
    if lstm:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            enc = LSTMPromptEncoder(n_prompt, base.shape[1], init).to(base.device, base.dtype)
    pe = PromptEmbedding(base, init, train_base=train_model, encoder=enc).to(base.device)
    model.bert.embeddings.word_embeddings = pe
    old = model.cls.predictions.decoder
    if not torch.equal(old.weight, base):
        raise ValueError("attach_prompts: the MLM decoder is not tied to the input embeddings; a prompted "
                         "model would read two different matrices (tie them first: model.tie_weights())")
    model.cls.predictions.decoder = TiedDecoder(pe, old.bias)
    model.train(train_model)
    return pe


# ------------------------------------------------------------------------------- inputs

def encode_cloze(tok, texts: list[str], template: str, max_length: int = 128):
    """Token ids ``[CLS] pre [MASK] post text [SEP]`` for ``template = pre + "{mask}" + post``, the
    text truncated to fit ``max_length`` exactly as :func:`kexue.zeroshot.pet_label_scores` does.
    Returns (list of id lists, [MASK] position, first text position) (chapter ``p-tuning``)."""
    pre, post = template.split("{mask}")
    tmpl = (tok(pre, add_special_tokens=False)["input_ids"] + [tok.mask_token_id]
            + tok(post, add_special_tokens=False)["input_ids"])
    room = max_length - 2 - len(tmpl)
    body = tok(list(texts), add_special_tokens=False)["input_ids"]
    ids = [[tok.cls_token_id] + tmpl + t[:room] + [tok.sep_token_id] for t in body]
    return ids, 1 + tmpl.index(tok.mask_token_id), 1 + len(tmpl)


def cloze_loss(model, inp: torch.Tensor, att: torch.Tensor, mask_pos: int, y, label_ids, *,
               aux_mlm_from: int | None = None, vocab: Vocab | None = None,
               rng: np.random.Generator | None = None) -> torch.Tensor:
    """Cross-entropy over the label words at the [MASK]: logits z_c = MLM-head(h_mask)[label_c],
    L = −log softmax(z)_y (the verbalizer restricted to its k words,
    :func:`kexue.bert.heads.label_word_logits`). With ``aux_mlm_from`` (the first text position)
    the text is also corrupted BERT-style (:func:`corrupt_text` with ``vocab``, the
    :class:`~kexue.bert.objective.Vocab` of the tokenizer that encoded ``inp``) and the MLM
    cross-entropy over the vocabulary at those positions is added: the article's auxiliary loss.
    Inputs are moved to the model's device (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    mlm_labels = None
    if aux_mlm_from is not None:
        inp, mlm_labels = corrupt_text(inp, aux_mlm_from, vocab, rng)
    dev = device_of(model)
    inp, att = inp.to(dev), att.to(dev)
    hidden = model.bert(input_ids=inp, attention_mask=att, token_type_ids=torch.zeros_like(inp))[0]
    logits = label_word_logits(model, hidden[:, mask_pos], label_ids)
    loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(y), device=dev))
    if mlm_labels is not None and (mlm_labels != IGNORE).any():
        mlm_labels = mlm_labels.to(dev)
        sel = mlm_labels != IGNORE
        loss = loss + F.cross_entropy(model.cls.predictions(hidden[sel]), mlm_labels[sel])
    return loss


def corrupt_text(inp: torch.Tensor, text_from: int, vocab: Vocab, rng: np.random.Generator,
                 prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's 80/10/10 corruption (:func:`kexue.bert.objective.mask_tokens`) restricted to the text:
    positions before ``text_from`` (the template, its prompt tokens and the label [MASK]) and the
    special tokens of ``vocab`` ([SEP], [PAD], prompt tokens) are never selected; a random
    replacement is an ordinary token of ``vocab``. Returns CPU tensors (inputs, MLM labels,
    :data:`~kexue.bert.objective.IGNORE` elsewhere) (https://kexue.fm/archives/8295)."""
    arr = inp.cpu().numpy()
    special = (np.arange(arr.shape[1])[None, :] < text_from) | vocab.is_special(arr)
    corrupted, labels = mask_tokens(arr, special, rng, mask_id=vocab.mask_id, replace_ids=vocab.ordinary_ids,
                                    prob=prob)
    return torch.as_tensor(corrupted), torch.as_tensor(labels)


# ------------------------------------------------------------------------------- training

def few_shot_run(base_model, tok, train: list, dev: list, test: list, *, head: str = "cloze",
                 template: str = "{mask}满意。", n_prompt: int = 0, train_model: bool = False,
                 lstm: bool = False, aux_mlm: bool = False, lr: float = 1e-2, steps: int = 100,
                 batch_size: int = 32, eval_every: int = 10, max_length: int = 128,
                 eval_batch_size: int = 32, seed: int = 0, patience: int | None = None) -> dict:
    """Train one few-shot classifier on ``train`` ((text, label) pairs), early-stopped on ``dev``
    accuracy, and report its ``test`` accuracy. ``head="cls"``: fine-tune all weights with a linear
    head on [CLS] (:class:`kexue.bert.heads.ClsHeadClassifier`). ``head="cloze"``: the ``template`` read by the MLM
    head with the verbalizer :data:`LABEL_WORDS` (:func:`cloze_loss`); ``n_prompt`` > 0 adds
    prompt tokens (:func:`attach_prompts`; with ``train_model=False`` only they learn, eq. 1;
    ``lstm`` for the LSTM prompt encoder), ``aux_mlm`` adds the auxiliary MLM loss. The base
    model is deep-copied, never changed; the copy stays on the base model's device. Returns
    accuracies, best step, steps run, trainable count, seconds. ``patience``: early stopping after
    that many dev evaluations without a new best (:func:`kexue.train.fit`; None: all ``steps``,
    the chapter's earlier runs). ``eval_batch_size``: 32 is ≈ 1.4 × faster than 256 on the 2-core CPU (cache-sized activations)
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    t0 = time.perf_counter()
    model = copy.deepcopy(base_model)
    texts, y = [t for t, _ in train], np.array([lab for _, lab in train])
    dev_x, dev_y = [t for t, _ in dev], [lab for _, lab in dev]
    test_x, test_y = [t for t, _ in test], [lab for _, lab in test]
    dev_ = device_of(model)
    pad = tok.pad_token_id
    if head == "cls":
        clf = ClsHeadClassifier(model, seed=seed)
        clf.train()
        enc = lambda xs: tok(list(xs), truncation=True, max_length=max_length)["input_ids"]
        ids, dev_ids = enc(texts), enc(dev_x)
        loss_on = lambda idx, rng: F.cross_entropy(clf(*pad_right(ids, idx, pad)),
                                                   torch.as_tensor(y[idx], device=dev_))
        evaluate = lambda: accuracy(classifier_logits(clf, dev_ids, eval_batch_size, pad), dev_y)
        params, trainable = list(clf.parameters()), sum(p.numel() for p in clf.parameters())
        out = fit(params, loss_on, len(texts), steps=steps, batch_size=batch_size, lr=lr,
                  evaluate=evaluate, eval_every=eval_every, seed=seed, patience=patience)
        test_acc = accuracy(classifier_logits(clf, enc(test_x), eval_batch_size, pad), test_y)
    elif head == "cloze":
        ptok = tok
        if n_prompt:
            ptok = add_prompt_tokens(tok, n_prompt)
            pe = attach_prompts(model, tok, n_prompt, train_model=train_model, lstm=lstm, seed=seed)
            trainable = pe.trainable_count() + (sum(p.numel() for n, p in model.named_parameters()
                                                    if p.requires_grad and "word_embeddings" not in n))
        else:
            for p in model.parameters():
                p.requires_grad_(train_model)
            model.train(train_model)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        label_ids = [tok.convert_tokens_to_ids(w) for w in LABEL_WORDS]
        ids, mask_pos, text_from = encode_cloze(ptok, texts, template, max_length)
        vocab = vocab_of(ptok)
        loss_on = lambda idx, rng: cloze_loss(model, *pad_right(ids, idx, pad), mask_pos, y[idx], label_ids,
                                              aux_mlm_from=text_from if aux_mlm else None,
                                              vocab=vocab, rng=rng)
        score = lambda xs: pet_label_scores(model, ptok, xs, list(LABEL_WORDS), template=template,
                                            max_length=max_length, batch_size=eval_batch_size)
        evaluate = lambda: accuracy(score(dev_x), dev_y)
        out = fit(list(model.parameters()), loss_on, len(texts), steps=steps, batch_size=batch_size,
                  lr=lr, evaluate=evaluate, eval_every=eval_every, seed=seed, patience=patience)
        test_acc = accuracy(score(test_x), test_y)
    else:
        raise ValueError("head must be 'cls' or 'cloze'")
    return {"test_acc": test_acc, "dev_acc": out["best_dev"], "best_step": out["best_step"],
            "steps_run": out["steps_run"], "history": out["history"], "trainable": int(trainable),
            "seconds": time.perf_counter() - t0}


def few_shot_subset(train: list, fraction: float, seed: int) -> list:
    """round(fraction · n) examples drawn uniformly at random without replacement with ``seed``
    (the article labels 1 % of its training set: ``train_frac = 0.01``)."""
    return [train[i] for i in fixed_subset(len(train), max(2, round(fraction * len(train))), seed)]


def char_bag_accuracy(train: list, test: list, C: float = 1.0) -> float:
    """Lexical control: logistic regression on binary character-presence features (a bag of
    characters, sklearn), trained on the same labelled ``train`` pairs, accuracy on ``test``."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = CountVectorizer(analyzer="char", binary=True)
    X = vec.fit_transform([t for t, _ in train])
    clf = LogisticRegression(C=C, max_iter=2000).fit(X, [lab for _, lab in train])
    return float(clf.score(vec.transform([t for t, _ in test]), [lab for _, lab in test]))


# ------------------------------------------------------------------------------- experiments

def few_shot_grid(models: dict, tok, train: list, dev: list, test: list, methods: dict, *,
                  fractions, seeds, common: dict | None = None, done: list | None = None,
                  echo: bool = True) -> list[dict]:
    """Run every method for every labelled ``fraction`` of ``train`` and every seed. ``methods``
    maps a name to :func:`few_shot_run` keyword arguments plus ``model`` (a key of ``models``,
    default ``"pretrained"``). A seed draws its labelled subset once (:func:`few_shot_subset`) and
    every method trains on that same subset; ``common`` holds the shared settings; rows in ``done``
    (same method, fraction and seed) are reused instead of re-run. Returns one row per run:
    method, fraction, seed, n_labels, lr and the result of :func:`few_shot_run`
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    common = dict(common or {})
    old = {(r["method"], r["fraction"], r["seed"]): r for r in (done or [])}
    rows = []
    for frac in fractions:
        for seed in seeds:
            sub = few_shot_subset(train, frac, seed)
            line = []
            for name, spec in methods.items():
                spec = dict(spec)
                model = models[spec.pop("model", "pretrained")]
                kw = {**common, **spec}
                key = (name, frac, seed)
                if key in old:
                    row = old[key]
                else:
                    r = few_shot_run(model, tok, sub, dev, test, seed=seed, **kw)
                    row = {"method": name, "fraction": frac, "seed": seed, "n_labels": len(sub),
                           "lr": kw.get("lr"), **r}
                rows.append(row)
                line.append(f"{name} {row['test_acc']:.3f}")
            if echo:
                print(f"{frac:.0%} ({len(sub)} labels), seed {seed}: test " + " | ".join(line), flush=True)
    return rows


def summarise(rows: list[dict], key: str = "test_acc") -> dict:
    """{(method, fraction): (mean, sample std, n)} of ``key`` over seeds (:func:`kexue.stats.mean_sd`,
    ddof 1: NaN for one seed) (chapter ``p-tuning``)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["fraction"]), []).append(r[key])
    return {k: (*stats.mean_sd(v), len(v)) for k, v in groups.items()}


def per_seed(rows: list[dict], method: str, fraction: float, key: str = "test_acc") -> np.ndarray:
    """``key`` of ``method`` at ``fraction`` for each seed, in seed order (the paired values of a
    per-seed comparison) (chapter ``p-tuning``)."""
    got = sorted((r["seed"], r[key]) for r in rows if r["method"] == method and r["fraction"] == fraction)
    return np.array([v for _, v in got], dtype=np.float64)


def zero_shot_accuracy(model, tok, data: list, template: str, max_length: int = 128,
                       batch_size: int = 32) -> tuple[float, float]:
    """PET zero-shot with the verbalizer :data:`LABEL_WORDS`: (raw accuracy, accuracy after the
    prior calibration :func:`kexue.zeroshot.calibrate`) of ``[CLS] template text [SEP]``
    (https://kexue.fm/archives/7764; the article's "PET zero-shot" row, chapter ``p-tuning``)."""
    texts, y = [t for t, _ in data], [lab for _, lab in data]
    s = pet_label_scores(model, tok, texts, list(LABEL_WORDS), template=template, max_length=max_length,
                         batch_size=batch_size)
    return accuracy(s, y), accuracy(zeroshot_calibrate(s), y)


def mask_trick_checks(model, tok, data: list, n_prompt: int = 8, max_length: int = 64, steps: int = 3,
                      lr: float = 1e-2, seed: int = 0) -> dict:
    """The implementation checks of eq. (1) on a real model: attach ``n_prompt`` prompts to a copy
    of ``model`` (frozen) and report whether (a) the prompt embedding's output equals the plain
    lookup of its table bit for bit, and the MLM logits of a text without prompts are unchanged;
    (b) after one backward of the loss with the auxiliary MLM term, the gradient is exactly zero
    outside the prompt rows and non-zero on each of them; (c) the count of entries that can change
    equals n_prompt·d; (d) after ``steps`` Adam steps every weight except the prompt rows is
    unchanged bit for bit and the model is still in eval mode (https://kexue.fm/archives/8295)."""
    m = copy.deepcopy(model)
    v = model.config.vocab_size
    pe = attach_prompts(m, tok, n_prompt, seed=seed)
    ptok = add_prompt_tokens(tok, n_prompt)
    dev = device_of(m)
    texts, y = [t for t, _ in data], np.array([lab for _, lab in data])
    ids, pos, text_from = encode_cloze(ptok, texts, prompt_template(n_prompt // 2, n_prompt - n_prompt // 2),
                                       max_length)
    inp, att = pad_right(ids, range(len(ids)), tok.pad_token_id)
    inp, att = inp.to(dev), att.to(dev)
    plain = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt").to(dev)
    with torch.no_grad():
        same_forward = torch.equal(pe(inp), F.embedding(inp, pe.weight)) and torch.equal(
            m(**plain).prediction_logits, model(**plain).prediction_logits)
    before = {k: t.clone() for k, t in m.state_dict().items()}
    label_ids = [tok.convert_tokens_to_ids(w) for w in LABEL_WORDS]
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        cloze_loss(m, inp, att, pos, y, label_ids, aux_mlm_from=text_from, vocab=vocab_of(ptok),
                   rng=rng).backward()
        if step == 0:
            g = pe.weight.grad
            grad_zero_outside = bool((g[:v] == 0).all()) and all(
                p.grad is None for p in m.parameters() if p is not pe.weight)
            grad_on_prompts = bool((g[v:].abs().sum(1) > 0).all())
            nonzero = int((g != 0).sum())
        opt.step()
    after = m.state_dict()
    key = "bert.embeddings.word_embeddings.weight"
    unchanged = all(torch.equal(after[k], t) for k, t in before.items() if k != key) and torch.equal(
        after[key][:v], before[key][:v])
    return {"prompt_ids": (v, v + n_prompt - 1), "forward_identical": bool(same_forward),
            "grad_zero_outside_prompts": grad_zero_outside, "grad_on_every_prompt_row": grad_on_prompts,
            "nonzero_grad_entries": nonzero, "trainable": pe.trainable_count(),
            "n_prompt_times_d": n_prompt * pe.embedding_dim, "frozen_weights_unchanged": bool(unchanged),
            "prompt_rows_moved": not torch.equal(after[key][v:], before[key][v:]), "eval_mode": not m.training}


# ------------------------------------------------------------------------------- GPT: a frozen causal LM

# A causal LM has no [MASK]: the class is read from the next-token distribution at the end of the
# input. The sequence is [BOS] [P1]..[P_l] before·text·after [P_l+1]..[P_l+r] and the label words are
# scored as the token that follows (bojone's GPT variant of P-tuning: four prompts before the text,
# four after it, the label word last). Prompt tokens are not vocabulary rows here but n free vectors
# that replace the input embeddings at their slots; the whole LM is frozen, so only they get
# gradients (the causal-LM counterpart of eq. (1)). Slots are coded 0 for an ordinary token and
# k + 1 for prompt k, so that 0-padding marks ordinary (masked-out) positions.

def single_token_ids(tok, words) -> list[int]:
    """The vocabulary id of each label word; raises ValueError when a word is not exactly one token."""
    out = []
    for w in words:
        t = tok(w, add_special_tokens=False)["input_ids"]
        if len(t) != 1:
            raise ValueError(f"label word {w!r} is {len(t)} tokens {t} for this tokenizer; "
                             "the verbalizer needs one token per label")
        out.append(t[0])
    return out


def _start_id(tok) -> int:
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor a [CLS] token to start the sequence with")
    return int(start)


def encode_causal(tok, texts: list[str], *, n_left: int = 0, n_right: int = 0, before: str = "",
                  after: str = "", max_length: int = 64) -> tuple[list, list]:
    """(ids, slots) of ``[BOS] P_1..P_l before text after P_l+1..P_l+r`` per text, the label word to
    be predicted next. ``before``/``after`` are fixed words of a manual template (tokenised
    separately from the text); the text is truncated so that a sequence has at most ``max_length``
    tokens. At a prompt slot the id is the start id (a placeholder: its embedding is replaced) and
    the slot code is k + 1 for prompt k; elsewhere the code is 0 (https://kexue.fm/archives/8295)."""
    start = _start_id(tok)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"] if s else []
    pre, post = enc(before), enc(after)
    room = max_length - 1 - n_left - n_right - len(pre) - len(post)
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room for the text after the template")
    body = tok(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []
    ids, slots = [], []
    for t in body:
        seq = [start] + [start] * n_left + pre + t[:room] + post + [start] * n_right
        code = [0] + list(range(1, n_left + 1)) + [0] * (len(pre) + len(t[:room]) + len(post)) + list(
            range(n_left + 1, n_left + n_right + 1))
        ids.append(seq)
        slots.append(code)
    return ids, slots


def causal_label_logits(lm, inp: torch.Tensor, att: torch.Tensor, slot: torch.Tensor, label_ids,
                        prompts: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, k) next-token logits of the k label words after the last real token of each
    right-padded row: input embeddings from the LM's own table, replaced by ``prompts[code − 1]``
    where ``slot`` > 0; the final hidden state at the last position times the output embedding rows
    of the label words (with the model's final logit soft-capping, if it has one)."""
    dev = device_of(lm)
    inp, att, slot = inp.to(dev), att.to(dev), slot.to(dev)
    emb = lm.get_input_embeddings()(inp)
    if prompts is not None and bool((slot > 0).any()):
        emb = torch.where((slot > 0)[..., None], prompts.to(emb.dtype)[(slot - 1).clamp(min=0)], emb)
    hidden = lm.base_model(inputs_embeds=emb, attention_mask=att)[0]
    last = hidden[torch.arange(len(inp)), att.sum(1) - 1]
    out = lm.get_output_embeddings()
    ids = torch.as_tensor(list(label_ids), device=dev)
    logits = F.linear(last, out.weight[ids], None if out.bias is None else out.bias[ids])
    cap = getattr(lm.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _slot_batches(ids: list, slots: list, idx, batch_size: int):
    sub_ids, sub_slots = [ids[i] for i in idx], [slots[i] for i in idx]
    for pos, inp, slot, att in batches_by_length(sub_ids, sub_slots, batch_size):
        yield np.asarray(idx)[pos], inp, att, slot


@torch.no_grad()
def causal_label_scores(lm, ids: list, slots: list, label_ids, prompts: torch.Tensor | None = None,
                        batch_size: int = 16) -> np.ndarray:
    """(n, k) label-word log-probabilities, log softmax over the k words (:func:`causal_label_logits`
    batched by length; the LM is used in eval mode)."""
    was = lm.training
    lm.eval()
    out = np.empty((len(ids), len(label_ids)))
    for idx, inp, att, slot in _slot_batches(ids, slots, range(len(ids)), batch_size):
        out[idx] = torch.log_softmax(causal_label_logits(lm, inp, att, slot, label_ids, prompts).double(), -1).cpu().numpy()
    lm.train(was)
    return out


def causal_zero_shot(lm, tok, data: list, before: str, after: str, *, label_words=LABEL_WORDS,
                     max_length: int = 64, batch_size: int = 16, reference: list | None = None) -> tuple[float, float]:
    """Manual-template zero-shot of a causal LM: (raw accuracy, accuracy after the prior calibration
    :func:`kexue.zeroshot.calibrate`) of ``[BOS] before text after`` → next token ∈ label words.
    ``reference``: texts (or (text, label) pairs; labels unused) whose mean label scores are the
    prior, e.g. the dev split, so that test reviews never fit the calibration; None: the prior is
    taken over ``data`` itself (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    texts, y = [t for t, _ in data], [lab for _, lab in data]
    label_ids = single_token_ids(tok, label_words)
    score = lambda xs: causal_label_scores(lm, *encode_causal(tok, xs, before=before, after=after,
                                                              max_length=max_length), label_ids, batch_size=batch_size)
    s = score(texts)
    ref = None if reference is None else score([r[0] if isinstance(r, tuple) else r for r in reference])
    return accuracy(s, y), accuracy(zeroshot_calibrate(s, ref), y)


def causal_prompt_init(lm, token_pool: list, n_prompt: int, seed: int) -> torch.Tensor:
    """(n_prompt, d) starting prompt vectors: the LM's input embeddings of ``n_prompt`` tokens drawn
    with ``seed`` from ``token_pool`` (e.g. the tokens of the labelled texts, so that the prompts
    start among embeddings the model knows, not among unused vocabulary rows)."""
    pool = sorted(set(int(t) for t in token_pool))
    if len(pool) < n_prompt:
        raise ValueError(f"need at least {n_prompt} distinct tokens to initialise the prompts, got {len(pool)}")
    rows = np.random.default_rng(seed).choice(pool, size=n_prompt, replace=False)
    with torch.no_grad():
        return lm.get_input_embeddings()(torch.as_tensor(rows, device=device_of(lm))).detach().clone()


def causal_few_shot_run(lm, tok, train: list, dev: list, test: list | None, *, n_left: int = 4,
                        n_right: int = 4, label_words=LABEL_WORDS, lr: float = 1e-2, steps: int = 40,
                        batch_size: int = 16, eval_every: int = 10, max_length: int = 64,
                        eval_batch_size: int = 16, seed: int = 0, patience: int | None = None) -> dict:
    """P-tuning of a frozen causal LM (the article's GPT row): ``n_left`` prompt vectors before the
    text and ``n_right`` after it (``n_right = 0``: a prefix; ``n_left = 0``: a suffix), trained
    with Adam on the cross-entropy over the label words (:func:`causal_label_logits`) and
    early-stopped on ``dev`` accuracy (:func:`fit`, with ``patience`` if given); ``test`` (None to skip) is scored with the best
    prompts. ``lm`` must be frozen (:func:`kexue.models.gemma.freeze`): it is never changed.
    Returns accuracies, best step, history, trainable count, seconds and the prompts
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    if any(p.requires_grad for p in lm.parameters()):
        raise ValueError("freeze the causal LM first (kexue.models.gemma.freeze): only the prompts may learn")
    t0 = time.perf_counter()
    label_ids = single_token_ids(tok, label_words)
    kw = dict(n_left=n_left, n_right=n_right, max_length=max_length)
    ids, slots = encode_causal(tok, [t for t, _ in train], **kw)
    y = np.array([lab for _, lab in train])
    dev_ids, dev_slots = encode_causal(tok, [t for t, _ in dev], **kw)
    dev_y = [lab for _, lab in dev]
    prompts = nn.Parameter(causal_prompt_init(lm, [t for s in ids for t in s[1:]], n_left + n_right, seed))

    def loss_on(idx, rng):
        sub, inp, att, slot = next(_slot_batches(ids, slots, idx, len(idx)))   # one padded batch
        logits = causal_label_logits(lm, inp, att, slot, label_ids, prompts)
        return F.cross_entropy(logits, torch.as_tensor(y[sub], device=logits.device), reduction="sum") / len(idx)

    evaluate = lambda: accuracy(causal_label_scores(lm, dev_ids, dev_slots, label_ids, prompts, eval_batch_size), dev_y)
    out = fit([prompts], loss_on, len(train), steps=steps, batch_size=batch_size, lr=lr, evaluate=evaluate,
              eval_every=eval_every, seed=seed, patience=patience)
    test_acc = None if test is None else causal_test_accuracy(lm, tok, test, prompts, label_words=label_words,
                                                              batch_size=eval_batch_size, **kw)
    return {"test_acc": test_acc, "dev_acc": out["best_dev"], "best_step": out["best_step"],
            "steps_run": out["steps_run"], "history": out["history"], "trainable": int(prompts.numel()),
            "seconds": time.perf_counter() - t0, "prompts": prompts.detach().clone()}


def causal_test_accuracy(lm, tok, data: list, prompts: torch.Tensor, *, n_left: int, n_right: int,
                         label_words=LABEL_WORDS, max_length: int = 64, batch_size: int = 16) -> float:
    """Accuracy on ``data`` of trained causal-LM ``prompts`` (from :func:`causal_few_shot_run`)."""
    ids, slots = encode_causal(tok, [t for t, _ in data], n_left=n_left, n_right=n_right, max_length=max_length)
    return accuracy(causal_label_scores(lm, ids, slots, single_token_ids(tok, label_words), prompts, batch_size),
                    [lab for _, lab in data])


def causal_zero_shot_select(lm, tok, dev: list, test: list, templates, *, label_words=LABEL_WORDS,
                            max_length: int = 64, batch_size: int = 16) -> dict:
    """The GPT row's manual-template zero-shot: each ``after`` template of ``templates`` scored on
    ``dev`` raw and calibrated (prior from ``dev``), the best (template, scoring) on dev accuracy
    then scored once on ``test`` with the prior still from ``dev`` (test labels and test scores never
    choose or fit anything). Returns the dev table, the choice and the test accuracy
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    kw = dict(label_words=label_words, max_length=max_length, batch_size=batch_size)
    on_dev = {t: causal_zero_shot(lm, tok, dev, "", t, reference=dev, **kw) for t in templates}
    best_t, kind = max(((t, k) for t in templates for k in (0, 1)), key=lambda tk: on_dev[tk[0]][tk[1]])
    test_acc = causal_zero_shot(lm, tok, test, "", best_t, reference=dev, **kw)[kind]
    return {"zero_shot_dev": {t: list(v) for t, v in on_dev.items()}, "template": best_t,
            "scoring": ("raw", "calibrated")[kind], "test": test_acc}


def causal_placement_runs(lm, tok, subsets: dict, dev: list, test: list, placements: dict, *,
                          fraction: float, **run_kw) -> list[dict]:
    """:func:`causal_few_shot_run` for every labelled subset (``{seed: [(text, label), ...]}``) and every
    prompt placement (``{name: (n_left, n_right)}``: the article's 4 + 4, prefix only, suffix only),
    one row per run with method, fraction, seed, test/dev accuracy, best step, steps run, trainable
    count and seconds; ``run_kw`` (lr, steps, batch_size, eval_every, max_length, patience) is shared by every arm
    (https://kexue.fm/archives/8295, chapter ``p-tuning``)."""
    rows = []
    for s, sub in subsets.items():
        for name, (left, right) in placements.items():
            out = causal_few_shot_run(lm, tok, sub, dev, test, n_left=left, n_right=right, seed=s, **run_kw)
            rows.append({"method": name, "fraction": fraction, "seed": s,
                         **{k: out[k] for k in ("test_acc", "dev_acc", "best_step", "steps_run", "trainable",
                                                "seconds")}})
    return rows
