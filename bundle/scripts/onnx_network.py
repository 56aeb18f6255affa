"""ONNX export of the network and an ``nn.Module`` that runs the exported graphs with ONNX Runtime on CPU.

:func:`export_onnx` writes two graphs (the MRI-guided path and the MRI-free path), each with a dynamic batch and
slice size. :class:`OnnxNetwork` answers ``network(x, timesteps[, mri_free=True])`` like the PyTorch network, so the
sampler (``scripts.sampler.DDIMVolumeSampler``) runs it unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

INPUT_NAMES = ["x", "timesteps"]
OUTPUT_NAMES = ["x0"]

logger = logging.getLogger(__name__)


def mri_free_path(path: str | os.PathLike) -> str:
    """The MRI-free graph next to ``path``: ``model.onnx`` -> ``model_mri_free.onnx``."""
    path = Path(path)
    return str(path.with_name(f"{path.stem}_mri_free{path.suffix}"))


class _MriFreeForward(nn.Module):
    """``network(x, timesteps, mri_free=True)`` as a two-input module (the exporter traces one path)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.network(x, timesteps, mri_free=True)


def _export_graph(module: nn.Module, example: tuple, path: str, dynamo: bool, downsample_factor: int) -> None:
    if dynamo:  # torch.export based (needs onnxscript); H and W stay multiples of the down-sampling factor
        batch = torch.export.Dim("batch", min=1, max=4096)
        height, width = torch.export.Dim("height_blocks", max=1024), torch.export.Dim("width_blocks", max=1024)
        x_dims = {0: batch, 2: downsample_factor * height, 3: downsample_factor * width}
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            dynamic_shapes=(x_dims, {0: batch}),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
        )
        program.save(path)
        return
    axes = {"x": {0: "batch", 2: "height", 3: "width"}, "timesteps": {0: "batch"}}
    axes["x0"] = axes["x"]
    torch.onnx.export(
        module, example, path, dynamo=False, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, dynamic_axes=axes
    )


def export_onnx(network: nn.Module, path: str | os.PathLike, dynamo: bool = True) -> list[str]:
    """Export the MRI-guided and MRI-free paths of an M2DiffNet to ONNX, with dynamic batch and slice size.

    Each graph takes ``x`` ``(B, 1 + 2 * image_channels, H, W)`` float32 and ``timesteps`` ``(B,)`` int64 and returns
    ``x0`` ``(B, 2, H, W)``; H and W must be multiples of the network's ``downsample_factor`` (recorded in the
    model's metadata with ``context_slices``).

    Args:
        network: the network (weights loaded).
        path: output file of the MRI-guided graph; the MRI-free one goes to :func:`mri_free_path`.
        dynamo: use the ``torch.export``-based exporter (``False``: the TorchScript-based one, faster to export).

    Returns:
        the two written paths.
    """
    import onnx

    network = network.eval().cpu()
    factor = int(network.downsample_factor)
    example = (torch.zeros(2, 1 + 2 * network.image_channels, 2 * factor, 2 * factor), torch.tensor([999, 500]))
    metadata = {"downsample_factor": str(factor), "context_slices": str(network.context_slices)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    written = []
    for module, target in ((network, str(path)), (_MriFreeForward(network).eval(), mri_free_path(path))):
        with torch.no_grad():
            _export_graph(module, example, target, dynamo, factor)
        model = onnx.load(target)
        onnx.helper.set_model_props(model, metadata)
        onnx.save(model, target)
        written.append(target)
    return written


class OnnxNetwork(nn.Module):
    """Run the graphs written by :func:`export_onnx` with ONNX Runtime on CPU, called like the PyTorch network.

    Args:
        path: the MRI-guided graph (the MRI-free graph is read from :func:`mri_free_path` when present).
        num_threads: ONNX Runtime intra-op threads (0: its default, one per core).
    """

    supports_mri_free = True

    def __init__(self, path: str | os.PathLike, num_threads: int = 0) -> None:
        super().__init__()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1

        def session(file: str):
            return onnxruntime.InferenceSession(file, sess_options=options, providers=["CPUExecutionProvider"])

        self.path = str(path)
        self.session = session(self.path)
        free = mri_free_path(self.path)
        self.mri_free_session = session(free) if Path(free).is_file() else None
        self.supports_mri_free = self.mri_free_session is not None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.downsample_factor = int(metadata.get("downsample_factor", 1))
        self.context_slices = int(metadata.get("context_slices", 0))
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # the sampler reads the device here

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, mri_free: bool | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` slices and ``(B,)`` timesteps -> ``(B, 2, H, W)`` x0 estimates (as the PyTorch network)."""
        if mri_free not in (None, False, True):
            raise ValueError("the ONNX network takes mri_free=True/False for the whole batch, not per sample")
        session = self.session
        if mri_free:
            if self.mri_free_session is None:
                raise ValueError(f"no MRI-free graph {mri_free_path(self.path)}; export it with scripts.onnx_network")
            session = self.mri_free_session
        timesteps = torch.as_tensor(timesteps).reshape(-1).expand(x.shape[0])
        feeds = {"x": x.detach().cpu().float().numpy(), "timesteps": timesteps.cpu().long().contiguous().numpy()}
        return torch.from_numpy(session.run(OUTPUT_NAMES, feeds)[0]).to(x.device)


class OnnxRuntimeInfo:
    """Event handler that logs the ONNX graph and runtime a run uses (it takes the checkpoint loader's place)."""

    def __init__(self, network: OnnxNetwork) -> None:
        self.network = network

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)

    def started(self, engine) -> None:
        import onnxruntime

        mri_free = "with" if self.network.supports_mri_free else "without"
        logger.info(f"ONNX Runtime {onnxruntime.__version__} on CPU: {self.network.path} ({mri_free} MRI-free graph)")
