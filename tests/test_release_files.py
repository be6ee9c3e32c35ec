"""The files a release carries agree with the package: LICENSE, CHANGELOG.md, CITATION.cff, and the
API reference of the documentation site covers every public name."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import staa

ROOT = Path(__file__).resolve().parents[1]

# Keep a Changelog: "## [1.2.3] - 2026-01-31" (or "- Unreleased"), or one "## [Unreleased]" on top.
VERSION_HEADING = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}|Unreleased))?\s*$")
SECTIONS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def changelog_versions(text: str) -> list[str]:
    """Version headings of a Keep a Changelog file, top first, without ``Unreleased``.

    Raises ``ValueError`` naming the line for a second-level heading that is not a version entry
    and for a third-level heading that is not one of the format's change types."""
    versions = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("## "):
            m = VERSION_HEADING.match(line)
            if not m:
                raise ValueError(f"line {n}: {line!r} is not '## [X.Y.Z] - YYYY-MM-DD' or '## [Unreleased]'")
            if m["version"] != "Unreleased":
                if m["date"] is None:
                    raise ValueError(f"line {n}: {line!r} has no date (or 'Unreleased')")
                versions.append(m["version"])
        elif line.startswith("### ") and line[4:].strip() not in SECTIONS:
            raise ValueError(f"line {n}: {line!r} is not one of {sorted(SECTIONS)}")
    return versions


def test_changelog_parser_rejects_what_the_format_does_not_allow():
    good = "# Changelog\n\n## [Unreleased]\n\n## [0.2.0] - 2026-02-01\n### Added\n- x\n\n## [0.1.0] - 2026-01-01\n"
    assert changelog_versions(good) == ["0.2.0", "0.1.0"]
    for bad in ("## 0.2.0\n", "## [0.2.0]\n", "## [0.2.0] - Feb 2026\n", "## [0.2.0] - 2026-02-01\n### New\n"):
        with pytest.raises(ValueError):
            changelog_versions(bad)


def test_changelog_top_entry_is_the_package_version():
    versions = changelog_versions((ROOT / "CHANGELOG.md").read_text())
    assert versions, "CHANGELOG.md has no version entry"
    assert versions[0] == staa.__version__, (
        f"CHANGELOG.md's top entry is {versions[0]}, staa.__version__ is {staa.__version__}: "
        "add an entry for the new version (or fix the version in src/staa/__init__.py)")
    assert len(set(versions)) == len(versions), f"a version is listed twice: {versions}"


def test_license_is_the_mit_license_setup_cfg_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the staa authors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND" in text
    assert re.search(r"^license = MIT$", (ROOT / "setup.cfg").read_text(), re.M)


def _cff_value(text: str, key: str, indent: str = "") -> str:
    m = re.search(rf"^{indent}{key}: *(.+)$", text, re.M)
    assert m, f"CITATION.cff has no {key!r}"
    return m.group(1).strip().strip('"')


def test_citation_cites_the_paper_and_this_version():
    text = (ROOT / "CITATION.cff").read_text()
    assert _cff_value(text, "cff-version") == "1.2.0"
    assert _cff_value(text, "version") == staa.__version__
    assert _cff_value(text, "license") == "MIT"
    assert _cff_value(text, "type") == "software"
    paper = text.split("\npreferred-citation:\n", 1)[1]
    assert _cff_value(paper, "type", "  ") == "conference-paper"
    assert _cff_value(paper, "title", "  ") == (
        "STAA-SNN: Spatial-Temporal Attention Aggregator for Spiking Neural Networks")
    assert _cff_value(paper, "year", "  ") == "2025"
    families = re.findall(r"^    - family-names: (\w+)$", paper, re.M)
    assert families == ["Zhang", "Yu", "Zhong", "Wang", "Xu", "Zhang"], families
    assert "CVPR" in paper
    try:
        import yaml
    except ImportError:  # the docs extra brings PyYAML; scripts/check_release.sh parses it there too
        return
    data = yaml.safe_load(text)
    assert data["preferred-citation"]["year"] == 2025 and data["version"] == staa.__version__


# ------------------------------------------------------------------------- API reference pages
def _documented_names() -> set[str]:
    """Names the pages under docs/reference/ render with ``::: staa.X`` lines."""
    names = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        text = page.read_text()
        names |= set(re.findall(r"^::: (staa(?:\.\w+)*)\s*$", text, re.M))
    return names


def test_api_reference_lists_every_public_name():
    names = _documented_names()
    missing = [n for n in staa.__all__ if f"staa.{n}" not in names]
    assert not missing, f"docs/reference/ has no '::: staa.NAME' entry for {missing}"
    for module in ("staa.functional", "staa.surrogate", "staa.reference.staa_lif_reference", "staa.selftest"):
        assert module in names, f"docs/reference/ does not render {module}"


def test_api_reference_entries_resolve():
    """Each ``::: staa.X`` names an importable module or attribute (the docs build would fail)."""
    import importlib

    for name in sorted(_documented_names() - {"staa.selftest"}):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                assert hasattr(obj, attr), f"{name}: {obj!r} has no {attr!r}"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"{name} is not importable")
