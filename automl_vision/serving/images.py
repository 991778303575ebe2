"""Turning request bytes into an RGB image, refusing what is not one: empty bytes, bytes that are no
image, truncated or corrupt images, formats outside spec section 2 and images over the pixel limit.

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

from automl_vision.data.images import PIL_FORMATS
from automl_vision.errors import DataError


class InvalidImage(DataError):
    """One input is not an image the model can take."""


_DATA_URI = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def b64decode(text: str | bytes, where: str) -> bytes:
    """Standard base64 (a ``data:image/...;base64,`` prefix is accepted); raises InvalidImage."""
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidImage(f"{where}: expected a base64 string, got bytes that are not ASCII") from None
    if not isinstance(text, str):
        raise InvalidImage(f"{where}: expected a base64-encoded image string, got {type(text).__name__}")
    text = _DATA_URI.sub("", text.strip(), count=1)
    if not text:
        raise InvalidImage(f"{where}: empty string instead of a base64-encoded image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidImage(f"{where}: not valid base64 ({e})") from None


def decode_image(data: bytes, max_pixels: int, where: str = "image") -> Image.Image:
    """The decoded RGB image of ``data``; checks the pixel count from the header before decoding."""
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
    if width <= 0 or height <= 0:
        raise InvalidImage(f"{where}: image size {width}x{height}")
    if width * height > max_pixels:
        raise InvalidImage(f"{where}: {width}x{height} = {width * height:,} pixels, over the limit of "
                           f"{max_pixels:,} (max_image_pixels)")
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
    return im if im.mode == "RGB" else im.convert("RGB")
