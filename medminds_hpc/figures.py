"""The report's figures as PNG bytes: accuracy beside the paper, confusion matrices, per-epoch curves, heatmaps.

matplotlib is imported inside the functions (it costs about a second), through its object API with the Agg
canvas: no pyplot state, no display needed on a login node. Margins are set by hand from the labels' lengths
(a layout engine draws every figure twice: 40% slower). PNGs carry no "Software" or date text, so the same input
gives the same bytes.

Routing statistics (mixture-of-experts runs) are read from metrics.json's "routing" in any of these shapes:
    {"experts": ["task", "domain"], "layers": [[[0.6, 0.4], ...per epoch], ...per layer]}
    {"experts": [...], "epochs": [{"epoch": 1, "layers": [[0.6, 0.4], ...per layer]}, ...]}
    [[[0.6, 0.4], ...per epoch], ...per layer]
    {"0": {"1": [0.6, 0.4], ...per epoch}, ...per layer}
each innermost list being the share of tokens (or questions) sent to each expert.
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

DPI = 100
LETTERS = ("A", "B", "C", "D")
CHAR_INCHES = 0.0094  # width of a character per point of font size, for margins that fit the labels
CELL_TEXT_LIMIT = 300  # heatmaps with more cells show colours only (each number is a text to lay out)


def _figure(width: float, height: float, *, left: float = 0.7, right: float = 0.2, bottom: float = 0.6,
            top: float = 0.4, wspace: float | None = None) -> Any:
    """A figure of width x height inches whose axes leave these margins (inches) around them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _text_width(labels: Sequence[str], points: float) -> float:
    return CHAR_INCHES * points * max((len(t) for t in labels), default=0)


def accuracy(rows: Sequence[tuple[str, float | None, tuple[float, float] | None, float | None]],
             references: Sequence[tuple[str, float]], title: str) -> bytes:
    """One line per row: our accuracy (dot) with its 95% interval, the paper's number (diamond); references as
    vertical lines. `rows`: (label, ours or None, interval or None, paper or None), fractions 0-1."""
    left = 0.3 + _text_width([r[0] for r in rows], 8)
    legend_rows = math.ceil((2 + len(references)) / 2)
    bottom = 0.6 + 0.18 * legend_rows
    fig = _figure(left + 6.0, bottom + 0.4 + 0.28 * max(len(rows), 1), left=left, bottom=bottom, right=0.3)
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(rows)))[::-1]
    labelled: set[str] = set()  # each legend entry once

    def label(name: str) -> str | None:
        first = name not in labelled
        labelled.add(name)
        return name if first else None

    for y, (_label, ours, interval, paper) in zip(ys, rows):
        if ours is not None:
            lo, hi = interval if interval else (ours, ours)
            ax.errorbar([100 * ours], [y], xerr=[[100 * (ours - lo)], [100 * (hi - ours)]], fmt="o", color="#1f77b4",
                        capsize=3, label=label("this project (95% interval)"))
        if paper is not None:
            ax.plot([100 * paper], [y], "D", color="#d62728", label=label("paper"))
    styles = ("--", ":", "-.")
    for i, (name, value) in enumerate(references):
        ax.axvline(100 * value, color="#7f7f7f", linestyle=styles[i % len(styles)], linewidth=1, label=name)
    ax.set_yticks(ys)
    ax.set_yticklabels([r[0] for r in rows], fontsize=8)
    ax.set_ylim(-0.6, max(len(rows), 1) - 0.4)
    ax.set_xlabel("accuracy on MedMCQA validation (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    if rows or references:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45 / (0.28 * max(len(rows), 1))), ncol=2,
                  frameon=False)
    return _png(fig)


def confusion(matrix: Sequence[Sequence[int]], title: str) -> bytes:
    """Rows: the gold letter; columns: the predicted one; each cell's count, shaded by its share of the row."""
    fig = _figure(3.4, 3.3, left=0.6, bottom=0.55, top=0.35, right=0.15)
    ax = fig.add_subplot(1, 1, 1)
    shares = [[c / max(sum(row), 1) for c in row] for row in matrix]
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, f"{count}", ha="center", va="center", fontsize=8, color="white" if shares[i][j] > 0.6 else "black")
    ax.set_xticks(range(4))
    ax.set_xticklabels(LETTERS)
    ax.set_yticks(range(4))
    ax.set_yticklabels(LETTERS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=8)
    return _png(fig)


def curves(steps: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]], title: str) -> bytes:
    """Loss (training steps, validation epochs when recorded) and accuracy per epoch, against the epoch; a panel
    only for what was recorded."""
    train = [(s["epoch"], s["loss"]) for s in steps if _num(s.get("epoch")) and _num(s.get("loss"))]
    validation_loss = next(([(e["epoch"], e[key]) for e in epochs if _num(e.get("epoch")) and _num(e.get(key))]
                            for key in ("eval_loss", "val_loss", "loss")
                            if any(_num(e.get(key)) for e in epochs)), [])
    accuracies = [(label, color, [(e["epoch"], 100 * e[key]) for e in epochs if _num(e.get("epoch")) and _num(e.get(key))])
                  for key, label, color in (("train_accuracy", "training", "#1f77b4"), ("accuracy", "validation", "#d62728"))]
    panels = [p for p, wanted in (("loss", train or validation_loss), ("accuracy (%)", any(a[2] for a in accuracies))) if wanted]
    fig = _figure(0.5 + 3.5 * max(len(panels), 1), 3.0, left=0.7, top=0.45, bottom=0.55, wspace=0.35)
    for i, what in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if what == "loss":
            if train:
                ax.plot(*zip(*train), color="#1f77b4", linewidth=1, label="training")
            if validation_loss:
                ax.plot(*zip(*validation_loss), "o-", color="#d62728", label="validation")
        else:
            for label, color, points in accuracies:
                if points:
                    ax.plot(*zip(*points), "o-", color=color, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def heatmap(row_labels: Sequence[str], column_labels: Sequence[str], values: Sequence[Sequence[float | None]],
            flagged: set[tuple[int, int]], title: str) -> bytes:
    """Accuracy per row and subject (%, blank where there is none), each cell's number when there are few cells;
    flagged cells (subject absent from training) get an asterisk."""
    left, bottom = 0.3 + _text_width(row_labels, 7), 0.3 + 0.8 * _text_width(column_labels, 7)
    width = left + 1.3 + 0.32 * max(len(column_labels), 1)
    fig = _figure(width, bottom + 0.45 + 0.22 * max(len(row_labels), 1), left=left, bottom=bottom, top=0.35, right=1.1)
    ax = fig.add_subplot(1, 1, 1)
    grid = [[math.nan if v is None else 100 * v for v in row] for row in values] or [[math.nan]]
    image = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=100.0, aspect="auto")
    numbers = len(row_labels) * len(column_labels) <= CELL_TEXT_LIMIT
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if v is not None and (numbers or (i, j) in flagged):
                text = f"{100 * v:.0f}" if numbers else ""
                ax.text(j, i, text + ("*" if (i, j) in flagged else ""), ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(column_labels)))
    ax.set_xticklabels(column_labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(len(row_labels)))
    ax.set_yticklabels(row_labels, fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="accuracy (%)", fraction=0.4 / width, pad=0.1 / width)
    return _png(fig)


def routing(shares: list[list[list[float]]], experts: Sequence[str], title: str) -> bytes:
    """One heatmap per expert: layer (rows) x epoch (columns), the share of tokens the router sent to it."""
    layers, epochs = len(shares), len(shares[0])
    width = 1.5 + (1.6 + 0.15 * epochs) * len(experts)
    fig = _figure(width, max(2.6, 1.3 + 0.12 * layers), left=0.6, right=0.9, top=0.6, bottom=0.5, wspace=0.25)
    axes = []
    for e, name in enumerate(experts):
        ax = fig.add_subplot(1, len(experts), e + 1)
        axes.append(ax)
        image = ax.imshow([[shares[layer][epoch][e] for epoch in range(epochs)] for layer in range(layers)],
                          cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_title(f"share to {name}", fontsize=8)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_xticks(range(epochs))
        ax.set_xticklabels([str(i + 1) for i in range(epochs)], fontsize=6)
        step = max(1, math.ceil(layers / 16))
        ax.set_yticks(range(0, layers, step))
        ax.set_yticklabels([str(i) for i in range(0, layers, step)] if e == 0 else [], fontsize=6)
        if e == 0:
            ax.set_ylabel("layer", fontsize=8)
    fig.colorbar(image, ax=axes, fraction=0.5 / width, pad=0.15 / width)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def parse_routing(obj: Any) -> tuple[list[list[list[float]]], list[str]]:
    """metrics.json "routing" (any shape in the module docstring) -> (shares[layer][epoch][expert], expert names);
    ValueError saying what does not fit."""
    experts: list[str] | None = None
    grid: Any = obj
    if isinstance(obj, dict) and ("layers" in obj or "epochs" in obj):
        experts = [str(e) for e in obj["experts"]] if isinstance(obj.get("experts"), list) else None
        if "layers" in obj:
            grid = obj["layers"]
        else:
            per_epoch = obj["epochs"]
            if not isinstance(per_epoch, list) or not per_epoch:
                raise ValueError("'epochs' must be a non-empty list of {'epoch', 'layers'}")
            layers = [e.get("layers") if isinstance(e, dict) else None for e in per_epoch]
            if any(not isinstance(x, list) for x in layers) or len({len(x) for x in layers}) != 1:
                raise ValueError("every entry of 'epochs' needs 'layers', one list of shares per layer, all equally long")
            grid = [[layers[t][layer] for t in range(len(layers))] for layer in range(len(layers[0]))]
    elif isinstance(obj, dict):
        grid = [[obj[layer][epoch] for epoch in sorted(obj[layer], key=_as_index)] if isinstance(obj[layer], dict) else None
                for layer in sorted(obj, key=_as_index)]
    if not isinstance(grid, list) or not grid or not all(isinstance(row, list) and row for row in grid):
        raise ValueError("expected shares per layer, then per epoch, then per expert")
    epochs = {len(row) for row in grid}
    widths = {len(cell) if isinstance(cell, list) else -1 for row in grid for cell in row}
    if len(epochs) != 1 or len(widths) != 1 or min(widths) < 1:
        raise ValueError("every layer needs the same number of epochs, and every epoch one share per expert")
    if not all(_num(v) for row in grid for cell in row for v in cell):
        raise ValueError("shares must be numbers")
    width = widths.pop()
    names = experts if experts is not None and len(experts) == width else [f"expert {i}" for i in range(width)]
    return [[[float(v) for v in cell] for cell in row] for row in grid], names


def _as_index(key: Any) -> tuple[int, Any]:
    return (0, int(key)) if str(key).lstrip("-").isdigit() else (1, str(key))


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
