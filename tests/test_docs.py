"""The front door stays whole: README and docs/ link only to files and headings that exist, the Quick start's
commands are ones the CLI knows, the README stays short, and every table of the authors' settings agrees with the
one table in the code (minibigr.authors)."""

import re
from pathlib import Path

import pytest

from minibigr import authors, official
from minibigr.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "ablations.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces -> -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"#{1,6} ", line):
            base = slug(line.lstrip("#"))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)          # links inside code blocks are code
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+://", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: link to {target}: {file} does not exist"
        if anchor:
            assert file.suffix == ".md", f"{page.name}: anchor into a non-Markdown file: {target}"
            assert anchor in anchors(file), f"{page.name}: no heading #{anchor} in {file.name}: {sorted(anchors(file))}"


def test_the_readme_is_a_front_door():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) < 200
    for section in ("## Quick start", "## In five lines", "## Tutorials", "## The command line",
                    "## Against the authors' code", "## Documentation"):
        assert section in text, section
    assert "PLACEHOLDER" not in text
    for page in PAGES:
        assert "PLACEHOLDER" not in page.read_text(), page.name


def test_the_quick_start_commands_are_ones_the_cli_knows(capsys):
    text = (REPO / "README.md").read_text()
    quick = text[text.index("## Quick start"):text.index("## In five lines")]
    commands = re.findall(r"minibigr ([a-z][a-z-]*)", quick)
    assert "demo" in commands
    for command in set(commands):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([command, "--help"])
        assert done.value.code == 0, command
    capsys.readouterr()


def table_rows(page: Path, first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header starts with ``first_header``."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_authors_settings_in_the_docs_are_the_code_s():
    """docs/method.md §5 and docs/authors-models.md quote the settings of minibigr.authors, file by file."""
    for file, cfg, iters, gumbel, schedule, steps, order, mask in table_rows(REPO / "docs" / "method.md", "file"):
        source = re.match(r"`([^`]+)`", file).group(1)
        quoted = authors.settings(source)
        assert (float(cfg), int(iters), float(gumbel), schedule, int(steps), order, mask) == (
            quoted["cfg"], quoted["num_iter"], quoted["gumbel"], quoted["gumbel_schedule"],
            quoted["diffusion_steps"], quoted["order"], quoted["mask_schedule"]), source
    rows = table_rows(REPO / "docs" / "authors-models.md", "name")
    models = {row[0]: row for row in rows if row[0] in official.MODELS}
    assert set(models) == set(official.MODELS)
    for name, row in models.items():
        entry = official.MODELS[name]
        quoted = authors.settings(entry.sampling)
        assert row[5] == (f"`{entry.sampling}`: CFG {quoted['cfg']:g}, I {quoted['num_iter']}, "
                          f"Gumbel {quoted['gumbel']:g}"), name


def test_no_page_calls_a_sampling_value_published_that_no_file_of_the_authors_uses():
    """The values once quoted from the paper's text for XL / XXL (Gumbel 0.17 / 0.25 / 0.30) are in none of the
    authors' files: no page or module may offer them as theirs."""
    used = {q.value for settings in authors.QUOTED.values() for q in settings.values()}
    for value in (0.17, 0.25, 0.30):
        assert value not in used
    for path in [*PAGES, *sorted((REPO / "minibigr").glob("*.py"))]:
        text = path.read_text()
        for match in re.finditer(r"Gumbel (0\.17|0\.25|0\.30)\b", text):
            pytest.fail(f"{path.name} quotes Gumbel {match.group(1)}: {text[match.start() - 80:match.end()]}")
