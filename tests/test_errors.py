"""Bad input gets a clear error naming the offending value and what was expected."""
import pytest
import torch

import staa


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tsrd": 1.0}, r"tsrd must be a probability in \[0, 1\) .*, got 1.0"),
        ({"tsrd": -0.1}, r"tsrd must be a probability in \[0, 1\) .*, got -0.1"),
        ({"surrogate_width": 0.0}, r"surrogate_width must be a positive finite number, got 0.0"),
        ({"r": 0}, r"r must be an int >= 1, got 0"),
        ({"backend": "cuda"}, r"unknown backend 'cuda'; expected one of 'auto', 'torch', 'triton'"),
        ({"step_mode": "multi"}, r"step_mode must be 's' .* or 'm' .*, got 'multi'"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        staa.STAALIF(4, 2, **kwargs)


def test_wrong_number_of_dims():
    m = staa.STAALIF(4, 2)
    with pytest.raises(ValueError, match=r"expects input of shape \[T, B, C, H, W\] or \[T, B, C\], got a 4-D tensor of shape \[2, 3, 4, 5\]"):
        m(torch.randn(2, 3, 4, 5))
    m.step_mode = "s"
    with pytest.raises(ValueError, match=r"expects input of shape \[B, C, H, W\] or \[B, C\], got a 5-D tensor"):
        m(torch.randn(2, 3, 4, 5, 5))


def test_channel_mismatch():
    m = staa.STAALIF(4, 2)
    with pytest.raises(ValueError, match=r"built for 4 channels but the input has 6 at dim 2 \(shape \[2, 1, 6, 3, 3\]\)"):
        m(torch.randn(2, 1, 6, 3, 3))
    lazy = staa.STAALIF()
    lazy(torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match=r"built for 5 channels but the input has 3"):
        lazy(torch.randn(2, 1, 3))


def test_T_longer_than_pe():
    m = staa.STAALIF(4, 2)
    with pytest.raises(ValueError, match=r"input has T=3 time steps but this STAALIF was built for T=2"):
        m(torch.randn(3, 1, 4))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_or_bool_input(dtype):
    m = staa.STAALIF(4, 2)
    with pytest.raises(TypeError, match=rf"floating-point input, got dtype {dtype}"):
        m(torch.ones(2, 1, 4, dtype=dtype))


def test_input_on_another_device():
    m = staa.STAALIF(4, 2, device="meta")
    with pytest.raises(ValueError, match=r"input is on cpu but STAALIF's parameters are on meta"):
        m(torch.randn(2, 1, 4))


def test_triton_backend_without_gpu_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = staa.STAALIF(4, 2, backend="triton")
    with pytest.raises(RuntimeError, match=r"backend='triton' cannot run: .*"):
        m(torch.randn(2, 1, 4))


def test_env_var_selects_backend(monkeypatch):
    monkeypatch.setenv("STAA_BACKEND", "torch")
    assert staa.backend_for(torch.zeros(1)) == "torch"
    monkeypatch.setenv("STAA_BACKEND", "gpu")
    with pytest.raises(ValueError, match=r"STAA_BACKEND='gpu' is not a backend"):
        staa.backend_for(torch.zeros(1))
    monkeypatch.delenv("STAA_BACKEND")
    assert staa.backend_for(torch.zeros(1)) == "torch"  # auto on a CPU tensor
