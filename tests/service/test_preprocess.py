"""The request path's panorama preprocessing equals the model's, value for value; torch threads."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.config import Preprocessing
from model.transforms import prepare_ground
from service.localizer import set_torch_threads
from service.preprocess import prepare_panorama

CPU = Preprocessing(
    sat_size=128, grd_size=(64, 352), channel_order="BGR", mean=(103.939, 116.779, 123.6), std=(1.0, 1.0, 1.0)
)


@pytest.mark.parametrize("shape", [(112, 616), (64, 352), (50, 300), (257, 1301)])
@pytest.mark.parametrize(
    "prep",
    [CPU, dataclasses.replace(CPU, channel_order="RGB", std=(58.4, 57.1, 57.4))],
    ids=["bgr-std1", "rgb-std"],
)
def test_prepare_panorama_equals_prepare_ground(shape: tuple[int, int], prep: Preprocessing) -> None:
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    got, want = prepare_panorama(rgb, prep), prepare_ground(rgb, prep)
    assert got.dtype == want.dtype == torch.float32
    assert got.shape == want.shape == (3, *prep.grd_size)
    assert torch.equal(got, want)


def test_prepare_panorama_refuses_unknown_channel_order() -> None:
    rgb = np.zeros((64, 352, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="channel_order"):
        prepare_panorama(rgb, dataclasses.replace(CPU, channel_order="GRB"))


def test_torch_threads_setting_applies_and_zero_keeps_the_default() -> None:
    before = torch.get_num_threads()
    try:
        set_torch_threads(0)
        assert torch.get_num_threads() == before
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
