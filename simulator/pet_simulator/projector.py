"""2D multi-slice parallel-beam projector (Joseph interpolation) and separable Gaussian PSF, as torch sparse ops.

Images are (X, Y, Z) arrays, axial = last axis. Each axial slice is projected independently onto a parallel-beam
sinogram (angles over 180 degrees, detector bins of ``bin_mm``); all slices are projected in one sparse @ dense
matmul with the image flattened to (X * Y, Z) and the sinogram to (n_angles * n_bins, Z).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .constants import fwhm_to_sigma

__all__ = ["ParallelBeamProjector", "GaussianPSF", "gaussian_kernel_matrix"]


def _joseph_coo(
    shape_xy: tuple[int, int],
    pixel_mm: float,
    angles: np.ndarray,
    n_bins: int,
    bin_mm: float,
    ray_offsets: Sequence[float],
    offset_xy_mm: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build COO triplets (row, col, value) of the Joseph projector.

    Rows index ``angle * n_bins + bin``, columns index ``i * ny + j`` for pixel (i, j). Values are path lengths in mm
    (averaged over ``ray_offsets``, given as fractions of a detector bin, to model the bin width).
    """
    nx, ny = shape_xy
    centres = (  # pixel centres along x and y in mm
        (np.arange(nx) - (nx - 1) / 2.0) * pixel_mm + offset_xy_mm[0],
        (np.arange(ny) - (ny - 1) / 2.0) * pixel_mm + offset_xy_mm[1],
    )
    s_bins = (np.arange(n_bins) - (n_bins - 1) / 2.0) * bin_mm
    rows, cols, vals = [], [], []
    w_sub = 1.0 / len(ray_offsets)
    for a, theta in enumerate(angles):
        c, s = math.cos(theta), math.sin(theta)
        normal, direction = (c, s), (-s, c)  # the ray of detector position sb is sb * normal + t * direction
        # step pixel by pixel along the axis the ray runs mostly along, interpolate linearly across it
        along = 1 if abs(c) >= abs(s) else 0
        across = 1 - along
        step = pixel_mm / abs(direction[along])
        for off in ray_offsets:
            sb = s_bins + off * bin_mm  # (n_bins,)
            t = (centres[along][None, :] - sb[:, None] * normal[along]) / direction[along]  # (n_bins, n_along)
            f = (sb[:, None] * normal[across] + t * direction[across] - centres[across][0]) / pixel_mm
            k0 = np.floor(f).astype(np.int64)
            frac = f - k0
            k_along = np.broadcast_to(np.arange(shape_xy[along])[None, :], f.shape)
            for dk, wgt in ((0, 1.0 - frac), (1, frac)):
                k_across = k0 + dk
                ok = (k_across >= 0) & (k_across < shape_xy[across]) & (wgt > 0)
                b_idx = np.broadcast_to(np.arange(n_bins)[:, None], f.shape)[ok]
                pixel = {along: k_along[ok], across: k_across[ok]}  # (i, j) by axis
                rows.append(a * n_bins + b_idx)
                cols.append(pixel[0] * ny + pixel[1])
                vals.append(wgt[ok] * step * w_sub)
    return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _csr(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.to_sparse_csr()`` without torch's "Sparse CSR tensor support is in beta state" notice (nothing for a
    user to act on; printed by each worker process of a simulation)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state", category=UserWarning)
        return tensor.to_sparse_csr()


def _to_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    indices = torch.from_numpy(np.stack([rows, cols]))
    coo = torch.sparse_coo_tensor(indices, torch.from_numpy(vals.astype(np.float32)), size=shape, check_invariants=True)
    return _csr(coo.coalesce())


class ParallelBeamProjector:
    """Multi-slice 2D parallel-beam projector stored as sparse CSR matrices, one per OSEM subset.

    Args:
        shape_xy: in-plane image shape (X, Y).
        pixel_mm: in-plane pixel size of the image in mm.
        n_angles: number of projection angles over 180 degrees.
        bin_mm: detector bin width in mm (defaults to ``pixel_mm``).
        n_bins: number of detector bins (defaults to cover the image diagonal).
        n_subsets: number of interleaved angle subsets (``n_angles`` must be divisible by it).
        ray_offsets: sub-ray offsets (fractions of a bin) averaged per bin; ``(0,)`` is the classic Joseph projector.
        offset_xy_mm: shift of the image grid relative to the scanner axis, in mm.
    """

    def __init__(
        self,
        shape_xy: tuple[int, int],
        pixel_mm: float = 2.0,
        n_angles: int = 168,
        bin_mm: float | None = None,
        n_bins: int | None = None,
        n_subsets: int = 1,
        ray_offsets: Sequence[float] = (0.0,),
        offset_xy_mm: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        if n_angles % n_subsets:
            raise ValueError(f"n_angles must be divisible by n_subsets, got n_angles={n_angles}, n_subsets={n_subsets}")
        self.shape_xy = (int(shape_xy[0]), int(shape_xy[1]))
        self.pixel_mm = float(pixel_mm)
        self.bin_mm = float(bin_mm or pixel_mm)
        diag = math.hypot(self.shape_xy[0], self.shape_xy[1]) * self.pixel_mm
        self.n_bins = int(n_bins or (math.ceil(diag / self.bin_mm) + 2))
        self.n_angles = int(n_angles)
        self.n_subsets = int(n_subsets)
        self.angles = np.arange(self.n_angles) * math.pi / self.n_angles
        rows, cols, vals = _joseph_coo(
            self.shape_xy, self.pixel_mm, self.angles, self.n_bins, self.bin_mm, ray_offsets, offset_xy_mm
        )
        n_pix = self.shape_xy[0] * self.shape_xy[1]
        angle_of_row = rows // self.n_bins
        self.subset_angles = [np.arange(k, self.n_angles, self.n_subsets) for k in range(self.n_subsets)]
        self._fwd, self._bwd = [], []
        for k, ang in enumerate(self.subset_angles):
            sel = (angle_of_row % self.n_subsets) == k
            # subset-local row index: position of the angle within the subset
            local_angle = angle_of_row[sel] // self.n_subsets
            r = local_angle * self.n_bins + rows[sel] % self.n_bins
            shape = (len(ang) * self.n_bins, n_pix)
            self._fwd.append(_to_csr(r, cols[sel], vals[sel], shape))
            self._bwd.append(_to_csr(cols[sel], r, vals[sel], (n_pix, shape[0])))

    @property
    def sino_shape(self) -> tuple[int, int]:
        """Sinogram shape (n_angles, n_bins) of one slice."""
        return self.n_angles, self.n_bins

    def forward(self, image: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Project an image (X, Y, Z) to a sinogram (n_angles_subset, n_bins, Z); ``subset=None`` uses all angles."""
        nz = image.shape[-1]
        flat = image.reshape(-1, nz)
        if subset is not None:
            return (self._fwd[subset] @ flat).reshape(-1, self.n_bins, nz)
        out = torch.empty(self.n_angles, self.n_bins, nz, dtype=image.dtype)
        for k, ang in enumerate(self.subset_angles):
            out[ang] = (self._fwd[k] @ flat).reshape(-1, self.n_bins, nz)
        return out

    def back(self, sino: torch.Tensor, subset: int | None = None) -> torch.Tensor:
        """Back-project a sinogram (n_angles_subset, n_bins, Z) to an image (X, Y, Z) (the exact adjoint)."""
        nz = sino.shape[-1]
        if subset is not None:
            return (self._bwd[subset] @ sino.reshape(-1, nz)).reshape(*self.shape_xy, nz)
        out = torch.zeros(self.shape_xy[0] * self.shape_xy[1], nz, dtype=sino.dtype)
        for k, ang in enumerate(self.subset_angles):
            out += self._bwd[k] @ sino[ang].reshape(-1, nz)
        return out.reshape(*self.shape_xy, nz)


def gaussian_kernel_matrix(n: int, fwhm_vox: float, tail_fraction: float = 0.0, tail_scale: float = 2.5) -> np.ndarray:
    """Dense (n, n) 1D Gaussian convolution matrix with columns summing to one inside the array.

    Args:
        n: length of the axis.
        fwhm_vox: FWHM of the core Gaussian in voxels (0 gives the identity).
        tail_fraction: weight of a second, wider Gaussian (long-range PSF tails).
        tail_scale: FWHM ratio of the tail to the core.
    """
    if fwhm_vox <= 0:
        return np.eye(n, dtype=np.float32)
    idx = np.arange(n)
    d = idx[:, None] - idx[None, :]
    sig = fwhm_to_sigma(fwhm_vox)
    k = (1 - tail_fraction) * np.exp(-0.5 * (d / sig) ** 2) / sig
    if tail_fraction > 0:
        sig_t = sig * tail_scale
        k = k + tail_fraction * np.exp(-0.5 * (d / sig_t) ** 2) / sig_t
    k = k / k.sum(axis=0, keepdims=True)  # each source voxel spreads unit mass (count conservation)
    return k.astype(np.float32)


class GaussianPSF:
    """Separable 3D Gaussian point-spread function (optionally with a wide tail) applied as three small matmuls.

    Args:
        shape: image shape (X, Y, Z).
        fwhm_mm: FWHM in mm, a scalar or per-axis (x, y, z).
        voxel_mm: voxel size in mm, a scalar or per-axis.
        tail_fraction: weight of a wider Gaussian tail (0 = pure Gaussian).
    """

    def __init__(
        self,
        shape: Sequence[int],
        fwhm_mm: float | Sequence[float],
        voxel_mm: float | Sequence[float] = 2.0,
        tail_fraction: float = 0.0,
    ) -> None:
        fw = np.broadcast_to(np.asarray(fwhm_mm, dtype=float), (3,))
        vx = np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))
        self.shape = tuple(int(n) for n in shape)
        self.mats, self.mats_t = [], []
        for n, f, v in zip(self.shape, fw, vx):
            k = gaussian_kernel_matrix(n, f / v, tail_fraction)
            k[k < 1e-7] = 0.0  # banded: keeps the matmul cheap
            self.mats.append(_csr(torch.from_numpy(k)))
            self.mats_t.append(_csr(torch.from_numpy(np.ascontiguousarray(k.T))))

    def _apply(self, image: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
        nx, ny, nz = image.shape
        out = (mats[0] @ image.reshape(nx, ny * nz)).reshape(nx, ny, nz)
        out = out.permute(1, 0, 2).reshape(ny, nx * nz)
        out = (mats[1] @ out).reshape(ny, nx, nz).permute(2, 1, 0).reshape(nz, nx * ny)
        out = (mats[2] @ out).reshape(nz, nx, ny).permute(1, 2, 0)
        return out.contiguous()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Blur an image (X, Y, Z)."""
        return self._apply(image, self.mats)

    def adjoint(self, image: torch.Tensor) -> torch.Tensor:
        """Apply the transpose of the blur (X, Y, Z)."""
        return self._apply(image, self.mats_t)
