"""The report's figures as PNG bytes: accuracy beside the paper, confusion matrices, per-epoch curves, heatmaps.

matplotlib is imported inside the functions (it costs about a second), through its object API with the Agg
canvas: no pyplot state, no display needed on a login node. Margins are set by hand from the labels' lengths
(a layout engine draws every figure twice: 40% slower). PNGs carry no "Software" or date text, so the same input
gives the same bytes.

Speed (a report draws ~50 figures): the per-run kinds (confusion, curves, routing) redraw one figure per shape with
new data, since creating axes and ticks costs as much as drawing them (the bytes equal a fresh figure's); and
`Drawing` spreads the figures over worker processes while the report goes on reading predictions.

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
import os
from typing import Any, Sequence

DPI = 100
LETTERS = ("A", "B", "C", "D")
CHAR_INCHES = 0.0094  # width of a character per point of font size, for margins that fit the labels
CELL_TEXT_LIMIT = 300  # heatmaps with more cells show colours only (each number is a text to lay out)
MAX_WORKERS = 4  # processes drawing at once: a figure takes 50-150 ms of one core, matplotlib's import ~0.5 s
POOL_FROM = 8  # fewer figures than this are drawn in the calling process: starting workers costs ~0.5 s
Job = tuple[str, tuple[Any, ...]]  # (the name of a drawing function of this module, its arguments)
# figures redrawn with new data for each run of the same shape (see `confusion`): key -> the figure and its artists
_TEMPLATES: dict[tuple[Any, ...], Any] = {}


class Drawing:
    """Draws figures in worker processes while the caller goes on (reading, testing pairs); `pngs()` waits and
    gives them in the order asked. Each worker is a fresh `python` reading its share of the jobs from a file
    (no fork of the caller, whose threads may hold locks; no re-import of the caller's main script). With fewer
    than POOL_FROM jobs, or one CPU, they are drawn in this process by `pngs()`. Use it as a context manager:
    leaving it stops workers still running and removes their files."""

    def __init__(self, jobs: list[Job]) -> None:
        self.jobs = jobs
        self._procs: list[tuple[Any, Any, str]] = []
        self._tmp: Any = None
        workers = min(MAX_WORKERS, _cpus(), len(jobs))
        if len(jobs) < POOL_FROM or workers < 2:
            return
        import pickle
        import subprocess
        import sys
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="medminds-figures-")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {root!r}); from medminds_hpc.figures import _worker; _worker()"
        try:
            for w in range(workers):
                share, out = os.path.join(self._tmp.name, f"{w}.jobs"), os.path.join(self._tmp.name, f"{w}.pngs")
                with open(share, "wb") as f:
                    pickle.dump(jobs[w::workers], f, protocol=pickle.HIGHEST_PROTOCOL)
                log = open(os.path.join(self._tmp.name, f"{w}.log"), "wb")  # noqa: SIM115 - closed in __exit__
                proc = subprocess.Popen([sys.executable, "-c", code, share, out], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
                self._procs.append((proc, log, out))
        except BaseException:
            self.__exit__()
            raise

    @property
    def workers(self) -> int:
        """How many worker processes draw (0: this process does)."""
        return len(self._procs)

    def pngs(self) -> list[bytes]:
        if not self._procs:
            return [draw(kind, args) for kind, args in self.jobs]
        import pickle

        shares = []
        for proc, log, out in self._procs:
            if proc.wait() != 0:
                log.flush()
                with open(log.name, "rb") as f:
                    tail = f.read().decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"a figure worker failed (exit {proc.returncode}): {tail[0]}")
            with open(out, "rb") as f:
                shares.append(pickle.load(f))
        workers = len(shares)
        return [shares[i % workers][i // workers] for i in range(len(self.jobs))]

    def __enter__(self) -> Drawing:
        return self

    def __exit__(self, *exc: Any) -> None:
        for proc, log, _ in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        if self._tmp is not None:
            self._tmp.cleanup()


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _worker() -> None:
    """`python -c ... JOBS OUT`: draw the pickled jobs in JOBS, pickle their PNGs (a list) into OUT."""
    import pickle
    import sys

    jobs_file, out = sys.argv[1:3]
    with open(jobs_file, "rb") as f:
        jobs = pickle.load(f)
    pngs = [draw(kind, args) for kind, args in jobs]
    with open(out + ".part", "wb") as f:
        pickle.dump(pngs, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(out + ".part", out)


def draw(kind: str, args: tuple[Any, ...]) -> bytes:
    """One job: the drawing function named `kind` called with `args`."""
    if kind not in KINDS:
        raise ValueError(f"no figure kind {kind!r}; known: {', '.join(KINDS)}")
    return globals()[kind](*args)


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
    ours = [(y, o, i or (o, o)) for y, (_label, o, i, _paper) in zip(ys, rows) if o is not None]
    if ours:  # one call for all rows: an errorbar call per row costs ~20 ms each
        ax.errorbar([100 * o for _, o, _ in ours], [y for y, _, _ in ours], fmt="o", color="#1f77b4", capsize=3,
                    xerr=[[100 * (o - i[0]) for _, o, i in ours], [100 * (i[1] - o) for _, o, i in ours]],
                    label="this project (95% interval)")
    papers = [(y, paper) for y, (_label, _o, _i, paper) in zip(ys, rows) if paper is not None]
    if papers:
        ax.plot([100 * p for _, p in papers], [y for y, _ in papers], "D", color="#d62728", linestyle="none", label="paper")
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
    template = _TEMPLATES.get(("confusion",))
    if template is None:
        fig = _figure(3.4, 3.3, left=0.6, bottom=0.55, top=0.35, right=0.15)
        ax = fig.add_subplot(1, 1, 1)
        image = ax.imshow([[0.0] * 4] * 4, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        cells = [[ax.text(j, i, "", ha="center", va="center", fontsize=8) for j in range(4)] for i in range(4)]
        ax.set_xticks(range(4))
        ax.set_xticklabels(LETTERS)
        ax.set_yticks(range(4))
        ax.set_yticklabels(LETTERS)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        template = _TEMPLATES[("confusion",)] = (fig, ax, image, cells)
    fig, ax, image, cells = template
    shares = [[c / max(sum(row), 1) for c in row] for row in matrix]
    image.set_data(shares)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            cells[i][j].set_text(f"{count}")
            cells[i][j].set_color("white" if shares[i][j] > 0.6 else "black")
    ax.set_title(title, fontsize=8)
    return _png(fig)


def curves(steps: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]], title: str) -> bytes:
    """Loss (training steps, judged epochs when recorded) and accuracy per epoch, against the epoch; a panel
    only for what was recorded. Epochs are labelled by the split that judged them (dev or validation)."""
    judged = "dev" if any(e.get("split") == "dev" for e in epochs) else "validation"
    train = [(s["epoch"], s["loss"]) for s in steps if _num(s.get("epoch")) and _num(s.get("loss"))]
    validation_loss = next(([(e["epoch"], e[key]) for e in epochs if _num(e.get("epoch")) and _num(e.get(key))]
                            for key in ("eval_loss", "val_loss", "loss")
                            if any(_num(e.get(key)) for e in epochs)), [])
    accuracies = [[(e["epoch"], 100 * e[key]) for e in epochs if _num(e.get("epoch")) and _num(e.get(key))]
                  for key in ("train_accuracy", "accuracy")]
    series = {"loss": [s for s in (train, validation_loss)], "accuracy (%)": accuracies}
    panels = tuple(p for p, wanted in series.items() if any(wanted))
    shape = ("curves", judged, panels, tuple(bool(points) for p in panels for points in series[p]))
    if shape not in _TEMPLATES:
        _TEMPLATES[shape] = _curves_template(panels, [[bool(points) for points in series[p]] for p in panels], judged)
    fig, axes, lines = _TEMPLATES[shape]
    for ax, p, panel_lines in zip(axes, panels, lines):
        for line, points in zip(panel_lines, (points for points in series[p] if points)):
            line.set_data(*zip(*points))
        ax.relim()
        ax.autoscale_view()
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def _curves_template(panels: tuple[str, ...], present: list[list[bool]], judged: str) -> tuple[Any, list[Any], list[list[Any]]]:
    """The figure `curves` redraws for every run with the same panels and series: creating axes and their ticks
    costs as much as drawing them."""
    styles = {"loss": (("training", "-", "#1f77b4"), (judged, "o-", "#d62728")),
              "accuracy (%)": (("training", "o-", "#1f77b4"), (judged, "o-", "#d62728"))}
    fig = _figure(0.5 + 3.5 * max(len(panels), 1), 3.0, left=0.7, top=0.45, bottom=0.55, wspace=0.35)
    axes, lines = [], []
    for i, (what, wanted) in enumerate(zip(panels, present)):
        ax = fig.add_subplot(1, len(panels), i + 1)
        made = [ax.plot([], [], style, color=color, label=label, **({"linewidth": 1} if style == "-" else {}))[0]
                for (label, style, color), want in zip(styles[what], wanted) if want]
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        axes.append(ax)
        lines.append(made)
    return fig, axes, lines


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
    shape = ("routing", layers, epochs, len(experts))
    if shape not in _TEMPLATES:
        _TEMPLATES[shape] = _routing_template(layers, epochs, len(experts))
    fig, axes, images = _TEMPLATES[shape]
    for e, (ax, image, name) in enumerate(zip(axes, images, experts)):
        image.set_data([[shares[layer][epoch][e] for epoch in range(epochs)] for layer in range(layers)])
        ax.set_title(f"share to {name}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def _routing_template(layers: int, epochs: int, experts: int) -> tuple[Any, list[Any], list[Any]]:
    """The figure `routing` redraws for every mixture with as many layers, epochs and experts."""
    width = 1.5 + (1.6 + 0.15 * epochs) * experts
    fig = _figure(width, max(2.6, 1.3 + 0.12 * layers), left=0.6, right=0.9, top=0.6, bottom=0.5, wspace=0.25)
    axes, images = [], []
    for e in range(experts):
        ax = fig.add_subplot(1, experts, e + 1)
        axes.append(ax)
        images.append(ax.imshow([[0.0] * epochs] * layers, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto"))
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_xticks(range(epochs))
        ax.set_xticklabels([str(i + 1) for i in range(epochs)], fontsize=6)
        step = max(1, math.ceil(layers / 16))
        ax.set_yticks(range(0, layers, step))
        ax.set_yticklabels([str(i) for i in range(0, layers, step)] if e == 0 else [], fontsize=6)
        if e == 0:
            ax.set_ylabel("layer", fontsize=8)
    fig.colorbar(images[-1], ax=axes, fraction=0.5 / width, pad=0.15 / width)
    return fig, axes, images


KINDS = ("accuracy", "confusion", "curves", "heatmap", "routing")


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
