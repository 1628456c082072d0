"""The one image reader: every pixel format keeps its intensities; arrays map to [0, 1] by dtype; EXIF."""
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from minimaskrcnn.data.image import (
    array_to_image,
    as_model_image,
    check_image_size,
    image_size,
    pil_to_image,
    read_image,
)
from minimaskrcnn.errors import ImageError
from minimaskrcnn.tensor import Tensor


def png_16bit(path, values: np.ndarray, color_type: int):
    """Write a 16-bit PNG by hand (Pillow writes 16-bit grayscale only). color_type: 0 gray, 2 RGB,
    4 gray + alpha, 6 RGBA; values (H, W) or (H, W, C) uint16."""
    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def _gray(x):
    """(3, H, W) output of a gray image: three equal channels; returns one."""
    assert x.shape[0] == 3 and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])
    return x[0]


def test_8bit_rgb_and_gray_are_divided_by_255(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    x = read_image(tmp_path / "rgb.png")
    assert x.shape == (3, 5, 7) and x.dtype == np.float32
    np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    Image.fromarray(rgb[:, :, 1]).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "gray.png")), rgb[:, :, 1] / np.float32(255))


def test_16bit_gray_png_keeps_intensities_and_never_turns_white(tmp_path):
    # a 12-bit camera's raw values (0-4095) in a 16-bit PNG: Pillow's convert("RGB") clips them to 255
    raw12 = np.array([[0, 1000, 2048], [3000, 4000, 4095]], dtype=np.uint16)
    Image.fromarray(raw12).save(tmp_path / "cam12.png")
    with Image.open(tmp_path / "cam12.png") as im:
        assert im.mode == "I;16"
        assert np.asarray(im.convert("RGB")).max() == 255  # the bug this reader avoids
    x = _gray(read_image(tmp_path / "cam12.png"))
    np.testing.assert_allclose(x, raw12 / 65535.0, rtol=1e-6)
    assert x.max() < 0.07  # dark, as stored: not white
    assert np.all(np.diff(x.ravel()) > 0)  # and every level stays distinct
    # the same 12-bit data scaled to the full 16 bits, as the PNG standard asks: bright again
    full = (raw12.astype(np.uint32) * 65535 // 4095).astype(np.uint16)
    Image.fromarray(full).save(tmp_path / "cam12_scaled.png")
    np.testing.assert_allclose(_gray(read_image(tmp_path / "cam12_scaled.png")), raw12 / 4095.0, atol=1e-4)
    # also when written by hand (big-endian, as PNG stores it) and through TIFF
    png_16bit(tmp_path / "hand.png", full, color_type=0)
    np.testing.assert_allclose(_gray(read_image(tmp_path / "hand.png")), full / 65535.0, rtol=1e-6)
    Image.fromarray(full).save(tmp_path / "cam.tif")
    np.testing.assert_allclose(_gray(read_image(tmp_path / "cam.tif")), full / 65535.0, rtol=1e-6)


def test_16bit_colour_png_keeps_the_high_byte(tmp_path):
    values = np.zeros((2, 3, 3), np.uint16)
    values[0, 0] = (65535, 32768, 4095)
    values[1, 2] = (256, 0, 40000)
    png_16bit(tmp_path / "rgb16.png", values, color_type=2)
    x = read_image(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(x, (values >> 8).transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    rgba = np.concatenate([values, np.zeros((2, 3, 1), np.uint16)], axis=2)  # fully transparent
    png_16bit(tmp_path / "rgba16.png", rgba, color_type=6)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba16.png"), x)


def test_1bit_image_is_zero_or_one(tmp_path):
    bits = np.array([[0, 255, 0], [255, 255, 0]], np.uint8)
    Image.fromarray(bits).convert("1").save(tmp_path / "bits.png")
    with Image.open(tmp_path / "bits.png") as im:
        assert im.mode == "1"
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "bits.png")), bits / 255)


def test_palette_with_transparency_gives_its_colours_without_a_warning(tmp_path):
    im = Image.new("P", (3, 2))
    im.putpalette([255, 0, 0, 0, 128, 0, 0, 0, 255])
    im.putpixel((1, 0), 1)
    im.putpixel((2, 1), 2)
    im.info["transparency"] = 0
    im.save(tmp_path / "pal.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = read_image(tmp_path / "pal.png")
    np.testing.assert_array_equal(x[:, 0, 0], [1, 0, 0])  # the transparent entry keeps its colour
    np.testing.assert_allclose(x[:, 0, 1], [0, 128 / 255, 0])
    np.testing.assert_array_equal(x[:, 1, 2], [0, 0, 1])


def test_alpha_is_dropped_and_colours_kept(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255  # one opaque pixel; the others are transparent but keep their red
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    x = read_image(tmp_path / "rgba.png")
    assert x.shape == (3, 2, 2)
    np.testing.assert_allclose(x[0], 200 / 255)
    assert x[1:].max() == 0
    la = Image.merge("LA", [Image.fromarray(rgba[..., 0]), Image.fromarray(rgba[..., 3])])
    la.save(tmp_path / "la.png")
    np.testing.assert_allclose(_gray(read_image(tmp_path / "la.png")), 200 / 255)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (8, 6), (0, 255, 255, 0)).save(tmp_path / "red.jpg")  # full magenta + yellow: red
    with Image.open(tmp_path / "red.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"), np.float32).transpose(2, 0, 1) / 255
    x = read_image(tmp_path / "red.jpg")
    np.testing.assert_array_equal(x, expected)
    assert x[0].min() > 0.9 and x[1:].max() < 0.1


def test_float_tiff(tmp_path):
    values = np.random.default_rng(1).random((4, 5)).astype(np.float32)
    Image.fromarray(values).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im:
        assert im.mode == "F"
    np.testing.assert_array_equal(_gray(read_image(tmp_path / "f.tif")), values)
    Image.fromarray(values * 255).save(tmp_path / "f255.tif")
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "f255.tif", record="image id 4")
    message = str(err.value)
    assert "f255.tif" in message and "image id 4" in message and "[0, 1]" in message and "255" in message
    values[0, 0] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(ImageError, match="NaN"):
        read_image(tmp_path / "nan.tif")


def test_32bit_integer_images_are_16bit_data(tmp_path):
    values = np.array([[0, 65535], [1000, 30000]], np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    np.testing.assert_allclose(_gray(read_image(tmp_path / "i.tif")), values / 65535, rtol=1e-6)
    Image.fromarray(values * 4).save(tmp_path / "big.tif")
    with pytest.raises(ImageError, match="16-bit"):
        read_image(tmp_path / "big.tif")


def _rotated_jpeg(path, orientation=6):
    """A 40 x 20 (width x height) JPEG, white top-left block, recorded as turned by ``orientation``."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:8, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_exif_orientation_stored_by_default_turned_on_request(tmp_path):
    path = _rotated_jpeg(tmp_path / "phone.jpg")
    stored = read_image(path)
    assert stored.shape == (3, 20, 40)  # the pixels as stored: COCO's annotations refer to these
    assert stored[:, :8, :16].mean() > 0.9
    assert image_size(path) == (40, 20)
    turned = read_image(path, exif_transpose=True)
    assert turned.shape == (3, 40, 20)  # orientation 6: shown turned 90 degrees clockwise
    assert turned[:, :16, -8:].mean() > 0.9 and turned[:, :16, :8].mean() < 0.1  # the block is now top-right
    assert image_size(path, exif_transpose=True) == (20, 40)
    np.testing.assert_array_equal(as_model_image(path), turned)  # photos: as a viewer shows them
    with Image.open(path) as im:
        np.testing.assert_array_equal(as_model_image(im), turned)
        np.testing.assert_array_equal(as_model_image(im, exif_transpose=False), stored)


def test_size_error_says_when_the_record_is_the_rotated_image(tmp_path):
    path = _rotated_jpeg(tmp_path / "phone.jpg")
    check_image_size(path, (40, 20))
    with pytest.raises(ImageError) as err:
        check_image_size(path, (20, 40), record="image id 9")
    message = str(err.value)
    for needle in ("phone.jpg", "image id 9", "40x20", "20x40", "EXIF orientation 6", "exif_transpose=True"):
        assert needle in message, message
    with pytest.raises(ImageError) as err:
        read_image(path, expected_size=(20, 40))
    assert "EXIF orientation 6" in str(err.value)
    # the other way round: turning on, but the record has the stored size
    with pytest.raises(ImageError) as err:
        read_image(path, exif_transpose=True, expected_size=(40, 20))
    assert "the stored size" in str(err.value) and "without exif_transpose" in str(err.value)
    assert read_image(path, exif_transpose=True, expected_size=(20, 40)).shape == (3, 40, 20)
    # a plain wrong size says nothing about EXIF
    with pytest.raises(ImageError) as err:
        check_image_size(path, (41, 20))
    assert "EXIF" not in str(err.value) and "41x20" in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not found"):
        image_size(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="cannot read the image"):
        read_image(tmp_path / "text.png")
    Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "cut.png", record="image id 1")
    assert "cut.png" in str(err.value) and "image id 1" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- arrays
def test_arrays_map_to_unit_range_by_dtype():
    u8 = np.array([[0, 128, 255]], np.uint8)
    np.testing.assert_array_equal(_gray(array_to_image(u8)), u8 / np.float32(255))
    u16 = np.array([[0, 4095, 65535]], np.uint16)
    np.testing.assert_allclose(_gray(array_to_image(u16)), u16 / 65535.0, rtol=1e-6)
    assert _gray(array_to_image(u16))[0, 1] < 0.07  # a 12-bit value: dark, not white
    np.testing.assert_array_equal(_gray(array_to_image(np.array([[True, False]]))), [[1, 0]])
    f = np.array([[0.0, 0.25, 1.0]])
    out = array_to_image(f)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(_gray(out), f)
    np.testing.assert_array_equal(_gray(array_to_image(np.array([[1.0005, -0.0005]]))), [[1, 0]])  # clipped
    with pytest.raises(ValueError, match=r"divide them by 255"):
        array_to_image(np.array([[0.0, 200.0]]))
    with pytest.raises(ValueError, match="NaN"):
        array_to_image(np.array([[np.nan]], np.float32))
    with pytest.raises(TypeError, match="uint8"):
        array_to_image(np.array([[0, 200]], np.int64))


def test_array_layouts():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw = hwc.transpose(2, 0, 1)
    expected = chw / np.float32(255)
    np.testing.assert_array_equal(array_to_image(hwc), expected)
    np.testing.assert_array_equal(array_to_image(chw), expected)
    rgba = np.concatenate([hwc, np.zeros((5, 7, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(array_to_image(rgba), expected)
    np.testing.assert_array_equal(array_to_image(hwc[:, :, :1]), np.repeat(expected[:1], 3, axis=0))
    np.testing.assert_array_equal(array_to_image(chw[:1]), np.repeat(expected[:1], 3, axis=0))
    np.testing.assert_array_equal(array_to_image(Tensor(expected)), expected)
    with pytest.raises(ValueError, match="shape"):
        array_to_image(np.zeros((5, 7, 2), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        array_to_image(np.zeros((1, 3, 5, 7), np.uint8))
    with pytest.raises(ValueError, match="no pixels"):
        array_to_image(np.zeros((0, 7), np.uint8))


def test_pil_images_follow_the_same_rules():
    u16 = Image.fromarray(np.array([[0, 4095]], np.uint16))
    np.testing.assert_allclose(_gray(pil_to_image(u16)), [[0, 4095 / 65535]], rtol=1e-6)
    np.testing.assert_allclose(_gray(as_model_image(u16)), [[0, 4095 / 65535]], rtol=1e-6)


def test_torch_tensors_are_arrays():
    torch = pytest.importorskip("torch")
    x = torch.rand(3, 4, 5)
    np.testing.assert_array_equal(array_to_image(x), x.numpy())
    u8 = torch.randint(0, 256, (4, 5, 3), dtype=torch.uint8)
    np.testing.assert_array_equal(array_to_image(u8), u8.numpy().transpose(2, 0, 1) / np.float32(255))
