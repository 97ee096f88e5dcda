"""One Lightning package per process (`transferlab.upstream.lightning`): pytorch_lightning, or the unified
``lightning`` package under the same import names."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.upstream import lightning as choice

ROOT = Path(__file__).resolve().parents[1]


def test_the_standalone_package_wins_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(choice.ENV, raising=False)
    standalone = not choice._aliased()  # this process, as `import transferlab` set it up
    assert choice.chosen() == ("pytorch_lightning" if standalone else "lightning")
    expected = "pytorch_lightning.loops" if standalone else "lightning.pytorch.loops"
    assert choice.module_name("pytorch_lightning.loops") == expected


def test_a_wrong_choice_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(choice.ENV, "lightening")
    with pytest.raises(choice.LightningChoiceError, match=r"^TRANSFERLAB_LIGHTNING=lightening names no Lightning"):
        choice.chosen()
    monkeypatch.setattr(choice, "_installed", lambda name: name != "lightning")
    monkeypatch.setenv(choice.ENV, "lightning")
    with pytest.raises(choice.LightningChoiceError, match=r"the lightning package is not installed\. pip install"):
        choice.chosen()


def test_the_command_reports_a_wrong_choice(tmp_path: Path) -> None:
    env = {**os.environ, choice.ENV: "lightening", "TRANSFERLAB_ROOT": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "transferlab.train", "debug=tiny"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: TRANSFERLAB_LIGHTNING=lightening names no Lightning package. "
        "Use TRANSFERLAB_LIGHTNING=pytorch_lightning or lightning"
    ], done.stderr
    assert not (tmp_path / "outputs").exists()


def test_the_alias_is_the_unified_package_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``standalone.x`` gives the very module (and classes) of ``unified.pytorch.x``, whose own name and spec stay."""
    package = tmp_path / "unified_probe" / "pytorch"
    package.mkdir(parents=True)
    (tmp_path / "unified_probe" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from unified_probe.pytorch.callbacks import Callback\n")
    (package / "callbacks.py").write_text("class Callback:\n    pass\n")
    (package / "loggers.py").write_text("import logging\nlog = logging.getLogger(__name__)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(choice, "ALIASES", {"standalone_probe": "unified_probe.pytorch"})
    finder = choice._AliasFinder()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for name in ("standalone_probe", "standalone_probe.callbacks", "standalone_probe.loggers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        from standalone_probe import Callback  # type: ignore[import-not-found]
        from standalone_probe.loggers import log  # type: ignore[import-not-found]

        unified = importlib.import_module("unified_probe.pytorch.callbacks")
        assert Callback is unified.Callback  # isinstance checks hold across both names
        assert sys.modules["standalone_probe.loggers"] is importlib.import_module("unified_probe.pytorch.loggers")
        assert log.name == "unified_probe.pytorch.loggers"  # what console.py's module_name() must name
        assert sys.modules["standalone_probe.loggers"].__spec__.name == "unified_probe.pytorch.loggers"
        assert importlib.util.find_spec("standalone_probe.missing") is None
    finally:
        for name in [n for n in sys.modules if n.startswith(("standalone_probe", "unified_probe"))]:
            del sys.modules[name]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("lightning") is None, reason="needs the unified lightning package")
def test_a_job_runs_on_the_unified_package(tmp_path: Path) -> None:
    """The tiny job with ``TRANSFERLAB_LIGHTNING=lightning``: every Lightning module is ``lightning.pytorch``'s."""
    env = {**os.environ, choice.ENV: "lightning", "TRANSFERLAB_ROOT": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    script = (
        "import sys, transferlab; r = transferlab.train(['debug=tiny', 'logger=none']); "
        "assert sys.modules['pytorch_lightning'] is sys.modules['lightning.pytorch']; print(r['metrics']['test/acc'])"
    )
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
