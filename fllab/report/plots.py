"""Report figures as PNG bytes, drawn on the Agg canvas without pyplot.

Each function builds its own :class:`~matplotlib.figure.Figure` under a temporary
``rc_context`` and returns the encoded PNG, so nothing leaks into a caller's pyplot state and the
same data always gives the same bytes.
"""
from __future__ import annotations

import io
import math
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from .directions import (
    AUDITED_EPSILONS, REFERENCE_LABELS, REFERENCES, UNITS, direction_phrase, higher_is_better, known_direction, with_unit,
)
from .pareto import pareto_front
from .tables import as_number, fmt, short_names

DPI = 110
ACCENT = "#1f5fa8"
MUTED = "#9aa5b1"
FRONT = "#d1495b"

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e7ec",
    "grid.linewidth": 0.8,
    "axes.edgecolor": "#8a96a3",
    "axes.prop_cycle": matplotlib.cycler(color=[ACCENT, "#e07a1f", "#2a9d8f", FRONT, "#6c4f9c", "#8c6d46"]),
    "legend.frameon": False,
    "figure.facecolor": "white",
}

#: round-record keys that are bookkeeping, not series to plot
_ROUND_KEYS = {"round", "seconds", "clients", "train_loss", "test_accuracy", "test_loss"}
_MAX_EXTRA_SERIES = 4


def _png(figsize: tuple[float, float], draw: Callable[[Figure], None]) -> bytes:
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _series(rounds: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for rec in rounds:
        value = as_number(rec.get(key))
        if value is not None and math.isfinite(value):
            xs.append(rec["round"])
            ys.append(value)
    return xs, ys


def extra_series_keys(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numeric per-round keys beyond the standard ones (e.g. ``privacy.epsilon``), first-seen order."""
    keys = dict.fromkeys(k for rec in rounds for k in rec if k not in _ROUND_KEYS)
    return [k for k in keys if _series(rounds, k)[0]][:_MAX_EXTRA_SERIES]


def curves_figure(rounds: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]] = (),
                  reference_label: str = "reference") -> bytes | None:
    """Test accuracy, train/test loss and any extra numeric series against the round number.

    Rounds without evaluation simply have no accuracy/test-loss point; a panel with no data at all
    is left out, and with no numeric series at all there is no figure (None).  ``reference`` rounds
    (e.g. the no-attack twin's) are overlaid as dashed grey lines on the panels they share.
    """
    panels: list[tuple[str, list[tuple[str, str]]]] = []
    if _series(rounds, "test_accuracy")[0]:
        panels.append(("Test accuracy", [("test_accuracy", "test accuracy")]))
    losses = [(k, k.replace("_", " ")) for k in ("train_loss", "test_loss") if _series(rounds, k)[0]]
    if losses:
        panels.append(("Loss", losses))
    panels += [(key, [(key, key)]) for key in extra_series_keys(rounds)]
    if not panels:
        return None
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)

    def draw(fig: Figure) -> None:
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (title, series) in zip(axes, panels):
            overlaid = False
            for key, label in series:
                xs, ys = _series(rounds, key)
                line = ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.6, label=label)
                rx, ry = _series(reference, key)
                if rx:
                    ax.plot(rx, ry, linestyle="--", linewidth=1.3, color=line[0].get_color(), alpha=0.55,
                            label=f"{label}, {reference_label}")
                    overlaid = True
            ax.set_title(title)
            ax.set_xlabel("round")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if len(series) > 1 or overlaid:
                ax.legend(fontsize=7)
        for ax in axes[len(panels):]:
            ax.set_visible(False)

    return _png((3.6 * ncols, 2.8 * nrows), draw)


def partition_figure(partition: Mapping[str, Any]) -> bytes:
    """Client-by-class label counts: stacked bars of counts above a heat-map of class shares.

    Clients flagged ``"malicious": true`` (poisoning runs) get red, bold tick labels.
    """
    clients = partition["clients"]
    num_classes = int(partition["num_classes"])
    names = [str(n) for n in partition.get("class_names") or []]
    names = names if len(names) == num_classes else [str(c) for c in range(num_classes)]
    counts = np.array([list(c["labels"]) + [0] * (num_classes - len(c["labels"])) for c in clients], dtype=float)
    ids = [str(c.get("client", i)) for i, c in enumerate(clients)]
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    n = len(clients)
    width = min(max(6.0, 0.28 * n + 2.5), 16.0)
    height = 5.0 + min(num_classes, 40) * 0.06

    def draw(fig: Figure) -> None:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.1, 1])
        palette = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "viridis"]
        colours = [palette(c / max(num_classes - 1, 1)) if num_classes > 20 else palette(c) for c in range(num_classes)]
        base = np.zeros(n)
        positions = np.arange(n)
        for c in range(num_classes):
            top.bar(positions, counts[:, c], bottom=base, width=0.85, color=colours[c], label=names[c], linewidth=0)
            base += counts[:, c]
        top.set_ylabel("examples")
        top.set_title("Examples per client, by class")
        top.grid(axis="x", visible=False)
        if num_classes <= 20:
            top.legend(ncols=1 if num_classes <= 10 else 2, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        # an even split sits at a third of the scale, so IID noise does not look like skew
        vmax = max(float(shares.max()), min(1.0, 3.0 / max(num_classes, 1)))
        image = bottom.imshow(shares.T, aspect="auto", cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
        bottom.grid(False)
        bottom.set_title("Share of each class within a client")
        bottom.set_xlabel("client")
        bottom.set_ylabel("class")
        step = max(1, math.ceil(n / 40))
        bottom.set_xticks(positions[::step], [ids[i] for i in range(0, n, step)], fontsize=7)
        for tick, i in zip(bottom.get_xticklabels(), range(0, n, step)):
            if clients[i].get("malicious"):
                tick.set_color(FRONT)
                tick.set_fontweight("bold")
        cstep = max(1, math.ceil(num_classes / 25))
        bottom.set_yticks(range(0, num_classes, cstep), [names[c] for c in range(0, num_classes, cstep)], fontsize=7)
        fig.colorbar(image, ax=bottom, label="share", shrink=0.9)

    return _png((width, height), draw)


def _better_arrow(x: str, y: str) -> str:
    right, up = higher_is_better(x), higher_is_better(y)
    return {(True, True): "↗", (False, True): "↖", (True, False): "↘", (False, False): "↙"}[(right, up)]


def _axis_label(metric: str) -> str:
    return f"{with_unit(metric)}  ({direction_phrase(metric)})"


def reference_value(rows: Sequence[Mapping[str, Any]], metric: str) -> tuple[str, float] | None:
    """``(label, mean)`` of ``metric``'s no-information reference over the rows that carry it
    (e.g. the random-guess PSNR for ``inversion.psnr``), None when there is none."""
    ref = REFERENCES.get(metric)
    values = [v for row in rows if ref and (v := as_number(row.get(ref))) is not None and math.isfinite(v)]
    if not values:
        return None
    mean = float(np.mean(values))
    return f"{REFERENCE_LABELS.get(ref, ref)} ({fmt(mean)}{' ' + UNITS[ref] if ref in UNITS else ''})", mean


#: label positions tried around a point: (x offset, y offset) in points, horizontal and vertical anchor
_LABEL_SPOTS = [(6, 0, "left", "center"), (-6, 0, "right", "center"), (0, 6, "center", "bottom"),
                (0, -6, "center", "top"), (5, 5, "left", "bottom"), (-5, 5, "right", "bottom"),
                (5, -5, "left", "top"), (-5, -5, "right", "top")]


def _place_labels(fig: Figure, ax: Any, labels: list[tuple[str, float, float, bool]]) -> None:
    """Annotate points, trying spots around each until the label overlaps no other label or point.

    Spots on the inward side (``True``: left of the point) are tried first.  The layout is settled
    beforehand so display coordinates are final; a label that fits nowhere takes its first spot
    (an overlap is better than a missing label).
    """
    fig.draw_without_rendering()
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [text.get_window_extent(renderer) for text in ax.texts]
    marks = [ax.transData.transform((xv, yv)) for _, xv, yv, _ in labels]

    def annotate(text: str, xy: tuple[float, float], spot: tuple[int, int, str, str]) -> Any:
        dx, dy, ha, va = spot
        return ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                           fontsize=7, color="#3b4752")

    for k, (text, xv, yv, inward_left) in enumerate(labels):
        spots = sorted(_LABEL_SPOTS, key=lambda spot: (spot[0] > 0) == inward_left)
        for spot in spots:
            note = annotate(text, (xv, yv), spot)
            box = note.get_window_extent(renderer)
            if (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)
                    and not any(box.overlaps(other) for other in taken)
                    and not any(j != k and box.contains(*mark) for j, mark in enumerate(marks))):
                break
            note.remove()
        else:
            box = annotate(text, (xv, yv), spots[0]).get_window_extent(renderer)
        taken.append(box)


def ci95(row: Mapping[str, Any], metric: str) -> float:
    """Half-width of the 95% confidence interval a row carries for ``metric`` (0 when it has none)."""
    value = as_number(row.get(f"{metric}:ci95"))
    return value if value is not None and math.isfinite(value) else 0.0


def tradeoff_figure(rows: Sequence[Mapping[str, Any]], x: str, y: str, label_keys: Sequence[str] = ()) -> bytes:
    """Scatter of metric ``y`` against metric ``x`` with the Pareto front marked.

    Better directions come from :data:`~fllab.report.directions.HIGHER_IS_BETTER` (unknown metrics
    are assumed higher-is-better, and the axis label says so).  A row may carry ``"<metric>:ci95"``
    (the half-width of the 95% confidence interval of a mean over seeds) to draw an error bar.  Points are labelled with their ``label_keys`` values, named
    once in the legend title (all points when few, only the front when crowded).
    """
    points = [(row, as_number(row.get(x)), as_number(row.get(y))) for row in rows]
    points = [(row, xv, yv) for row, xv, yv in points
              if xv is not None and yv is not None and math.isfinite(xv) and math.isfinite(yv)]
    front = set(pareto_front([(xv, yv) for _, xv, yv in points], [higher_is_better(x), higher_is_better(y)]))
    names = short_names(list(label_keys))

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        if not points:
            ax.text(0.5, 0.5, f"no result has both {x} and {y}", ha="center", va="center", transform=ax.transAxes)
        for on_front in (False, True):
            chosen = [p for i, p in enumerate(points) if (i in front) == on_front]
            if not chosen:
                continue
            xs = [p[1] for p in chosen]
            ys = [p[2] for p in chosen]
            xerr = [ci95(p[0], x) for p in chosen]
            yerr = [ci95(p[0], y) for p in chosen]
            colour = FRONT if on_front else MUTED
            if any(xerr) or any(yerr):
                ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=colour, alpha=0.6, linewidth=1)
            ax.scatter(xs, ys, s=46 if on_front else 30, color=colour, zorder=3, edgecolors="white", linewidths=0.6,
                       label=f"Pareto front ({len(chosen)})" if on_front else f"dominated ({len(chosen)})")
        for metric, line in ((x, ax.axvline), (y, ax.axhline)):
            reference = reference_value([row for row, _, _ in points], metric)
            if reference is not None:
                line(reference[1], linestyle="--", linewidth=1, color="#6b7780", label=reference[0], zorder=1)
        ordered = sorted((points[i][1], points[i][2]) for i in front)
        if len(ordered) > 1:
            ax.plot(*zip(*ordered), color=FRONT, linewidth=1.2, alpha=0.8, zorder=2)
        ax.margins(x=0.12, y=0.1)
        ax.set_xlabel(_axis_label(x))
        ax.set_ylabel(_axis_label(y))
        ax.set_title(f"{y} vs {x}")
        corner_x = 0.98 if higher_is_better(x) else 0.02
        corner_y = 0.98 if higher_is_better(y) else 0.02
        ax.text(corner_x, corner_y, f"better {_better_arrow(x, y)}", transform=ax.transAxes, fontsize=8,
                ha="right" if corner_x > 0.5 else "left", va="top" if corner_y > 0.5 else "bottom", color="#5b6770")
        shown = [k for k in label_keys if any(row.get(k) not in (None, "") for row, _, _ in points)]
        if points:
            ax.legend(loc="best", fontsize=8, title="label: " + " / ".join(names[k] for k in shown) if shown else None,
                      title_fontsize=8)
        crowded = len(points) > 24
        x_mid = (min(p[1] for p in points) + max(p[1] for p in points)) / 2 if points else 0.0
        labels = [(" / ".join(fmt(row.get(k)) for k in shown), xv, yv, xv > x_mid)
                  for i, (row, xv, yv) in enumerate(points) if shown and (not crowded or i in front)]
        _place_labels(fig, ax, labels)

    return _png((6.4, 4.4), draw)


def heatmap_figure(matrix: Sequence[Sequence[float | None]], row_labels: Sequence[str], col_labels: Sequence[str],
                   title: str, *, metric: str | None = None, xlabel: str = "", ylabel: str = "",
                   min_span: float = 0.0, limits: tuple[float, float] | None = None) -> bytes:
    """Annotated heat-map (e.g. attack x defense); missing cells are grey.

    With ``metric`` given, the colour scale runs so that brighter is better for the defender and
    the colour bar names the direction.  The colour range spans at least ``min_span`` (centred on
    the data, shifted to stay within ``limits`` when given), so that differences smaller than that
    (seed noise) do not fill the whole scale.
    """
    values = np.array([[np.nan if (v := as_number(c)) is None else v for c in row] for row in matrix], dtype=float)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix is {values.shape}, labels give {(len(row_labels), len(col_labels))}")
    reverse = metric is not None and known_direction(metric) is False
    cmap = matplotlib.colormaps["viridis_r" if reverse else "viridis"].with_extremes(bad="#e6e9ed")
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
        if limits is not None:
            shift = max(limits[0] - low, 0.0) - max(high - limits[1], 0.0)
            low, high = max(low + shift, limits[0]), min(high + shift, limits[1])
    width = min(max(4.5, 0.9 * len(col_labels) + 2.5), 14.0)
    height = min(max(3.0, 0.45 * len(row_labels) + 1.8), 12.0)

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", vmin=low, vmax=high if high > low else low + 1)
        ax.grid(False)
        ax.set_xticks(range(len(col_labels)), [str(c) for c in col_labels], rotation=30 if len(col_labels) > 4 else 0,
                      ha="right" if len(col_labels) > 4 else "center")
        ax.set_yticks(range(len(row_labels)), [str(r) for r in row_labels])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        for (r, c), v in np.ndenumerate(values):
            if np.isnan(v):
                ax.text(c, r, "—", ha="center", va="center", color="#6b7780", fontsize=8)
                continue
            red, green, blue = to_rgb(cmap(image.norm(v)))
            ink = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.55 else "white"
            ax.text(c, r, fmt(float(v)), ha="center", va="center", color=ink, fontsize=8)
        bar = fig.colorbar(image, ax=ax, shrink=0.9)
        if metric is not None:
            bar.set_label(f"{with_unit(metric)} ({direction_phrase(metric)})")

    return _png((width, height), draw)


def roc_figure(curves: Sequence[tuple[str, Any, Any]], title: str) -> bytes:
    """Log-log ROC curves of membership scores, overlaid (Carlini et al. 2022, Sec. III: the
    low-FPR region is where an attack is or is not a threat, so both axes are logarithmic).

    ``curves`` holds ``(label, scores, is_member)``; the legend adds each curve's AUC and TPR at
    0.1% FPR (:func:`fllab.metrics.membership.membership_metrics`).  The dotted diagonal is
    guessing; the FPR axis starts at the smallest non-zero FPR any curve can reach.
    """
    from ..metrics.membership import membership_metrics, roc_curve

    drawn = []
    for label, scores, is_member in curves:
        fpr, tpr, _ = roc_curve(scores, is_member)
        m = membership_metrics(scores, is_member)
        text = f"{label}  (AUC {fmt(m['membership.auc'])}, TPR@0.1% {fmt(m['membership.tpr_at_0.001_fpr'])})"
        drawn.append((text, fpr.numpy(), tpr.numpy(), int((~np.asarray(is_member, dtype=bool)).sum())))

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        low = min((1.0 / max(n, 1) for *_, n in drawn), default=1e-3)
        ax.plot([low, 1], [low, 1], linestyle=":", color=MUTED, linewidth=1, label="guessing")
        colours = matplotlib.colormaps["viridis"] if len(drawn) > 6 else None
        for i, (text, fpr, tpr, _) in enumerate(drawn):
            colour = colours(i / max(len(drawn) - 1, 1)) if colours else None
            ax.step(fpr, tpr, where="post", linewidth=1.5, label=text, color=colour)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(low, 1)
        ax.set_ylim(low, 1.05)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(title)
        ax.legend(fontsize=7, loc="lower right")

    return _png((6.4, 4.8), draw)


def score_histogram_figure(score: Any, is_member: Any, title: str) -> bytes:
    """Membership scores of members and non-members as overlaid histograms on shared bins
    (densities, so unequal pool sizes compare): two humps apart mean the attack separates them,
    one hump means it guesses.  Infinite scores are clipped to the finite range."""
    score = np.asarray(score, dtype=float)
    member = np.asarray(is_member, dtype=bool)
    finite = score[np.isfinite(score)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    clipped = np.clip(np.nan_to_num(score, nan=low, posinf=high, neginf=low), low, high)
    bins = np.linspace(low, high if high > low else low + 1, 41)

    def draw(fig: Figure) -> None:
        ax = fig.subplots()
        for mask, label, colour in ((~member, "non-members", MUTED), (member, "members", ACCENT)):
            if mask.any():
                ax.hist(clipped[mask], bins=bins, density=True, alpha=0.55, color=colour,
                        label=f"{label} ({int(mask.sum())})", edgecolor="white", linewidth=0.4)
        ax.set_xlabel("membership score (higher = more likely a member)")
        ax.set_ylabel("density")
        ax.set_title(title)
        ax.legend(fontsize=8)

    return _png((6.0, 3.6), draw)


def image_row_figure(images: Sequence[bytes], labels: Sequence[str], title: str) -> bytes:
    """PNG images (e.g. an attack's original/reconstruction pairs) side by side, each labelled."""
    from matplotlib.image import imread

    decoded = [imread(io.BytesIO(blob), format="png") for blob in images]

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, max(len(decoded), 1), squeeze=False).ravel()
        for ax, image, label in zip(axes, decoded, labels):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(label, fontsize=8, fontweight="normal")
            ax.axis("off")
        fig.suptitle(title, fontsize=9, fontweight="bold")

    return _png((1.6 * max(len(decoded), 1) + 0.4, 2.6), draw)


#: marker of each audited epsilon lower bound drawn beside the accounted epsilon (hollow).
_BOUND_MARKERS = dict(zip(AUDITED_EPSILONS, "s^v<>"))


def privacy_utility_figure(points: Sequence[Mapping[str, Any]], series_key: str, label_key: str,
                           x_metrics: Sequence[str], y: str = "utility.accuracy") -> bytes:
    """Test accuracy against each privacy quantity in ``x_metrics``, one panel each, one line per
    series (e.g. per defense, its points ordered along x); a point carrying ``"<metric>:ci95"`` gets
    95%-confidence error bars.

    On the ``privacy.epsilon`` panel each point is the accounted epsilon (filled) with its audited
    lower bounds (hollow, :data:`~fllab.report.directions.AUDITED_EPSILONS`) at the same accuracy,
    joined by a thin line: the run's true epsilon lies in between.  A point without an accounted epsilon (no DP: epsilon is
    infinite) is a dashed horizontal line at its accuracy, with its audited bounds on it.  The
    epsilon axis is symmetric-log so that a lower bound of 0 stays visible.
    """
    series = list(dict.fromkeys(str(p.get(series_key) or "") for p in points))

    def value(point: Mapping[str, Any], metric: str) -> float | None:
        v = as_number(point.get(metric))
        return v if v is not None and math.isfinite(v) else None

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, len(x_metrics), squeeze=False, sharey=True).ravel()
        colours = {s: f"C{i % 6}" for i, s in enumerate(series)}
        for ax, x in zip(axes, x_metrics):
            epsilon = x == "privacy.epsilon"
            for name in series:
                members = [p for p in points if str(p.get(series_key) or "") == name and value(p, y) is not None]
                placed = sorted((value(p, x), value(p, y), p) for p in members if value(p, x) is not None)
                if placed:
                    ax.plot([q[0] for q in placed], [q[1] for q in placed], marker="o", linewidth=1.4, markersize=5,
                            color=colours[name], label=name or "—")
                    xerr, yerr = [ci95(q[2], x) for q in placed], [ci95(q[2], y) for q in placed]
                    if any(xerr) or any(yerr):
                        ax.errorbar([q[0] for q in placed], [q[1] for q in placed], xerr=xerr, yerr=yerr, fmt="none",
                                    ecolor=colours[name], alpha=0.5, linewidth=1)
                    for xv, yv, p in placed:
                        ax.annotate(str(p.get(label_key) or ""), (xv, yv), xytext=(4, 4), textcoords="offset points",
                                    fontsize=6, color="#3b4752")
                if not epsilon:
                    continue
                for p in members:
                    yv, accounted = value(p, y), value(p, x)
                    if accounted is None:
                        ax.axhline(yv, linestyle="--", linewidth=1, color=colours[name],
                                   label=f"{p.get(label_key) or name} (ε = ∞)")
                    for metric, marker in _BOUND_MARKERS.items():
                        bound = value(p, metric)
                        if bound is None:
                            continue
                        if accounted is not None:
                            ax.plot([bound, accounted], [yv, yv], linewidth=0.8, color=colours[name], alpha=0.5)
                        ax.scatter([bound], [yv], marker=marker, s=36, facecolors="white", edgecolors=colours[name], zorder=3)
            if epsilon:
                ax.set_xscale("symlog", linthresh=0.1)
                for metric, marker in _BOUND_MARKERS.items():
                    if any(value(p, metric) is not None for p in points):
                        ax.scatter([], [], marker=marker, s=36, facecolors="white", edgecolors="#3b4752",
                                   label=f"audited: {AUDITED_EPSILONS[metric]}")
            ax.set_xlabel(_axis_label(x))
            ax.set_title(f"{y} vs {x}")
        axes[0].set_ylabel(_axis_label(y))
        # one legend, outside the last panel (series colours are shared across panels)
        handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
        axes[-1].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))

    return _png((5.0 * len(x_metrics) + 2.8, 4.4), draw)


def epsilon_audit_figure(rows: Sequence[Mapping[str, Any]], title: str) -> bytes:
    """LDP-Auditor's figure style (Arcolezi & Gambs 2024, Fig. 2): the empirical epsilon against
    the nominal one, one panel per domain size ``k``, one line per mechanism, the diagonal
    ``eps_emp = eps`` (a sound mechanism stays on or below it) dashed.

    ``rows`` carry ``mechanism``, ``k``, ``epsilon`` and ``epsilon_lower_bound``."""
    ks = sorted({int(r["k"]) for r in rows})
    mechanisms = list(dict.fromkeys(str(r["mechanism"]) for r in rows))
    markers = "osD^v<>ph*XP"

    def draw(fig: Figure) -> None:
        axes = fig.subplots(1, len(ks), squeeze=False, sharey=True).ravel()
        top = max(float(r["epsilon"]) for r in rows)
        for ax, k in zip(axes, ks):
            ax.plot([0, top], [0, top], linestyle="--", color=MUTED, linewidth=1, label="ε_emp = ε")
            for i, name in enumerate(mechanisms):
                pts = sorted((float(r["epsilon"]), float(r["epsilon_lower_bound"])) for r in rows
                             if str(r["mechanism"]) == name and int(r["k"]) == k)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)], markersize=4,
                            linewidth=1.2, color=f"C{i % 6}", alpha=1.0 if i < 6 else 0.6,
                            linestyle="-" if i < 6 else ":", label=name)
            ax.set_title(f"{title}, k = {k}")
            ax.set_xlabel("nominal ε")
        axes[0].set_ylabel("empirical ε (lower bound)")
        handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}
        axes[-1].legend(handles.values(), handles.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))

    return _png((4.2 * len(ks) + 1.6, 3.8), draw)
