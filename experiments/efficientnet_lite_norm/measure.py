"""Which input statistics the packaged EfficientNet-Lite0 weights were trained with: ImageNet's mean/std or
mean = std = 0.5 (TF-Lite's (x - 127) / 128)? Offline, on the CPU, in about a minute.

    python experiments/efficientnet_lite_norm/measure.py            # prints the two tables of its README

(a) The ImageNet classifier on the embedded photos (256 → centre 224, bilinear): the top-1 class and its softmax
probability under each normalisation; the mean max-probability over all photos and over the photos with a known
ImageNet class, and how many of those land in an acceptable class.
(b) A linear probe of the frozen backbone's pooled features on the embedded shapes drawn with seed 1 (the transfer
studies' target, 64 px): standardised features, multinomial logistic regression, test accuracy on 1,000 images,
with all 1,000 training images and with the first 20 per class.
(c) The stem's BatchNorm statistics: the running mean/variance the first BatchNorm learnt during ImageNet training
describe the stem convolution's outputs on the inputs it was trained with. The stem's outputs on the embedded
photos under each normalisation are compared with them: the median over channels of |log(var / running_var)| and
of |mean - running_mean| / sqrt(running_var) (0 = the same statistics).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torchvision.models import ResNet18_Weights
from torchvision.transforms.v2 import functional as TF

from transferlab.backbones import build_backbone, build_classifier
from transferlab.constants import IMAGENET_MEAN, IMAGENET_STD
from transferlab.data.photos import EMBEDDED_PHOTOS, embedded_image
from transferlab.data.shapes import generate

NORMS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "half (0.5/0.5)": ((0.5,) * 3, (0.5,) * 3)}
# ImageNet classes a photo may fairly be labelled with (indices into the 1,000 classes)
KNOWN = {
    "chelsea": set(range(281, 286)),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": {967, 968, 504},  # espresso, cup, coffee mug
    "camera": {872, 759, 732},  # tripod, reflex camera, Polaroid camera
    "rocket": {657, 744, 812},  # missile, projectile, space shuttle
    "motorcycle": {665, 670, 518},  # moped, motor scooter, crash helmet
    "clock": {409, 892},  # analog clock, wall clock
    "grace_hopper": {652, 457, 906},  # military uniform, bow tie, Windsor tie
}
CATEGORIES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # metadata only, nothing is downloaded


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    return TF.normalize(images.float() / 255, list(mean), list(std))


@torch.no_grad()
def photos_table() -> None:
    model = build_classifier("efficientnet_lite0", "imagenet").eval()
    batch = torch.stack(
        [TF.center_crop(TF.resize(embedded_image(n), 256, antialias=True), 224) for n in EMBEDDED_PHOTOS]
    )
    rows, summary = {n: [] for n in EMBEDDED_PHOTOS}, []
    for mean, std in NORMS.values():
        probs = model(normalise(batch, mean, std)).softmax(-1)
        top_p, top = probs.max(-1)
        for name, p, k in zip(EMBEDDED_PHOTOS, top_p.tolist(), top.tolist(), strict=True):
            ok = "" if name not in KNOWN else (" ✓" if k in KNOWN[name] else " ✗")
            rows[name].append(f"{CATEGORIES[k]} {p:.3f}{ok}")
        known = [i for i, n in enumerate(EMBEDDED_PHOTOS) if n in KNOWN]
        hits = sum(int(top[i]) in KNOWN[EMBEDDED_PHOTOS[i]] for i in known)
        summary.append((float(top_p.mean()), float(top_p[known].mean()), hits, len(known)))
    print("| photo | " + " | ".join(NORMS) + " |\n|---|---|---|")
    for name, cells in rows.items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{a:.3f} / {b:.3f}, {h}/{n} plausible" for a, b, h, n in summary]
    print("| mean max prob (all / known), top-1 plausible | " + " | ".join(cells) + " |\n")


@torch.no_grad()
def features(body: torch.nn.Module, images: torch.Tensor, mean, std) -> np.ndarray:
    return torch.cat([body(normalise(part, mean, std)) for part in images.split(250)]).numpy()


def probe_table(size: int = 64, seed: int = 1) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    body = build_backbone("efficientnet_lite0", "imagenet").body.eval()
    train_x, train_y = generate(1000, size, seed)
    test_x, test_y = generate(1000, size, seed + 10_000)
    few = np.concatenate([np.flatnonzero(train_y.numpy() == c)[:20] for c in range(10)])
    print(f"| linear probe, shapes seed {seed}, {size} px | " + " | ".join(NORMS) + " |\n|---|---|---|")
    results: dict[str, list[str]] = {"1,000 training images": [], "20 per class": []}
    for mean, std in NORMS.values():
        tr, te = features(body, train_x, mean, std), features(body, test_x, mean, std)
        for label, idx in (("1,000 training images", np.arange(len(tr))), ("20 per class", few)):
            scaler = StandardScaler().fit(tr[idx])
            clf = LogisticRegression(max_iter=3000).fit(scaler.transform(tr[idx]), train_y.numpy()[idx])
            results[label].append(f"{clf.score(scaler.transform(te), test_y.numpy()):.3f}")
    for label, cells in results.items():
        print(f"| test acc, {label} | " + " | ".join(cells) + " |")


@torch.no_grad()
def stem_table() -> None:
    model = build_classifier("efficientnet_lite0", "imagenet").eval()
    bn = model.bn1
    batch = torch.stack(
        [TF.center_crop(TF.resize(embedded_image(n), 256, antialias=True), 224) for n in EMBEDDED_PHOTOS]
    )
    print("\n| stem BatchNorm vs the photos' stem outputs | " + " | ".join(NORMS) + " |\n|---|---|---|")
    cells: dict[str, list[str]] = {"median abs log variance ratio": [], "median abs mean shift (running std units)": []}
    for mean, std in NORMS.values():
        out = model.conv_stem(normalise(batch, mean, std))
        var, avg = out.var(dim=(0, 2, 3)), out.mean(dim=(0, 2, 3))
        live = bn.running_var > 1e-3  # channels that carry signal
        log_ratio = (var[live] / bn.running_var[live]).log().abs().median()
        shift = ((avg - bn.running_mean).abs() / bn.running_var.sqrt())[live].median()
        cells["median abs log variance ratio"].append(f"{float(log_ratio):.3f}")
        cells["median abs mean shift (running std units)"].append(f"{float(shift):.3f}")
    for label, row in cells.items():
        print(f"| {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(2)
    stem_table() if "--stem" in sys.argv else (photos_table(), probe_table(), stem_table())
