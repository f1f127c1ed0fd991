"""One figure style for the whole book: white background (readable in dark mode), labelled
axes, a legend, a title that says what the figure shows. Used by every chapter."""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

STYLE = {
    "figure.figsize": (6.4, 3.8),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "lines.linewidth": 1.6,
    "figure.constrained_layout.use": True,
}


def use_style() -> None:
    """Apply the book's matplotlib style (call once in the setup cell)."""
    mpl.rcParams.update(STYLE)


def subplots(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None):
    """``plt.subplots`` in the book style, sized for ``ncols`` side-by-side panels."""
    use_style()
    w = width or (STYLE["figure.figsize"][0] if ncols == 1 else 4.0 * ncols)
    h = height or STYLE["figure.figsize"][1] * (1 if nrows == 1 else 0.8 * nrows)
    return plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)


def label(ax, title: str, xlabel: str, ylabel: str, *, logx: bool = False, logy: bool = False,
          legend: bool = True) -> None:
    """Title, axis labels (say the units), optional log axes and the legend of one panel."""
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend()
