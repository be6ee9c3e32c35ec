"""``backend="auto"``: Triton only on verified NVIDIA architectures, the reason, and the one-line hint.

No GPU is needed: the tests describe a CUDA device by patching what torch reports about it
(compute capability, name, ROCm build) and pass ``torch.device("cuda", 0)`` to ``backend_for``.
"""
import re
import warnings
from pathlib import Path

import pytest
import torch

import staa
from staa import _backend

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda", 0)
pytestmark = pytest.mark.filterwarnings("ignore::staa.BackendHint")  # the hint itself is tested below


@pytest.fixture
def gpu(monkeypatch):
    """A faked CUDA device; returns a setter for its architecture, name and ROCm version."""
    monkeypatch.delenv("STAA_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_triton_import_error", lambda: None)
    monkeypatch.setattr(_backend, "_triton_kernels_available", lambda: True)
    _backend._auto_cache.clear()
    _backend._hinted.clear()

    def fake(arch=(8, 6), name="NVIDIA GeForce RTX 3090", hip=None):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: arch)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(torch.version, "hip", hip)
        _backend._auto_cache.clear()
        _backend._hinted.clear()

    fake()
    yield fake
    _backend._auto_cache.clear()
    _backend._hinted.clear()


def test_the_verified_list_is_empty_and_auto_picks_torch_on_every_gpu(gpu):
    # The kernels were rewritten after the one GPU run (H200, b10c880): nothing is verified at this commit.
    assert _backend.VERIFIED == ()
    for arch, name in (((9, 0), "NVIDIA H200"), ((8, 0), "NVIDIA A100"), ((8, 9), "NVIDIA L4"), ((12, 0), "NVIDIA B")):
        gpu(arch, name)
        assert staa.backend_for(CUDA) == "torch"
        assert staa.backend_for(CUDA, reason=True).backend == "torch"


def test_unlisted_architecture_says_why_and_how_to_opt_in(gpu):
    gpu((8, 6), "NVIDIA GeForce RTX 3090")
    choice = staa.backend_for(CUDA, reason=True)
    assert isinstance(choice, staa.BackendChoice)
    assert choice.backend == "torch"
    assert "sm_86 (NVIDIA GeForce RTX 3090) is not in the verified list" in choice.reason
    assert "python -m staa selftest" in choice.hint and "backend='triton'" in choice.hint
    assert "\n" not in choice.hint  # a one-line hint
    assert str(choice).startswith("torch: auto: ")


def test_compiled_only_architecture_names_the_compile_table(gpu):
    gpu((9, 0), "NVIDIA H200")
    choice = staa.backend_for(CUDA, reason=True)
    assert choice.backend == "torch"
    assert "sm_90 (NVIDIA H200) is not in the verified list" in choice.reason
    assert "kernel_compile_sm90.md" in choice.reason and "compiles" in choice.reason
    assert (ROOT / _backend.COMPILED[(9, 0)]).is_file()


def test_rocm_build_picks_torch(gpu):
    gpu((9, 4), "AMD Instinct MI300X", hip="6.2.41133")
    choice = staa.backend_for(CUDA, reason=True)
    assert choice.backend == "torch"
    assert "ROCm build (HIP 6.2.41133)" in choice.reason and "never been compiled or run on AMD" in choice.reason
    assert "AMD GPU" in choice.hint and "backend='triton'" in choice.hint


def test_older_card_picks_torch(gpu):
    gpu((7, 5), "Tesla T4")
    choice = staa.backend_for(CUDA, reason=True)
    assert choice.backend == "torch" and "older than sm_80" in choice.reason and choice.hint


def test_a_verified_entry_is_trusted_only_with_this_versions_kernels(gpu, monkeypatch):
    gpu((9, 0), "NVIDIA H200")
    good = _backend.VerifiedRun((9, 0), "NVIDIA H200", "abc1234", _backend.kernels_fingerprint())
    monkeypatch.setattr(_backend, "VERIFIED", (good,))
    _backend._auto_cache.clear()
    choice = staa.backend_for(CUDA, reason=True)
    assert choice.backend == "triton" and choice.hint is None
    assert "passed on sm_90 (NVIDIA H200) at commit abc1234" in choice.reason
    assert staa.backend_for(CUDA) == "triton"
    # another architecture is not covered by it
    gpu((8, 0), "NVIDIA A100")
    assert staa.backend_for(CUDA) == "torch"
    # the kernels changed after the run: the entry no longer counts
    gpu((9, 0), "NVIDIA H200")
    stale = _backend.VerifiedRun((9, 0), "NVIDIA H200", "abc1234", "0123456789abcdef")
    monkeypatch.setattr(_backend, "VERIFIED", (stale,))
    _backend._auto_cache.clear()
    choice = staa.backend_for(CUDA, reason=True)
    assert choice.backend == "torch" and "kernels changed since" in choice.reason
    # a ROCm build is never trusted, whatever the list says
    monkeypatch.setattr(_backend, "VERIFIED", (good,))
    gpu((9, 0), "NVIDIA H200", hip="6.2")
    assert staa.backend_for(CUDA) == "torch"


def test_the_hint_is_issued_once(gpu):
    gpu((8, 6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            assert _backend.resolve_backend("auto", CUDA) == "torch"
    hints = [w for w in caught if issubclass(w.category, staa.BackendHint)]
    assert len(hints) == 1
    assert "sm_86" in str(hints[0].message) and "backend='triton'" in str(hints[0].message)
    # backend_for without reason= answers like a call and so may hint; reason=True returns the hint instead
    _backend._hinted.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        staa.backend_for(CUDA, reason=True)
    assert not [w for w in caught if issubclass(w.category, staa.BackendHint)]


def test_explicit_and_environment_choices_opt_in(gpu, monkeypatch):
    gpu((8, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no hint when a backend was asked for
        assert staa.backend_for(CUDA, "triton") == "triton"
        choice = staa.backend_for(CUDA, "triton", reason=True)
        assert choice == staa.BackendChoice("triton", "backend='triton' was asked for")
        assert staa.backend_for(CUDA, "torch", reason=True).reason == "backend='torch' was asked for"
        monkeypatch.setenv("STAA_BACKEND", "triton")
        assert staa.backend_for(CUDA) == "triton"
        assert staa.backend_for(CUDA, reason=True).reason == "STAA_BACKEND=triton was asked for"


def test_without_triton_auto_picks_torch_without_a_hint(gpu, monkeypatch):
    gpu((9, 0))
    monkeypatch.setattr(_backend, "_triton_import_error", lambda: "ModuleNotFoundError: No module named 'triton'")
    _backend._auto_cache.clear()
    choice = staa.backend_for(CUDA, reason=True)
    assert choice.backend == "torch" and "triton does not import" in choice.reason and choice.hint is None
    with pytest.raises(RuntimeError, match="backend='triton' cannot run: triton does not import"):
        staa.backend_for(CUDA, "triton")


def test_cpu_and_mps_pick_torch_and_say_why(monkeypatch):
    monkeypatch.delenv("STAA_BACKEND", raising=False)
    assert staa.backend_for(torch.zeros(2, 1, 3)) == "torch"
    assert staa.backend_for(torch.zeros(2, 1, 3), reason=True).reason == \
        "auto: the Triton kernels run on CUDA devices only; this is cpu"
    choice = staa.backend_for(torch.device("mps"), reason=True)
    assert choice.backend == "torch" and "this is mps" in choice.reason and choice.hint is None
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="need a CUDA tensor, got a tensor on mps"):
        staa.backend_for(torch.device("mps"), "triton")
    with pytest.raises(TypeError, match="expects a tensor .* or a torch.device, got str"):
        staa.backend_for("cuda")


def test_kernels_fingerprint_follows_the_kernel_sources(tmp_path):
    fp = _backend.kernels_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert _backend.fingerprint_of(ROOT / "kernels") == fp  # the package's sources are this checkout's
    for f in (ROOT / "kernels").glob("*.py"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    assert _backend.fingerprint_of(tmp_path) == fp  # same sources, same fingerprint
    launch = tmp_path / "launch.py"
    launch.write_bytes(launch.read_bytes().replace(b"\n", b"\r\n"))
    assert _backend.fingerprint_of(tmp_path) == fp  # line endings do not count
    launch.write_bytes(launch.read_bytes() + b"# changed\n")
    assert _backend.fingerprint_of(tmp_path) != fp
    (tmp_path / "launch.py").unlink()
    assert _backend.fingerprint_of(tmp_path) != fp


def test_docs_list_the_verified_architectures():
    """The support matrix states the verified list as the code has it, and the GPU status once."""
    page = (ROOT / "docs" / "devices.md").read_text()
    table = page.split("<!-- verified list -->")[1].split("<!-- /verified list -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| sm_")]
    assert len(rows) == len(_backend.VERIFIED)
    for run in _backend.VERIFIED:
        assert any(f"sm_{run.arch[0]}{run.arch[1]}" in r and run.commit in r and run.kernels in r for r in rows)
    if not _backend.VERIFIED:
        assert "none" in table.lower()
    readme = (ROOT / "README.md").read_text()
    assert readme.count("**GPU status.**") == 1
    status = readme.split("**GPU status.**")[1].split("\n\n")[0]
    for fact in ("b10c880", "H200", "31 CUDA tests", "rewritten", "python -m staa selftest", "docs/devices.md"):
        assert fact in status, fact
