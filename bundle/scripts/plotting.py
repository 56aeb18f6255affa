"""The one plotting style of the bundle: the inference QC panel and the evaluation panels.

PET is shown in the "hot" colour map from 0 to a shared top value with a colour bar in its units (Bq/ml or SUV),
the MRI in grey, errors in "viridis". Each image carries its slice
position in mm and L/R markers (patient left/right, from the affine), and is displayed with anterior (axial) or
superior (coronal) at the top.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PET_CMAP, MRI_CMAP, SPREAD_CMAP = "hot", "gray", "viridis"
#: display top of PET images: this percentile of the reference image
TOP_PERCENTILE = 99.5
UNIT_LABELS = {"BQML": "Bq/ml", "SUVBW": "SUV (g/ml)", "GML": "SUV (g/ml)", "SUV": "SUV"}


def unit_label(units: str | None) -> str:
    """Colour-bar label of an activity unit (``"BQML (assumed for NIfTI)"`` -> ``"Bq/ml"``)."""
    if not units:
        return "Bq/ml"
    return UNIT_LABELS.get(str(units).split()[0].upper(), str(units))


def top_value(image: np.ndarray) -> float:
    """Upper end of the display range (the 99.5th percentile; 1 for an empty image)."""
    return float(np.percentile(image, TOP_PERCENTILE)) or 1.0


def lr_labels(affine: np.ndarray | None) -> tuple[str, str] | None:
    """Patient side at the display's left and right edges for images of array axis 0 (``None``: oblique/unknown)."""
    if affine is None:
        return None
    direction = np.asarray(affine, dtype=float)[:3, 0]
    if abs(direction[0]) < 0.7 * np.linalg.norm(direction):
        return None
    return ("L", "R") if direction[0] > 0 else ("R", "L")  # RAS world: +x is the patient's right


def display_convention(sides: tuple[str, str] | None) -> str:
    """How the patient's sides are displayed: neurological (left on the left), radiological, or ``""`` (oblique)."""
    if not sides:
        return ""
    kind = "neurological" if sides[0] == "L" else "radiological"
    return f"{kind} display (patient {'left' if sides[0] == 'L' else 'right'} on image left)"


def slice_position(affine: np.ndarray | None, axis: int, index: int, shape: tuple[int, ...]) -> str:
    """``"z = 12.0 mm"`` (world coordinate of the slice centre) or ``"slice 12"`` without an affine."""
    if affine is None:
        return f"slice {index}"
    voxel = np.asarray(shape, dtype=float) / 2
    voxel[axis] = index
    world = np.asarray(affine, dtype=float) @ np.append(voxel, 1.0)
    return f"{'xyz'[axis]} = {world[axis]:.1f} mm"


def draw(figure, axis, plane: np.ndarray, kind: str, top: float, label: str, sides=None, aspect: float = 1.0):
    """Draw one 2D plane (``[axis 0, axis 1]``, displayed rotated so that axis 1 runs upwards) with its colour bar.

    Args:
        figure: the matplotlib figure.
        axis: the matplotlib axes.
        plane: the image; NaN voxels (outside a mask) are shown black.
        kind: ``"pet"``, ``"mri"`` or ``"spread"`` (error, uncertainty): colour map and range.
        top: upper end of the display range.
        label: colour-bar label (units); the MRI gets none.
        sides: (left, right) patient-side markers, or ``None``.
        aspect: pixel aspect ratio.
    """
    import matplotlib

    cmap = matplotlib.colormaps[{"pet": PET_CMAP, "mri": MRI_CMAP}.get(kind, SPREAD_CMAP)].with_extremes(bad="black")
    shown = axis.imshow(np.rot90(plane), cmap=cmap, vmin=0, vmax=top, aspect=aspect, interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    if kind != "mri":
        figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.02).set_label(label, fontsize=8)
    if sides:
        style = dict(color="white", fontsize=9, fontweight="bold", va="center", transform=axis.transAxes)
        axis.text(0.02, 0.5, sides[0], ha="left", **style)
        axis.text(0.98, 0.5, sides[1], ha="right", **style)
    return shown


def save_figure(figure, path: str) -> str:
    """Write the figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from scripts.io.writers import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)
    return path


def new_figure(rows: int, columns: int, width: float = 3.2, height: float = 3.0):
    """A figure of ``rows`` x ``columns`` image axes (always a 2D array of axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    return figure, axes


def qc_figure(
    pet_low_dose: np.ndarray,
    enhanced: np.ndarray,
    mri_t1: np.ndarray | None = None,
    title: str = "",
    affine: np.ndarray | None = None,
    units: str | None = None,
    footer: Sequence[str] = (),
):
    """The inference QC panel: axial and coronal planes through the PET's centre of activity.

    Columns: the MRI (when given), the low-dose PET and the enhanced PET (same range, in ``units``). Volumes are
    ``(X, Y, Z)`` on one RAS grid (axial = last axis). A footer line holds ``footer`` (model version, research use)
    and the display convention (neurological or radiological, from the affine).

    Returns:
        the matplotlib figure.
    """
    weights = np.clip(pet_low_dose, 0, None)
    if weights.sum() > 0:
        grid = np.indices(weights.shape).reshape(3, -1)
        centre = (grid @ weights.ravel() / weights.sum()).round().astype(int)
    else:
        centre = np.asarray(weights.shape) // 2
    top = top_value(pet_low_dose)
    label = unit_label(units)
    columns = [("MRI T1", mri_t1, "mri", None, "")] if mri_t1 is not None else []
    columns += [("low-dose PET (input)", pet_low_dose, "pet", top, label)]
    columns += [("enhanced PET", enhanced, "pet", top, label)]
    spacing = np.sqrt((np.asarray(affine if affine is not None else np.eye(4))[:3, :3] ** 2).sum(axis=0))
    sides = lr_labels(affine)
    axial, coronal = (lambda v: v[:, :, centre[2]]), (lambda v: v[:, centre[1], :])
    cuts = [(2, axial, spacing[1] / spacing[0]), (1, coronal, spacing[2] / spacing[0])]
    figure, axes = new_figure(2, len(columns))
    for column, (name, volume, kind, column_top, column_label) in enumerate(columns):
        for row, (slice_axis, cut, aspect) in enumerate(cuts):
            plane = cut(volume)
            image_top = column_top if column_top is not None else top_value(plane[np.isfinite(plane)])
            draw(figure, axes[row, column], plane, kind, image_top, column_label, sides, aspect)
            view = "axial" if slice_axis == 2 else "coronal"
            where = slice_position(affine, slice_axis, int(centre[slice_axis]), volume.shape)
            axes[row, column].set_title(f"{name}\n{view}, {where}" if row == 0 else f"{view}, {where}", fontsize=9)
    figure.suptitle(title)
    figure.text(0.5, 0.01, " | ".join(filter(None, [*footer, display_convention(sides)])), ha="center", fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def evaluation_figure(images: dict[str, np.ndarray], title: str, units: str = "Bq/ml", affine=None, position=""):
    """One axial plane of each image of an evaluated study in one row (the QC panel's style).

    Args:
        images: name -> plane; "MRI" in grey, "|error|" in the spread colour map, the rest as PET on the range of
            "standard dose".
        title: figure title.
        units: PET units for the colour bars.
        affine: the images' affine, for the L/R markers.
        position: slice position text (see :func:`slice_position`).

    Returns:
        the matplotlib figure.
    """
    top = top_value(images["standard dose"])
    figure, axes = new_figure(1, len(images), width=2.8, height=2.9)
    sides = lr_labels(affine)
    for axis, (name, plane) in zip(axes[0], images.items()):
        if name == "MRI":
            draw(figure, axis, plane, "mri", top_value(plane), "", sides)
        elif name == "|error|":
            draw(figure, axis, plane, "spread", 0.25 * top, units, sides)
        else:
            draw(figure, axis, plane, "pet", top, units, sides)
        axis.set_title(name, fontsize=9)
    figure.suptitle(f"{title}, axial {position}".rstrip(", "), fontsize=10)
    figure.tight_layout()
    return figure
