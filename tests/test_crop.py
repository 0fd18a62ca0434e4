"""Centre crops: one definition for numpy images (H×W×C) and tensors (…, H, W)."""

import numpy as np
import pytest
import torch

from dipcore.crop import center_box, center_crop, center_crop_to_multiple
from dipcore.errors import ConfigError


def test_center_crop_to_multiple():
    x = np.arange(70 * 37).reshape(70, 37)
    y = center_crop_to_multiple(x, 32)
    np.testing.assert_array_equal(y, x[3:67, 2:34])  # offsets (70 - 64) // 2 = 3 and (37 - 32) // 2 = 2
    assert center_crop_to_multiple(np.zeros((64, 96, 3)), 32).shape == (64, 96, 3)
    assert center_crop_to_multiple(np.zeros((65, 97, 1)), 2).shape == (64, 96, 1)
    with pytest.raises(ConfigError):
        center_crop_to_multiple(np.zeros((20, 40)), 32)
    with pytest.raises(ConfigError):
        center_crop_to_multiple(np.zeros((40, 40)), 0)


def test_arrays_and_tensors_are_cropped_alike():
    image = np.arange(70 * 37 * 3, dtype=np.float32).reshape(70, 37, 3)  # H×W×C
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]  # (1, C, H, W)
    for crop in (lambda x: center_crop(x, 64, 33), lambda x: center_crop_to_multiple(x, 32)):
        np.testing.assert_array_equal(crop(tensor)[0].permute(1, 2, 0).numpy(), crop(image))
    with pytest.raises(ConfigError):
        center_crop_to_multiple(tensor, 71)


def test_center_box_puts_an_odd_surplus_at_the_bottom_and_right():
    assert center_box(70, 37, 64, 32) == (3, 2, 64, 32)
    assert center_box(64, 64, 64, 64) == (0, 0, 64, 64)
