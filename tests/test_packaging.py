"""The setuptools package list covers every package directory (a non-editable install needs it)."""

from __future__ import annotations

import tomllib

from conftest import REPO_ROOT

TOP = {"core": "vitsuite.core", "pipelines": "vitsuite.pipelines", "apps": "vitsuite.apps"}


def test_every_package_is_listed():
    cfg = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    assert cfg["package-dir"]["vitsuite"] == "."
    found = {"vitsuite"}
    for top, name in TOP.items():
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO_ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found - listed == set(), f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed - found == set(), f"listed packages without a folder: {sorted(listed - found)}"


def test_public_namespaces_import():
    import vitsuite
    import vitsuite.apps
    import vitsuite.core
    import vitsuite.models
    import vitsuite.pipelines

    assert vitsuite.models.list_models is vitsuite.core.registry.list_models
    assert callable(vitsuite.models.from_official) and callable(vitsuite.models.load_official_checkpoint)


def test_native_sources_are_package_data():
    """A non-editable install must ship every file the native build reads (sources and headers)."""
    import fnmatch

    from vitsuite.core import native

    cfg = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = cfg["package-data"]["vitsuite.core.native"]
    needed = [p.name for p in native._SOURCES + native._HEADERS]
    on_disk = {p.name for p in (REPO_ROOT / "core" / "native").iterdir() if p.suffix in (".cpp", ".h")}
    assert set(needed) == on_disk, "a native source on disk is not built (or a listed one is missing)"
    assert all(any(fnmatch.fnmatch(n, pat) for pat in patterns) for n in needed)
