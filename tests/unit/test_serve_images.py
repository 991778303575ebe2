"""Decoding request bytes: every kind of bad image gets a message saying what is wrong."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from serve_testdata import jpeg_bytes, png_bytes

from automl_vision.serving.images import InvalidImage, decode_image


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
