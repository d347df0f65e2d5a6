"""Training curves as a PNG: loss and accuracy per epoch, training and validation.

Drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed) and
written atomically, so a run stopped mid-write never leaves half a picture.
"""
from __future__ import annotations

import io
import pathlib

from ._files import write_atomic


def plot_curves(history, path) -> pathlib.Path:
    """``path`` (a .png) with two panels, loss and accuracy against the epoch, for the epoch
    records of ``history`` (``train_loss``, ``train_acc``, and ``val_loss``/``val_acc`` if any)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    for ax, key, title in zip(fig.subplots(1, 2), ("loss", "acc"), ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [r.get(f"{split}_{key}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [float("nan") if v is None else v for v in values], style, ms=3,
                        label="training" if split == "train" else "validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    return path
