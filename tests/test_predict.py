"""tl-predict: tiling math, tiled = untiled, and the three tasks end to end as subprocesses."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, run_cli, train_briefly
from transferlab.data.shapes import CLASSES
from transferlab.inference import seams, tile_starts, tiled
from transferlab.nets.dncnn import DnCNN
from transferlab.nets.edsr import EDSR
from transferlab.utils.errors import UserError


def write_photo(path: Path, width: int, height: int, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode=mode).save(path)
    return path


def test_tile_starts_cover_the_axis_and_seams_partition_it() -> None:
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(100, 40, 10)
    assert starts == [0, 30, 60] and starts[-1] + 40 == 100
    kept = seams(starts, 40, 100)
    assert kept[0][0] == 0 and kept[-1][1] == 100 and all(a[1] == b[0] for a, b in zip(kept, kept[1:]))
    for start, (lo, hi) in zip(starts, kept):  # every kept pixel is >= overlap/2 from an inner tile border
        assert (lo == 0 or lo - start >= 5) and (hi == 100 or start + 40 - hi >= 5)


@pytest.mark.parametrize(
    ("net", "scale", "overlap"),
    [(DnCNN(3, 3, depth=5, channels=8), 1, 12), (EDSR(scale=2, channels=8, blocks=1), 2, 14)],
)
def test_tiled_equals_untiled_when_the_overlap_covers_the_receptive_field(net, scale: int, overlap: int) -> None:
    torch.manual_seed(0)
    for p in net.parameters():  # non-zero output layers, so the test sees the whole network
        torch.nn.init.normal_(p, std=0.1)
    net.eval()
    image = torch.rand(1, 3, 70, 93)
    fn = lambda x, _mask: net(x)  # noqa: E731
    with torch.no_grad():
        whole = net(image)
    pieces = tiled(fn, image, tile=32, overlap=overlap, scale=scale)
    assert pieces.shape == (1, 3, 70 * scale, 93 * scale)
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="tile=16 is too small for overlap=8"):
        tiled(fn, image, tile=16, overlap=8)


def test_predict_classifies_files_into_a_top_k_csv(checkpoints, tmp_path: Path) -> None:
    write_photo(tmp_path / "in" / "a.png", 40, 30)
    write_photo(tmp_path / "in" / "sub" / "b.jpg", 64, 64, "L")
    result = run_cli(
        "tl-predict", f"ckpt_path={checkpoints['classify']}", "input=in", "output=out", "top_k=3", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.reader((tmp_path / "out" / "predictions.csv").open()))
    assert rows[0] == ["file", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert [r[0] for r in rows[1:]] == ["a.png", "sub/b.jpg"]
    for row in rows[1:]:
        probs = [float(p) for p in row[2::2]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert set(row[1::2]) <= set(CLASSES)


def unreadable_inputs(folder: Path) -> list[str]:
    """A corrupt JPEG, a truncated JPEG (its header reads, its pixels do not) and a text file named .png in `folder`
    (as `input=<folder>` names them), besides two good images (a.png, sub/b.jpg)."""
    write_photo(folder / "a.png", 40, 30)
    jpeg = write_photo(folder / "sub" / "b.jpg", 48, 48).read_bytes()
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(500))
    (folder / "sub" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "notes.png").write_text("not an image\n")
    return [f"{folder.name}/corrupt.jpg", f"{folder.name}/notes.png", f"{folder.name}/sub/truncated.jpg"]


def test_predict_skips_unreadable_inputs_and_lists_them(checkpoints, tmp_path: Path) -> None:
    bad = unreadable_inputs(tmp_path / "in")
    result = run_cli("tl-predict", f"ckpt_path={checkpoints['classify']}", "input=in", "output=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    warned = re.findall(r"^warning: skipped unreadable image (\S+) \(.+\)$", result.stderr, flags=re.MULTILINE)
    assert warned == bad  # one line each, in input order
    rows = list(csv.reader((tmp_path / "out" / "predictions.csv").open()))
    assert [row[0] for row in rows[1:]] == ["a.png", "sub/b.jpg"]  # the readable rest
    listed = json.loads((tmp_path / "out" / "skipped_files.json").read_text())
    assert [entry["path"] for entry in listed] == bad and all(entry["reason"] for entry in listed)
    tail = result.stdout.strip().splitlines()[-4:]  # the end of the console output
    assert tail[0] == "Skipped 3 unreadable input(s), listed in out/skipped_files.json:"
    assert [line.split(" (")[0].strip() for line in tail[1:]] == bad
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.csv", "skipped_files.json"]


REFUSED = r"error: cannot read image in/(corrupt|notes)\.\w+ \(.*on_bad_file=skip to predict the others"
NONE_LEFT = r"error: none of the 3 input images can be read \(.*in/corrupt\.jpg: .*\)\. Check input=.*"


@pytest.mark.parametrize(("setting", "message"), [("on_bad_file=error", REFUSED), ("on_bad_file=skip", NONE_LEFT)])
def test_unreadable_inputs_refused_as_asked_or_when_none_is_left(
    checkpoints, tmp_path: Path, setting: str, message: str
) -> None:
    unreadable_inputs(tmp_path / "in")
    if setting == "on_bad_file=skip":  # nothing readable left
        for good in ("a.png", "sub/b.jpg"):
            (tmp_path / "in" / good).unlink()
    result = run_cli(
        "tl-predict", f"ckpt_path={checkpoints['classify']}", "input=in", "output=out", setting, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.fullmatch(message, lines[0]), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_predict_restores_a_large_photo_tiled_identical_to_untiled(checkpoints, tmp_path: Path) -> None:
    write_photo(tmp_path / "in" / "big.png", 1200, 900)
    write_photo(tmp_path / "in" / "small.png", 150, 110, "RGBA", seed=1)
    ckpt = f"ckpt_path={checkpoints['denoise']}"
    whole = run_cli("tl-predict", ckpt, "input=in", "output=whole", "tile=2048", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    tiles = run_cli("tl-predict", ckpt, "input=in", "output=tiles", "tile=64", "overlap=16", cwd=tmp_path)
    assert tiles.returncode == 0, tiles.stderr[-3000:]
    for name, size in (("big.png", (1200, 900)), ("small.png", (150, 110))):
        a = np.asarray(Image.open(tmp_path / "whole" / name))
        b = np.asarray(Image.open(tmp_path / "tiles" / name))
        assert Image.open(tmp_path / "tiles" / name).size == size
        assert np.array_equal(a, b), f"{name}: {np.abs(a.astype(int) - b).max()} max difference"
    assert not list(tmp_path.rglob("*.tmp"))


def test_predict_stylizes_and_inpaints(checkpoints, tmp_path: Path) -> None:
    write_photo(tmp_path / "photo.jpg", 90, 70)
    result = run_cli(
        "tl-predict", f"ckpt_path={checkpoints['stylize']}", "input=photo.jpg", "output=styled", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "styled" / "photo.png").size == (90, 70)
    mask = np.zeros((70, 90), dtype=np.uint8)
    mask[20:40, 30:60] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = run_cli(
        "tl-predict",
        f"ckpt_path={checkpoints['inpaint']}",
        "input=photo.jpg",
        "mask=mask.png",
        "output=filled",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(tmp_path / "filled" / "photo.png").size == (90, 70)


@pytest.mark.parametrize(
    ("task", "args", "message"),
    [
        ("denoise", ["tile=32", "overlap=16"], "error: tile=32 is too small for overlap=16"),
        ("denoise", ["input=broken.png"], "error: cannot read image broken.png"),
        ("denoise", ["input=missing/"], "error: input missing does not exist"),
        ("inpaint", [], "error: this is an inpainting model: pass mask="),
        ("stylize", ["style=brick"], "error: style= needs an AdaIN model"),
        (None, ["ckpt_path=nope.ckpt"], "error: checkpoint nope.ckpt does not exist"),
    ],
)
def test_bad_predict_input_is_one_line_with_exit_2(checkpoints, tmp_path: Path, task, args, message: str) -> None:
    write_photo(tmp_path / "photo.png", 40, 40)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG but not really")
    ckpt = [f"ckpt_path={checkpoints[task]}"] if task else []
    result = run_cli("tl-predict", *ckpt, "input=photo.png", "output=out", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def _task(ckpt: Path) -> torch.nn.Module:
    from transferlab.trust import open_checkpoint

    return open_checkpoint(ckpt).build_task().eval()


def test_predicted_classes_are_the_models(checkpoints, tmp_path: Path) -> None:
    """The CSV holds the trained model's own top-k (an untrained, uniform or identity model would not match)."""
    from torchvision.transforms.v2 import functional as TF

    from transferlab.data.images import decode_rgb

    paths = [write_photo(tmp_path / "in" / f"{i}.png", 48, 40, seed=i) for i in range(3)]
    result = run_cli("tl-predict", f"ckpt_path={checkpoints['classify']}", "input=in", "output=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = list(csv.reader((tmp_path / "out" / "predictions.csv").open()))[1:]
    task = _task(checkpoints["classify"])
    for path, row in zip(paths, rows):
        image = TF.center_crop(TF.resize(decode_rgb(path), [32], antialias=True), [32, 32])
        with torch.inference_mode():
            probs = task(image[None]).softmax(dim=-1)[0]
        top = probs.topk(5)
        assert row[1::2] == [task.class_names[i] for i in top.indices.tolist()]
        assert np.allclose([float(p) for p in row[2::2]], top.values.tolist(), atol=1e-5)


def test_restored_image_is_the_models_output(checkpoints, tmp_path: Path) -> None:
    """tl-predict writes exactly what the trained denoiser makes of the photo (not the photo itself)."""
    path = write_photo(tmp_path / "noisy.png", 40, 36)
    result = run_cli("tl-predict", f"ckpt_path={checkpoints['denoise']}", "input=noisy.png", "output=out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    written = torch.from_numpy(np.asarray(Image.open(tmp_path / "out" / "noisy.png"))).permute(2, 0, 1)
    original = torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1)
    with torch.inference_mode():
        restored = _task(checkpoints["denoise"]).restore(original[None].float() / 255, None)[0]
    expected = (restored.clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(written, expected)
    assert not torch.equal(expected, original), "the check must tell the model from an identity"


def test_predict_prepares_files_as_evaluation_does(tmp_path: Path) -> None:
    """A classifier trained on an image folder: tl-predict's probabilities for the test images are those the
    evaluated model gives them through the data's own test pipeline (resize to image_size × 256/224, crop)."""
    from test_data import write_imagefolder
    from transferlab.data.images import decode_rgb
    from transferlab.trust import open_checkpoint

    write_imagefolder(tmp_path / "images")  # 40–41 × 50 px photos, trained at 32 px
    folder = [
        *(o for o in TINY if not o.startswith("data.")),
        "data=imagefolder",
        f"data.root={tmp_path / 'images'}",
        "data.image_size=32",
    ]
    ckpt = train_briefly(tmp_path / "run", *folder, "data.batch_size=4", "data.num_workers=0", "logger=none")
    result = run_cli(
        "tl-predict", f"ckpt_path={ckpt}", f"input={tmp_path / 'images' / 'val'}", "output=out", "top_k=2", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row[0]: row for row in list(csv.reader((tmp_path / "out" / "predictions.csv").open()))[1:]}
    checkpoint = open_checkpoint(ckpt)
    task, datamodule = checkpoint.build_task().eval(), checkpoint.build_datamodule()
    datamodule.setup("test")
    test_split = datamodule._splits["test"]
    samples = test_split.dataset.samples
    assert len(rows) == len(samples) == 4
    prepare = datamodule.file_transform()  # what tl-predict applies to a decoded file
    for index, (path, _) in enumerate(samples):
        image, _ = test_split[index]
        assert torch.equal(prepare(decode_rgb(path)), image), "a file must become exactly the test input"
        with torch.inference_mode():
            probs = task(image[None]).softmax(dim=-1)[0]
        row = rows[str(Path(path).relative_to(tmp_path / "images" / "val"))]
        assert row[1] == task.class_names[int(probs.argmax())]
        assert abs(float(row[2]) - float(probs.max())) < 1e-5

    # ...so the accuracy of tl-predict's answers over the test split is exactly tl-eval's test accuracy.
    result = run_cli("tl-eval", f"ckpt_path={ckpt}", "hydra.run.dir=eval", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["test/acc"]
    right = [row[1] == Path(name).parent.name for name, row in rows.items()]
    assert sum(right) / len(right) == pytest.approx(evaluated, abs=1e-6)


def as_earlier_release(checkpoint: Path, out: Path) -> Path:
    """The checkpoint as releases before networks-by-config wrote it: ``net.arch`` (the U-Net's encoder and
    decoder on the task itself) and one style task with ``method`` and ``adain_layer``."""
    blob = torch.load(checkpoint, map_location="cpu", weights_only=True)
    arches = {"DnCNN": "dncnn", "EDSR": "edsr", "UNet": "unet", "TransformerNet": None}
    for model in (blob["transferlab"]["config"]["model"], blob["hyper_parameters"]):
        net = model["net"]
        name = net.pop("_target_").rsplit(".", 1)[-1]
        if arches[name] is None:
            model["method"], model["adain_layer"] = "johnson", "relu3_1"
        else:
            net["arch"] = arches[name]
    if name == "UNet":  # its encoder and decoder were the task's own modules
        state = blob["state_dict"]
        blob["state_dict"] = {re.sub(r"^net\.(backbone|decoder)\.", r"\1.", key): v for key, v in state.items()}
    torch.save(blob, out)
    return out


@pytest.mark.parametrize("task", ["denoise", "stylize", "inpaint"])
def test_checkpoints_of_earlier_releases_still_predict_the_same(checkpoints, tmp_path: Path, task: str) -> None:
    write_photo(tmp_path / "photo.png", 40, 36)
    mask = np.zeros((36, 40), dtype=np.uint8)
    mask[10:20, 5:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    extra = ["mask=mask.png"] if task == "inpaint" else []
    old = as_earlier_release(checkpoints[task], tmp_path / "old.ckpt")
    assert b"arch" in old.read_bytes() or b"method" in old.read_bytes()
    outputs = {}
    for name, ckpt in (("new", checkpoints[task]), ("old", old)):
        result = run_cli("tl-predict", f"ckpt_path={ckpt}", "input=photo.png", f"output={name}", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = np.asarray(Image.open(tmp_path / name / "photo.png"))
    assert np.array_equal(outputs["new"], outputs["old"])


def test_class_table_classifies_a_batch_per_forward_pass(tmp_path: Path) -> None:
    """7 files, batch_size=3: three forward passes (3 + 3 + 1), rows in file order, as one file per pass gives."""
    from transferlab.inference import ClassTable, PredictOptions

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    calls: list[int] = []

    def logits(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return net(images.float() / 255)

    files = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(7)]
    tables = {}
    for batch_size in (1, 3):
        options = PredictOptions(output=tmp_path / str(batch_size), top_k=2, batch_size=batch_size)
        table = ClassTable(logits, lambda image: image, ["a", "b", "c", "d"], options, torch.device("cpu"))
        calls.clear()
        for i, image in enumerate(files):
            table.add(image, Path(f"{i}.png"))
        table.finish()
        tables[batch_size] = list(csv.reader((tmp_path / str(batch_size) / "predictions.csv").open()))
        assert calls == ([1] * 7 if batch_size == 1 else [3, 3, 1])
    assert [row[0] for row in tables[3][1:]] == [f"{i}.png" for i in range(7)]
    assert tables[3] == tables[1]


def test_predict_batches_give_the_results_of_one_file_at_a_time(checkpoints, tmp_path: Path) -> None:
    for i in range(7):
        write_photo(tmp_path / "in" / f"{i}.png", 30 + 3 * i, 40, seed=i)
    result = run_cli(
        "tl-predict",
        "-m",
        f"ckpt_path={checkpoints['classify']}",
        "input=in",
        "batch_size=1,3",
        "output=out/${batch_size}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    one, three = (list(csv.reader((tmp_path / "out" / n / "predictions.csv").open())) for n in ("1", "3"))
    assert len(one) == 8 and [r[0] for r in one] == [r[0] for r in three]
    for a, b in zip(one[1:], three[1:]):
        assert a[1::2] == b[1::2]
        assert np.allclose([float(p) for p in a[2::2]], [float(p) for p in b[2::2]], atol=2e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a GPU box with -m gpu)")
def test_tiled_prediction_keeps_the_whole_image_and_output_on_the_host() -> None:
    """Only one tile and its ×4 result are on the GPU at a time: the peak stays far below the output's size."""
    image = torch.rand(1, 3, 1024, 1024)  # its ×4 output: 192 MiB in float32
    seen = []

    def upscale(x, _mask):
        seen.append(x.device.type)
        return torch.nn.functional.interpolate(x, scale_factor=4, mode="nearest")

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    out = tiled(upscale, image, tile=128, overlap=8, scale=4, device=torch.device("cuda"))
    assert out.device.type == "cpu" and set(seen) == {"cuda"}
    assert torch.cuda.max_memory_allocated() < 32 * 2**20
    torch.testing.assert_close(out, torch.nn.functional.interpolate(image, scale_factor=4, mode="nearest"))
