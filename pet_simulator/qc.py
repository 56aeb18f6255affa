"""Quality-control figure: T1, true activity, standard dose and each low dose side by side."""

from __future__ import annotations

import os

import numpy as np

from scripts.io.writers import atomic_path

__all__ = ["qc_figure"]


def qc_figure(images: dict, path: str | os.PathLike, title: str = "", slice_index: int | None = None) -> None:
    """Save a PNG with an axial and a sagittal row: T1, truth, SD, noise-free, every ``pet_drf*`` image.

    Args:
        images: dict of (X, Y, Z) arrays (keys ``t1``, ``pet_truth``, ``pet_sd``, ``pet_sd_noisefree``,
            ``pet_drf{K}``); missing keys are skipped.
        path: output PNG path.
        title: figure title.
        slice_index: axial slice (default: the slice at world z = 10 mm-ish, 55 % of the height).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drf_keys = sorted((k for k in images if k.startswith("pet_drf")), key=lambda k: float(k[7:]))
    keys = [k for k in ["t1", "pet_truth", "pet_sd_noisefree", "pet_sd", *drf_keys] if k in images]
    ref = np.asarray(images["pet_truth"]) if "pet_truth" in images else np.asarray(images[keys[1]])
    z = slice_index if slice_index is not None else int(round(0.55 * ref.shape[2]))
    x = ref.shape[0] // 2 + 4
    vmax_pet = float(np.percentile(ref, 99.7))
    fig, axes = plt.subplots(2, len(keys), figsize=(2.2 * len(keys), 4.6), squeeze=False)
    for c, key in enumerate(keys):
        vol = np.asarray(images[key])
        vmax = float(np.percentile(vol, 99.7)) if key == "t1" else vmax_pet
        cmap = "gray" if key == "t1" else "gray_r"
        axes[0, c].imshow(vol[:, :, z].T, origin="lower", cmap=cmap, vmin=0, vmax=vmax)
        axes[1, c].imshow(vol[x, :, :].T, origin="lower", cmap=cmap, vmin=0, vmax=vmax)
        axes[0, c].set_title(key.replace("pet_", ""), fontsize=9)
        for r in range(2):
            axes[r, c].axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
