"""PNG plots (matplotlib, Agg): the paper's points beside comparable measured setups; every
run of the other setups on its own plot; learning curves from each run's metrics.csv.

Encoding, the same in every plot: colour = backbone, marker = method, fill = source (paper
hollow, measured filled), variants labelled beside their point ("aug", "vote"); the
parameter axis is logarithmic in millions with plain tick labels; legends sit outside the axes.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from harness.results.tables import BACKBONE_TITLES, DATASET_TITLES, METHOD_TITLES

COLORS = {"point_bert": "tab:blue", "point_mae": "tab:orange", "point_m2ae": "tab:green"}
MARKERS = {"full": "s", "point_peft": "o", "point_peft_faithful": "D"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _param_axis(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters (M, log scale)")


def _legend(ax, backbones, methods, extra: list | None = None) -> None:
    """Colours of the backbones and markers of the methods that are plotted (only those)."""
    plt = _plt()
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=BACKBONE_TITLES[b])
               for b, c in COLORS.items() if b in set(backbones)]
    handles += [plt.Line2D([], [], color="gray", marker=m, linestyle="", label=METHOD_TITLES[k])
                for k, m in MARKERS.items() if k in set(methods)]
    handles += extra or []
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)


def paper_plot(dataset: str, setups: pd.DataFrame, reference: pd.DataFrame) -> bytes:
    """Accuracy vs trainable parameters: paper hollow, comparable measured setups filled (legacy
    selection, the paper's), with ± std bars."""
    plt = _plt()
    ref = reference[(reference.dataset == dataset) & reference.accuracy_value.notna() & reference.params_value.notna()]
    meas = setups[(setups.dataset == dataset) & setups.comparable & (setups.legacy_n > 0) & setups.trainable_M.notna()]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for r in ref.itertuples():
        ax.scatter(r.params_value, r.accuracy_value, s=55, marker=MARKERS.get(r.method, "^"),
                   facecolors="none", edgecolors=COLORS.get(r.backbone, "gray"), linewidths=1.4)
        tag = " ".join(t for t in (r.variant, "vote" if r.voting == "yes" else "") if t)
        if tag:
            ax.annotate(tag, (r.params_value, r.accuracy_value), textcoords="offset points", xytext=(5, -9), fontsize=7)
    for r in meas.itertuples():
        color = COLORS.get(r.backbone, "gray")
        ax.errorbar(r.trainable_M, r.legacy_mean, yerr=0 if math.isnan(r.legacy_std) else r.legacy_std,
                    fmt=MARKERS.get(r.method, "^"), color=color, markersize=7, capsize=3)
        tag = " ".join(t for t in (r.variant, "vote" if r.legacy_kind == "vote" else "", f"n={r.n}") if t)
        ax.annotate(tag, (r.trainable_M, r.legacy_mean), textcoords="offset points", xytext=(5, 4), fontsize=7)
    _param_axis(ax)
    ax.set_ylabel("accuracy (%)")
    title = f"{DATASET_TITLES.get(dataset, dataset)}: paper vs measured (legacy selection)"
    ax.set_title(title if len(meas) else title + "\n(no comparable measured setup yet)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, [*ref.backbone, *meas.backbone], [*ref.method, *meas.method], [plt.Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="", label="paper"),
                 plt.Line2D([], [], color="black", marker="o", linestyle="", label="measured (mean ± std)")])
    return _png(fig)


def runs_plot(df: pd.DataFrame, title: str) -> bytes:
    """One point per run (not per setup): legacy accuracy vs trainable parameters, with each
    dataset's majority-class accuracy as a dashed line."""
    return _png(runs_figure(df, title))


def runs_figure(df: pd.DataFrame, title: str):
    plt = _plt()
    df = df[df.legacy.notna() & df.trainable.notna()]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for r in df.itertuples():
        ax.scatter(r.trainable / 1e6, r.legacy, s=45, marker=MARKERS.get(r.method, "^"),
                   color=COLORS.get(r.backbone, "gray"), alpha=0.85)
        tag = " ".join(t for t in (r.variant, f"s{r.seed}") if t)
        ax.annotate(tag, (r.trainable / 1e6, r.legacy), textcoords="offset points", xytext=(5, 3), fontsize=6)
    for dataset, maj in df.groupby("dataset").majority.first().dropna().items():
        ax.axhline(maj, color="gray", linestyle="--", linewidth=1)
        ax.annotate(f"majority class ({DATASET_TITLES.get(dataset, dataset)})", (0.01, maj), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=7, color="gray")
    _param_axis(ax)
    ax.set_ylabel("accuracy (%), best test epoch")
    ax.set_title(f"{title}\n{len(df)} runs, one point each", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax, df.backbone, df.method)
    return fig


def read_metrics(path: Path) -> tuple[pd.DataFrame | None, str | None]:
    """A run's metrics.csv, or (None, one line naming the file) when it cannot be read."""
    try:
        frame = pd.read_csv(path, encoding="utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        return None, f"{path}: not a readable metrics table ({str(err).splitlines()[0][:80]})"
    if "epoch" not in frame.columns:
        return None, f"{path}: has no 'epoch' column"
    return frame, None


def curves_plot(curves: dict[str, pd.DataFrame], title: str) -> bytes:
    """Per run: test accuracy and training loss per epoch (two panels, one line per run)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, (acc, loss) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    for i, (label, frame) in enumerate(curves.items()):
        style = ["-", "--", ":", "-."][i // 10 % 4]
        if "test_acc" in frame:
            acc.plot(frame.epoch, pd.to_numeric(frame.test_acc, errors="coerce"), style, marker=".", label=label)
        if "train_loss" in frame:
            loss.plot(frame.epoch, pd.to_numeric(frame.train_loss, errors="coerce"), style, marker=".", label=label)
    acc.set(xlabel="epoch", ylabel="test accuracy (%)")
    loss.set(xlabel="epoch", ylabel="training loss")
    for ax in (acc, loss):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.suptitle(title, fontsize=9)
    handles, labels = acc.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 0.95))
    fig.tight_layout()
    return _png(fig)
