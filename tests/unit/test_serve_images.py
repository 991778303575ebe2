"""Decoding request bytes: every kind of bad image gets a message saying what is wrong."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from serve_testdata import jpeg_bytes, png_bytes

from automl_vision.serving.images import InvalidImage, b64decode, decode_image


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_decodes_to_rgb():
    for data in (png_bytes(20, 10), jpeg_bytes(20, 10), _encode(Image.new("RGBA", (5, 4)), "PNG"),
                 _encode(Image.new("L", (5, 4)), "BMP"), _encode(Image.new("RGB", (5, 4)), "TIFF")):
        im = decode_image(data, 10_000)
        assert im.mode == "RGB" and im.size in ((20, 10), (5, 4))


@pytest.mark.parametrize("data, limit, message", [
    (b"", 10_000, "img: empty (0 bytes)"),
    (b"hello world, no image", 10_000, "img: not an image (21 bytes starting 68 65 6c"),
    (png_bytes(40, 40)[:120], 10_000, "img: the png image is truncated"),
    (jpeg_bytes(40, 40)[:300], 10_000, "img: the image is truncated"),
    (jpeg_bytes(40, 40)[:-200], 10_000, "img: the jpeg image is truncated"),
    (png_bytes(100, 50), 4_999, "img: 100x50 = 5,000 pixels, over the limit of 4,999 (max_image_pixels)"),
    (_encode(Image.new("RGB", (4, 4)), "GIF"), 10_000, "img: GIF images are not accepted"),
])
def test_bad_images(data, limit, message):
    with pytest.raises(InvalidImage) as e:
        decode_image(data, limit, "img")
    assert message in str(e.value)


def _thin_png(width: int, height: int) -> bytes:
    return _encode(Image.new("RGB", (width, height), (200, 30, 30)), "PNG")


def test_mime_base64_with_line_breaks_is_decoded_and_nothing_else_extra():
    """The original's samples send base64.encodebytes output: a line break every 76 characters.
    Line breaks and spaces are skipped; any other character outside the alphabet is still refused."""
    data = png_bytes(60, 50)
    mime = base64.encodebytes(data).decode("utf-8")
    assert "\n" in mime.rstrip("\n")
    assert b64decode(mime, "x") == data
    assert b64decode(mime.replace("\n", "\r\n"), "x") == data
    assert b64decode("data:image/png;base64," + mime, "x") == data
    for text in ("not base64!", "%%%", "iVBORw0KGgo-_", "abc\x00def", "a b c", mime.replace("\n", "!")):
        with pytest.raises(InvalidImage, match="x: not valid base64"):
            b64decode(text, "x")


def test_a_thin_image_is_refused_from_its_header_before_it_is_resized():
    """1,000,000x1 is 1,000,000 pixels as sent; resized to a shorter side of 32 it would be
    32,000,000x32 (about 6 GB of memory on the way)."""
    data = _thin_png(1_000_000, 1)
    assert len(data) < 10_000
    with pytest.raises(InvalidImage) as e:
        decode_image(data, 89_478_485, "img", shorter_side=32)
    assert "img: 1000000x1 becomes 32000000x32 = 1,024,000,000 pixels when its shorter side is resized to 32 " \
           "(valid_resize_size), over the limit of 89,478,485 (max_image_pixels)" in str(e.value)
    with pytest.raises(InvalidImage) as e:
        decode_image(data, 89_478_485, "img", max_aspect_ratio=20)
    assert ("img: 1000000x1 has an aspect ratio of 1,000,000:1, over the limit of 20:1 (max_aspect_ratio)"
            in str(e.value))


def test_size_limits_that_hold_let_the_image_through():
    im = decode_image(_thin_png(400, 20), 10_000, "img", shorter_side=20, max_aspect_ratio=20)
    assert im.size == (400, 20)  # 20:1 is allowed, and a shorter side already at 20 is not resized
    with pytest.raises(InvalidImage, match="400x20 becomes 640x32 = 20,480 pixels when its shorter side is resized"):
        decode_image(_thin_png(400, 20), 10_000, "img", shorter_side=32, max_aspect_ratio=20)


def test_a_phone_photo_is_served_as_displayed():
    """A JPEG stored sideways with EXIF orientation 6 reaches the model as a viewer shows it, as training
    reads it, so boxes come back on the displayed pixels."""
    shown = np.zeros((16, 24, 3), dtype=np.uint8)
    shown[...] = (0, 0, 255)
    shown[:4, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    im = decode_image(buf.getvalue(), 10_000)
    assert im.size == (24, 16)
    assert im.getpixel((2, 1))[0] > 200 and im.getpixel((20, 12))[2] > 200
