"""A checkpoint is data: crafted configs inside checkpoints never run code in tl-eval, tl-predict or resume.

Each payload is planted in a real checkpoint of a tiny run; a canary file (or a victim folder) proves that
nothing ran, and the command must refuse with a one-line error before building anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, compose_config, run_cli
from transferlab.evaluate import run as evaluate
from transferlab.predict import run as predict
from transferlab.train import run as train
from transferlab.trust import ALLOWED_TARGETS, check_untrusted, is_network_class, open_checkpoint
from transferlab.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


class Touch:
    """Unpickling this creates the canary file (what a malicious pickle inside a 'data file' would do)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint of a tiny classification run (two steps, no test phase)."""
    out = tmp_path_factory.mktemp("trusted") / "run"
    train(compose_config([*TINY, "logger=none", "trainer.limit_train_batches=2", "test=false"], out))
    return out / "checkpoints" / "best.ckpt"


def craft(source: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Copy `source` to `target` with `edit` applied to the loaded checkpoint dict."""
    blob = torch.load(source, map_location="cpu", weights_only=True)
    edit(blob)
    torch.save(blob, target)
    return target


def in_data(node: Any) -> Callable[[dict[str, Any]], None]:
    def edit(blob: dict[str, Any]) -> None:
        blob["transferlab"]["config"]["data"] = node

    return edit


def in_augment(node: Any) -> Callable[[dict[str, Any]], None]:
    def edit(blob: dict[str, Any]) -> None:
        blob["transferlab"]["config"]["data"]["augment"] = node

    return edit


def in_hparams(key: str, node: Any, also_config: bool = False) -> Callable[[dict[str, Any]], None]:
    def edit(blob: dict[str, Any]) -> None:
        blob["hyper_parameters"][key] = node
        if also_config:
            blob["transferlab"]["config"]["model"][key] = node

    return edit


def in_task(target: str) -> Callable[[dict[str, Any]], None]:
    def edit(blob: dict[str, Any]) -> None:
        blob["transferlab"]["config"]["model"]["_target_"] = target

    return edit


def touch_code(canary: Path) -> str:
    return f"open({str(canary)!r}, 'w')"


# name → (planting function of (canary, scratch dir), what must still hold afterwards)
PAYLOADS: dict[str, Callable[[Path, Path], Callable[[dict[str, Any]], None]]] = {
    "torch.load unpickles": lambda canary, tmp: in_data(
        {"_target_": "torch.load", "f": str(pickled(tmp / "evil.pkl", canary)), "weights_only": False}
    ),
    "numpy.load unpickles": lambda canary, tmp: in_data(
        {"_target_": "numpy.load", "file": str(pickled_npy(tmp / "evil.npy", canary)), "allow_pickle": True}
    ),
    "eval inside an augmentation": lambda canary, tmp: in_augment(
        {"_target_": "builtins.eval", "_args_": [touch_code(canary)]}
    ),
    "exec as the stored optimizer": lambda canary, tmp: in_hparams(
        "optimizer", {"_target_": "builtins.exec", "_args_": [touch_code(canary)]}
    ),
    "subprocess as the scheduler": lambda canary, tmp: in_hparams(
        "scheduler", {"_target_": "subprocess.run", "args": ["touch", str(canary)]}, also_config=True
    ),
    "partial os.system": lambda canary, tmp: in_hparams(
        "optimizer", {"_target_": "os.system", "_partial_": True, "command": f"touch {canary}"}, also_config=True
    ),
    "rmtree nested in a Compose": lambda canary, tmp: in_augment(
        {
            "_target_": "torchvision.transforms.v2.Compose",
            "transforms": [{"_target_": "shutil.rmtree", "path": str(canary.parent)}],
        }
    ),
    "functools.partial wrapping exec": lambda canary, tmp: in_augment(
        {"_target_": "functools.partial", "_args_": [{"_target_": "builtins.exec", "_args_": [touch_code(canary)]}]}
    ),
    "interpolation that decodes into a target": lambda canary, tmp: in_augment(
        "${oc.decode:'{_target_: builtins.eval, _args_: [\"" + touch_code(canary).replace("'", "\\'") + "\"]}'}"
    ),
    "task class that is not a task": lambda canary, tmp: in_task("torch.hub.load"),
}


def pickled(path: Path, canary: Path) -> Path:
    """A file in torch.save's format whose unpickling creates the canary."""
    torch.save(Touch(canary), path)
    return path


def pickled_npy(path: Path, canary: Path) -> Path:
    np.save(path, np.array([Touch(canary)], dtype=object), allow_pickle=True)
    return path


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A folder holding the canary's place: it must still exist (rmtree) and stay empty (file creation)."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "keep").write_text("precious")
    return folder


def assert_nothing_ran(victim: Path) -> None:
    assert sorted(p.name for p in victim.iterdir()) == ["keep"], "the payload ran"


def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(path)
    return path


ENTRY_POINTS: dict[str, Callable[[Path, Path], Any]] = {
    "tl-eval": lambda ckpt, tmp: evaluate(
        compose_config([f"ckpt_path={ckpt}", "trainer.accelerator=cpu"], tmp / "eval", "eval")
    ),
    "tl-predict": lambda ckpt, tmp: predict(
        compose_config([f"ckpt_path={ckpt}", f"input={photo(tmp)}", f"output={tmp / 'out'}"], tmp / "pred", "predict")
    ),
    "tl-train resume": lambda ckpt, tmp: train(compose_config([*TINY, "logger=none", f"ckpt_path={ckpt}"], tmp / "re")),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_crafted_checkpoint_is_refused_before_anything_runs(
    checkpoint: Path, tmp_path: Path, victim: Path, payload: str, entry: str
) -> None:
    crafted = craft(checkpoint, tmp_path / "crafted.ckpt", PAYLOADS[payload](victim / "canary", tmp_path))
    with pytest.raises(UserError) as raised:
        ENTRY_POINTS[entry](crafted, tmp_path)
    message = str(raised.value)
    assert "\n" not in message and str(crafted) in message
    assert "_target_" in message or "interpolation" in message
    assert_nothing_ran(victim)
    assert not (tmp_path / "out").exists() and not (tmp_path / "re" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("command", "extra"),
    [("tl-eval", []), ("tl-predict", ["input=photo.png", "output=out"]), ("tl-train", [*TINY, "logger=none"])],
)
def test_cli_refuses_a_crafted_checkpoint_with_one_line_and_exit_2(
    checkpoint: Path, tmp_path: Path, victim: Path, command: str, extra: list[str]
) -> None:
    photo(tmp_path)
    crafted = craft(checkpoint, tmp_path / "evil.ckpt", PAYLOADS["torch.load unpickles"](victim / "canary", tmp_path))
    result = run_cli(command, f"ckpt_path={crafted}", *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint ") and "torch.load" in lines[0], lines
    assert "trusted_targets=[torch.load]" in lines[0]
    assert_nothing_ran(victim)


def test_the_user_can_trust_a_target_from_the_command_line_but_not_from_the_file(
    checkpoint: Path, tmp_path: Path, victim: Path
) -> None:
    zoom = {"_target_": "torchvision.transforms.v2.RandomZoomOut", "p": 0.0}  # harmless, but not on the list
    foreign = craft(checkpoint, tmp_path / "foreign.ckpt", in_augment(zoom))
    with pytest.raises(UserError, match="RandomZoomOut"):
        evaluate(compose_config([f"ckpt_path={foreign}", "trainer.accelerator=cpu"], tmp_path / "e1", "eval"))
    trusted = "trusted_targets=[torchvision.transforms.v2.RandomZoomOut]"
    metrics = evaluate(
        compose_config([f"ckpt_path={foreign}", "trainer.accelerator=cpu", trusted], tmp_path / "e2", "eval")
    )
    assert 0.0 <= metrics["test/acc"] <= 1.0

    def self_trusting(blob: dict[str, Any]) -> None:  # the file lists its own payload as trusted
        in_augment({"_target_": "builtins.eval", "_args_": [touch_code(victim / "canary")]})(blob)
        blob["transferlab"]["config"]["trusted_targets"] = ["builtins.eval"]
        blob["hyper_parameters"]["trusted_targets"] = ["builtins.eval"]

    sneaky = craft(checkpoint, tmp_path / "sneaky.ckpt", self_trusting)
    with pytest.raises(UserError, match="builtins.eval"):
        evaluate(compose_config([f"ckpt_path={sneaky}", "trainer.accelerator=cpu"], tmp_path / "e3", "eval"))
    assert_nothing_ran(victim)


def test_legitimate_checkpoint_passes_and_rebuilds_the_trained_task(checkpoint: Path) -> None:
    checked = open_checkpoint(checkpoint)
    task = checked.build_task()
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(task.state_dict()[k], v) for k, v in stored.items())
    assert checked.build_datamodule().batch_size == 8


def test_every_target_the_shipped_configs_use_is_allowed() -> None:
    """The allowlist covers transferlab's own configs: a stored config of any shipped preset loads."""
    shipped = set()
    for path in (ROOT / "conf").rglob("*.yaml"):
        shipped |= set(re.findall(r"_target_:\s*([\w.]+)", path.read_text()))
    # trainer, callbacks, loggers, the launcher and the sweeper's sampler and pruner are built by the command itself,
    # never from a stored config
    runtime_only = {
        t
        for t in shipped
        if t.startswith(
            (
                "pytorch_lightning.",
                "transferlab.callbacks.",
                "transferlab.loggers.",
                "hydra_plugins.",
                "optuna.pruners.",
                "optuna.samplers.",
            )
        )
    }
    refused = {t for t in shipped - runtime_only - ALLOWED_TARGETS if not is_network_class(t)}
    assert not refused, sorted(refused)


def test_networks_are_allowed_only_as_module_classes_of_transferlab_nets() -> None:
    """``model.net`` may name any nn.Module class defined in transferlab.nets (a network added there needs no edit
    of the allowlist), and nothing else that merely looks like it."""
    check_untrusted({"net": {"_target_": "transferlab.nets.unet.UNet"}}, "f")
    for target in (
        "transferlab.nets.unet.build_encoder",  # a function, not a network class
        "transferlab.nets.unet.torch",  # a module imported there
        "transferlab.nets.unet.nn.Module",  # reached through an attribute chain
        "transferlab.nets.unet.create_feature_extractor",
        "transferlab.nets.nosuch.Net",
        "transferlab.netsx.Evil",
        "os.system",
    ):
        assert not is_network_class(target), target
        with pytest.raises(UserError, match="is not a target transferlab builds"):
            check_untrusted({"net": {"_target_": target}}, "f")


def test_check_walks_lists_and_partials() -> None:
    check_untrusted({"a": [{"_target_": "torch.optim.SGD", "_partial_": True}]}, "f")
    with pytest.raises(UserError, match=r"a\[1\]\.b\._target_='os.system'"):
        check_untrusted({"a": [{}, {"b": {"_target_": "os.system"}}]}, "f")


def test_source_weights_file_is_never_unpickled(tmp_path: Path, victim: Path) -> None:
    from transferlab.backbones import build_backbone

    evil = pickled(tmp_path / "weights.pth", victim / "canary")
    with pytest.raises(UserError, match="cannot read weights file"):
        build_backbone("mobilenet_v3_small", str(evil))
    assert_nothing_ran(victim)


def test_no_code_reads_pickles_unrestricted() -> None:
    """No `torch.load(..., weights_only=False)`, `allow_pickle=True` loads or bare `pickle.load` in the package."""
    needles = ("weights_only=" + "False", "allow_pickle=" + "True", "pickle." + "load(", "pickle." + "loads(")
    # The parallel launcher hands each job to its own process and gets the JobReturn back through pickle files it
    # wrote itself, in a folder it created with mkdtemp (mode 0700, this user only), as submitit does for SLURM.
    own_ipc = {"src/hydra_plugins/transferlab_launcher/_job.py", "src/hydra_plugins/transferlab_launcher/parallel.py"}
    found = [
        f"{path.relative_to(ROOT)}: {needle}"
        for folder in ("src", "bench")
        for path in (ROOT / folder).rglob("*.py")
        for needle in needles
        if needle in path.read_text() and str(path.relative_to(ROOT)) not in own_ipc
    ]
    assert not found, found
    assert "tempfile.mkdtemp(" in (ROOT / "src/hydra_plugins/transferlab_launcher/parallel.py").read_text()
