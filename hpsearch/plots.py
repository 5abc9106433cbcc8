"""PNG plots of one final run: loss curves, test segments, predicted vs true, IC over time.

Figures are built with matplotlib's object API (`Figure`, no pyplot), so no GUI backend is ever
touched and nothing global is left behind; PNGs are rendered by the Agg canvas.
Every plot that can show a flat forecast says so in numbers too: the prediction's std beside
the truth's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

TRUE_COLOR = "black"
PRED_COLOR = "tab:orange"
BASELINE_STYLE = {"zero": ("tab:gray", "--"), "train_mean": ("tab:purple", ":")}


def new_figure(width: float = 8.0, height: float = 5.0, layout: str | None = "constrained") -> Figure:
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def std_note(pred: np.ndarray, true: np.ndarray) -> str:
    ps, ts = float(np.std(pred)), float(np.std(true))
    ratio = ps / ts if ts > 0 else float("nan")
    return f"std of prediction {ps:.3g} vs truth {ts:.3g} ({ratio:.1%})"


def baseline_lines(ax, baselines: dict[str, float] | None) -> None:
    for name, value in (baselines or {}).items():
        color, style = BASELINE_STYLE.get(name, ("tab:gray", "-."))
        ax.axhline(value, color=color, ls=style, lw=1, label=f"predict {name.replace('_', ' ')}")


def integer_axis(ax, label: str) -> None:
    """An x axis of whole numbers (epochs, trial numbers)."""
    ax.set_xlabel(label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_curves(
    train_loss: list[float],
    valid_loss: list[float],
    best_epoch: int,
    baselines: dict[str, float] | None,
    path: Path,
    title: str,
) -> Path:
    """Train and validation MSE per epoch, the kept (best) epoch, and the naive baselines."""
    fig = new_figure()
    ax = fig.add_subplot()
    epochs = np.arange(1, len(valid_loss) + 1)
    ax.plot(epochs, train_loss, "o-", ms=3, label="train (epoch mean)")
    ax.plot(epochs, valid_loss, "o-", ms=3, label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="tab:green", lw=1, label=f"best epoch {best_epoch} (weights kept)")
    baseline_lines(ax, baselines)
    integer_axis(ax, "epoch")
    ax.set_ylabel("MSE")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save(fig, path)


def test_segments(
    dates: np.ndarray,
    pred: np.ndarray,
    true: np.ndarray,
    ticker: str,
    path: Path,
    seed: int,
    n: int = 8,
    length: int = 64,
) -> Path:
    """`n` random test segments of one ticker, prediction against truth, in a 2 x 4 grid.

    dates (N,), pred and true (N, W), in date order. W = 1: each panel is `length` consecutive
    forecast days. W > 1: each panel is one day's W-step forecast against the W true labels.
    """
    # A fixed grid: constrained layout would double the cost of this figure, the slowest one.
    fig = new_figure(14, 6.5, layout=None)
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.08, top=0.88, wspace=0.25, hspace=0.4)
    axes = fig.subplots(2, (n + 1) // 2, squeeze=False).ravel()
    N, W = pred.shape
    rng = np.random.default_rng(seed)
    if N == 0:
        fig.suptitle(f"{ticker}: no test windows")
        return save(fig, path)
    if W == 1:
        span = min(length, max(8, N // 4), N)  # short test segments still fill the grid
        starts = np.sort(rng.choice(N - span + 1, size=min(n, N - span + 1), replace=False))
        drawn = len(starts)
        days = np.arange(span)  # trading days, not calendar dates: no weekend gaps, cheap ticks
        for ax, s in zip(axes, starts, strict=False):
            ax.plot(days, true[s : s + span, 0], color=TRUE_COLOR, lw=1, label="truth")
            ax.plot(days, pred[s : s + span, 0], color=PRED_COLOR, lw=1.5, label="prediction")
            ax.set_title(f"{str(dates[s])[:10]} .. {str(dates[s + span - 1])[:10]}", fontsize=8)
            ax.set_xlabel("trading day", fontsize=7)
            ax.tick_params(labelsize=7)
        what = f"{span} consecutive days per panel, 1-step forecast"
    else:
        picks = np.sort(rng.choice(N, size=min(n, N), replace=False))
        drawn = len(picks)
        steps = np.arange(1, W + 1)
        for ax, i in zip(axes, picks, strict=False):
            ax.plot(steps, true[i], color=TRUE_COLOR, lw=1, label="truth")
            ax.plot(steps, pred[i], color=PRED_COLOR, lw=1.5, label="prediction")
            ax.set_title(f"forecast made {str(dates[i])[:10]}", fontsize=8)
            ax.set_xlabel("step", fontsize=7)
            ax.tick_params(labelsize=7)
        what = f"one {W}-step forecast per panel"
    for ax in axes[drawn:]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{ticker}, test segment: {what}; {std_note(pred, true)}", fontsize=10)
    return save(fig, path)


def scatter(pred: np.ndarray, true: np.ndarray, path: Path, title: str, seed: int = 0) -> Path:
    """Predicted vs true on every test row (at most 20 000 drawn), with y = x and the OLS fit."""
    p, t = np.asarray(pred, np.float64).ravel(), np.asarray(true, np.float64).ravel()
    if len(p) > 20_000:
        pick = np.random.default_rng(seed).choice(len(p), size=20_000, replace=False)
        p, t = p[pick], t[pick]
    fig = new_figure(6.5, 6)
    ax = fig.add_subplot()
    ax.scatter(t, p, s=3, alpha=0.25, color=PRED_COLOR, edgecolors="none")
    lo, hi = np.quantile(t, [0.005, 0.995]) if len(t) else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], color=TRUE_COLOR, lw=1, label="prediction = truth")
    if len(t) > 1 and np.std(t) > 0:
        slope, icpt = np.polyfit(t, p, 1)
        ax.plot(
            [lo, hi],
            [icpt + slope * lo, icpt + slope * hi],
            "--",
            color="tab:blue",
            lw=1,
            label=f"least squares fit, slope {slope:.3g}",
        )
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)  # same range on both axes: a flat forecast is a horizontal band
    ax.set_xlabel("true label")
    ax.set_ylabel("predicted label")
    ax.set_title(f"{title}\n{std_note(p, t)}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    return save(fig, path)


def ic_over_time(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, window: int = 20) -> Path:
    """Daily cross-sectional IC per segment, its `window`-date rolling mean and overall mean."""
    fig = new_figure(11, 4.5)
    ax = fig.add_subplot()
    colors = {"valid": "tab:blue", "test": "tab:red"}
    for name, (dates, ic) in series.items():
        color = colors.get(name, "tab:gray")
        ok = np.isfinite(ic)
        if not ok.any():
            ax.plot([], [], color=color, label=f"{name}: IC undefined (constant forecast)")
            continue
        d, v = dates[ok], ic[ok]
        ax.plot(d, v, color=color, lw=0.5, alpha=0.35)
        if len(v) >= window:
            rolled = np.convolve(v, np.ones(window) / window, mode="valid")
            ax.plot(d[window - 1 :], rolled, color=color, lw=1.8, label=f"{name}: {window}-date mean")
        ax.hlines(v.mean(), d[0], d[-1], color=color, ls="--", lw=1, label=f"{name}: mean IC {v.mean():.3f}")
    ax.axhline(0, color=TRUE_COLOR, lw=0.7)
    ax.set_ylabel("cross-sectional Pearson IC (step 1)")
    ax.set_title("IC over time: correlation across tickers of prediction and truth, per date")
    ax.legend(fontsize=8, ncols=2)
    return save(fig, path)
