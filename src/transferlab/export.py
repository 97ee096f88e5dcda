"""`tl-export ckpt_path=… format=onnx|torchscript`: a trained checkpoint as a stand-alone inference model.

What the model is comes from the task (`TransferTask.export_module`: its trained modules, example inputs,
which axes are dynamic, what `tl-predict` needs to know); this module only converts and writes, with no
task-specific code. Inputs are float images in [0, 1] (a classifier normalises inside the graph).

ONNX uses torch's TorchScript-based exporter by default (``dynamo=false``): on torch 2.11 and 2.14 alike it
exports every shipped network with dynamic batch/height/width, 10-40x faster than the ``torch.export``-based
one, and needs only ``onnx``; ``dynamo=true`` picks the ``torch.export``-based exporter (needs ``onnxscript``),
the one torch develops further. Every file is checked before it is written: run (onnxruntime, or TorchScript)
on inputs of another batch size and another height/width than the export used, its output must match the
PyTorch model's within `ATOL` + `RTOL`·|value| — a network whose forward fixes a size in Python code fails
here instead of giving wrong results later. The file is written atomically (never half a file).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from transferlab.cli import hydra_app
from transferlab.console import quiet_loggers
from transferlab.exported import METADATA_PREFIX, onnx_session, require, run_session
from transferlab.inference import ExportSpec
from transferlab.trust import CheckedCheckpoint, open_checkpoint
from transferlab.utils.errors import UserError
from transferlab.utils.io import write_bytes_atomic

SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}  # default file: the checkpoint's name + suffix
OPSET = 18  # the lowest opset torch's torch.export-based exporter writes; onnxruntime >= 1.14 runs it
TORCHSCRIPT_METADATA = "transferlab.json"  # the extra file a TorchScript export carries the metadata in
ATOL, RTOL = 1e-4, 1e-4  # exported vs PyTorch output, checked on every export (and by the tests)
EXAMPLE_SIZE = (64, 64)  # the file size the example input is prepared from (image-to-image models take any)
EXAMPLE_BATCH = 2


def export_spec(checkpoint: CheckedCheckpoint) -> tuple[ExportSpec, dict[str, Any]]:
    """The task's inference model and the metadata written with it (the task's, plus what every model needs)."""
    task = checkpoint.build_task().eval()
    prepare = checkpoint.build_datamodule(task.preprocessing).file_transform()
    files = torch.randint(0, 256, (EXAMPLE_BATCH, 3, *EXAMPLE_SIZE), dtype=torch.uint8, generator=_seeded())
    example = torch.stack([prepare(file) for file in files]).float() / 255
    spec = task.export_module(example)
    spec.module.eval()
    metadata = {
        **spec.metadata,
        "task": checkpoint.config["model"]["_target_"],
        "data": checkpoint.config["data"],  # how tl-predict prepares a file (checked like a checkpoint's)
        "preprocessing": task.preprocessing.record() if task.preprocessing is not None else None,  # and its resize
        "inputs": list(spec.inputs),
        "output": spec.output,
        "checkpoint": checkpoint.path.name,
    }
    return spec, metadata


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def probe_inputs(spec: ExportSpec) -> dict[str, torch.Tensor]:
    """Random inputs with one more batch item and 3 more pixels in every dynamic axis than the examples."""
    generator = _seeded(1)
    probes = {}
    for name, example in spec.inputs.items():
        axes = spec.dynamic.get(name, {})
        shape = [n + (1 if axis == 0 else 3) if axis in axes else n for axis, n in enumerate(example.shape)]
        probes[name] = torch.rand(shape, generator=generator)
        if name == "mask":  # a mask is 0/1
            probes[name] = (probes[name] > 0.5).float()
    return probes


def check_matches(spec: ExportSpec, run: Callable[[dict[str, torch.Tensor]], torch.Tensor], what: str) -> float:
    """Largest difference of `run` (the written model) from the PyTorch module on `probe_inputs`; raise if too big."""
    inputs = probe_inputs(spec)
    with torch.no_grad():
        expected = spec.module(*inputs.values())
    got = run(inputs)
    if got.shape != expected.shape:
        raise UserError(
            f"the {what} model returns shape {list(got.shape)} where PyTorch returns {list(expected.shape)} for "
            f"inputs of {_shapes(inputs)}: the network's forward fixes a size in Python code. Nothing written"
        )
    difference = (got - expected).abs()
    if not bool((difference <= ATOL + RTOL * expected.abs()).all()):
        raise UserError(
            f"the {what} model differs from PyTorch by up to {float(difference.max()):.3g} for inputs of "
            f"{_shapes(inputs)} (allowed {ATOL:g} + {RTOL:g}·|value|): the network's forward is not exportable "
            "as it is (a size fixed in Python code?). Nothing written"
        )
    return float(difference.max())


def _shapes(inputs: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{name} {list(t.shape)}" for name, t in inputs.items())


def quiet_exporters() -> None:
    """Inside ``warnings.catch_warnings()``: hide the tracer's notes (every export is checked on other sizes
    after, `check_matches`) and torch's notice that TorchScript is deprecated (the README says so)."""
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")


def onnx_bytes(spec: ExportSpec, metadata: dict[str, Any], dynamo: bool) -> bytes:
    """The ONNX model (graph, weights and ``transferlab.*`` metadata) as bytes."""
    require("onnx", "onnxruntime", *(["onnxscript"] if dynamo else []))
    import onnx

    args = tuple(spec.inputs.values())
    names = {"input_names": list(spec.inputs), "output_names": [spec.output], "opset_version": OPSET}
    with warnings.catch_warnings(), quiet_loggers("onnxscript", "onnx_ir"):
        quiet_exporters()
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="Constant folding")  # an optimisation it skips, nothing wrong
        # Instance norm without running statistics always normalises by the input's own: "train=True" is right.
        warnings.filterwarnings("ignore", message=".*operator 'instance_norm' is set to train=True")
        if dynamo:
            dynamic = tuple({axis: torch.export.Dim.DYNAMIC for axis in spec.dynamic.get(n, {})} for n in spec.inputs)
            program = torch.onnx.export(
                spec.module, args, dynamo=True, dynamic_shapes=dynamic, external_data=False, verbose=False, **names
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(spec.module, args, buffer, dynamo=False, dynamic_axes=spec.dynamic, **names)
            model = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
    return model.SerializeToString()


def torchscript_bytes(spec: ExportSpec, metadata: dict[str, Any]) -> bytes:
    """The traced model, with the metadata as the extra file ``transferlab.json``."""
    with warnings.catch_warnings():
        quiet_exporters()
        with torch.no_grad():
            traced = torch.jit.trace(spec.module, tuple(spec.inputs.values()))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata)})
    return buffer.getvalue()


def load_torchscript(data: bytes) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        quiet_exporters()
        return torch.jit.load(io.BytesIO(data), map_location="cpu")


def exported_bytes(spec: ExportSpec, metadata: dict[str, Any], fmt: str, dynamo: bool) -> tuple[bytes, float]:
    """The file's bytes in `fmt` and its largest difference from PyTorch (`check_matches`)."""
    if fmt == "onnx":
        data = onnx_bytes(spec, metadata, dynamo)
        session = onnx_session(data)
        return data, check_matches(spec, lambda inputs: run_session(session, inputs), "ONNX")
    data = torchscript_bytes(spec, metadata)
    module = load_torchscript(data)

    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return module(*inputs.values())

    return data, check_matches(spec, run, "TorchScript")


def target_path(cfg: DictConfig) -> Path:
    if cfg.out:
        return Path(cfg.out).expanduser()
    ckpt = Path(cfg.ckpt_path).expanduser()
    return ckpt.with_name(ckpt.stem + SUFFIXES[cfg.format])


def run(cfg: DictConfig) -> Path:
    if cfg.format not in SUFFIXES:  # the CLI checks this first; the Python API arrives here too
        raise UserError(f"format must be one of {', '.join(SUFFIXES)}, got {cfg.format!r}. Pass format=onnx")
    if cfg.format == "onnx":  # before any work
        require("onnx", "onnxruntime", *(["onnxscript"] if cfg.dynamo else []))
    checkpoint = open_checkpoint(Path(cfg.ckpt_path).expanduser(), cfg.trusted_targets)
    spec, metadata = export_spec(checkpoint)
    data, difference = exported_bytes(spec, metadata, cfg.format, bool(cfg.dynamo))
    path = target_path(cfg)
    write_bytes_atomic(path, data, elsewhere="out=<a file on another disk>")  # a failure: one line, no file
    print(
        f"Wrote {path} ({cfg.format}; inputs {', '.join(spec.inputs)} → {spec.output}; "
        f"matches PyTorch on other sizes to {difference:.1g})",
        flush=True,
    )
    return path


@hydra_app("export")
def main(cfg: DictConfig) -> Path:
    return run(cfg)


if __name__ == "__main__":
    main()
