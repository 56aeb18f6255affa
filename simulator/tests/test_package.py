"""The package stands alone: it imports nothing from the M2Diff bundle (``scripts``) and ships its atlas."""

import re
from importlib import resources
from pathlib import Path

import pet_simulator
from pet_simulator.anatomy import atlas_path

BUNDLE_IMPORT = re.compile(r"^\s*(from|import)\s+scripts\b", re.MULTILINE)


def test_imports_nothing_from_the_bundle():
    sources = sorted(Path(pet_simulator.__file__).parent.glob("*.py"))
    assert len(sources) > 10
    assert [p.name for p in sources if BUNDLE_IMPORT.search(p.read_text())] == []


def test_ships_the_atlas_and_its_labels():
    for name in ("atlas_neuromorphometrics.nii.gz", "labels_neuromorphometrics.csv"):
        assert atlas_path(name) == Path(str(resources.files("pet_simulator").joinpath("data", name)))
