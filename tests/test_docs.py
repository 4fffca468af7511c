"""The repository's Markdown pages: every relative link reaches a file, and every #anchor a heading of it."""
import functools
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


@functools.lru_cache(maxsize=None)
def anchors(page):
    """GitHub's heading ids: lower case, punctuation dropped but for - and _, spaces to hyphens, repeats -1, -2..."""
    seen, ids = {}, set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", FENCE.sub("", page.read_text(encoding="utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        ids.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return ids


def relative_links(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_anchors_follow_githubs_rule(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Run on Colab\n## Every run's command\n```\n# not a heading\n```\n## The `cpu` recipe\n"
                    "## The `cpu` recipe\n", encoding="utf-8")
    assert anchors(page) == {"run-on-colab", "every-runs-command", "the-cpu-recipe", "the-cpu-recipe-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(REPO).as_posix())
def test_every_relative_link_reaches_its_file_and_heading(page):
    links = relative_links(page)
    assert links or page.name != "README.md"  # the README links its sections and docs/results.md
    broken = []
    for target in links:
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(REPO)}")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)
