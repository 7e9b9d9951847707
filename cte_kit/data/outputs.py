"""Files the kit writes for the user: never over one of its inputs, never half-written.

Every command checks what it is asked to write against what it reads before it starts
(:func:`check_outputs`): a summary, an export, a plot, a checkpoint or a result store that would
land on the bank file, a model's weights, the result store, an image folder or another output is
refused with both names, so a mistyped option loses nothing. Reports are then written to a
temporary file beside their place and renamed onto it (:func:`atomic_path`), so an interrupted
write leaves the previous file (or none), never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Mapping

__all__ = ["atomic_path", "check_outputs"]

PathLike = str | os.PathLike


def _resolved(path: PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _same(a: Path, b: Path) -> bool:
    """The same file or folder: one path after symbolic links, or one file under two names (a hard link)."""
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _within(path: Path, folder: Path) -> bool:
    return folder.is_dir() and (path == folder or folder in path.parents)


def check_outputs(inputs: Mapping[str, PathLike | None], files: Mapping[str, PathLike | None] | None = None,
                  folders: Mapping[str, PathLike | None] | None = None) -> None:
    """Refuse outputs that would overwrite an input or each other, and files that are folders (or the reverse).

    Parameters
    ----------
    inputs : mapping of str -> path or None
        What the command reads, by what it is (``'the bank file'``, ``"the weights of model 'a'"``,
        ``'the images folder'``); a folder stands for every file under it. None entries are skipped.
    files : mapping of str -> path or None
        Files the command writes, by the option that names them (``'--summary'``).
    folders : mapping of str -> path or None
        Folders the command writes into (``'compare --out'``).

    Raises
    ------
    ValueError
        Naming the output, and the input or other output it would overwrite, or why it cannot be
        written (a folder where a file is asked, a read-only folder).
    """
    sources = {role: _resolved(path) for role, path in inputs.items() if path is not None}
    outputs = {}
    for kind, given in (("file", files or {}), ("folder", folders or {})):
        for role, path in given.items():
            if path is None:
                continue
            resolved = _resolved(path)
            existing = next(folder for folder in (resolved, *resolved.parents) if folder.exists())
            if existing != resolved and not existing.is_dir():
                raise ValueError(f"{role} {path} cannot be written: {existing} is a file, not a folder")
            writes_in = resolved if kind == "folder" and resolved.is_dir() else existing if existing != resolved else resolved.parent
            if not os.access(writes_in, os.W_OK):
                raise ValueError(f"{role} {path} cannot be written (a read-only file or folder)")
            if kind == "file" and resolved.is_dir():
                raise ValueError(f"{role} {path} is a folder; give the name of a file to write")
            if kind == "folder" and resolved.exists() and not resolved.is_dir():
                raise ValueError(f"{role} {path} is a file; give a folder to write into")
            for other, (other_path, _) in outputs.items():
                if _same(resolved, other_path):
                    raise ValueError(f"{role} and {other} are the same path ({path}): give each its own")
            for source, source_path in sources.items():
                if _same(resolved, source_path) or _within(resolved, source_path):
                    where = "is" if _same(resolved, source_path) else "lies inside"
                    raise ValueError(f"{role} {path} {where} {source} ({source_path}), which this command reads: "
                                     "writing there would overwrite or change it; choose another path")
            outputs[role] = (resolved, kind)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed onto ``path`` when the block ends without error.

    The temporary name keeps the suffix (writers such as matplotlib choose the format by it) and
    is removed if the block raises; the folder is created.

    Yields
    ------
    Path
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
