"""Helpers for the workflow tests: the real configs with tiny overrides, run through ``monai.bundle.ConfigWorkflow``."""

from __future__ import annotations

import os

from monai.bundle import ConfigWorkflow

BUNDLE_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "bundle"))
CONFIGS = os.path.join(BUNDLE_ROOT, "configs")

# a training budget of a few seconds: 2 iterations of 2 random 32x32 slices, a few DDIM steps on 8 slices
TINY_TRAINING = {
    "patch_size": [32, 32],
    "batch_size": 2,
    "epoch_length": 2,
    "max_epochs": 1,
    "val_interval": 1,
    "val_num_slices": 8,
    "val_num_inference_steps": 2,
    "save_interval": 1,
    "log_interval": 1,
    "num_threads": 1,
}


def config_files(*names: str) -> list[str]:
    """Absolute paths of configs/<name>.json, in order."""
    return [os.path.join(CONFIGS, f"{name}.json") for name in names]


def make_workflow(names: list[str], workflow_type: str = "train", tracking=None, **overrides) -> ConfigWorkflow:
    """A ConfigWorkflow over the bundle's configs ``names`` (e.g. ``["inference", "train"]``)."""
    return ConfigWorkflow(
        config_file=config_files(*names),
        meta_file=os.path.join(CONFIGS, "metadata.json"),
        logging_file=os.path.join(CONFIGS, "logging.conf"),
        workflow_type=workflow_type,
        tracking=tracking,
        bundle_root=BUNDLE_ROOT,
        **overrides,
    )


def run_workflow(names: list[str], workflow_type: str = "train", tracking=None, **overrides) -> ConfigWorkflow:
    """Initialise and run a workflow (finalised afterwards); returns it for inspection."""
    workflow = make_workflow(names, workflow_type, tracking, **overrides)
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow
