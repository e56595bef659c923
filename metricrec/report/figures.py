"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas.

No pyplot: figures are made with :class:`matplotlib.figure.Figure` and rendered by
:class:`~matplotlib.backends.backend_agg.FigureCanvasAgg`, so making a report neither needs a
display nor changes the caller's matplotlib backend.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["training_curves", "item_map", "study_history", "study_curves", "importances", "require_matplotlib"]

_DPI = 100


def require_matplotlib() -> None:
    """A one-line ImportError naming the extra when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("metricrec report needs matplotlib: pip install 'metricrec[plot]'") from None


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def training_curves(epochs: Sequence[Mapping[str, Any]], best_epoch: int | None = None) -> bytes:
    """Loss, validation Recall@50/@100 and seconds per epoch (three panels).

    Parameters
    ----------
    epochs : sequence of dict
        ``report.json``'s ``epochs`` (``epoch``, ``loss``, ``seconds``, ``eval_seconds``, ``valid``).
    best_epoch : int, optional
        Marked by a dashed line.
    """
    fig, (ax_loss, ax_valid, ax_sec) = _figure(13, 3.6, 3)
    ep = np.array([e["epoch"] for e in epochs])
    ax_loss.plot(ep, [e["loss"] for e in epochs], color="tab:red", marker=".")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss (sum over the epoch)")
    for k, colour in (("recall@50", "tab:blue"), ("recall@100", "tab:green")):
        pts = [(e["epoch"], e["valid"][k]) for e in epochs if (e.get("valid") or {}).get(k) is not None]
        if pts:
            x, y = zip(*pts)
            ax_valid.plot(x, y, marker=".", color=colour, label=f"valid {k.replace('recall', 'Recall')}")
    if ax_valid.lines:
        ax_valid.legend(loc="lower right")
    else:
        ax_valid.text(0.5, 0.5, "no validation part", ha="center", va="center", transform=ax_valid.transAxes)
    ax_valid.set(title="validation", xlabel="epoch", ylabel="recall")
    train_s = np.array([e["seconds"] for e in epochs])
    eval_s = np.array([e.get("eval_seconds", 0.0) for e in epochs])
    ax_sec.bar(ep, train_s, color="tab:gray", label="training")
    ax_sec.bar(ep, eval_s, bottom=train_s, color="tab:orange", label="validation")
    ax_sec.set(title=f"seconds per epoch (total {train_s.sum():.1f} s + {eval_s.sum():.1f} s)", xlabel="epoch",
               ylabel="seconds")
    ax_sec.legend(loc="upper right")
    if best_epoch is not None:
        for ax in (ax_loss, ax_valid):
            ax.axvline(best_epoch, color="black", linestyle="--", linewidth=0.8)
    return _png(fig)


def item_map(xy: np.ndarray, *, values: np.ndarray | None = None, codes: np.ndarray | None = None,
             names: Sequence[str] = (), title: str = "", caption: str = "") -> bytes:
    """A scatter of items in 2-D, coloured by ``values`` (log scale: popularity) or by category
    ``codes`` into ``names`` (the last name, "other", drawn grey and underneath)."""
    from matplotlib.colors import LogNorm

    fig, ax = _figure(7.5, 6.2)
    size = 6 if len(xy) > 5000 else 12
    if codes is not None:
        cmap = _category_colours(len(names))
        other = len(names) - 1
        order = np.argsort(codes == other, kind="stable")[::-1]  # "other" first, so underneath
        ax.scatter(xy[order, 0], xy[order, 1], c=[cmap[c] for c in codes[order]], s=size, linewidths=0)
        for i, name in enumerate(names):
            n = int((codes == i).sum())
            if n:
                ax.scatter([], [], color=cmap[i], label=f"{name} ({n})", s=20)
        ax.legend(loc="best", fontsize=8, markerscale=1.2, frameon=True)
    else:
        vals = np.asarray(values if values is not None else np.zeros(len(xy)), dtype=np.float64)
        order = np.argsort(vals, kind="stable")  # popular items on top
        norm = LogNorm(vmin=1, vmax=max(2.0, vals.max())) if vals.max() >= 1 else None
        sc = ax.scatter(xy[order, 0], xy[order, 1], c=np.maximum(vals[order], 1), cmap="viridis", norm=norm,
                        s=size, linewidths=0)
        fig.colorbar(sc, ax=ax, label="training users per item (log)")
    ax.set(title=title, xlabel=caption or "component 1", ylabel="component 2")
    ax.set_aspect("equal", adjustable="datalim")
    return _png(fig)


def _category_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    tab = colormaps["tab10"].colors
    return [tab[i % len(tab)] for i in range(n - 1)] + [(0.8, 0.8, 0.8)]


def study_history(trials: Sequence[Mapping[str, Any]]) -> bytes:
    """Value per trial (complete: blue; pruned: grey, at its last reported value) and the best so far."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(8, 3.8)
    best, xs, ys = float("-inf"), [], []
    n_pruned = sum(t["state"] == "PRUNED" for t in trials)
    for t in trials:
        if t["state"] == "COMPLETE" and t["value"] is not None:
            star = bool(t.get("defaults"))
            ax.scatter(t["number"], t["value"], color="tab:green" if star else "tab:blue", marker="*" if star else "o",
                       s=90 if star else 22, zorder=4 if star else 3)
            best = max(best, t["value"])
        elif t["state"] == "PRUNED" and t.get("intermediate"):
            # above the best-so-far line, in black: a study with many pruned trials must show them
            ax.scatter(t["number"], list(t["intermediate"].values())[-1], color="black", marker="x", s=30,
                       linewidths=1.2, zorder=5)
        if best > float("-inf"):
            xs.append(t["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax.scatter([], [], color="tab:blue", label="complete")
    if any(t.get("defaults") for t in trials):
        ax.scatter([], [], color="tab:green", marker="*", s=90, label="the defaults")
    ax.scatter([], [], color="black", marker="x", label=f"pruned ({n_pruned}, last value)")
    ax.legend(loc="best", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title="optimisation history", xlabel="trial", ylabel="valid Recall@50")
    return _png(fig)


def study_curves(trials: Sequence[Mapping[str, Any]]) -> bytes:
    """Best-so-far validation Recall@50 per epoch of every trial (pruned ones grey)."""
    fig, ax = _figure(8, 3.8)
    for t in trials:
        inter = t.get("intermediate") or {}
        if not inter:
            continue
        x = [int(k) for k in inter]
        pruned = t["state"] == "PRUNED"
        ax.plot(x, list(inter.values()), color="tab:gray" if pruned else "tab:blue", alpha=0.45 if pruned else 0.8,
                linewidth=0.9)
    ax.set(title="learning curves of the trials (grey: pruned)", xlabel="epoch", ylabel="best valid Recall@50 so far")
    return _png(fig)


def importances(scores: Mapping[str, float]) -> bytes:
    """Horizontal bars of parameter importances (largest on top)."""
    items = sorted(scores.items(), key=lambda kv: kv[1])
    fig, ax = _figure(7, 0.5 + 0.45 * max(1, len(items)))
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:purple")
    ax.set(title="parameter importances (fANOVA)", xlabel="share of the variance of the value")
    return _png(fig)
