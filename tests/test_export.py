"""torch.export of the network: the exported program gives the same output as the module."""

import torch
from scripts.export import export_network
from scripts.network import M2DiffNet


def test_exported_program_matches_the_network(tmp_path):
    torch.manual_seed(0)
    net = M2DiffNet(
        base_channels=8,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_levels=(False, True),
        num_heads=1,
        norm_num_groups=4,
        dropout=0.0,
    )
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    path = export_network(net, str(tmp_path / "model.pt2"), height=16, width=16)
    program = torch.export.load(path).module()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999])
    torch.testing.assert_close(program(x, t), net(x, t))
