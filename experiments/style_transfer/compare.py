"""Which loss network stylizes offline: random-feature VGG-16 (the old default) or ImageNet EfficientNet-Lite0?

    python experiments/style_transfer/compare.py --run NAME=best.ckpt [--run NAME=best.ckpt ...] [--out DIR]

Each run is a Johnson stylizer trained by ``tl-train experiment=style_transfer`` (with its loss network); a
NAME given several times (one checkpoint per seed) gets cells of mean ± std over its checkpoints. Losses measured
by one network are not comparable with another's, so every stylizer is scored by **every** NAME's loss network
(the first checkpoint's: its content and style layers and the style image's Gram targets; a random-weight
network differs per seed, so one fixed judge per NAME), next to the identity (output = content: zero content
loss, the style loss of doing nothing). A stylizer that stylizes brings the style loss well below the
identity's under a judge it was not trained with, too. Writes ``results.md`` and ``grid.png`` (rows: photos;
columns: content, style, then each NAME's first checkpoint's output) into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from transferlab.losses import feature_loss, gram_matrix
from transferlab.report import mean_std
from transferlab.trust import open_checkpoint
from transferlab.utils.io import atomic_file

PHOTOS = ("astronaut", "coffee", "chelsea")
SIZE = 128


def content_images() -> torch.Tensor:
    """(N, 3, SIZE, SIZE) float [0, 1]: scikit-image photos, short side resized and centre-cropped."""
    images = []
    for name in PHOTOS:
        image = torch.from_numpy(getattr(skimage.data, name)().copy()).permute(2, 0, 1).float()[None] / 255
        h, w = image.shape[-2:]
        image = F.interpolate(image, scale_factor=SIZE / min(h, w), mode="bilinear", antialias=True)
        top, left = (image.shape[-2] - SIZE) // 2, (image.shape[-1] - SIZE) // 2
        images.append(image[..., top : top + SIZE, left : left + SIZE].clamp(0, 1))
    return torch.cat(images)


def judge(task, outputs: torch.Tensor, contents: torch.Tensor) -> tuple[float, float]:
    """(content loss, style loss) of `outputs` under `task`'s loss network, layers and style targets."""
    with torch.no_grad():
        features = task.loss_net(outputs)
        targets = task.loss_net(contents)
        content = feature_loss(features, targets, task.content_layers)
        grams = task.style_grams()
        style = sum(
            w * F.mse_loss(gram_matrix(features[layer]), grams[layer].expand(len(outputs), -1, -1))
            for layer, w in task.style_layers.items()
        )
    return float(content), float(style)


def cell(values: list[float]) -> str:
    """``mean ± std`` to 3 significant digits (the mean alone for one value)."""
    mean, std = mean_std(values)
    return f"{mean:.3g}" if len(values) == 1 else f"{mean:.3g} ± {std:.2g}"


def parse_runs(specs: list[str]) -> dict[str, list[Path]]:
    """``["lite0=a.ckpt", "lite0=b.ckpt", "vgg=c.ckpt"]`` → ``{"lite0": [a, b], "vgg": [c]}`` (in order given);
    a malformed spec or a missing file is a one-line error."""
    runs: dict[str, list[Path]] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"error: --run {spec!r} is not NAME=path/to/best.ckpt")
        if not Path(path).is_file():
            raise SystemExit(f"error: {path} does not exist (--run {name}=...): give tl-train's best.ckpt paths")
        runs.setdefault(name, []).append(Path(path))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="NAME=best.ckpt (repeat a NAME for seeds)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    runs = parse_runs(args.run)
    stylizers = {name: [open_checkpoint(path).build_task().eval() for path in paths] for name, paths in runs.items()}
    judges = {name: tasks[0] for name, tasks in stylizers.items()}
    contents = content_images()
    with torch.no_grad():
        outputs = {"identity (no stylization)": [contents]}
        outputs.update({name: [task(contents).clamp(0, 1) for task in tasks] for name, tasks in stylizers.items()})

    lines = [
        "| stylizer | seeds | "
        + " | ".join(f"content loss under {j} | style loss under {j} (× identity)" for j in judges)
        + " |",
        "|---|---|" + "---|---|" * len(judges),
    ]
    bases = {name: judge(task, contents, contents)[1] for name, task in judges.items()}  # the identity's style loss
    for name, images in outputs.items():
        cells = [str(len(images))]
        for judge_name, judge_task in judges.items():
            base = bases[judge_name]
            scores = [judge(judge_task, image, contents) for image in images]
            cells.append(cell([content for content, _ in scores]))
            cells.append(cell([style / base for _, style in scores]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"

    style = judges[next(iter(judges))].style_images[:1].float() / 255
    style = F.interpolate(style, size=(SIZE, SIZE), mode="bilinear", antialias=True).expand(len(contents), -1, -1, -1)
    columns = [contents, style, *(outputs[name][0] for name in stylizers)]
    rows = torch.cat([torch.cat(list(column), dim=1) for column in columns], dim=2)  # photos down, columns across
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / "grid.png") as tmp:
        Image.fromarray((rows.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp, format="PNG")
    note = (
        f"Columns of grid.png: content, style, {', '.join(stylizers)} (first checkpoint of each). Content loss: "
        "absolute, under that judge; style loss: relative to the identity's under that judge (< 1 = more of the "
        "style's texture statistics). Mean ± std over each stylizer's checkpoints (seeds).\n\n"
    )
    with atomic_file(args.out / "results.md") as tmp:
        Path(tmp).write_text(note + table)
    print(table)


if __name__ == "__main__":
    main()
