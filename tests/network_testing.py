"""A tiny M2DiffNet for fast tests."""

import torch

from scripts.network import M2DiffNet

TINY = dict(
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_levels=(False, True),
    num_heads=1,
    norm_num_groups=4,
    dropout=0.0,
)


def tiny_network(std: float | None = 0.1, seed: int = 0, **overrides) -> M2DiffNet:
    """A tiny M2DiffNet in eval mode; with ``std`` every parameter is drawn from N(0, std) so that zero-initialised
    convolutions do not hide wrong wiring."""
    torch.manual_seed(seed)
    network = M2DiffNet(**{**TINY, **overrides})
    if std is not None:
        with torch.no_grad():
            for p in network.parameters():
                p.normal_(0, std)
    return network.eval()
