"""The Docker build context without Docker: `.dockerignore` read with Docker's pattern rules, the
COPY lines of the Dockerfile's build stage, and both applied to a directory, so a test can
compile exactly what `docker build` would see.

Pattern rules, as Docker documents them for .dockerignore (and as its patternmatcher applies
them): one pattern a line, `#` lines are comments, surrounding blanks are dropped, each pattern is
cleaned like a path (so `src/` is `src`, a leading `/` means the context root); `*` and `?` never
cross a `/`, `[...]` is a character class, `\\` escapes, and `**` matches any number of
directories (zero included). A path is excluded when the last pattern that matches it, or any of
its parent directories, is not a `!` exception.
"""

from __future__ import annotations

import fnmatch
import json
import os
import posixpath
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pattern:
    """One .dockerignore line."""

    text: str
    exception: bool
    regex: re.Pattern[str]


def _to_regex(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < len(pattern) and pattern[i] == "/":
                    i += 1
                    out.append("(?:.*/)?")  # `**/`: zero or more directories
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                raise ValueError(f"unterminated character class in {pattern!r}")
            out.append("[" + pattern[i + 1 : end] + "]")
            i = end
        elif c == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def parse_dockerignore(text: str) -> list[Pattern]:
    """The patterns of a .dockerignore file, in order."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        if exception:
            line = line[1:].strip()
        line = posixpath.normpath(line.replace(os.sep, "/")).lstrip("/")
        if line in ("", "."):
            continue
        patterns.append(Pattern(line, exception, _to_regex(line)))
    return patterns


def _ancestors_and_self(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def excluded(patterns: list[Pattern], path: str) -> bool:
    """Whether Docker leaves `path` (relative, `/`-separated) out of the build context."""
    result = False
    candidates = _ancestors_and_self(path)
    for p in patterns:
        if any(p.regex.match(c) for c in candidates):
            result = not p.exception
    return result


def _may_contain_exception(patterns: list[Pattern], directory: str) -> bool:
    """Whether some `!` pattern could match a path below an excluded directory (if none can,
    the walk skips it, as Docker does)."""
    parts = directory.split("/")
    for p in patterns:
        if not p.exception:
            continue
        pat_parts = p.text.split("/")
        for i, part in enumerate(parts):
            if i >= len(pat_parts):
                break
            if "**" in pat_parts[i]:
                return True
            if not fnmatch.fnmatchcase(part, pat_parts[i]):
                break
        else:
            return True
    return False


def context_files(root: Path, patterns: list[Pattern]) -> list[str]:
    """Every file of the build context, relative and sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir
        kept = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            if excluded(patterns, rel) and not _may_contain_exception(patterns, rel):
                continue
            kept.append(d)
        dirnames[:] = kept
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not excluded(patterns, rel):
                files.append(rel)
    return sorted(files)


@dataclass
class Instruction:
    """One Dockerfile instruction: keyword (upper case) and its argument text."""

    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each stage (FROM starts a stage), comments and continuations handled."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    if buf:
        logical.append(buf)
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        ins = Instruction(keyword.upper(), args.strip())
        if ins.keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    return stages


def _copy_sources_dest(args: str) -> tuple[list[str], str, list[str]]:
    if args.lstrip().startswith("["):
        words = json.loads(args)
        flags: list[str] = []
    else:
        words = shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        words = [w for w in words if not w.startswith("--")]
    return words[:-1], words[-1], flags


def _copy_target(rel: str, src: str, dest: str, dest_is_dir: bool) -> str | None:
    """Where COPY puts context file `rel` for source `src` (None: not copied). A directory
    source copies its contents, not itself; a glob may match files and directories."""
    if src == ".":
        return posixpath.join(dest, rel)
    if rel == src or (rel.count("/") == src.count("/") and fnmatch.fnmatchcase(rel, src)):
        return posixpath.join(dest, posixpath.basename(rel)) if dest_is_dir else dest
    for top in _ancestors_and_self(rel)[:-1]:
        if top == src or (top.count("/") == src.count("/") and fnmatch.fnmatchcase(top, src)):
            return posixpath.join(dest, rel[len(top) + 1 :])
    return None


def build_stage(stages: list[list[Instruction]]) -> list[Instruction]:
    """The stage whose RUN compiles with cargo."""
    found = [s for s in stages if any(i.keyword == "RUN" and "cargo build" in i.args for i in s)]
    assert len(found) == 1, "expected exactly one stage that runs `cargo build`"
    return found[0]


def materialise(context: Path, patterns: list[Pattern], stage: list[Instruction], dest_root: Path) -> Path:
    """Applies the stage's WORKDIR and COPY instructions (none with --from) to `dest_root`, a
    stand-in for the image's `/`, copying only build-context files. Returns the directory that
    stands for the WORKDIR in force at the stage's cargo RUN."""
    files = context_files(context, patterns)
    workdir = "/"
    cargo_workdir = None
    for ins in stage:
        if ins.keyword == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, ins.args))
        elif ins.keyword in ("COPY", "ADD"):
            sources, dest, flags = _copy_sources_dest(ins.args)
            if any(f.startswith("--from") for f in flags):
                continue
            dest_abs = posixpath.normpath(posixpath.join(workdir, dest))
            dest_is_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
            for src in sources:
                src = posixpath.normpath(src).lstrip("/")
                copied = [(rel, target) for rel in files if (target := _copy_target(rel, src, dest_abs, dest_is_dir))]
                if not copied:
                    raise FileNotFoundError(f"COPY {src}: not in the build context (Docker fails here)")
                for rel, target in copied:
                    out = dest_root / target.lstrip("/")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(context / rel, out)
        elif ins.keyword == "RUN" and "cargo build" in ins.args:
            cargo_workdir = workdir
    assert cargo_workdir is not None
    return dest_root / cargo_workdir.lstrip("/")


def cargo_build_args(stage: list[Instruction]) -> list[str]:
    """The arguments of the stage's `cargo build` (e.g. --release --locked --bin x)."""
    run = next(i.args for i in stage if i.keyword == "RUN" and "cargo build" in i.args)
    tail = run.split("cargo build", 1)[1]
    tail = re.split(r"&&|;|\|", tail)[0]
    return shlex.split(tail)
