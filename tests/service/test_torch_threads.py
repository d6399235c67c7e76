"""The service's torch-threads setting."""

from __future__ import annotations

import torch

from service.localizer import set_torch_threads


def test_torch_threads_setting_applies_and_zero_keeps_the_default() -> None:
    before = torch.get_num_threads()
    try:
        set_torch_threads(0)
        assert torch.get_num_threads() == before
        set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
