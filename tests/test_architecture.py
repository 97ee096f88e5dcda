"""docs/architecture.md stays true: every module and file it names exists, the layers import only downwards,
and its example — a new restoration network in one Python module and one YAML file — trains, evaluates and
predicts with no other change (not even to the checkpoint allowlist)."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

import transferlab
import transferlab.nets

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()
LAYERS = [  # bottom to top, as the page draws them
    {"constants", "utils", "upstream"},  # upstream: private APIs of dependencies, imports nothing of ours
    {"nets", "inference", "backbones", "losses", "finetune", "optim", "data", "callbacks", "loggers", "curves"}
    | {"sweeps"},
    {"tasks"},
    {"runner", "trust", "exported", "console"},
    {"cli", "train", "evaluate", "predict", "export", "report", "api"},
]


def test_every_module_and_file_the_page_names_exists() -> None:
    prose = re.sub(r"<!-- example: .*?```\n(?=\n|$)", "", DOC, flags=re.S)  # the example's own files don't exist
    modules = set(re.findall(r"\btransferlab(?:\.\w+)+", prose))
    assert len(modules) > 20
    for dotted in sorted(modules):
        parts = dotted.split(".")
        for cut in range(len(parts), 1, -1):  # a module, or a name defined in one
            try:
                module = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            obj = module
            for name in parts[cut:]:
                obj = getattr(obj, name, None)
                assert obj is not None, f"docs/architecture.md names {dotted}, which does not exist"
            break
        else:
            pytest.fail(f"docs/architecture.md names {dotted}, which does not import")
    examples = set(re.findall(r"<!-- example: (\S+) -->", DOC))
    for path in sorted(set(re.findall(r"`((?:src|conf)/[\w/.]+)`", DOC)) - examples):
        assert (ROOT / path).exists(), f"docs/architecture.md names {path}, which does not exist"
    for name in ("PACKAGED_WEIGHTS", "ALLOWED_TARGETS", "TASK_TARGETS"):
        assert name in DOC
    from transferlab import backbones, trust

    assert backbones.PACKAGED_WEIGHTS and trust.ALLOWED_TARGETS and trust.TASK_TARGETS


def test_each_hand_written_piece_says_why_no_library_does_it() -> None:
    section = DOC.split("## Libraries over hand-written code", 1)[1].split("\n## ", 1)[0]
    modules = re.findall(r"`(transferlab(?:\.\w+)+)`", section)
    assert len(modules) >= 10
    for dotted in modules:
        doc = importlib.import_module(dotted).__doc__ or ""
        assert "\nLibraries: " in doc, f"{dotted}'s docstring lost its 'Libraries:' line"


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_layers_import_only_downwards() -> None:
    """A module-level import of a higher layer would be a cycle waiting to happen (lazy imports inside
    functions are how a lower layer reaches up, on purpose and rarely)."""
    upward = []
    for path in sorted((ROOT / "src" / "transferlab").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT / "src").with_suffix("").parts).removesuffix(".__init__")
        if module == "transferlab":
            continue
        for node in ast.parse(path.read_text()).body:
            imported = node.module if isinstance(node, ast.ImportFrom) else None
            if (imported or "").startswith("transferlab.") and layer_of(imported) > layer_of(module):
                upward.append(f"{module} imports {imported}")
    assert not upward, upward


def example(path: str) -> str:
    match = re.search(rf"<!-- example: {re.escape(path)} -->\n```\w+\n(.*?)```", DOC, re.S)
    assert match, f"docs/architecture.md has no example for {path}"
    return match.group(1)


@pytest.fixture
def srcnn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The page's two files, placed as a user would place them: the module inside transferlab.nets (here a
    second folder of that package), the YAML in a config folder Hydra searches."""
    package = tmp_path / "nets"
    package.mkdir()
    (package / "srcnn.py").write_text(example("src/transferlab/nets/srcnn.py"))
    monkeypatch.setattr(transferlab.nets, "__path__", [*transferlab.nets.__path__, str(package)])
    conf = tmp_path / "conf" / "model"
    conf.mkdir(parents=True)
    (conf / "srcnn.yaml").write_text(example("conf/model/srcnn.yaml"))
    yield tmp_path
    sys.modules.pop("transferlab.nets.srcnn", None)


def test_the_example_network_trains_evaluates_and_predicts(srcnn: Path) -> None:
    photos = ["data=photos", "data/degrade=gaussian_noise", "data.patch_size=32", "data.batch_size=8"]
    settings = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=none"]
    result = transferlab.train(
        [
            "model=srcnn",
            *photos,
            *settings,
            "data.train_patches=640",
            "data.val_patches=16",
            "trainer.max_epochs=3",
            f"hydra.searchpath=[file://{srcnn / 'conf'}]",
            f"hydra.run.dir={srcnn / 'run'}",
        ]
    )
    metrics = result["metrics"]
    assert metrics["test/psnr"] > metrics["test/psnr_input"] + 3.0, metrics  # it learned to denoise (~+8 dB)
    ckpt = result["run_dir"] / "checkpoints" / "best.ckpt"
    evaluated = transferlab.evaluate([f"ckpt_path={ckpt}", f"hydra.run.dir={srcnn / 'eval'}"])
    assert evaluated["metrics"]["test/psnr"] == pytest.approx(metrics["test/psnr"], abs=1e-4)

    from transferlab.data.photos import embedded_image
    from transferlab.trust import open_checkpoint

    photo = embedded_image("astronaut")[:, :40, :48]
    from torchvision.io import write_png

    from transferlab.data.images import decode_rgb

    write_png(photo, str(srcnn / "photo.png"))
    out = transferlab.predict(
        [f"ckpt_path={ckpt}", f"input={srcnn / 'photo.png'}", f"output={srcnn / 'out'}", f"hydra.run.dir={srcnn / 'p'}"]
    )
    task = open_checkpoint(ckpt).build_task().eval()
    assert type(task.net).__name__ == "SRCNN"
    with torch.inference_mode():
        expected = (task.restore(photo[None].float() / 255)[0] * 255).round().to(torch.uint8)
    assert torch.equal(decode_rgb(out / "photo.png"), expected)
