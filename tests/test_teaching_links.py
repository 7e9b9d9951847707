"""The repository URL lives in pyproject.toml only: every badge and install line is checked against it, and
publishing elsewhere is that one line plus `python -m cte_kit.teaching.links --write`."""

import shutil
from pathlib import Path

import pytest

from cte_kit.teaching.links import badges, install_requirement, repository_url, rewrite_links, slug, stale_links

ROOT = Path(__file__).resolve().parents[1]


def test_the_url_comes_from_the_package_metadata():
    import tomllib

    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert repository_url(ROOT) == urls["Repository"].rstrip("/")
    owner_name = slug(repository_url(ROOT))
    assert f"mybinder.org/v2/gh/{owner_name}/HEAD?urlpath=lab/tree/notebooks/01_x.ipynb" in badges("01_x.ipynb",
                                                                                                  repository_url(ROOT))
    assert install_requirement("adapters", "https://github.com/a/b") == "cte_kit[adapters] @ git+https://github.com/a/b"
    with pytest.raises(ValueError, match="GitHub"):
        slug("https://gitlab.com/a/b")


def test_publishing_elsewhere_is_one_line_and_one_command(tmp_path):
    for name in ("pyproject.toml", "README.md", "notebooks/README.md", "notebooks/01_why_transferability.ipynb"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert stale_links(tmp_path) == []
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace(repository_url(ROOT), "https://github.com/somelab/cte_kit"))
    stale = stale_links(tmp_path)
    assert any("Binder badge" in line for line in stale) and any("install line" in line for line in stale)
    assert {line.split(":")[0] for line in stale} >= {"README.md", "notebooks/01_why_transferability.ipynb"}
    changed = rewrite_links(tmp_path)
    assert stale_links(tmp_path) == [] and len(changed) == 3
    notebook = (tmp_path / "notebooks/01_why_transferability.ipynb").read_text()
    assert "git+https://github.com/somelab/cte_kit" in notebook and slug(repository_url(ROOT)) not in notebook
