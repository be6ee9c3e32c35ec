"""The wheel ships ``staa.kernels``, ``py.typed`` and the licence, and installs into a fresh environment."""
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_kernels_subpackage(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = dist.glob("staa-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "staa/py.typed" in names, "the wheel must mark the package as typed (PEP 561)"
    assert any(n.endswith("dist-info/licenses/LICENSE") or n.endswith("dist-info/LICENSE") for n in names), names
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)], check=True)
    # torch comes from this environment; staa must come from the wheel alone.
    torch_dir = Path(__import__("torch").__file__).parents[1]
    (site / "zz_torch_from_test_env.pth").write_text(str(torch_dir) + "\n")
    code = ("import staa, staa.kernels, sys, pathlib; print(staa.kernels.__file__); print('triton' in sys.modules);"
            " print((pathlib.Path(staa.__file__).parent / 'py.typed').is_file())")
    out = subprocess.run([py, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path).stdout.split()
    assert out[0].startswith(str(site)), out
    assert out[1] == "False"
    assert out[2] == "True", "py.typed is not installed next to staa/__init__.py"


def test_setup_cfg_ships_py_typed_and_the_licence():
    """py.typed is in the source tree and declared as package data; the licence file is declared."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert (ROOT / "src" / "staa" / "py.typed").is_file()
    assert "py.typed" in cfg["options.package_data"]["staa"].split()
    assert cfg["metadata"]["license_files"].split() == ["LICENSE"]
    assert cfg["metadata"]["license"] == "MIT"


def test_a_broken_optional_framework_fails_ci_instead_of_skipping(tmp_path):
    """With STAA_REQUIRE_OPTIONAL=1 (set by scripts/test.sh) a spikingjelly that cannot be
    imported fails the run; without it the tests that need it skip, saying why."""
    fake = tmp_path / "spikingjelly"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('this spikingjelly is broken')\n")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
           os.path.join("tests", "test_surrogate_spec.py"), "-k", "spikingjelly"]
    runs = {}
    for require in ("1", "0"):
        env = dict(os.environ, PYTHONPATH=str(tmp_path), STAA_REQUIRE_OPTIONAL=require)
        runs[require] = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert runs["1"].returncode != 0 and "this spikingjelly is broken" in runs["1"].stdout + runs["1"].stderr
    assert runs["0"].returncode == 0, runs["0"].stdout[-2000:]
    assert "skipped" in runs["0"].stdout and "this spikingjelly is broken" in runs["0"].stdout
