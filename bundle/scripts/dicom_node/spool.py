"""The DICOM node's spool: every received instance is on disk (fsync, atomic rename) before it is acknowledged.

Layout under ``spool_dir``, one folder per study, moved (atomic renames) from state to state::

    incoming/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   receiving; waits until quiet
    processing/<study>/                                                     claimed: being enhanced or sent
    done/<study>/                                                           enhanced and sent
    failed/<study>/reason.txt                                               never sent; the reason in one line
    audit.log                                                               the node's audit log (rotated)

Inside a study folder, names starting with ``_`` belong to the node: ``_output/`` (the inference results),
``_enhanced`` (marker: results complete), ``_sent.log`` (one SOPInstanceUID a line, appended after each C-STORE
success), ``_sent`` (marker: everything sent), ``_datalist.json`` and ``_report/`` (a failure report). A node
restarted after a crash resumes ``processing/`` studies from these markers, so a study is enhanced once and each
instance is sent once.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

from scripts.io.writers import atomic_path, fsync_directory, remove_stale_temporaries

STATES = ("incoming", "processing", "done", "failed")
REASON_NAME = "reason.txt"
UID_PATTERN = re.compile(r"^[0-9][0-9.]{0,63}$")


def write_durably(data: bytes, path: Path) -> Path:
    """Write ``data`` to ``path`` atomically and durably (fsync of the file and of the rename)."""
    with atomic_path(path, durable=True) as tmp:
        tmp.write_bytes(data)
    return path


def series_folders(study: Path) -> list[Path]:
    """The series folders of a study folder (the node's own ``_`` entries left out)."""
    return sorted(p for p in study.iterdir() if p.is_dir() and not p.name.startswith("_"))


class Spool:
    """Received instances on disk, grouped by study, and the study state folders.

    Args:
        spool_dir: root folder (created).
    """

    def __init__(self, spool_dir: str | os.PathLike) -> None:
        self.root = Path(spool_dir)
        for name in STATES:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        for series in self.folder("incoming").glob("*/*"):  # partial writes of a killed node were never acknowledged
            remove_stale_temporaries(series)
        self._lock = threading.Lock()

    def folder(self, state: str) -> Path:
        return self.root / state

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """Durably store one instance (``data``: the file-format bytes) under ``incoming/``.

        The file, its name and the names of new study and series folders are synced before this returns.

        Raises:
            ValueError: when a UID is not a valid DICOM UID (it names a folder).
            OSError: when the instance cannot be written (a full disk ...).
        """
        for name, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid), ("SOP", sop_uid)):
            if not UID_PATTERN.match(str(uid)):
                raise ValueError(f"invalid {name} {uid!r}")
        series = self.folder("incoming") / study_uid / series_uid
        with self._lock:  # a study is neither listed nor claimed half-way through an instance
            new_series = not series.is_dir()
            path = write_durably(data, series / f"{sop_uid}.dcm")
            if new_series:
                fsync_directory(series.parent)
                fsync_directory(series.parent.parent)
            return path

    def quiet_studies(self, quiet_time_s: float) -> list[tuple[Path, float]]:
        """Studies in ``incoming/`` whose newest instance arrived at least ``quiet_time_s`` ago, with that instance's
        time (oldest first)."""
        now, ready = time.time(), []
        with self._lock:  # no instance is being renamed into place while the files are listed and dated
            for study in self.folder("incoming").iterdir():
                newest = self._newest(study)
                if now - newest >= quiet_time_s:
                    ready.append((newest, study))
        return [(study, newest) for newest, study in sorted(ready)]

    @staticmethod
    def _newest(study: Path) -> float:
        times = [f.stat().st_mtime for f in study.rglob("*") if f.is_file()]
        return max(times, default=study.stat().st_mtime)

    def _free_name(self, state: str, name: str) -> Path:
        target, n = self.folder(state) / name, 1
        while target.exists():  # late instances of a study already handled form a new job
            n += 1
            target = self.folder(state) / f"{name}.{n}"
        return target

    def claim(self, study: Path, newest: float | None = None) -> Path | None:
        """Move a study from ``incoming/`` to ``processing/`` (atomically); returns its new folder.

        With ``newest`` (from :meth:`quiet_studies`), the study is claimed only if no instance arrived since
        (``None`` is returned otherwise).
        """
        with self._lock:
            if newest is not None and self._newest(study) > newest:
                return None
            target = self._free_name("processing", study.name)
            os.replace(study, target)
            fsync_directory(target.parent)
        return target

    def move(self, study: Path, state: str, reason: str | None = None) -> Path:
        """Move a claimed study to ``done/`` or ``failed/`` (with ``reason.txt``, naming the study's new folder)."""
        target = self._free_name(state, study.name)
        (study / REASON_NAME).unlink(missing_ok=True)  # an earlier attempt's
        if reason is not None:
            write_durably((reason.replace(str(study), str(target)).strip() + "\n").encode(), study / REASON_NAME)
        os.replace(study, target)
        fsync_directory(target.parent)
        return target
