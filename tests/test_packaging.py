"""What a user installs: the core dependency list stays the user install (no test tool or extra-only package
creeps back), every core version bound says why, and the wheel and sdist carry the licence, the citation and the
configs. See pyproject.toml and docs/_incoming/install.md."""

from __future__ import annotations

import re
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"

# Packages only a contributor or an extra's user needs (pip names, lower case).
NOT_CORE = {
    "pytest",
    "ruff",
    "mutmut",
    "hypothesis",
    "hatchling",
    "scikit-learn",
    "sklearn",
    "bm3d",
    "pywavelets",
    "mlflow",
    "mlflow-skinny",
    "sqlalchemy",
    "alembic",
    "wandb",
    "optuna",
    "optuna-dashboard",
    "submitit",
    "hydra-submitit-launcher",
}
EXTRAS = {"slurm", "optuna", "trackers", "export", "experiments"}


def toml_list(text: str, header: str) -> list[tuple[str, str]]:
    """(requirement, comment) of each line of the TOML string list that opens with `header` (``name = [``)."""
    start = text.index(header)
    body = text[start + len(header) : text.index("\n]", start)]
    entries = []
    for line in body.splitlines():
        match = re.match(r'\s*"([^"]+)",?\s*(?:#\s*(.*))?$', line)
        if match:
            entries.append((match.group(1), (match.group(2) or "").strip()))
    return entries


def package_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def project_version() -> str:
    match = re.search(r'^version = "([^"]+)"', PYPROJECT.read_text(), re.MULTILINE)
    assert match, "pyproject.toml has no version"
    return match.group(1)


def test_the_core_dependencies_hold_no_test_tool_and_no_extra_only_package() -> None:
    core = [package_name(req) for req, _ in toml_list(PYPROJECT.read_text(), "\ndependencies = [")]
    assert "torch" in core and "hydra-core" in core  # the parser found the list
    leaked = sorted(name for name in core if name in NOT_CORE or name.startswith("onnx"))
    assert not leaked, f"belong in an extra, not the user install: {leaked}"


def test_every_core_version_bound_says_why_on_its_line() -> None:
    bounded = [
        (req, why) for req, why in toml_list(PYPROJECT.read_text(), "\ndependencies = [") if re.search("[<>=!~]", req)
    ]
    assert len(bounded) >= 10
    unexplained = [req for req, why in bounded if len(why) < 10]
    assert not unexplained, f"a version bound in the core needs a one-line why (# …): {unexplained}"


def test_the_test_extra_installs_every_other_extra_so_their_tests_run() -> None:
    text = PYPROJECT.read_text()
    for extra in EXTRAS:
        assert toml_list(text, f"\n{extra} = ["), f"the [{extra}] extra is missing"
    test_extra = " ".join(req for req, _ in toml_list(text, "\ntest = ["))
    included = re.search(r"transferlab\[([^\]]+)\]", test_extra)
    assert included and set(included.group(1).replace(" ", "").split(",")) == EXTRAS


def test_citation_is_valid_cff_with_pyprojects_version_and_the_licence_is_mit() -> None:
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    assert citation["message"] and citation["title"]
    assert citation["authors"] and all(
        author.get("name") or author.get("family-names") for author in citation["authors"]
    )
    assert str(citation["version"]) == project_version(), "CITATION.cff's version must follow pyproject.toml's"
    assert str(citation["date-released"]) == "2026-12-08"
    assert citation["license"] == "MIT"
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n") and "Copyright (c) 2026 transferlab contributors" in licence
    assert re.search(r'^license = "MIT"$', PYPROJECT.read_text(), re.MULTILINE)


def test_the_wheel_and_sdist_carry_the_licence_citation_and_configs(tmp_path: Path) -> None:
    pytest.importorskip("hatchling", reason='builds the wheel in-process: pip install "transferlab[test]"')
    from hatchling.builders.sdist import SdistBuilder
    from hatchling.builders.wheel import WheelBuilder

    version = project_version()
    wheel = Path(next(iter(WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"]))))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"transferlab-{version}.dist-info/METADATA").decode()
        licence = archive.read(f"transferlab-{version}.dist-info/licenses/LICENSE").decode()
    assert licence == (ROOT / "LICENSE").read_text()
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert {"transferlab/conf/train.yaml", "transferlab/conf/debug/fdr.yaml"} <= names  # tl-train from the wheel
    sdist = Path(next(iter(SdistBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"]))))
    with tarfile.open(sdist) as archive:
        top = {name.split("/", 1)[1] for name in archive.getnames() if name.count("/") == 1}
    assert {"LICENSE", "CITATION.cff", "pyproject.toml"} <= top
