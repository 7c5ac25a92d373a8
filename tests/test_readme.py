"""The README and docs/ say what the code does: the README's Python is what `vqgen run` runs (executed at
tiny sizes), every relative link and anchor resolves, and the README stays a short page about one version."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vqgen
from helpers import REPO

README = REPO / "README.md"
PAGES = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 250  # STYLE.md 12: a router of a few hundred lines at most

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"(!?)\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
VERSION = re.compile(r"(?<![\w.])\d+\.\d+\.\d+(?![\w.]*\d)")


def _prose(text: str) -> str:
    """Markdown without its fenced blocks and inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def _links(page: Path, images: bool) -> list[str]:
    return [target for bang, target in LINK.findall(_prose(page.read_text())) if bool(bang) == images
            and not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: are not checked here


def github_anchor(heading: str) -> str:
    """GitHub's id of a heading: lowercase, punctuation dropped (word characters, spaces and hyphens kept),
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor, repeated headings suffixed -1, -2, ... as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        anchor = github_anchor(match.group(1))
        found.add(anchor if anchor not in seen else f"{anchor}-{seen[anchor]}")
        seen[anchor] = seen.get(anchor, 0) + 1
    return found


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("A paper-comparable FID: `vqgen eval --fid`") == "a-paper-comparable-fid-vqgen-eval---fid"
    assert github_anchor("Defaults: sampling.json") == "defaults-samplingjson"
    assert github_anchor("Eval's search") == "evals-search"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in _links(page, images=False):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(REPO)}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_image_exists(page: Path) -> None:
    missing = [target for target in _links(page, images=True) if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(REPO)} shows images that are not in the repository: {missing}"


def test_the_readme_is_a_short_page() -> None:
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/ (at most {MAX_README_LINES})"


def test_the_readme_names_no_version_but_the_current_one() -> None:
    """Older versions belong in docs/ (labelled figures) and CHANGELOG.md; the README may also name the
    release it is being written for, the changelog's unreleased version."""
    unreleased = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - unreleased", (REPO / "CHANGELOG.md").read_text(), re.M)
    allowed = {vqgen.__version__, *unreleased}
    named = set(VERSION.findall(README.read_text()))
    assert named, "the README names no version"
    assert named <= allowed, f"README.md names {sorted(named - allowed)}; it may name only {sorted(allowed)}"


def _python_block(text: str, marker: str) -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.M | re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


@pytest.fixture
def tiny_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in digits cut to 400 + 200 images, and the default preset cut to tiny models and a few steps,
    for the README's code and `vqgen run` alike (both read the same preset table)."""
    from vqgen.data import builtin
    from vqgen.pipeline import presets

    monkeypatch.setitem(builtin.COUNTS, "train", 400)
    monkeypatch.setitem(builtin.COUNTS, "test", 200)

    def tiny(shape):  # noqa: ANN001, ANN202
        steps = {"steps": 4, "batch_size": 16, "eval_every": 4, "checkpoint_every": 4, "device": "cpu"}
        return presets.fitted(presets.RunPreset(
            vqvae=vqgen.VQVAEConfig.tiny(), vqvae_train=vqgen.TrainConfig(**steps),
            prior=vqgen.PriorConfig.tiny(label_dropout=0.1), prior_train=vqgen.TrainConfig(**steps, ema=0.9),
            eval_images=64), shape)

    monkeypatch.setitem(presets.RUN_PRESETS, "default", tiny)


def test_the_readme_python_is_what_vqgen_run_runs(tiny_default: None, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture) -> None:
    """The block runs, writes a whole run, and the command then finds that run finished: `vqgen run` refuses
    a run directory whose run.json differs, so the block builds the very spec the command builds."""
    from vqgen.pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    exec(compile(_python_block(README.read_text(), "vqgen.run("), "README.md", "exec"), {})
    out = tmp_path / "runs" / "demo"
    assert "bits_per_dim" in (out / "report.json").read_text() and (out / "samples" / "grid.png").exists()
    assert (out / "eval.json").exists() and (out / "prior" / "sampling.json").exists()
    spec = (out / "run.json").read_text()
    written = {p: p.stat().st_mtime_ns for p in (out / "eval.json", out / "samples" / "grid.png",
                                                 *out.glob("*/model.safetensors"), *out.glob("latents/*/codes.npy"))}
    capsys.readouterr()

    assert main(["run", "--out", "runs/demo"]) == 0  # a run.json of other settings would be refused (exit 1)
    assert "run finished in runs/demo" in capsys.readouterr().out
    assert (out / "run.json").read_text() == spec
    assert {p: p.stat().st_mtime_ns for p in written} == written  # nothing trained, exported, scored or drawn again
