import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F

from retinaedge.runtime.errors import InputError
from retinaedge.train.data.transforms import LUMA, AugmentConfig, color_jitter, hflip, random_jitter


def test_hflip_boxes_hand_computed():
    img = np.zeros((4, 10, 3), np.uint8)
    img[:, 1] = 255  # column 1 -> column 8 after the flip
    boxes = np.array([[1, 0, 3, 2], [0, 1, 10, 4]], np.float32)
    out, b = hflip(img, boxes)
    np.testing.assert_array_equal(b, [[7, 0, 9, 2], [0, 1, 10, 4]])
    assert out[0, 8, 0] == 255 and out[0, 1, 0] == 0
    assert out.flags.c_contiguous
    # the flipped box still covers the flipped pixel column
    assert b[0, 0] <= 8 < b[0, 2]


def test_hflip_empty_boxes():
    out, b = hflip(np.zeros((3, 5, 3), np.uint8), np.zeros((0, 4), np.float32))
    assert b.shape == (0, 4) and out.shape == (3, 5, 3)


def test_jitter_identity(rng):
    img = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(color_jitter(img), img)


def _tv(fn, img, factor):
    t = torch.from_numpy(img).permute(2, 0, 1)
    return fn(t, factor).permute(1, 2, 0).numpy()


@pytest.mark.parametrize(("name", "fn"), [("brightness", F.adjust_brightness), ("contrast", F.adjust_contrast),
                                          ("saturation", F.adjust_saturation)])
@pytest.mark.parametrize("factor", [0.0, 0.6, 1.3])
def test_jitter_matches_torchvision(rng, name, fn, factor):
    img = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    ours = color_jitter(img, **{name: factor}).astype(int)
    ref = _tv(fn, img, factor).astype(int)
    # torchvision rounds its grey image to uint8 before blending: allow one or two levels
    assert np.abs(ours - ref).max() <= 2


def test_hue_keeps_luma_and_greys(rng):
    img = rng.integers(40, 200, (5, 5, 3), dtype=np.uint8)
    img[0, 0] = (90, 90, 90)
    out = color_jitter(img, hue=0.25)
    assert np.abs(out[0, 0].astype(int) - 90).max() <= 1  # grey has no chroma to rotate
    luma_in = img.reshape(-1, 3) @ LUMA
    luma_out = out.reshape(-1, 3) @ LUMA
    np.testing.assert_allclose(luma_out, luma_in, atol=1.5)
    assert np.abs(out.astype(int) - img).max() > 10  # colours did change


def test_random_jitter_respects_probability(rng):
    img = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    assert random_jitter(img, AugmentConfig(p_jitter=0.0), rng) is img
    out = random_jitter(img, AugmentConfig(p_jitter=1.0, jitter=0.5), rng)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)


@pytest.mark.parametrize(("kw", "msg"), [({"hflip": 1.5}, "augment.hflip=1.5 is a probability"),
                                         ({"jitter": 1.0}, "augment.jitter=1.0 must be in [0, 1)"),
                                         ({"hue": -0.1}, "augment.hue=-0.1 must be in [0, 0.5]")])
def test_augment_config_validation(kw, msg):
    with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        AugmentConfig(**kw)
