"""Spec: convert and profile validate their options and inputs and say what is wrong."""
import pytest
import torch

import staa


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.lif = staa.STAALIF(8, 2, tsrd=0.0)

    def forward(self, x):
        T, B = x.shape[:2]
        return self.lif(self.conv(x.flatten(0, 1)).unflatten(0, (T, B)))


@pytest.mark.parametrize("kw, err, text", [
    (dict(batch_size=2.5), TypeError, r"batch_size must be an int >= 1 or None, got 2.5"),
    (dict(batch_size=True), TypeError, r"batch_size must be an int >= 1 or None, got True"),
    (dict(batch_size=0), ValueError, r"batch_size must be an int >= 1"),
    (dict(e_ac=-1.0), ValueError, r"e_ac must be a finite energy in joules >= 0"),
    (dict(e_mac=float("nan")), ValueError, r"e_mac must be a finite energy"),
])
def test_profile_options_are_validated(kw, err, text):
    with pytest.raises(err, match=text):
        staa.profile(_Net(), torch.randn(2, 1, 3, 8, 8), **kw)


def test_profile_takes_keyword_inputs_like_convert():
    net = _Net()
    x = torch.randn(2, 1, 3, 8, 8)
    assert staa.profile(net, {"x": x}).to_list() == staa.profile(net, x).to_list()


def test_profile_rejects_empty_and_unknown_inputs():
    with pytest.raises(ValueError, match=r"empty tensor \(shape \[2, 0, 3, 8, 8\]\)"):
        staa.profile(_Net(), torch.randn(2, 0, 3, 8, 8))
    with pytest.raises(TypeError, match="example_input must be a tensor.*got int"):
        staa.profile(_Net(), 3)


def test_convert_validates_pattern_values():
    with pytest.raises(TypeError, match=r"include must be a module-name pattern.* got 3"):
        staa.convert(_Net(), include=3)
