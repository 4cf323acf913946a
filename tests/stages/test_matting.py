import numpy as np
import pytest

from mvboost.io.codec import decode_array, encode_array
from mvboost.stages.matting import MattingConfig, MattingStage


def disc_image(size=128, centre=(64, 64), radius=20, colour=(200, 30, 30)):
    img = np.full((size, size, 3), 255, np.uint8)
    ys, xs = np.mgrid[:size, :size]
    img[(ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius ** 2] = colour
    return img


def run(stage, images):
    batch = {"item_id": [f"k{i}" for i in range(len(images))], "image": [encode_array(im) for im in images]}
    return stage(batch)


def test_disc_on_white_is_matted_and_recentred():
    stage = MattingStage(MattingConfig(size=100, border_ratio=0.2))
    out = run(stage, [disc_image(centre=(40, 90), radius=20)])
    assert out["status"] == ["ok"]
    rgba = decode_array(out["rgba"][0])
    assert rgba.shape == (100, 100, 4) and rgba.dtype == np.uint8
    fg = rgba[..., 3] > 127
    ys, xs = np.nonzero(fg)
    assert ys.max() - ys.min() + 1 == pytest.approx(80, abs=2)  # long side = (1 - 0.2) * 100
    assert (ys.min() + ys.max()) / 2 == pytest.approx(49.5, abs=1.5)  # centred
    assert (xs.min() + xs.max()) / 2 == pytest.approx(49.5, abs=1.5)
    assert rgba[50, 50, 0] > 150 and rgba[50, 50, 1] < 80  # keeps the colour
    assert (rgba[0, :, 3] == 0).all()  # transparent border


def test_rejections_have_reasons_and_keep_rows():
    stage = MattingStage(MattingConfig(size=64))
    blank = np.full((64, 64, 3), 255, np.uint8)
    tiny = disc_image(radius=2)
    cut = disc_image(centre=(64, 5), radius=30)
    good = disc_image()
    out = run(stage, [blank, tiny, cut, good])
    assert out["status"] == ["rejected", "rejected", "rejected", "ok"]
    assert out["reject_stage"][:3] == ["matting"] * 3
    assert out["reject_reason"][0].startswith("empty mask")
    assert out["reject_reason"][1].startswith("object too small")
    assert out["reject_reason"][2].startswith("object cut by the image border")
    assert out["rgba"][0] is None and out["rgba"][3] is not None
    # the border check can be turned off (smoke config with noise images)
    relaxed = MattingStage(MattingConfig(size=64, reject_border_touch=False))
    assert run(relaxed, [cut])["status"] == ["ok"]


def test_existing_alpha_is_used_and_bad_shapes_rejected():
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[20:40, 10:30] = (10, 200, 10, 255)
    out = run(MattingStage(MattingConfig(size=64)), [rgba, np.zeros((64, 64), np.uint8)])
    assert out["status"] == ["ok", "rejected"]
    assert "expected an RGB(A) image" in out["reject_reason"][1]
