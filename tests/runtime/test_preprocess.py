import numpy as np
import pytest
from PIL import Image

from retinaedge.runtime.errors import InputError
from retinaedge.runtime.io import atomic_write_text, ensure_writable_dir, sha256_strings
from retinaedge.runtime.preprocess import letterbox, letterbox_params, list_images, load_image, preprocess_batch
from retinaedge.runtime.spec import AnchorSpec, DetectorSpec


def spec(**kw):
    return DetectorSpec(class_names=("a",), input_height=64, input_width=64,
                        anchors=AnchorSpec(strides=(8, 16), sizes=(16.0, 32.0)), **kw)


def test_letterbox_wide_image_hand_computed():
    img = np.full((16, 32, 3), 200, np.uint8)  # H=16, W=32 -> scale 2, 64x32, pad_y 16
    canvas, meta = letterbox(img, spec())
    assert meta.scale == 2.0 and (meta.pad_x, meta.pad_y) == (0.0, 16.0)
    assert canvas.shape == (64, 64, 3)
    assert (canvas[:16] == 114).all() and (canvas[48:] == 114).all() and (canvas[16:48] == 200).all()
    box = np.array([[4.0, 2.0, 8.0, 6.0]])
    np.testing.assert_allclose(meta.to_network(box), [[8, 20, 16, 28]])
    np.testing.assert_allclose(meta.to_original(meta.to_network(box)), box)


def test_letterbox_top_left_and_clip():
    meta, (nh, nw) = letterbox_params(32, 16, spec(letterbox_center=False))
    assert (nh, nw) == (64, 32) and (meta.pad_x, meta.pad_y) == (0.0, 0.0)
    out = meta.to_original(np.array([[-10.0, -10.0, 100.0, 100.0]]))
    np.testing.assert_allclose(out, [[0, 0, 16, 32]])


def test_preprocess_batch_dtypes():
    imgs = [np.zeros((10, 20, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)]
    batch, metas = preprocess_batch(imgs, spec())
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == np.uint8 and batch.flags.c_contiguous
    batch, _ = preprocess_batch(imgs, spec(input_dtype="float32"))
    assert batch.dtype == np.float32
    assert metas[1].scale == 1.0


def test_bad_images_are_named(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match=r"image '.*bad.jpg' cannot be decoded"):
        load_image(bad)
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="holds no images"):
        list_images(_empty(tmp_path))
    with pytest.raises(InputError, match=r"is not \(H, W, 3\) RGB"):
        letterbox(np.zeros((4, 4), np.uint8), spec())


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_load_image_converts_to_rgb(tmp_path):
    p = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7), 9, np.uint8), mode="L").save(p)
    im = load_image(p)
    assert im.shape == (5, 7, 3) and im.dtype == np.uint8 and (im == 9).all()
    assert list_images(tmp_path) == [p]


def test_atomic_write_and_unwritable_dir(tmp_path):
    p = tmp_path / "a" / "x.txt"
    atomic_write_text(p, "hello")
    assert p.read_text() == "hello" and not list(p.parent.glob(".*tmp"))
    with pytest.raises(InputError, match="is not writable"):
        ensure_writable_dir(p / "sub")  # a file in the way (root ignores chmod, so this is the portable case)
    assert sha256_strings(["a", "b"]) != sha256_strings(["ab"])


def test_atomic_write_uses_umask_mode(tmp_path):
    import os
    import stat

    p = tmp_path / "m.txt"
    atomic_write_text(p, "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_load_image_keeps_the_top_8_bits_of_16_bit_grayscale(tmp_path):
    # Pillow opens 16-bit PNGs as I;16; convert("RGB") clipped every value above 255 to white
    p = tmp_path / "depth16.png"
    Image.fromarray(np.array([[0, 255, 256 * 100 + 7], [65535, 32768, 1000]], np.uint16)).save(p)
    im = load_image(p)
    assert im.shape == (2, 3, 3) and im.dtype == np.uint8
    assert im[:, :, 0].tolist() == [[0, 0, 100], [255, 128, 3]] and (im == im[:, :, :1]).all()


def test_load_image_turns_by_exif_only_when_the_annotated_size_says_so(tmp_path):
    # stored 24 wide x 16 high, left third red; EXIF orientation 6 shows it 16 wide x 24 high, red on top
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[:, :8] = (255, 0, 0)
    p = tmp_path / "phone.jpg"
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(p, exif=exif, quality=100)
    assert load_image(p).shape == (16, 24, 3)  # no size: as stored (COCO ignores EXIF)
    assert load_image(p, size=(24, 16)).shape == (16, 24, 3)  # annotated as stored
    turned = load_image(p, size=(16, 24))  # annotated as shown
    assert turned.shape == (24, 16, 3)
    assert turned[:4, :, 0].min() > 200 and turned[-4:, :, 0].max() < 60
    assert load_image(p, size=(20, 20)).shape == (16, 24, 3)  # neither: as stored, the caller rescales
    shown = load_image(p, exif_transpose=True)  # loose photos (infer): as displayed, whatever the size
    assert shown.shape == (24, 16, 3) and shown[:4, :, 0].min() > 200 and shown[-4:, :, 0].max() < 60


def test_load_image_reduce_to_decodes_large_jpegs_at_a_dct_scale(tmp_path):
    # 1024x768 with a red block at x 512..768, y 384..576; reduce_to (128, 96) keeps >= (256, 192): 1/4 scale
    pixels = np.zeros((768, 1024, 3), np.uint8)
    pixels[384:576, 512:768] = (255, 0, 0)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "big.png")
    small = load_image(tmp_path / "big.jpg", reduce_to=(128, 96))
    assert small.shape == (192, 256, 3)
    assert small[100:140, 132:188, 0].min() > 200 and small[:90, :, 0].max() < 60  # block at x/4, y/4
    assert load_image(tmp_path / "big.jpg", reduce_to=(200, 150)).shape == (384, 512, 3)  # 1/4 < 2x: 1/2
    assert load_image(tmp_path / "big.jpg", reduce_to=(600, 400)).shape == (768, 1024, 3)  # under 2x: full
    assert load_image(tmp_path / "big.png", reduce_to=(128, 96)).shape == (768, 1024, 3)  # PNG: no DCT scaling
    # stored 1024x768 with EXIF orientation 6, annotated as shown (768x1024): reduce_to is in the shown frame
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    assert load_image(tmp_path / "phone.jpg", size=(768, 1024), reduce_to=(96, 128)).shape == (256, 192, 3)

