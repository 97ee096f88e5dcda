"""The README and docs/ stay true: links resolve, shown commands compose, the README stays short.

A reader copies commands from these pages and follows their links; a renamed config key, a moved section or
a deleted file would otherwise only show when a user meets it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from transferlab.cli import preflight
from transferlab.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# docs/_incoming/ holds other sessions' drafts, not yet folded in: not part of the documentation.
PAGES = sorted([README, ROOT / "BENCHMARKS.md", ROOT / "SECURITY.md", *(ROOT / "docs").glob("*.md")])
COMMANDS = {"tl-train": "train", "tl-eval": "eval", "tl-predict": "predict", "tl-export": "export"}
MAX_README_LINES = 320
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
# A placeholder a reader fills in (<run>, <date>/<time>, …) is filled with "x" and the command still checked; a
# command whose line says "# not checked" (the reason follows) is skipped, listed by test_unchecked_commands_are_few.
PLACEHOLDER = re.compile(r"<[^<>]*>|…")
UNCHECKED = "# not checked"
FILES = ("ckpt_path", "input", "mask")  # the paths the preflight requires to exist: made in a scratch folder


def _prose(text: str) -> str:
    """`text` without fenced blocks and inline code, where link syntax is not a link."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - and _), spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for `path`'s headings (a repeated one gets -1, -2, …)."""
    seen: dict[str, int] = {}
    result = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6} (.+)$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text()))


def broken_links(path: Path) -> list[str]:
    """The relative links of `path` that name no file, or no heading of the file they name."""
    broken = []
    for target in links(path):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {resolved.name})")
    return broken


def shown_commands(path: Path, unchecked: bool = False) -> list[str]:
    """Every tl-train/-eval/-predict/-export command in `path`'s fenced shell blocks, continuations joined and
    placeholders filled; with `unchecked`, those marked "# not checked" instead."""
    commands = []
    for lang, body in FENCE.findall(path.read_text()):
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            if not re.match(r"^\s*([A-Z_]+=\S+\s+)*tl-(train|eval|predict|export)\b", line):
                continue
            if (UNCHECKED in line) != unchecked:
                continue
            words = _words(PLACEHOLDER.sub("x", line))
            while words and re.match(r"^[A-Z_]+=", words[0]):  # CUDA_VISIBLE_DEVICES=2,3 tl-train …
                words = words[1:]
            commands.append(shlex.join(words))
    return commands


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def checked_args(command: str, scratch: Path) -> tuple[str, list[str]]:
    """(config name, arguments) of a shown command, with the files it names for `FILES` made under `scratch`."""
    words = shlex.split(command)
    args = [word for word in words[1:] if word not in ("--help", "--cfg", "job")]
    for index, arg in enumerate(args):
        key, _, value = arg.partition("=")
        if key in FILES and value != "last":
            target = scratch / value.lstrip("/")  # an absolute example path is made inside `scratch` too
            target.parent.mkdir(parents=True, exist_ok=True)
            if value.endswith("/"):
                target.mkdir(exist_ok=True)
            else:
                target.touch()
            args[index] = f"{key}={target}"
    return COMMANDS[words[0]], args


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= MAX_README_LINES, "move reference material into docs/"


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    """.ci/run runs exactly the README's first two command blocks: the user install, then the test install."""
    blocks = [body for lang, body in FENCE.findall(README.read_text()) if lang == "bash"][:2]
    assert blocks == ["pip install -e .\ntl-train\n", 'pip install -e ".[test]"\npython -m pytest\n']


def test_readme_has_a_table_of_contents() -> None:
    text = README.read_text()
    toc = [target[1:] for target in links(README) if target.startswith("#")]
    sections = [slug(line[3:]) for line in FENCE.sub("", text).splitlines() if line.startswith(("## ", "### "))]
    sections.remove("contents")
    assert len(sections) > 5 and set(sections) <= set(toc), "every section of the README is in its table of contents"


def test_every_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(README)}
    for page in (ROOT / "docs").glob("*.md"):
        assert page.resolve() in linked, f"{page.name} is not linked from the README"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_broken_links_are_found(tmp_path: Path) -> None:
    """The checker itself: a missing file and a missing heading are both reported, a good anchor is not."""
    (tmp_path / "other.md").write_text("# Title\n\n## Jobs side by side: `hydra/launcher=parallel`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[a](other.md#jobs-side-by-side-hydralauncherparallel) [b](missing.md) [c](other.md#nope) "
        "`[d](not-a-link.md)` [e](https://example.org/x)\n"
    )
    assert [entry.split(" ")[0] for entry in broken_links(page)] == ["missing.md", "other.md#nope"]


ALL_COMMANDS = [command for page in PAGES for command in shown_commands(page)]


def test_unchecked_commands_are_few() -> None:
    unchecked = [command for page in PAGES for command in shown_commands(page, unchecked=True)]
    assert len(unchecked) <= 3, unchecked
    assert len(ALL_COMMANDS) > 50


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_shown_command_composes(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command a page shows composes into a valid config: the torch-free preflight the CLI runs first.

    Paths it names need not exist (the preflight checks only those of `FILES`, made here), so `data.root=/data/birds`
    is checked as a value.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERLAB_ROOT", str(tmp_path))
    config_name, args = checked_args(command, tmp_path)
    try:
        preflight(config_name, args)
    except UserError as err:
        pytest.fail(f"{command}\n  → error: {err}")


def test_shown_commands_are_found_and_bad_ones_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command check itself: it sees continued and prefixed commands, and a bad override fails it."""
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\nCUDA_VISIBLE_DEVICES=0 tl-train -m seed=0,1 \\\n  trainer.max_epochs=2   # a comment\n"
        "tl-eval ckpt_path=<a run>/checkpoints/best.ckpt data=cifar10\ntl-report x\n"
        "tl-train --config-dir <dir>   # not checked: a folder of yours\n```\n"
    )
    commands = shown_commands(page)
    assert commands == [
        "tl-train -m seed=0,1 trainer.max_epochs=2",
        "tl-eval ckpt_path=x/checkpoints/best.ckpt data=cifar10",
    ]
    assert shown_commands(page, unchecked=True) == ["tl-train --config-dir x"]
    best = tmp_path / "x" / "checkpoints" / "best.ckpt"
    assert checked_args(commands[1], tmp_path) == ("eval", [f"ckpt_path={best}", "data=cifar10"])
    assert best.is_file()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRANSFERLAB_ROOT", str(tmp_path))
    preflight(*checked_args(commands[1], tmp_path))
    with pytest.raises(UserError, match="trainer.max_epoch"):
        preflight("train", ["trainer.max_epoch=2"])
