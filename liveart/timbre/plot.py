"""A map of the timbre space: every instrument's anchor projected onto the plane of the anchors' two
principal components, coloured by General MIDI family. Needs matplotlib (the ``plot`` extra)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import LiveartError, OutputError
from .anchors import GM_FAMILY_NAMES, GM_PROGRAM_NAMES

MAP_SUFFIXES = (".png", ".svg", ".pdf")


def project(anchors: dict[int, np.ndarray]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(programs, points (N, 2), explained variance ratio of the two axes) by PCA of the anchors."""
    programs = sorted(anchors)
    z = np.stack([anchors[p] for p in programs]).astype(np.float64)
    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    # A fixed sign per axis, so the map does not flip between runs or versions of numpy.
    signs = np.sign(vt[:2, np.argmax(np.abs(vt[:2]), axis=1)].diagonal())
    axes = vt[:2] * signs[:, None]
    variance = s ** 2 / np.sum(s ** 2)
    return programs, centred @ axes.T, variance[:2]


def plot_map(model, output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() not in MAP_SUFFIXES:
        raise OutputError(f"{output}: the map must end in {', '.join(MAP_SUFFIXES)}")
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory; give a file name")
    if not parent.is_dir():
        raise OutputError(f"{output}: cannot write there; the directory {parent} does not exist")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LiveartError("the timbre map needs matplotlib: pip install 'liveart[plot]'") from None

    programs, points, variance = project(model.anchors)
    fig, ax = plt.subplots(figsize=(13, 10), dpi=100)
    cmap = plt.get_cmap("tab20")
    for family, name in enumerate(GM_FAMILY_NAMES):
        rows = [i for i, p in enumerate(programs) if p // 8 == family]
        if not rows:
            continue
        held = [i for i in rows if programs[i] in model.held_out_programs]
        trained = [i for i in rows if programs[i] not in model.held_out_programs]
        ax.scatter(points[trained, 0], points[trained, 1], s=36, color=cmap(family), label=name)
        if held:
            ax.scatter(points[held, 0], points[held, 1], s=60, color=cmap(family), marker="*", edgecolor="black",
                       linewidth=0.5)
    for i, p in enumerate(programs):
        ax.annotate(GM_PROGRAM_NAMES[p], points[i], fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel(f"first principal component ({variance[0]:.0%} of the anchors' variance)")
    ax.set_ylabel(f"second principal component ({variance[1]:.0%})")
    ax.set_title(f"liveart timbre space: {len(programs)} instruments ({model.latent}-D latent; "
                 f"stars were never trained on)")
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=output.suffix, dir=parent)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary file's mode, not mkstemp's private 0600
        fig.savefig(tmp)
        os.replace(tmp, output)
    except OSError as e:
        raise OutputError(f"{output}: cannot write the map ({e.strerror or e})") from e
    finally:
        plt.close(fig)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return output
