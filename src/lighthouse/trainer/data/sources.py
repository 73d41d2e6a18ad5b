"""The input of a run: source files, documents made of several files, and what was skipped.

- `stdlib_files`, `site_packages_files`, `expand_paths`: the files of `data.source`, in a fixed
  order, each with the stable name the validation split hashes.
- `group_documents`: the stream's units, files or (`data.document` "folder" / "package")
  `FileGroup`s of the files of one folder or top-level package.
- `DataStats`: counts of skipped input (empty, unreadable, not UTF-8, bad records), each
  file or record once; `DataError`: data that cannot feed a run at all.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import posixpath
import site
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("lighthouse.data")

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
DOCUMENT_MODES = ("auto", "file", "folder", "package")


class DataError(RuntimeError):
    """The data cannot feed a run at all (no files, no usable documents): raised at start-up."""


# ---- bookkeeping of skipped input -----------------------------------------------------------
@dataclass
class DataStats:
    """Counts of skipped input, each file or record counted once however often it is met."""

    counts: dict = field(default_factory=lambda: collections.Counter())
    seen: set = field(default_factory=set)
    warn_limit: int = 5  # warn individually for the first few, then only count

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        if (reason, where) in self.seen:
            return
        self.seen.add((reason, where))
        self.counts[reason] += 1
        total = sum(self.counts.values())
        if reason != "empty" and total <= self.warn_limit:
            log.warning("skipping %s (%s%s) [%d skipped so far]", where, reason, f": {detail}" if detail else "", total)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "no input skipped"
        parts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(self.counts.items()))
        return f"skipped {self.total} inputs ({parts})"


# ---- file lists --------------------------------------------------------------------------------
@dataclass
class SourceFile:
    path: Path
    name: str  # stable name used for the validation split (relative to its root)
    kind: str  # "text" | "jsonl" | "parquet"
    # The leading part of `name` that names the folder it was found in ("" when `name` is
    # relative to that folder); None for a file named directly or by a glob. Folder and
    # package documents group files by what follows it.
    root: str | None = None


@dataclass
class FileGroup:
    """Text files read as one document (a folder or a top-level package), in path order."""

    name: str  # stable name used for the validation split
    files: list[SourceFile]
    kind: str = "group"


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    return "text"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[SourceFile]:
    """The standard library's `.py` files, sorted by relative path, site-packages skipped."""
    root = Path(root or stdlib_root())
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for fn in sorted(filenames):
            if fn.endswith(".py"):
                p = Path(dirpath) / fn
                found.append(SourceFile(p, p.relative_to(root).as_posix(), "text", root=""))
    found.sort(key=lambda f: f.name)
    return found


def glob_root(pattern: str) -> str:
    """The folder a glob pattern searches: its leading parts without wildcards ('corpus/**/*.h' -> 'corpus')."""
    parts = []
    for part in pattern.split("/"):
        if glob.has_magic(part):
            break
        parts.append(part)
    return "/".join(parts)


def expand_paths(paths: list[str]) -> list[SourceFile]:
    """Files, directories (recursively, sorted) and glob patterns, in the order given.

    A file a glob matched is named by its match and rooted at the folder the pattern searches,
    so folder and package documents group it with its neighbours; a file named directly has no root.
    """
    out: list[SourceFile] = []
    seen = set()
    for entry in paths:
        matches = sorted(glob.glob(entry, recursive=True)) if glob.has_magic(entry) else [entry]
        if not matches or not all(os.path.lexists(m) for m in matches):
            raise DataError(f"data.paths: no such file or directory: {entry}")
        for m in matches:
            p = Path(m)
            root = None
            if p.is_dir():
                root = p.name
                items = []
                for dirpath, dirnames, filenames in os.walk(p):
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
                    for fn in filenames:
                        if not fn.startswith("."):
                            f = Path(dirpath) / fn
                            items.append((f.relative_to(p).as_posix(), f))
                named = [(f"{p.name}/{rel}", f) for rel, f in sorted(items)]
            elif glob.has_magic(entry):
                named = [(m, p)]
                base = glob_root(entry)
                root = base if m.startswith(base) else None
            else:
                named = [(p.name, p)]
            for name, f in named:
                key = os.path.abspath(f)
                if key not in seen:
                    seen.add(key)
                    out.append(SourceFile(f, name, file_kind(f), root=root))
    return out


def site_packages_roots() -> list[Path]:
    """The folders this interpreter installs packages into (purelib, platlib, site's list)."""
    paths = sysconfig.get_paths()
    candidates = [paths["purelib"], paths["platlib"]]
    try:
        candidates += site.getsitepackages()
    except AttributeError:  # pragma: no cover - some embedded interpreters lack it
        pass
    roots, seen = [], set()
    for c in candidates:
        p = Path(c)
        if p.is_dir() and p.resolve() not in seen:
            seen.add(p.resolve())
            roots.append(p)
    return roots


def _skip_package_dir(name: str) -> bool:
    return (
        name.startswith(".")
        or name in SKIP_DIRS  # nested environments and byte-code caches
        or name.endswith((".dist-info", ".egg-info"))
    )


def site_packages_files(roots: list[Path] | None = None) -> list[SourceFile]:
    """The `.py` files under site-packages folders, named relative to their folder, in path order.

    A name found under two folders (a namespace package split over purelib and platlib) keeps
    both files, the first folder's first; a file reached twice (linked folders) is read once.
    """
    roots = [Path(r) for r in (site_packages_roots() if roots is None else roots)]
    for r in roots:
        if not r.is_dir():
            raise DataError(f"data.paths: site-packages folder not found: {r}")
    found, seen = [], set()
    for rank, root in enumerate(roots):
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not _skip_package_dir(d))
            for fn in filenames:
                if fn.endswith(".py") and not fn.startswith("."):
                    p = Path(dirpath) / fn
                    key = os.path.realpath(p)
                    if key not in seen:
                        seen.add(key)
                        found.append((p.relative_to(root).as_posix(), rank, p))
    found.sort(key=lambda item: item[:2])
    return [SourceFile(p, name, "text", root="") for name, _, p in found]


# ---- documents made of several files -----------------------------------------------------------
def resolve_document_mode(document: str, source: str) -> str:
    if document not in DOCUMENT_MODES:
        raise DataError(f"data.document must be one of {DOCUMENT_MODES}, got {document!r}")
    if document == "auto":
        return "package" if source == "site-packages" else "file"
    return document


def document_key(f: SourceFile, document: str) -> str | None:
    """The folder or package document a file belongs to, or None for a document of its own."""
    if document == "file" or f.kind != "text" or f.root is None:
        return None
    rel = f.name[len(f.root) :].lstrip("/")  # the path below the root folder
    if document == "folder":
        parent = posixpath.dirname(rel)
    else:
        parent = rel.split("/", 1)[0] if "/" in rel else ""
        if not parent:  # a top-level module: a package of one file
            return None
    if f.root:
        return posixpath.join(f.root, parent) if parent else f.root
    return parent or "."


def group_documents(files: list[SourceFile], document: str) -> list[SourceFile | FileGroup]:
    """The stream's units: files, with those of one folder or package joined into a FileGroup.

    Units keep the order in which their first file appears; a group's files are in name order.
    With document = "file" this is `files` itself, so the order (and the data) is unchanged.
    """
    if document == "file":
        return list(files)
    units: list[SourceFile | FileGroup] = []
    groups: dict[str, FileGroup] = {}
    for f in files:
        key = document_key(f, document)
        if key is None:
            units.append(f)
        elif key in groups:
            groups[key].files.append(f)
        else:
            groups[key] = FileGroup(key, [f])
            units.append(groups[key])
    for g in groups.values():
        g.files.sort(key=lambda f: f.name)  # stable: files of the same name keep their folder order
    return units


def unit_files(unit: SourceFile | FileGroup) -> list[SourceFile]:
    return unit.files if isinstance(unit, FileGroup) else [unit]


def cap_bytes(files: list[SourceFile], max_bytes: int, stats: DataStats | None = None) -> list[SourceFile]:
    """The leading files whose sizes add up to at most `max_bytes` (at least one file)."""
    if max_bytes <= 0:
        return files
    kept, total = [], 0
    for f in files:
        try:
            size = f.path.stat().st_size
        except OSError as e:
            if stats is not None:
                stats.skip("unreadable", f.name, str(e))
            continue
        if kept and total + size > max_bytes:
            break
        kept.append(f)
        total += size
    return kept


def file_size(f: SourceFile) -> int:
    try:
        return f.path.stat().st_size
    except OSError:
        return 0
