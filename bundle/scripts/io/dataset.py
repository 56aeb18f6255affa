"""A dataset of studies that turns a study's loading error into an error record instead of stopping the run."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from monai.data import Dataset

from .errors import StudyError, find_study_error, root_cause
from .studies import ERROR_KEY, check_outputs_spare_inputs

logger = logging.getLogger(__name__)


class StudyDataset(Dataset):
    """Studies from :func:`scripts.io.load_datalist`, preprocessed one at a time.

    A study whose record is invalid, whose outputs would overwrite an input, or whose loading/preprocessing fails
    comes back as ``{"id", "pet", "error", "error_file"}`` so that the engine records it and goes on.

    Args:
        data: study records (``id``, ``pet``, optional ``mri`` ...).
        transform: the preprocessing.
        output_dir: results folder, to refuse outputs that would overwrite an input (``None``: no check).
    """

    def __init__(self, data: Sequence[dict], transform: Callable | None = None, output_dir: str | None = None) -> None:
        super().__init__(data=data, transform=transform)
        self.output_dir = output_dir

    def _transform(self, index: int) -> dict:
        study = self.data[index]
        sid = study.get("id", f"record-{index}")
        try:
            if study.get(ERROR_KEY):
                raise StudyError(study[ERROR_KEY], study.get("pet") if isinstance(study.get("pet"), str) else None)
            if self.output_dir is not None:
                check_outputs_spare_inputs(study, self.output_dir)
            return super()._transform(index)
        except Exception as exc:  # one bad study must not stop the others
            error = find_study_error(exc)
            if error is None:
                cause = root_cause(exc)
                error = StudyError(f"could not load the study: {type(cause).__name__}: {cause}", study.get("pet"))
            error.for_study(sid)
            logger.error(str(error))
            return {
                "id": sid,
                "pet": study.get("pet"),
                "drf": study.get("drf"),
                ERROR_KEY: str(error),
                "error_file": error.file,
            }


def single_study_collate(batch: list[dict]) -> dict:
    """Collate for ``batch_size=1``: the study dict itself (volumes differ in size and need no batch dimension)."""
    if len(batch) != 1:
        raise ValueError(f"studies are enhanced one at a time: use batch_size=1, got a batch of {len(batch)}")
    return batch[0]
