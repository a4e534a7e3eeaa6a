"""Pinned public source files of the domains' training data: fetched once, checked by sha256.

Each domain's prepare.py names its files as ``Source(owner, repo, commit, path, sha256)``. They are
read from a local folder laid out as ``DIR/owner/repo/path``: by default ``.cache/sources`` in the
repository, filled by downloading each file's raw URL at its pinned commit; ``--sources DIR`` reads an
existing copy instead, and ``--from-git owner/repo=GITDIR`` first fills that folder from a git clone or
mirror of the repository (``git --git-dir GITDIR show COMMIT:path``). Every byte read is checked against
the pinned sha256, so the three ways give the same rows or a clear error.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / ".cache" / "sources"
RAW_URL = "https://raw.githubusercontent.com/{owner}/{repo}/{commit}/{path}"


class SourceError(Exception):
    """A source file is missing, unreachable or not the pinned bytes."""


@dataclass(frozen=True)
class Source:
    owner: str
    repo: str
    commit: str
    path: str
    sha256: str
    licence: str = ""

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.repo}"

    @property
    def url(self) -> str:
        quoted = urllib.parse.quote(self.path)
        return RAW_URL.format(owner=self.owner, repo=self.repo, commit=self.commit, path=quoted)

    def local(self, folder: Path) -> Path:
        return folder / self.owner / self.repo / self.path


def _check(source: Source, data: bytes, where: str) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise SourceError(f"{where}: sha256 {digest} is not the pinned {source.sha256} ({source.slug})")
    return data


def read(source: Source, folder: Path, download: bool) -> bytes:
    """The source's bytes from ``folder`` (downloaded into it first when absent and ``download``)."""
    path = source.local(folder)
    if not path.is_file():
        if not download:
            raise SourceError(
                f"{path} not found (a copy of {source.slug}@{source.commit[:10]}:{source.path})"
            )
        try:
            with urllib.request.urlopen(source.url, timeout=60) as response:  # a pinned https URL
                data = _check(source, response.read(), source.url)
        except OSError as error:
            raise SourceError(f"cannot download {source.url}: {error}") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data
    return _check(source, path.read_bytes(), str(path))


def fill_from_git(sources: Sequence[Source], repo: str, git_dir: Path, folder: Path) -> int:
    """Copy every pinned file of ``repo`` out of the git directory ``git_dir`` into ``folder``."""
    count = 0
    for source in (source for source in sources if source.slug == repo):
        try:
            data = subprocess.run(
                ["git", "--git-dir", str(git_dir), "show", f"{source.commit}:{source.path}"],
                check=True,
                capture_output=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as error:
            detail = getattr(error, "stderr", b"") or b""
            raise SourceError(
                f"--from-git {repo}: cannot read {source.path} at {source.commit[:10]} from {git_dir}: "
                f"{detail.decode(errors='replace').strip() or error}"
            ) from None
        path = source.local(folder)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_check(source, data, f"{git_dir}:{source.path}"))
        count += 1
    if count == 0:
        raise SourceError(f"--from-git: {repo} is not a source of this domain")
    return count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sources",
        type=Path,
        default=None,
        help="read the pinned files from DIR/owner/repo/path instead of downloading them",
    )
    parser.add_argument(
        "--from-git",
        action="append",
        default=[],
        metavar="OWNER/REPO=GITDIR",
        help="first copy that repository's pinned files out of a git clone or mirror (repeatable)",
    )


class Reader:
    """Reads a domain's sources as the command line asked (cache + download, or a local copy)."""

    def __init__(self, sources: Sequence[Source], folder: Path | None, from_git: Sequence[str]) -> None:
        self.sources = {(source.slug, source.path): source for source in sources}
        self.folder = DEFAULT_CACHE if folder is None else folder
        self.download = folder is None
        for spec in from_git:
            repo, sep, git_dir = spec.partition("=")
            if not sep or not git_dir:
                raise SourceError(f"--from-git {spec!r}: expected OWNER/REPO=GITDIR")
            fill_from_git(sources, repo, Path(git_dir), self.folder)

    def bytes(self, repo: str, path: str) -> bytes:
        return read(self.sources[(repo, path)], self.folder, self.download)

    def text(self, repo: str, path: str) -> str:
        return self.bytes(repo, path).decode("utf-8-sig")


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a prepare script's ``main``, turning a source problem into a message without a traceback."""
    try:
        main(argv)
    except SourceError as error:
        sys.exit(f"error: {error}")
