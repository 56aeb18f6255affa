"""torch.export of the network: the exported program gives the same output as the module."""

import torch
from network_testing import tiny_network

from scripts.export import export_network


def test_exported_program_matches_the_network(tmp_path):
    net = tiny_network(std=0.1)
    path = export_network(net, str(tmp_path / "model.pt2"), height=16, width=16)
    program = torch.export.load(path).module()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999])
    torch.testing.assert_close(program(x, t), net(x, t))
