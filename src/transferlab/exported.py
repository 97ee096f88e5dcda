"""An ONNX model `tl-export` wrote, run by onnxruntime: ``tl-predict ckpt_path=model.onnx input=…``.

The file holds the graph and, as ONNX metadata (``metadata_props``, keys ``transferlab.*``, JSON values),
everything `tl-predict` otherwise reads from the checkpoint: the run's data config (so each file is prepared
exactly as for the checkpoint: the datamodule's `file_transform`), class names, up-scale factor, an AdaIN
model's style size and default style. The outputs are the same `Predictor`s a task builds: the graph's
output name says which (``logits`` → `ClassTable`, ``output_image`` → `ImageFiles`), its input names what else it
takes (``mask``, ``style``). The data config is read from a file, so it passes the same target check as a
checkpoint's (`transferlab.trust`).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from transferlab.inference import LOGITS, ClassTable, ImageFiles, PredictOptions, Predictor, from_png_base64, read_mask
from transferlab.trust import check_untrusted
from transferlab.utils.errors import UserError

METADATA_PREFIX = "transferlab."
ONNX_SUFFIX = ".onnx"
EXPORT_PACKAGES = {"onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"}  # import → pip name


def require(*modules: str) -> None:
    """One line naming the extra to install when an optional export/ONNX package is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"ONNX export and ONNX prediction need {', '.join(EXPORT_PACKAGES[m] for m in missing)}: "
            "pip install 'transferlab[export]'"
        )


def onnx_session(model: bytes | str, providers: list[str] | None = None) -> Any:
    """An onnxruntime session on an ONNX model (bytes or path), on the CPU unless `providers` say otherwise."""
    require("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation notes are not for the user
    return ort.InferenceSession(model, options, providers=providers or ["CPUExecutionProvider"])


def run_session(session: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The session's (single) output for `inputs` (float tensors, by input name)."""
    feeds = {name: np.ascontiguousarray(tensor.detach().cpu().float().numpy()) for name, tensor in inputs.items()}
    return torch.from_numpy(session.run(None, feeds)[0])


def providers_for(device: str) -> list[str]:
    """onnxruntime's execution providers for ``device=`` (cpu | cuda | auto)."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise UserError(
            "device=cuda with an ONNX model needs onnxruntime with CUDA: pip install onnxruntime-gpu, "
            "or pass device=cpu"
        )
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported model: its onnxruntime session and the metadata `tl-predict` needs."""

    def __init__(self, path: Path, session: Any, metadata: dict[str, Any]) -> None:
        self.path, self.session, self.metadata = path, session, metadata
        self.inputs = [node.name for node in session.get_inputs()]
        self.output = session.get_outputs()[0].name

    @classmethod
    def open(cls, path: Path, trusted: Iterable[str] = (), device: str = "cpu") -> OnnxModel:
        """Read `path` (a file `tl-export` wrote) and check the data config inside before anything is built."""
        require("onnxruntime")
        if not path.is_file():
            raise UserError(f"ONNX model {path} does not exist. Pass ckpt_path=<file tl-export wrote>")
        try:
            session = onnx_session(path.read_bytes(), providers_for(device))
        except UserError:
            raise
        except Exception as err:  # onnxruntime raises its own exception types for a bad file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot read ONNX model {path} ({first[:200]}). Export it again with tl-export") from err
        stored = session.get_modelmeta().custom_metadata_map
        metadata = {
            key.removeprefix(METADATA_PREFIX): json.loads(value)
            for key, value in stored.items()
            if key.startswith(METADATA_PREFIX)
        }
        if not isinstance(metadata.get("data"), dict):
            raise UserError(f"{path} was not written by tl-export (no transferlab metadata). Export it with tl-export")
        check_untrusted(metadata["data"], f"ONNX model {path}", trusted, key="data")
        return cls(path, session, metadata)

    def file_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Each file prepared as the run's test images were (the stored data config's datamodule)."""
        from transferlab.backbones import Preprocessing
        from transferlab.runner import build

        datamodule = build(OmegaConf.create(self.metadata["data"]), "data")
        record = self.metadata.get("preprocessing")  # absent in files exported before it was recorded
        datamodule.follow_weights(Preprocessing.from_record(record) if isinstance(record, dict) else None)
        return datamodule.file_transform()

    def predictor(self, prepare: Callable[[torch.Tensor], torch.Tensor], options: PredictOptions) -> Predictor:
        """The predictor the exported task would build: a class table for logits, image files for an image."""
        takes = set(self.inputs)
        if options.style is not None and "style" not in takes:
            raise UserError("style= is for AdaIN style-transfer models; this ONNX model takes no style image")
        if options.mask is not None and "mask" not in takes:
            raise UserError("mask= is for inpainting models; this ONNX model takes no mask")
        cpu = torch.device("cpu")  # tensors meet onnxruntime as host arrays, whatever provider runs the graph
        if self.output == LOGITS:
            return ClassTable(self.logits, prepare, list(self.metadata["class_names"]), options, cpu)
        mask = None
        if "mask" in takes:
            if options.mask is None:
                raise UserError("this is an inpainting model: pass mask=<image file, white = missing>")
            mask = read_mask(options.mask, cpu)
        extra = {}
        if "style" in takes:
            from transferlab.tasks.style_transfer import style_input

            style = options.style
            size = int(self.metadata["style_size"])
            default = from_png_base64(self.metadata["default_style"])[None].float().div(255)
            extra["style"] = default if style is None else style_input(style, size)

        def apply(images: torch.Tensor, tile_mask: torch.Tensor | None) -> torch.Tensor:
            feeds = {"image": images, **extra, **({"mask": tile_mask} if tile_mask is not None else {})}
            return run_session(self.session, feeds)

        return ImageFiles(apply, prepare, options, cpu, scale=int(self.metadata.get("scale", 1)), mask=mask)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 prepared images (the graph takes [0, 1] floats)."""
        return run_session(self.session, {"image": images.float() / 255})
