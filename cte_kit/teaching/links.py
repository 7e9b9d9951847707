"""The kit's public home in one place, and every link that is built from it.

The repository URL lives in the package metadata only (``pyproject.toml``, ``[project.urls]
Repository``). The Binder and Colab badges of the README and ``notebooks/README.md`` and the
Colab install line of every notebook name the same repository; :func:`stale_links` lists those
that do not, and ``tests/test_notebooks.py`` fails on them. Publishing under another owner is a
one-line change of ``pyproject.toml``, then::

    python -m cte_kit.teaching.links --write

rewrites every link of the source tree to the new home (``--check`` lists them without writing).
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["REPOSITORY_KEY", "badges", "binder_url", "colab_url", "install_requirement", "repository_url",
           "rewrite_links", "slug", "stale_links"]

#: The ``[project.urls]`` key that holds the repository.
REPOSITORY_KEY = "Repository"

#: Links that name the kit's own repository: (what it is, pattern whose group ``slug`` is owner/name).
_LINKS = (
    ("Binder badge", re.compile(r"mybinder\.org/v2/gh/(?P<slug>[\w.-]+/[\w.-]+)/")),
    ("Colab badge", re.compile(r"colab\.research\.google\.com/github/(?P<slug>[\w.-]+/[\w.-]+)/blob/")),
    ("install line", re.compile(r"cte_kit(?:\[[\w,]+\])? @ git\+https://github\.com/(?P<slug>[\w.-]+/[\w.-]+?)(?:\.git)?"
                                r"(?=[\\\"'@\s]|$)")),
)
#: Files of the source tree that carry such links.
_FILES = ("README.md", "notebooks/*.md", "notebooks/*.ipynb", "binder/*.md")


def repository_url(root: str | Path | None = None) -> str:
    """The repository URL: from ``root/pyproject.toml`` (a source tree), else from the installed metadata."""
    pyproject = Path(root) / "pyproject.toml" if root is not None else _source_pyproject()
    try:
        import tomllib
    except ImportError:  # Python 3.10: the installed metadata says the same
        tomllib = None
    if tomllib is not None and pyproject is not None and pyproject.is_file():
        urls = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"].get("urls", {})
        if REPOSITORY_KEY in urls:
            return urls[REPOSITORY_KEY].rstrip("/")
    from importlib import metadata

    for entry in metadata.metadata("cte_kit").get_all("Project-URL") or ():
        key, _, url = entry.partition(",")
        if key.strip() == REPOSITORY_KEY:
            return url.strip().rstrip("/")
    raise LookupError(f"the package metadata has no [project.urls] {REPOSITORY_KEY}")


def _source_pyproject() -> Path | None:
    """``pyproject.toml`` of the source tree this module runs from (an editable install), if any."""
    candidate = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return candidate if candidate.is_file() and "cte_kit" in candidate.read_text(encoding="utf-8") else None


def slug(url: str | None = None) -> str:
    """``owner/name`` of a GitHub URL (default: :func:`repository_url`)."""
    url = repository_url() if url is None else url
    found = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?", url)
    if found is None:
        raise ValueError(f"{url!r} is not a GitHub repository URL (https://github.com/OWNER/NAME)")
    return found.group(1)


def binder_url(notebook: str, url: str | None = None) -> str:
    """mybinder.org link that opens ``notebook`` (a path under ``notebooks/``) in JupyterLab."""
    return f"https://mybinder.org/v2/gh/{slug(url)}/HEAD?urlpath=lab/tree/notebooks/{notebook}"


def colab_url(notebook: str, url: str | None = None) -> str:
    """Colab link that opens ``notebook`` from the repository's main branch."""
    return f"https://colab.research.google.com/github/{slug(url)}/blob/main/notebooks/{notebook}"


def badges(notebook: str, url: str | None = None) -> str:
    """The Binder and Colab badges of one notebook, as Markdown."""
    return (f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url(notebook, url)}) "
            f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook, url)})")


def install_requirement(extras: str = "adapters", url: str | None = None) -> str:
    """The pip requirement that installs the kit from its repository, e.g. for a Colab cell."""
    return f"cte_kit[{extras}] @ git+{repository_url() if url is None else url}"


def stale_links(root: str | Path) -> list[str]:
    """Links in the source tree at ``root`` that name another repository than the metadata's."""
    root = Path(root)
    expected = slug(repository_url(root))
    stale = []
    for path in _files(root):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for what, pattern in _LINKS:
                for found in pattern.finditer(line):
                    if found.group("slug") != expected:
                        stale.append(f"{path.relative_to(root)}:{number}: {what} names {found.group('slug')}, "
                                     f"not {expected}")
    return stale


def rewrite_links(root: str | Path) -> list[Path]:
    """Point every link of the source tree at ``root`` to the metadata's repository; returns the files changed."""
    root = Path(root)
    expected = slug(repository_url(root))
    changed = []
    for path in _files(root):
        text = path.read_text(encoding="utf-8")
        new = text
        for _, pattern in _LINKS:
            new = pattern.sub(lambda found: found.group(0).replace(found.group("slug"), expected), new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def _files(root: Path) -> list[Path]:
    return sorted({path for pattern in _FILES for path in root.glob(pattern)})


def _main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cte_kit.teaching.links",
                                     description="Check or rewrite the links to the kit's repository.")
    parser.add_argument("--root", default=".", help="the source tree (default: the current folder)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--check", action="store_true", help="list links to another repository (exit 1 if any)")
    action.add_argument("--write", action="store_true", help="point every link at pyproject.toml's repository")
    args = parser.parse_args(argv)
    if args.write:
        for path in rewrite_links(args.root):
            print(f"rewrote {path}")
        return 0
    stale = stale_links(args.root)
    print("\n".join(stale) if stale else f"every link names {slug(repository_url(args.root))}")
    return 1 if stale else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
