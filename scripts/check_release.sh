#!/usr/bin/env bash
# Release checks, run by CI after the test suite (.ci/run), from the environment scripts/test.sh set up:
#   1. the wheel: build it, install it (not editable) into a fresh virtual environment that borrows
#      this environment's torch, and run `python -m staa` and a forward + backward from a folder
#      outside the checkout, so a file missing from the wheel fails here and not on a user's machine;
#   2. the documentation site: install the `docs` extra, check CITATION.cff parses, test the site's
#      hooks (tests/test_docs_site.py, skipped in the main suite without the extra) and build the
#      site with warnings as errors (`mkdocs build --strict`: a broken link or anchor, a page missing
#      from the menu or an API name that does not resolve fails), with nothing fetched from the network.
# Usage: bash scripts/check_release.sh [wheel|docs]   (both by default)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
what="${1:-all}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

check_wheel() {
    echo "== wheel"
    # Built from a copy of the files git knows (tracked, or new and not ignored), as a fresh clone
    # would have them: an in-tree build would reuse a stale build/ folder and hide a missing file.
    mkdir "$WORK/src"
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [ -e "$f" ] && printf '%s\0' "$f"
    done | tar -c --null -T - -f - | tar -x -C "$WORK/src" -f -
    python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src"
    local wheel
    wheel="$(ls "$WORK"/dist/staa-*.whl)"
    python - "$wheel" "$WORK/src" <<'EOF'
import sys, zipfile
from pathlib import Path
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
src = Path(sys.argv[2])
# every module and the py.typed marker of the package's source folders (setup.cfg's package_dir)
need = {"staa/" + f.relative_to(src / "src/staa").as_posix() for f in (src / "src/staa").rglob("*")
        if f.suffix == ".py" or f.name == "py.typed"}
need |= {"staa/kernels/" + f.relative_to(src / "kernels").as_posix() for f in (src / "kernels").rglob("*.py")}
assert "staa/py.typed" in need and "staa/kernels/__init__.py" in need, sorted(need)
missing = sorted(need - names)
if not any(n.endswith((".dist-info/licenses/LICENSE", ".dist-info/LICENSE")) for n in names):
    missing.append("LICENSE")
assert not missing, f"the wheel lacks {missing}; it holds {sorted(names)}"
print(f"{Path(sys.argv[1]).name}: {len(names)} files, every module of the source tree among them")
EOF
    # A venv made from inside a venv takes its *base* interpreter: --system-site-packages shows the
    # base installation's packages, not this environment's, where torch is. A .pth file in the new
    # environment appends this environment's site-packages after its own. Paths added by a .pth are
    # not site directories, so the .pth files there (the editable staa finder among them) do not run,
    # and the staa installed from the wheel, earlier on sys.path, is the one imported.
    python -m venv --without-pip --system-site-packages "$WORK/venv"
    local py="$WORK/venv/bin/python"
    local new_site here_site
    new_site="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    here_site="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$here_site" > "$new_site/zz_borrow_torch.pth"
    python -m pip --python "$py" install -q --no-deps --no-index "$wheel"
    mkdir "$WORK/outside"
    cd "$WORK/outside"
    "$py" - "$new_site" "$ROOT" <<'EOF'
import sys
from pathlib import Path
new_site, root = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
import staa, staa.kernels, torch
for mod in (staa, staa.kernels):
    f = Path(mod.__file__).resolve()
    assert f.is_relative_to(new_site), f"{mod.__name__} comes from {f}, not from the wheel in {new_site}"
assert (Path(staa.__file__).parent / "py.typed").is_file(), "py.typed is not installed"
finders = [type(f).__module__ for f in sys.meta_path]
assert not any("editable" in m for m in finders), f"the editable install is active: {finders}"
torch.manual_seed(0)
lif = staa.STAALIF(8, T=4)
x = torch.randn(4, 2, 8, 5, 5, requires_grad=True)          # [T, B, C, H, W]
s = lif(x)
(s * torch.randn_like(s)).sum().backward()
assert s.shape == x.shape and x.grad is not None and torch.isfinite(x.grad).all()
assert all(p.grad is not None for p in lif.parameters() if p.requires_grad)
print(f"staa {staa.__version__} from {Path(staa.__file__).parent}: forward + backward OK")
EOF
    "$py" -m staa --repeat 1 --batch 2 --width 8 > "$WORK/main.txt"
    tail -n 3 "$WORK/main.txt"
    cd "$ROOT"
    echo "wheel: OK"
}

check_docs() {
    echo "== docs"
    python -m pip install -q -e "$ROOT[docs]"
    python - <<'EOF'
import yaml
c = yaml.safe_load(open("CITATION.cff"))
for key in ("cff-version", "message", "title", "authors", "version", "license", "preferred-citation"):
    assert key in c, f"CITATION.cff lacks {key!r}"
assert c["preferred-citation"]["year"] == 2025 and len(c["preferred-citation"]["authors"]) == 6
print("CITATION.cff: parses")
EOF
    python -m pytest -q -p no:cacheprovider tests/test_docs_site.py     # the site's hooks on a small project
    NO_MKDOCS_2_WARNING=1 python -m mkdocs build --strict --clean --site-dir "$WORK/site"   # no theme banner
    echo "docs: OK ($(find "$WORK/site" -name '*.html' | wc -l) pages)"
}

case "$what" in
    wheel) check_wheel ;;
    docs) check_docs ;;
    all) check_wheel; check_docs ;;
    *) echo "usage: $0 [wheel|docs]" >&2; exit 2 ;;
esac
