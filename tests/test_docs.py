"""The repository documents itself: every link in its Markdown resolves inside the checkout, nothing
cites a document a clone does not have, and the licence and changelog match the metadata."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import taskengine
from engine_helpers import REPO

#: documents that live outside the repository, which a clone does not have
OUTSIDE = ["../" + "shared", "/work/" + "shared", "DESIGN" + ".md", "DESIGN" + " §", "ORIGINAL" + ".md",
           "ORIGINAL" + " defect", "NOTES" + ".md"]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True,
                               timeout=60).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in names:
        path = REPO / name
        if path.suffix in {".png", ".json"} or path.is_symlink() or not path.is_file():
            continue
        files.append(path)
    return files


def test_nothing_cites_a_document_outside_the_repository() -> None:
    found = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        found += [f"{path.relative_to(REPO)}: {word}" for word in OUTSIDE if word in text]
    assert not found, found


@pytest.mark.parametrize("doc", ["README.md", "CHANGELOG.md", "docs/contract.md", "storage/FORMAT.md",
                                 "BENCHMARKS.md"])
def test_every_link_resolves_inside_the_checkout(doc: str) -> None:
    path = REPO / doc
    targets = [t for t in LINK.findall(path.read_text()) if "://" not in t]
    missing = [t for t in targets if not (path.parent / t).resolve().exists()]
    assert not missing, missing


def test_licence_and_changelog_match_the_metadata() -> None:
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    assert "license = MIT" in (REPO / "setup.cfg").read_text()
    assert f"## {taskengine.__version__}" in (REPO / "CHANGELOG.md").read_text()


def test_the_contract_numbers_what_the_code_cites() -> None:
    """Code and tests cite "contract §3.6"; each cited section exists in docs/contract.md."""
    contract = (REPO / "docs" / "contract.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", contract, re.M))
    invariants = set(re.findall(r"^(\d+)\. \*\*", contract.split("## 3.")[1].split("\n## ")[0], re.M))
    cited = set()
    for path in tracked_text_files():
        cited |= set(re.findall(r"contract(?:\.md)? §(\d+(?:\.\d+)?)", path.read_text(errors="replace")))
    for ref in cited:
        top, _, sub = ref.partition(".")
        assert top in sections, ref
        assert not sub or (top == "3" and sub in invariants), ref


def test_the_readme_states_the_limits_the_code_enforces() -> None:
    """Each figure a user reads in the README is the one the code holds (the list limit was missing)."""
    from taskengine.actors import engine, jobrun, turn, validate
    from taskengine.storage import values

    readme = " ".join((REPO / "README.md").read_text().split())
    stated = [
        f"up to {validate.MAX_TASK_ID} characters",
        f"at most {validate.MAX_NODE_ID} characters",
        f"from {validate.MIN_LEASE:g} to {validate.MAX_LEASE:g})",
        f"at most {validate.MAX_IDEMPOTENCY_KEY:,} characters and {validate.MAX_IDEMPOTENCY_KEY_BYTES:,} bytes",
        f"**{values.MAX_DEPTH} levels**",
        f"{values.MAX_BYTES:,} bytes",
        f"`limit` (1 to {engine.MAX_LIST_LIMIT:,})",
        f"(default {engine.DEFAULT_WORKERS} on LevelDB, {engine.DEFAULT_WORKERS_POSTGRES} on PostgreSQL:",
        f"at most {jobrun.MAX_TRACEBACK:,} characters",
        f"**at most {turn.GATHER_SECONDS * 1000:g} ms**",
    ]
    missing = [text for text in stated if text not in readme]
    assert not missing, missing
