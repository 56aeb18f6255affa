"""The one error type of the clinical I/O layer: a problem with one study's input or output."""

from __future__ import annotations


class StudyError(Exception):
    """A problem with one study that stops that study (and only that study).

    The message names the study, the file and the problem, e.g.
    ``study 'sub-01': /data/sub-01_pet.nii.gz: expected a 3D image, got shape (64, 64)``.

    Args:
        problem: what was expected and what was received.
        file: the file or folder concerned (``None`` when the problem is not about one file).
        study_id: the study's id; may be filled in later with :meth:`for_study`.
    """

    def __init__(self, problem: str, file: str | None = None, study_id: str | None = None) -> None:
        self.problem = problem
        self.file = None if file is None else str(file)
        self.study_id = study_id
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"{self.file}: " if self.file else ""
        who = f"study '{self.study_id}': " if self.study_id else ""
        return f"{who}{where}{self.problem}"

    def for_study(self, study_id: str) -> StudyError:
        """Return this error with the study id set (keeps an id set earlier)."""
        if self.study_id is None:
            self.study_id = study_id
            self.args = (self._message(),)
        return self

    def __str__(self) -> str:
        return self._message()


def find_study_error(exc: BaseException) -> StudyError | None:
    """The :class:`StudyError` behind ``exc`` (MONAI's ``apply_transform`` wraps errors in ``RuntimeError``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StudyError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain of wrapped exceptions."""
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return exc
