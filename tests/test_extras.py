"""A feature whose extra is not installed ends in one line naming the extra (``pip install "transferlab[…]"``),
and the user install (no extras) starts quietly. Each module is made unimportable with ``sys.modules[name] = None``,
in-process where the code path allows, in a subprocess where Hydra's start-up itself is what is checked."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from omegaconf import OmegaConf

from transferlab.cli import check_launcher, preflight
from transferlab.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SLURM_LINE = 'error: hydra/launcher=slurm needs submitit and hydra-submitit-launcher. pip install "transferlab[slurm]"'
SLURM_MODULES = ("submitit", "hydra_plugins.hydra_submitit_launcher")


def experiment(path: str) -> ModuleType:
    """An experiments/ script as a module (its folder on sys.path for its sibling imports)."""
    file = ROOT / "experiments" / path
    sys.path.insert(0, str(file.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"experiment_{file.stem}", file)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(file.parent))
    return module


def without(*modules: str) -> str:
    """Python source that makes `modules` unimportable (for a subprocess's ``-c``)."""
    return "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in modules)


# -- [slurm] -------------------------------------------------------------------------------------------
@pytest.fixture
def no_slurm_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SLURM_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


def test_slurm_without_its_extra_is_one_line_before_any_of_its_keys_is_read(no_slurm_extra, tmp_path: Path) -> None:
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}", "seed=0,1"]
    with pytest.raises(UserError) as raised:
        preflight("train", args)
    assert f"error: {raised.value}" == SLURM_LINE
    with pytest.raises(UserError) as raised:
        preflight("train", ["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path}"])
    assert f"error: {raised.value}" == SLURM_LINE.replace("=slurm", "=submitit_local")


def test_slurm_picked_by_a_config_file_without_its_extra_is_the_same_line(no_slurm_extra) -> None:
    def picked(launcher: str) -> object:
        choices = {"hydra/launcher": launcher}
        return OmegaConf.create({"hydra": {"launcher": {"wait": True}, "runtime": {"choices": choices}}})

    check_launcher(picked("parallel"))  # the user install's launchers: nothing to say
    with pytest.raises(UserError) as raised:
        check_launcher(picked("slurm"))
    assert f"error: {raised.value}" == SLURM_LINE


def test_the_stand_in_slurm_launcher_ends_in_the_extras_line(no_slurm_extra, capsys: pytest.CaptureFixture) -> None:
    """What Hydra instantiates without the extra (the Python API or a path around the preflight)."""
    from hydra_plugins.transferlab_launcher.slurm import MissingExtraLauncher

    with pytest.raises(SystemExit) as exited:
        MissingExtraLauncher(partition="gpu")
    assert exited.value.code == 2
    assert capsys.readouterr().err == SLURM_LINE + "\n"


def test_without_the_slurm_extra_hydra_starts_quietly_and_slurm_is_one_line(tmp_path: Path) -> None:
    """Hydra imports every plugin module at start-up: slurm.py must load without hydra-submitit-launcher."""
    train = "from transferlab.cli import train\nsys.argv = ['tl-train', *sys.argv[1:]]\ntrain()\n"
    code = without(*SLURM_MODULES) + train
    shown = subprocess.run(
        [sys.executable, "-c", code, "--cfg", "hydra", "hydra/launcher=parallel"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr[-2000:]
    assert "ParallelLauncher" in shown.stdout
    slurm = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "seed=0,1"]
    result = subprocess.run(
        [sys.executable, "-c", code, *slurm], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr == SLURM_LINE + "\n"
    assert not (tmp_path / "multirun").exists()


# -- [trackers] ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_without_its_extra_is_one_line_before_torch_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    """Said by the preflight, not after the run has loaded torch, Lightning and the data (a minute on 2 cores)."""
    monkeypatch.setitem(sys.modules, name, None)
    line = rf"^logger={name} needs the '{name}' package\. Install it: pip install 'transferlab\[trackers\]'$"
    with pytest.raises(UserError, match=line):
        preflight("train", [f"logger=[tensorboard,{name}]", f"hydra.run.dir={tmp_path / 'run'}"])
    preflight("train", ["logger=tensorboard", f"hydra.run.dir={tmp_path / 'run'}"])  # the user install's logger


# -- [experiments] ---------------------------------------------------------------------------------------
def test_own_data_baselines_without_scikit_learn_name_the_experiments_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    baselines = experiment("own_data/baselines.py")
    make_datasets = experiment("own_data/make_datasets.py")
    monkeypatch.setitem(sys.modules, "sklearn", None)
    line = r'needs scikit-learn\. pip install "transferlab\[experiments\]"$'
    with pytest.raises(UserError, match=r"^experiments/own_data baselines " + line):
        baselines.scores(tmp_path, 32)
    with pytest.raises(UserError, match=r"^experiments/own_data " + line):
        make_datasets.write("faces", tmp_path)
    assert not (tmp_path / "faces").exists()  # refused before anything is written


@pytest.mark.parametrize(
    ("script", "args"), [("own_data/make_datasets.py", []), ("small_cnn_transfer/study.py", ["--tiny", "--work"])]
)
def test_the_scripts_that_need_scikit_learn_print_the_missing_extra_as_one_line(
    tmp_path: Path, script: str, args: list[str]
) -> None:
    path = ROOT / "experiments" / script
    argv = [path.name, *args, str(tmp_path / "work")]
    code = (
        without("sklearn") + f"import runpy\nsys.argv = {argv!r}\nrunpy.run_path({str(path)!r}, run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    feature = "experiments/" + script.split("/")[0]
    assert result.stderr == f'error: {feature} needs scikit-learn. pip install "transferlab[experiments]"\n'
    assert result.returncode == 2
    assert not (tmp_path / "work").exists()  # refused before anything is written


def test_the_denoising_columns_without_their_packages_name_the_experiments_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compare = experiment("denoising/compare.py")
    monkeypatch.setitem(sys.modules, "bm3d", None)
    monkeypatch.setitem(sys.modules, "pywt", None)
    with pytest.raises(UserError, match=r'^the BM3D column .* needs bm3d\. pip install "transferlab\[experiments\]"$'):
        compare.bm3d_rgb(None, 25.0)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r'^the wavelet column .* needs PyWavelets\. pip install "transferlab\[exp'):
        compare.wavelet(None, 25.0)  # type: ignore[arg-type]
