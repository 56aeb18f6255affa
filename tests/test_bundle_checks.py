"""The Model Zoo's own checks, run offline: metadata schema and network input/output."""

import os

import torch
from monai.bundle import verify_metadata, verify_net_in_out

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCHEMA = os.path.join(REPO, "..", "shared", "schema", "meta_schema_20240725.json")
CONFIGS = os.path.join(REPO, "bundle", "configs")


def test_metadata_matches_the_zoo_schema(tmp_path):
    schema = SCHEMA if os.path.exists(SCHEMA) else os.path.join(REPO, "tests", "data", "meta_schema_20240725.json")
    verify_metadata(meta_file=os.path.join(CONFIGS, "metadata.json"), filepath=schema)


def test_metadata_version_is_in_the_changelog():
    import json

    with open(os.path.join(CONFIGS, "metadata.json")) as f:
        meta = json.load(f)
    assert meta["version"] in meta["changelog"]


def test_network_in_out_with_timesteps_as_extra_argument():
    verify_net_in_out(
        net_id="network_def",
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        config_file=os.path.join(CONFIGS, "inference.json"),
        device="cpu",
        n=2,
        extra_forward_args={"timesteps": torch.tensor([500])},
    )
