"""Turning request bytes into an RGB image, refusing what is not one: empty bytes, bytes that are no
image, truncated or corrupt images, formats outside spec section 2, images over the pixel limit
(before or after the resize the model does) and images too thin for the model (the aspect ratio).

Every refusal is an :class:`InvalidImage` whose message says what was wrong; the server answers it
with a 400, batch scoring reports it with the image's name.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from automl_vision.data.images import PIL_FORMATS, as_displayed
from automl_vision.errors import DataError


class InvalidImage(DataError):
    """One input is not an image the model can take."""


_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
#: Whitespace inside base64 text: MIME base64 (Python's ``base64.encodebytes``, which the original
#: product's scoring samples use) breaks lines every 76 characters; the original's server decodes with
#: ``base64.b64decode``, which skips them. Any other character outside the alphabet is refused.
_WHITESPACE = re.compile(r"[ \t\r\n]+")


def b64decode(text: str | bytes, where: str) -> bytes:
    """Standard base64, line breaks allowed (a ``data:image/...;base64,`` prefix is accepted);
    raises InvalidImage."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidImage(f"{where}: expected a base64 string, got bytes that are not ASCII") from None
    if not isinstance(text, str):
        raise InvalidImage(f"{where}: expected a base64-encoded image string, got {type(text).__name__}")
    text = _WHITESPACE.sub("", _DATA_URI.sub("", text.strip(), count=1))
    if not text:
        raise InvalidImage(f"{where}: empty string instead of a base64-encoded image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImage(f"{where}: not valid base64 ({e})") from None


def check_size(width: int, height: int, where: str, max_pixels: int, *, shorter_side: int | None = None,
               max_aspect_ratio: float | None = None) -> None:
    """Refuse an image the model cannot take: zero-sized, over ``max_pixels`` as sent, too thin
    (longer side / shorter side over ``max_aspect_ratio``), or over ``max_pixels`` once its shorter
    side is resized to ``shorter_side`` (classification), which a thin image of few pixels can be:
    a 1,000,000x1 PNG of 3 KB becomes 32,000,000x32 when resized to 32."""
    if width <= 0 or height <= 0:
        raise InvalidImage(f"{where}: image size {width}x{height}")
    if width * height > max_pixels:
        raise InvalidImage(f"{where}: {width}x{height} = {width * height:,} pixels, over the limit of "
                           f"{max_pixels:,} (max_image_pixels)")
    short, long = min(width, height), max(width, height)
    if max_aspect_ratio is not None and long > max_aspect_ratio * short:
        ratio = long / short
        shown = f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.3g}"
        raise InvalidImage(f"{where}: {width}x{height} has an aspect ratio of {shown}:1, over the "
                           f"limit of {max_aspect_ratio:g}:1 (max_aspect_ratio)")
    if shorter_side is not None and short != shorter_side:
        scale = shorter_side / short
        w, h = round(width * scale), round(height * scale)
        if w * h > max_pixels:
            raise InvalidImage(f"{where}: {width}x{height} becomes {w}x{h} = {w * h:,} pixels when its shorter "
                               f"side is resized to {shorter_side} (valid_resize_size), over the limit of "
                               f"{max_pixels:,} (max_image_pixels)")


def decode_image(data: bytes, max_pixels: int, where: str = "image", *, shorter_side: int | None = None,
                 max_aspect_ratio: float | None = None) -> Image.Image:
    """The decoded RGB image of ``data``; checks the size from the header before decoding (see
    :func:`check_size`)."""
    if not data:
        raise InvalidImage(f"{where}: empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit is checked below from the header; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InvalidImage(f"{where}: more pixels than Pillow will decode; the limit is {max_pixels:,} pixels "
                           "(max_image_pixels)") from None
    except UnidentifiedImageError:
        head = data[:8].hex(" ")
        raise InvalidImage(f"{where}: not an image ({len(data)} bytes starting {head}); "
                           "send jpeg, png, bmp or tiff") from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise InvalidImage(f"{where}: the image is truncated ({e})") from None
        raise InvalidImage(f"{where}: cannot read the image: {e}") from None
    fmt = PIL_FORMATS.get(im.format or "")
    if fmt is None:
        raise InvalidImage(f"{where}: {im.format or 'unknown'} images are not accepted; send jpeg, png, bmp or tiff")
    width, height = im.size
    check_size(width, height, where, max_pixels, shorter_side=shorter_side, max_aspect_ratio=max_aspect_ratio)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except OSError as e:
        text = str(e)
        kind = "truncated" if "truncated" in text else "corrupt"
        raise InvalidImage(f"{where}: the {fmt} image is {kind} ({text})") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidImage(f"{where}: cannot decode the {fmt} image ({e})") from None
    im = as_displayed(im)  # as training saw it: a phone photo turned by its EXIF orientation
    return im if im.mode == "RGB" else im.convert("RGB")
