"""Which code trained a model: the package version and, in a git checkout, the commit.

The commit is read from the checkout's ``.git`` files (no ``git`` process, which a
Ray worker's runtime environment may lack); an installed wheel has none and reports the
version alone.
"""

from __future__ import annotations

from pathlib import Path

from cluster import __version__

_ROOT = Path(__file__).resolve().parents[2]


def git_commit(root: Path = _ROOT) -> str | None:
    """The commit ``HEAD`` names in ``root/.git``, or None outside a checkout."""
    git = root / ".git"
    if git.is_file():  # a worktree: "gitdir: <path>"
        text = git.read_text(encoding="utf-8").strip()
        if not text.startswith("gitdir:"):
            return None
        git = (root / text.removeprefix("gitdir:").strip()).resolve()
    head = git / "HEAD"
    try:
        ref = head.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not ref.startswith("ref:"):
        return ref or None
    name = ref.removeprefix("ref:").strip()
    for base in (git, _common_dir(git)):
        loose = base / name
        if loose.is_file():
            return loose.read_text(encoding="utf-8").strip() or None
        packed = _packed(base / "packed-refs", name)
        if packed:
            return packed
    return None


def _common_dir(git: Path) -> Path:
    common = git / "commondir"
    if common.is_file():
        return (git / common.read_text(encoding="utf-8").strip()).resolve()
    return git


def _packed(path: Path, name: str) -> str | None:
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == name:
            return parts[0]
    return None


def code_version(root: Path = _ROOT) -> str:
    """``datapunk <version>``, plus ``+git.<commit>`` when trained from a checkout."""
    commit = git_commit(root)
    return f"datapunk {__version__}" + (f"+git.{commit[:12]}" if commit else "")
