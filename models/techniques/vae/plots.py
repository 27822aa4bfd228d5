"""The VAE's pictures: the latent grid of the manifold, tiling, and the latent scatter plot."""

from __future__ import annotations

import io
import statistics

import numpy as np

from models.core.errors import GdlError


def grid_axis(kind: str, n: int, extent: float = 4.0) -> np.ndarray:
    """The manifold's coordinates along one latent axis, ascending."""
    if kind == "ppf":  # Chollet: an even grid of probabilities through the normal's inverse CDF
        return np.array([statistics.NormalDist().inv_cdf(q) for q in np.linspace(0.05, 0.95, n)])
    if kind == "linear":  # Vasilev: an even grid over [-4, 4]
        return np.linspace(-extent, extent, n)
    raise GdlError(f"unknown grid {kind!r}; valid: ppf, linear")


def manifold_latents(kind: str, n: int, latent_dim: int, extent: float = 4.0) -> np.ndarray:
    """n*n latent points, row by row: z[0] grows left to right, z[1] bottom to top (the plot's
    axes); further dimensions, if any, stay at the prior's mean 0."""
    axis = grid_axis(kind, n, extent)
    z = np.zeros((n, n, latent_dim), np.float32)
    z[..., 0] = axis[None, :]
    if latent_dim > 1:
        z[..., 1] = axis[::-1, None]
    return z.reshape(n * n, latent_dim)


def tile(images: np.ndarray, n: int) -> np.ndarray:
    """n*n images (N, H, W, C) edge to edge, row by row, as one (n*H, n*W, C) picture."""
    _, h, w, c = images.shape
    return images.reshape(n, n, h, w, c).transpose(0, 2, 1, 3, 4).reshape(n * h, n * w, c)


CLASS_COLOURS = (  # matplotlib's tab10
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
CLASS_MARKERS = ("o", "x", "^", "<", ">", "*", "h", "D", "P", "s")  # Vasilev marks classes by shape


def scatter_png(z: np.ndarray, labels: np.ndarray, title: str) -> bytes:
    """The latent means of the held-out set, one colour and marker per class, as PNG bytes
    without timestamps. More than two latent dimensions are shown on their first two principal
    axes (said in the axis labels)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.asarray(z, np.float64)
    if z.shape[1] > 2:
        centred = z - z.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        z, names = centred @ vt[:2].T, ("principal axis 1 of z_mean", "principal axis 2 of z_mean")
    elif z.shape[1] == 2:
        names = ("z[0]", "z[1]")
    else:
        z, names = np.stack([z[:, 0], labels.astype(np.float64)], axis=1), ("z[0]", "class")
    fig, ax = plt.subplots(figsize=(6, 5.5), dpi=100)
    for i, cls in enumerate(np.unique(labels)):
        pts = z[labels == cls]
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=10,
            c=CLASS_COLOURS[i % len(CLASS_COLOURS)],
            marker=CLASS_MARKERS[i % len(CLASS_MARKERS)],
            linewidths=0.8,
            label=str(cls) if cls >= 0 else "unlabelled",
            alpha=0.8,
        )
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(title="class", fontsize=8, markerscale=1.5, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
