"""tl-export: every kind of model as ONNX and TorchScript, checked against the task's own PyTorch inference at
another batch size and image size than the export used; tl-predict on the ONNX file; bad input."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import compose_config, needs_extra, run_cli
from test_predict import write_photo
from transferlab.export import ATOL, EXAMPLE_SIZE, RTOL, exported_bytes, load_torchscript
from transferlab.export import run as export_run
from transferlab.exported import OnnxModel
from transferlab.inference import IMAGE_AXES, OUTPUT_IMAGE, ExportSpec
from transferlab.trust import open_checkpoint
from transferlab.utils.errors import UserError

needs_extra("export")  # every test here exports to ONNX or reads an ONNX file: all skip without the extra
import onnxruntime as ort  # noqa: E402

MODELS = ["classify", "denoise", "upscale", "inpaint", "stylize", "adain"]
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
BATCH, HEIGHT, WIDTH = 3, 37, 53  # the export used batch 2 and 64 x 64 (a classifier: its 32 x 32 input)


@functools.cache
def trained_task(ckpt: Path) -> nn.Module:
    return open_checkpoint(ckpt).build_task().eval()


def pytorch_inference(name: str, task: nn.Module) -> Callable[..., torch.Tensor]:
    """What `tl-predict` runs for each kind of model, from the task itself (not its export_module)."""
    if name == "classify":
        return lambda image: task(image * 255)  # the task takes 0-255 images, the exported model [0, 1]
    return task.restore if name in ("denoise", "upscale", "inpaint") else task.stylize


def random_inputs(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of another batch size (and for image-to-image models another height and width) than the export's."""
    generator = torch.Generator().manual_seed(seed)
    if name == "classify":
        return {"image": torch.rand(BATCH, 3, 32, 32, generator=generator)}
    inputs = {"image": torch.rand(BATCH, 3, HEIGHT, WIDTH, generator=generator)}
    if name == "inpaint":
        inputs["mask"] = (torch.rand(BATCH, 1, HEIGHT, WIDTH, generator=generator) > 0.7).float()
    if name == "adain":
        inputs["style"] = torch.rand(1, 3, 45, 50, generator=generator)
    return inputs


@pytest.fixture(scope="module")
def exported(checkpoints) -> dict[str, Path]:
    """Every tiny model exported in both formats by one real `tl-export -m` (next to its checkpoint)."""
    paths = ",".join(str(checkpoints[name]) for name in MODELS)
    cwd = checkpoints[MODELS[0]].parents[2]
    result = run_cli("tl-export", "-m", f"ckpt_path={paths}", "format=onnx,torchscript", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Wrote ") == 2 * len(MODELS), result.stdout[-2000:]
    return checkpoints


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", MODELS)
def test_exported_model_matches_pytorch_at_other_batch_and_image_sizes(exported, name: str, fmt: str) -> None:
    ckpt = exported[name]
    path = ckpt.with_name(ckpt.stem + FORMATS[fmt])
    assert path.is_file() and not list(ckpt.parent.glob("*.tmp"))
    inputs = random_inputs(name)
    with torch.inference_mode():
        expected = pytorch_inference(name, trained_task(ckpt))(*inputs.values())
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == list(inputs)
        got = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
        metadata = session.get_modelmeta().custom_metadata_map
    else:
        extra = {"transferlab.json": ""}
        module = torch.jit.load(str(path), _extra_files=extra)
        with torch.no_grad():
            got = module(*inputs.values())
        metadata = {f"transferlab.{k}": json.dumps(v) for k, v in json.loads(extra["transferlab.json"]).items()}
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert json.loads(metadata["transferlab.task"]).startswith("transferlab.tasks.")
    if name == "classify":
        assert json.loads(metadata["transferlab.class_names"]) == trained_task(ckpt).class_names
    if name == "upscale":
        assert got.shape[-2:] == (2 * HEIGHT, 2 * WIDTH)


def test_the_export_refuses_a_model_that_fixes_its_size_in_python_code(tmp_path: Path) -> None:
    """A forward that branches on the input size in Python is traced with the example's branch: the written
    model would be wrong at other sizes, so tl-export checks it there and writes nothing."""

    class SizeBranch(nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return image * 0.5 if image.shape[-1] == EXAMPLE_SIZE[1] else image

    example = torch.rand(2, 3, *EXAMPLE_SIZE)
    spec = ExportSpec(SizeBranch(), {"image": example}, OUTPUT_IMAGE, {"image": IMAGE_AXES}, {})
    for fmt in FORMATS:
        with pytest.raises(UserError, match=f"the {'ONNX' if fmt == 'onnx' else 'TorchScript'} model differs"):
            exported_bytes(spec, {}, fmt, dynamo=False)
    identity = ExportSpec(nn.Identity(), {"image": example}, OUTPUT_IMAGE, {"image": IMAGE_AXES}, {})
    data, difference = exported_bytes(identity, {}, "torchscript", dynamo=False)
    assert difference == 0 and load_torchscript(data)(example[:1]).shape == (1, 3, *EXAMPLE_SIZE)
    assert ATOL <= 1e-4 and RTOL <= 1e-4  # the tolerance README states


def test_dynamo_exporter_writes_the_same_model(checkpoints, tmp_path: Path) -> None:
    """``dynamo=true`` (torch's torch.export-based exporter) gives a model with the same dynamic axes and outputs."""
    cfg = compose_config(
        [f"ckpt_path={checkpoints['denoise']}", f"out={tmp_path / 'dynamo.onnx'}", "dynamo=true"], tmp_path, "export"
    )
    path = export_run(cfg)
    inputs = random_inputs("denoise")
    with torch.inference_mode():
        expected = open_checkpoint(checkpoints["denoise"]).build_task().eval().restore(inputs["image"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"image": inputs["image"].numpy()})[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# -- tl-predict on the exported ONNX file ---------------------------------------------------------------
def photos(folder: Path) -> None:
    write_photo(folder / "a.png", 40, 36)
    write_photo(folder / "sub" / "b.jpg", 53, 37, mode="L", seed=1)
    write_photo(folder / "c.png", 33, 48, mode="RGBA", seed=2)


def predict_both(cwd: Path, ckpts: list[Path], *extra: str) -> dict[Path, dict[str, Path]]:
    """One tl-predict multirun over each checkpoint and its ONNX export: checkpoint → {"ckpt"|"onnx": output}."""
    models = [path for ckpt in ckpts for path in (ckpt, ckpt.with_suffix(".onnx"))]
    jobs = "output=out/${hydra:job.num}"
    result = run_cli("tl-predict", "-m", f"ckpt_path={','.join(map(str, models))}", "input=in", jobs, *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        ckpt: {"ckpt": cwd / "out" / str(2 * i), "onnx": cwd / "out" / str(2 * i + 1)} for i, ckpt in enumerate(ckpts)
    }


def assert_same_images(out: dict[str, Path]) -> None:
    """The same files, sizes and pixels (±1 of 255: float rounding) from the checkpoint and the ONNX file."""
    written = sorted(p.relative_to(out["ckpt"]) for p in out["ckpt"].rglob("*.png"))
    assert written and written == sorted(p.relative_to(out["onnx"]) for p in out["onnx"].rglob("*.png"))
    for relative in written:
        a = np.asarray(Image.open(out["ckpt"] / relative)).astype(int)
        b = np.asarray(Image.open(out["onnx"] / relative)).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, f"{relative}: {np.abs(a - b).max()}"


def test_predict_with_the_onnx_file_gives_the_checkpoints_results(exported, tmp_path: Path) -> None:
    """Classes and probabilities, restored, up-scaled and stylized images (AdaIN: its default style), tiled or
    not (tile=32): the ONNX file alone gives what its checkpoint gives."""
    photos(tmp_path / "in")
    names = ["classify", "denoise", "upscale", "stylize", "adain"]
    outputs = predict_both(tmp_path, [exported[name] for name in names], "top_k=3", "tile=32", "overlap=8")
    rows = {
        kind: list(csv.reader((folder / "predictions.csv").open()))
        for kind, folder in outputs[exported["classify"]].items()
    }
    assert [r[0] for r in rows["onnx"]] == [r[0] for r in rows["ckpt"]] == ["file", "a.png", "c.png", "sub/b.jpg"]
    for by_ckpt, by_onnx in zip(rows["ckpt"][1:], rows["onnx"][1:]):
        assert by_onnx[1::2] == by_ckpt[1::2]  # the same classes in the same order
        assert np.allclose([float(p) for p in by_onnx[2::2]], [float(p) for p in by_ckpt[2::2]], atol=1e-5)
    for name in names[1:]:
        assert_same_images(outputs[exported[name]])
    assert Image.open(outputs[exported["upscale"]]["onnx"] / "a.png").size == (80, 72)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "extra"), [("inpaint", "mask=mask.png"), ("adain", "style=grass")])
def test_predict_with_the_onnx_file_takes_mask_and_style(exported, tmp_path: Path, name: str, extra: str) -> None:
    write_photo(tmp_path / "in" / "a.png", 40, 36)
    mask = np.zeros((36, 40), dtype=np.uint8)
    mask[8:20, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert_same_images(predict_both(tmp_path, [exported[name]], extra)[exported[name]])


# -- bad input --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "error: ckpt_path is required and has no value. Pass ckpt_path="),
        (["ckpt_path=nope.ckpt"], "error: checkpoint nope.ckpt does not exist"),
        (["ckpt_path=model.ckpt", "format=tflite"], "error: format must be one of onnx, torchscript, got 'tflite'"),
        (["ckpt_path=model.ckpt", "dynamo=maybe"], "error: dynamo must be one of True, False"),
    ],
)
def test_bad_export_input_is_one_line_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "model.ckpt").write_bytes(b"not read: the config is checked first")
    result = run_cli("tl-export", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_onnx_predict_refuses_options_the_model_does_not_take(exported, tmp_path: Path) -> None:
    """As for a checkpoint: one line, exit 2, nothing written (the CLI once; the other cases in this process)."""
    from transferlab.inference import PredictOptions

    write_photo(tmp_path / "photo.png", 40, 36)
    denoiser = exported["denoise"].with_suffix(".onnx")
    args = [f"ckpt_path={denoiser}", "input=photo.png", "style=brick", "output=out"]
    result = run_cli("tl-predict", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: style= is for AdaIN"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Conv2d(3, 3, 1), (torch.rand(1, 3, 8, 8),), str(plain), input_names=["image"], dynamo=False)
    with pytest.raises(UserError, match="plain.onnx was not written by tl-export"):
        OnnxModel.open(plain)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read ONNX model .*junk.onnx"):
        OnnxModel.open(tmp_path / "junk.onnx")
    cases = [
        ("denoise", {"mask": tmp_path / "photo.png"}, "mask= is for inpainting models"),
        ("inpaint", {}, "this is an inpainting model: pass mask="),
        ("classify", {"style": "brick"}, "style= is for AdaIN"),
    ]
    for name, given, message in cases:
        model = OnnxModel.open(exported[name].with_suffix(".onnx"))
        with pytest.raises(UserError, match=message):
            model.predictor(lambda image: image, PredictOptions(output=tmp_path / "out", **given))


@pytest.mark.slow
def test_export_to_an_unwritable_place_is_one_line(exported, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    result = run_cli("tl-export", f"ckpt_path={exported['denoise']}", "out=a_file/model.onnx", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: cannot write a_file/model.onnx"), result.stderr[-2000:]
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_onnx_packages_name_the_extra(checkpoints, tmp_path: Path, monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    cfg = compose_config([f"ckpt_path={checkpoints['denoise']}", f"out={tmp_path / 'm.onnx'}"], tmp_path, "export")
    with pytest.raises(UserError, match=r"need onnx: pip install 'transferlab\[export\]'"):
        export_run(cfg)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "onnx" in name else find_spec(name, *a))
    with pytest.raises(UserError, match=r"need onnxruntime: pip install 'transferlab\[export\]'"):
        OnnxModel.open(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_model_data_config_is_checked_like_a_checkpoints(exported, tmp_path: Path) -> None:
    """The data config inside an ONNX file is data: a target outside the allowlist is refused before use."""
    import onnx

    model = onnx.load(str(exported["denoise"].with_suffix(".onnx")))
    for entry in model.metadata_props:
        if entry.key == "transferlab.data":
            data = json.loads(entry.value)
            data["_target_"] = "os.system"
            entry.value = json.dumps(data)
    crafted = tmp_path / "crafted.onnx"
    onnx.save(model, str(crafted))
    with pytest.raises(UserError, match=r"data._target_='os.system' is not a target transferlab builds"):
        OnnxModel.open(crafted)
