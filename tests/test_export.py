"""torch.export of the network: the exported program gives the same output as the module."""

import os

import torch
from network_testing import tiny_network
from workflow_testing import BUNDLE_ROOT, CONFIGS

from scripts.export import export_network


def test_exported_program_matches_the_network(tmp_path):
    net = tiny_network(std=0.1)
    path = export_network(net, str(tmp_path / "model.pt2"), height=16, width=16)
    program = torch.export.load(path).module()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999])
    torch.testing.assert_close(program(x, t), net(x, t))


def test_default_export_path_is_outside_the_bundle_and_ignored():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([os.path.join(CONFIGS, "inference.json"), os.path.join(CONFIGS, "export.json")])
    parser["bundle_root"] = BUNDLE_ROOT
    path = os.path.abspath(parser.get_parsed_content("export_path"))
    assert not path.startswith(BUNDLE_ROOT + os.sep)
    repo = os.path.dirname(BUNDLE_ROOT)
    with open(os.path.join(repo, ".gitignore")) as f:
        ignored = {line.strip() for line in f}
    assert "/" + os.path.relpath(path, repo).split(os.sep)[0] + "/" in ignored


def test_export_names_the_written_file(tmp_path, caplog):
    with caplog.at_level("INFO", logger="scripts.export"):
        path = export_network(tiny_network(), str(tmp_path / "new" / "model.pt2"), height=16, width=16)
    assert os.path.isfile(path) and any(path in r.getMessage() for r in caplog.records)
