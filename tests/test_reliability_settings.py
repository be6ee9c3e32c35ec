"""Spec: every setting is validated with a message naming the value and the accepted range."""
import math
import warnings

import numpy as np
import pytest
import torch

import staa

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("kw, err, text", [
    (dict(alpha=NAN), ValueError, r"alpha must be a finite number > 0 \(step attention's pooling scale"),
    (dict(alpha=0.0), ValueError, r"alpha must be a finite number > 0.*got 0"),
    (dict(alpha=-1), ValueError, r"alpha .*surrogate_alpha.*got -1"),
    (dict(v_threshold=NAN), ValueError, r"v_threshold must be a finite number, got nan"),
    (dict(v_threshold=torch.tensor(1.0)), TypeError, r"v_threshold must be a Python number.*float\(value\)"),
    (dict(v_reset=NAN), ValueError, r"v_reset must be a finite number"),
    (dict(surrogate_width=INF), ValueError, r"surrogate_width must be a positive finite number, got inf"),
    (dict(surrogate_width=0.0), ValueError, r"surrogate_width must be a positive finite number, got 0"),
    (dict(surrogate="atan", surrogate_alpha=NAN), ValueError, r"surrogate_alpha must be a positive finite"),
    (dict(surrogate="atan", surrogate_width=1.0), ValueError, r"surrogate_width=1.0 was given with surrogate='atan'"),
    (dict(surrogate_alpha=2.0), ValueError, r"surrogate_alpha=2.0 was given with surrogate='rect'.*not STAALIF's alpha"),
    (dict(surrogate="tanh"), ValueError, r"surrogate must be one of 'rect', 'atan', 'sigmoid', 'fast_sigmoid'"),
    (dict(channels=True), TypeError, r"channels must be an int >= 1 or None, got True"),
    (dict(T=True), TypeError, r"T must be an int >= 1 or None, got True"),
    (dict(r=True), TypeError, r"r must be an int >= 1, got True"),
    (dict(r=0), ValueError, r"r must be an int >= 1, got 0"),
    (dict(channels=2.0), TypeError, r"channels must be an int"),
    (dict(tsrd=None), TypeError, r"tsrd must be a probability in \[0, 1\); use tsrd=0.0"),
    (dict(tsrd=1.0), ValueError, r"tsrd must be a probability in \[0, 1\)"),
    (dict(tsrd=NAN), ValueError, r"tsrd must be a probability"),
    (dict(gc="yes"), TypeError, r"gc must be True or False, got 'yes'"),
    (dict(check_finite=1), TypeError, r"check_finite must be True or False"),
    (dict(sa_init_bias=NAN), ValueError, r"sa_init_bias must be a finite number"),
])
def test_bad_settings_are_rejected_with_the_value(kw, err, text):
    with pytest.raises(err, match=text):
        staa.STAALIF(**{"channels": 8, "T": 2, **kw})


def test_numpy_numbers_are_accepted():
    m = staa.STAALIF(np.int64(8), np.int32(2), r=np.int64(2), alpha=np.float32(2.0), tsrd=np.float64(0.0),
                     gc=np.bool_(True))
    assert (m.channels, m.T, m.r, m.alpha) == (8, 2, 2, 2.0) and type(m.channels) is int


def test_threshold_at_or_below_a_hard_reset_warns_but_builds():
    with pytest.warns(UserWarning, match=r"v_threshold=0 <= v_reset=0.5"):
        m = staa.STAALIF(4, 2, v_threshold=0.0, v_reset=0.5)
    assert m(torch.randn(2, 1, 4)).shape == (2, 1, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        staa.STAALIF(4, 2, v_threshold=0.0, v_reset=None)  # soft reset: no warning


def test_repr_shows_the_surrogate_and_which_alpha_is_which():
    text = repr(staa.STAALIF(4, 2, surrogate="atan", surrogate_alpha=3.0))
    assert "surrogate='atan', surrogate_alpha=3" in text
    assert "surrogate='rect', surrogate_width=1" in repr(staa.STAALIF(4, 2))
