"""kexue: the tested library behind *Scientific Spaces, Reproduced*.

Each chapter of the book reproduces one article of Su Jianlin's blog (https://kexue.fm) and calls
this package for everything longer than a few lines. This module holds the conventions every
chapter shares: the run scale, the device, and seeding.

Randomness has one rule. A function that runs an experiment or builds a data set (``run_mlm``,
``train_adding``, ``jacobian_table``, ``profile_over_draws``, ``make_moons_split``, ...) takes
``seed: int`` and draws everything from it, so a chapter's result is fixed by the seeds it names.
A building block that fills one tensor or module and is called many times in a row from the same
stream (``trunc_normal_``, ``init_bert_``, ``orthogonal_matrix``, ``mlm_mask``, a batch sampler)
takes ``generator: torch.Generator``, as ``torch.nn.init`` does; with none it uses torch's global
stream, seeded by :func:`setup`. Weights are drawn on the CPU and then moved to the device, so a
seed gives the same model on every machine.

Devices have one rule too. :func:`setup` chooses the device (CUDA when present) and remembers it:
:func:`current_device`. Every library function that builds a model or its batches takes
``device=None``, meaning that device (:func:`resolve_device`; an explicit argument wins), and every
function handed a model follows the model's own device. Before any ``setup`` the current device is
the CPU, so a test or script that never calls it computes where it always did.
"""
from __future__ import annotations

import os
import random
import warnings

__version__ = "0.1.0"

# tqdm.auto (imported by transformers) warns once per kernel when ipywidgets is absent; the warning
# shows a machine path and says nothing about the chapter. The book's progress bars are text.
warnings.filterwarnings("ignore", message="IProgress not found")

SCALES = ("smoke", "full", "large")
"""smoke: CI, seconds; full: the numbers the book shows (2-core CPU, <= 15 min); large: optional, GPU."""


def resolve_scale(default: str = "full") -> str:
    """The run scale of a chapter: ``$KEXUE_SCALE`` if set, else ``default``.

    A chapter's parameters cell calls this; papermill's ``-p scale ...`` overrides both.
    Used by every chapter (the scales of the README's "How a chapter is scored").
    """
    scale = os.environ.get("KEXUE_SCALE", "").strip() or default
    check_scale(scale)
    return scale


def check_scale(scale: str) -> str:
    """Raise a ``ValueError`` that names the valid scales when ``scale`` is not one of them."""
    if scale not in SCALES:
        raise ValueError(
            f"unknown scale {scale!r}: use one of {', '.join(SCALES)} "
            "(`kexue-run <slug> --scale full`, `make run SCALE=full`, $KEXUE_SCALE, "
            "or `-p scale full` to papermill)")
    return scale


def config_for(table: dict, scale: str, *, large_cpu_minutes: float | None = None) -> dict:
    """The row of a chapter's ``CONFIG`` table for ``scale``, with a clear error when it has none.

    A ``large`` run started without CUDA warns, since it is sized for a GPU: with the expected time
    when the chapter states it (``large_cpu_minutes``, measured on the book's 2-core CPU), and with
    how to switch to ``full``.
    """
    check_scale(scale)
    if scale not in table:
        raise ValueError(f"this chapter has no {scale!r} scale; it has: {', '.join(table)}")
    if scale == "large" and device() != "cuda":
        took = (f"takes about {large_cpu_minutes:.0f} min on a 2-core CPU" if large_cpu_minutes
                else "may take hours on this CPU")
        warnings.warn(
            f"scale 'large' is sized for a CUDA GPU and {took}; "
            "use scale 'full' for the numbers the book shows (`make run CHAPTER=<slug>`).",
            stacklevel=2)
    return dict(table[scale])


def device(prefer: str | None = None) -> str:
    """``"cuda"`` when available, else ``"cpu"``; ``$KEXUE_DEVICE`` or ``prefer`` can force one.

    Asking for CUDA on a machine without it is an error that says how to fall back.
    """
    import torch

    want = (prefer or os.environ.get("KEXUE_DEVICE", "")).strip().lower() or None
    if want is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if want not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {want!r}: use 'cpu' or 'cuda'")
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested (KEXUE_DEVICE=cuda) but torch sees no GPU; "
                           "unset KEXUE_DEVICE to run on the CPU")
    return want


_CURRENT_DEVICE: str | None = None


def current_device() -> str:
    """The device the last :func:`setup` chose (``"cuda"`` or ``"cpu"``); ``"cpu"`` before any setup.

    It is what ``device=None`` means throughout the library (:func:`resolve_device`), so a chapter
    that calls ``setup`` computes on the device its banner and its record name."""
    return _CURRENT_DEVICE or "cpu"


def resolve_device(device=None):
    """``torch.device(device)``, or the :func:`current_device` when ``device`` is None."""
    import torch

    return torch.device(current_device() if device is None else device)


def setup(seed: int = 0, scale: str | None = None, threads: int | None = None) -> str:
    """Seed Python, NumPy and torch, turn on deterministic algorithms, and print one line:
    device, torch version, scale and seed. Returns the device, and makes it the library's
    :func:`current_device`. Used by every chapter."""
    global _CURRENT_DEVICE
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if threads:
        torch.set_num_threads(threads)
    dev = device()
    _CURRENT_DEVICE = dev
    name = torch.cuda.get_device_name(0) if dev == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device {dev} ({name}) · torch {torch.__version__} · kexue {__version__} · "
          f"scale {scale or resolve_scale()} · seed {seed}")
    return dev
