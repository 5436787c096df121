"""Checks that keep the documentation in step with the code.

The generated pages must match a fresh render, every command and option must have
help text, every setting must appear on the configuration page, and every relative
link in README.md and docs/ must point at an existing file and heading.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path

import click
import pytest

from tqvt_sync import docgen
from tqvt_sync.settings_spec import SETTINGS, SETTINGS_BY_NAME, parse_value

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = f"run `{docgen.REGENERATE_COMMAND}` from the repository root"
COMMANDS = {ctx.command_path: (ctx, command) for ctx, command in docgen.iter_commands()}

_FENCED_BLOCK = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.MULTILINE)
_EXTERNAL = ("http://", "https://", "mailto:")


def _short_diff(expected: str, actual: str, name: str) -> str:
    lines = difflib.unified_diff(actual.splitlines(), expected.splitlines(),
                                 f"{name} (on disk)", f"{name} (rendered)", lineterm="", n=1)
    return "\n".join(list(lines)[:40])


# --- generated pages ------------------------------------------------------------------


@pytest.mark.parametrize("relative", sorted(docgen.PAGES))
def test_generated_page_current(relative: str) -> None:
    path = ROOT / relative
    assert path.is_file(), f"{relative} is missing; {REGENERATE}"

    rendered = docgen.PAGES[relative]()
    on_disk = path.read_text(encoding="utf-8")

    # pytest.fail prints the whole message, where a failed assert would cut the diff short.
    if on_disk != rendered:
        pytest.fail(f"{relative} is out of date; {REGENERATE}.\n"
                    f"{_short_diff(rendered, on_disk, relative)}", pytrace=False)


def test_docgen_check_flags_stale(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("", encoding="utf-8")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "cli.md").write_text("stale\n", encoding="utf-8")

    assert docgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 0


# --- help text --------------------------------------------------------------------------


@pytest.mark.parametrize("command_path", sorted(COMMANDS))
def test_command_has_help(command_path: str) -> None:
    _, command = COMMANDS[command_path]

    assert (command.help or "").strip(), (
        f"'{command_path}' has no help text; give its function a docstring"
    )


@pytest.mark.parametrize("command_path", sorted(COMMANDS))
def test_options_have_help(command_path: str) -> None:
    ctx, command = COMMANDS[command_path]

    missing = [
        "/".join(param.opts)
        for param in command.get_params(ctx)
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]

    assert not missing, f"options of '{command_path}' without help text: {', '.join(missing)}"


# --- configuration page ---------------------------------------------------------------


@pytest.mark.parametrize("name", [spec.name for spec in SETTINGS])
def test_setting_documented(name: str) -> None:
    spec = SETTINGS_BY_NAME[name]
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")

    assert f"### {spec.env}\n" in page, (
        f"docs/configuration.md has no section for {spec.env}; {REGENERATE}"
    )
    assert f"`{spec.toml_key}`" in page, (
        f"docs/configuration.md does not name the TOML key {spec.toml_key}; {REGENERATE}"
    )


def test_example_file_parses() -> None:
    page = docgen.render_configuration()
    block = page.split("## Example file", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    # The example comments out the secrets, so they are uncommented to be checked as well.
    document = tomllib.loads(block.replace("# ", ""))

    assert set(document) == {spec.toml_key for spec in SETTINGS}
    for spec in SETTINGS:
        try:
            parse_value(spec, document[spec.toml_key])
        except ValueError as exc:
            pytest.fail(f"example value of {spec.toml_key} is invalid: {exc}")


# --- links ----------------------------------------------------------------------------


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _relative_links(path: Path) -> list[str]:
    text = _FENCED_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return [target for target in _LINK.findall(text) if not target.startswith(_EXTERNAL)]


def _anchors(path: Path) -> set[str]:
    text = _FENCED_BLOCK.sub("", path.read_text(encoding="utf-8"))
    return {docgen.heading_anchor(heading.replace("`", "")) for heading in _HEADING.findall(text)}


LINKS = [(path.relative_to(ROOT).as_posix(), target)
         for path in _markdown_files() for target in _relative_links(path)]


@pytest.mark.parametrize(("source", "target"), LINKS)
def test_link_target_exists(source: str, target: str) -> None:
    file_part, _, fragment = target.partition("#")
    source_path = ROOT / source
    target_path = (source_path.parent / file_part).resolve() if file_part else source_path

    assert target_path.exists(), f"{source} links {target}, but {file_part} does not exist"
    if fragment and target_path.suffix == ".md":
        assert fragment in _anchors(target_path), (
            f"{source} links {target}, but {file_part or source} has no heading with that anchor"
        )


def test_readme_links_docs() -> None:
    readme_targets = {target for source, target in LINKS if source == "README.md"}

    assert any(target.startswith("docs/") for target in readme_targets), (
        "README.md links no page under docs/"
    )
