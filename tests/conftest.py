"""Put the bundle root on sys.path so tests import the bundle's `scripts` package as MONAI bundle runs do."""

import os
import sys

import pytest

BUNDLE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "bundle"))
if BUNDLE_ROOT not in sys.path:
    sys.path.insert(0, BUNDLE_ROOT)


@pytest.fixture
def bundle_root() -> str:
    """Absolute path of the bundle root folder."""
    return BUNDLE_ROOT


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Tiny network weights in inference.json's layout, once per test module."""
    from inference_testing import save_tiny_weights

    return save_tiny_weights(tmp_path_factory.mktemp("weights") / "model.pt")
