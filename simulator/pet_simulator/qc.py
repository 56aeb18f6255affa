"""Quality-control figure: T1, true activity, standard dose and each low dose side by side."""

from __future__ import annotations

import os

import numpy as np

from .files import atomic_path

__all__ = ["qc_figure"]


def qc_figure(images: dict, path: str | os.PathLike, title: str = "", slice_index: int | None = None) -> None:
    """Save a PNG with an axial and a sagittal row: T1, truth, SD, noise-free, every ``pet_drf*`` image.

    The T1 is shown as simulated (whole head or skull-stripped); lesion outlines (``lesion_mask``) are drawn in red on
    every panel, and the slices cut through the largest lesion when there is one.

    Args:
        images: dict of (X, Y, Z) arrays (keys ``t1``, ``pet_truth``, ``pet_sd``, ``pet_sd_noisefree``,
            ``pet_drf{K}``, ``pet_drf_random``, ``lesion_mask``); missing keys are skipped.
        path: output PNG path.
        title: figure title.
        slice_index: axial slice (default: through the largest lesion, else 55 % of the height).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drf_keys = sorted((k for k in images if k[7:].replace(".", "").isdigit()), key=lambda k: float(k[7:]))
    keys = [k for k in ["t1", "pet_truth", "pet_sd_noisefree", "pet_sd", *drf_keys, "pet_drf_random"] if k in images]
    ref = np.asarray(images["pet_truth"]) if "pet_truth" in images else np.asarray(images[keys[1]])
    lesions = np.asarray(images.get("lesion_mask", np.zeros(ref.shape, np.uint8)))
    x, z = ref.shape[0] // 2 + 4, int(round(0.55 * ref.shape[2]))
    if lesions.any():  # cut through the largest lesion
        largest = np.argmax(np.bincount(lesions.ravel())[1:]) + 1
        x, _, z = (int(round(c)) for c in np.argwhere(lesions == largest).mean(axis=0))
    z = slice_index if slice_index is not None else z
    vmax_pet = float(np.percentile(ref, 99.7))
    fig, axes = plt.subplots(2, len(keys), figsize=(2.2 * len(keys), 4.6), squeeze=False)
    for c, key in enumerate(keys):
        vol = np.asarray(images[key])
        vmax = float(np.percentile(vol, 99.7)) if key == "t1" else vmax_pet
        cmap = "gray" if key == "t1" else "gray_r"
        axes[0, c].imshow(vol[:, :, z].T, origin="lower", cmap=cmap, vmin=0, vmax=vmax)
        axes[1, c].imshow(vol[x, :, :].T, origin="lower", cmap=cmap, vmin=0, vmax=vmax)
        if lesions.any():
            for ax, cut in ((axes[0, c], lesions[:, :, z].T), (axes[1, c], lesions[x, :, :].T)):
                if cut.any():
                    ax.contour(cut > 0, levels=[0.5], colors="red", linewidths=0.6, origin="lower")
        axes[0, c].set_title(key.replace("pet_", ""), fontsize=9)
        for r in range(2):
            axes[r, c].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
