"""Checking image files: readable, complete, a supported format, not a decompression bomb, not so thin
that resizing it blows up; their size as displayed (EXIF orientation applied); reading them as RGB.

The rule for EXIF orientation, the same in validation, training and serving: an image is what a viewer
(or a labelling tool) shows, i.e. its pixels rotated or flipped as its EXIF Orientation tag says. Sizes,
and so the normalized boxes and polygons, are those of the displayed image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from automl_vision.data import problems as P
from automl_vision.errors import DataError

# Spec section 2: the extensions accepted in image_url, and the formats they may contain.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".jpe", ".jfif", ".bmp", ".tif", ".tiff")
FORMAT_OF_EXTENSION = {"jpg": "jpeg", "jpeg": "jpeg", "jpe": "jpeg", "jfif": "jpeg", "png": "png",
                       "bmp": "bmp", "tif": "tiff", "tiff": "tiff"}
# Pillow's format names -> ours. MPO is the multi-picture JPEG some cameras write.
PIL_FORMATS = {"JPEG": "jpeg", "MPO": "jpeg", "PNG": "png", "BMP": "bmp", "DIB": "bmp", "TIFF": "tiff"}

# Pillow's own warning threshold (about 9,459 x 9,459); larger images are refused unless raised.
DEFAULT_MAX_PIXELS = 89_478_485
# The longer side may be at most this many times the shorter one: a 1,000,000 x 1 PNG is a few KB and
# under the pixel limit, but resizing its shorter side to a model's input size would need gigabytes.
MAX_ASPECT_RATIO = 100
# The shorter side validation assumes a model resizes to (the largest default of our models: detection's
# min_size 600 .. classification's valid_resize_size 256); training checks the size it really uses.
DEFAULT_INPUT_SIZE = 800
# The most pixels an image may have once resized to a model's input size (what the resize allocates).
MAX_RESIZED_PIXELS = DEFAULT_MAX_PIXELS
EXIF_ORIENTATION = 0x0112
_SWAPS_SIDES = frozenset({5, 6, 7, 8})  # transpose, rotate 270, transverse, rotate 90


@dataclass(frozen=True, slots=True)
class ImageInfo:
    width: int
    height: int
    format: str  # jpeg | png | bmp | tiff
    file_size: int


class ImageCheckError(Exception):
    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def normalize_format(name: str) -> str | None:
    """``jpg``/``JPEG``/``jfif`` -> ``jpeg`` ...; None for a format we do not accept."""
    return FORMAT_OF_EXTENSION.get(name.strip().lower().lstrip("."))


def inspect_image(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, decode: bool = True,
                  max_aspect_ratio: float = MAX_ASPECT_RATIO, input_size: int = DEFAULT_INPUT_SIZE) -> ImageInfo:
    """Open ``path``, check its format, pixel count and shape from the header (see ``shape_problem``),
    then (``decode``) decode it fully to catch truncated or corrupt files. The size returned is the
    displayed one (sides swapped when the EXIF orientation turns the image by 90 degrees). Raises
    ImageCheckError with a rule code."""
    try:
        file_size = os.path.getsize(path)
    except OSError:
        raise ImageCheckError(P.IMAGE_MISSING, f"image not found at {path}") from None
    if file_size == 0:
        raise ImageCheckError(P.IMAGE_UNREADABLE, f"image file {path} is empty (0 bytes)")
    try:
        # Pillow warns above its own limit (our default) and refuses at twice it; we refuse from the header.
        im = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageCheckError(P.TOO_MANY_PIXELS,
                              f"image {path} has more pixels than Pillow will decode (a decompression bomb?); "
                              f"limit {max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise ImageCheckError(P.IMAGE_UNREADABLE, f"cannot read {path}: not an image file Pillow recognizes") from None
    except OSError as e:
        if "truncated" in str(e).lower():
            raise ImageCheckError(P.IMAGE_TRUNCATED, f"image {path} is truncated ({e})") from None
        raise ImageCheckError(P.IMAGE_UNREADABLE, f"cannot read {path}: {e}") from None
    with im:
        fmt = PIL_FORMATS.get(im.format or "")
        if fmt is None:
            raise ImageCheckError(P.UNSUPPORTED_FORMAT,
                                  f"image {path} is {im.format or 'of unknown format'}; allowed formats: "
                                  "jpeg, png, bmp, tiff")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageCheckError(P.IMAGE_UNREADABLE, f"image {path} has size {width}x{height}")
        if width * height > max_pixels:
            raise ImageCheckError(P.TOO_MANY_PIXELS,
                                  f"image {path} is {width}x{height} = {width * height:,} pixels, over the limit "
                                  f"of {max_pixels:,} (a decompression bomb?); raise max_pixels if it is genuine")
        shape = shape_problem(width, height, input_size=input_size, max_aspect_ratio=max_aspect_ratio)
        if shape is not None:
            raise ImageCheckError(shape[0], f"image {path} {shape[1]}")
        if decode:
            try:
                if fmt == "jpeg":
                    # DCT scaling decodes every block at 1/8 size: 2-3x faster, still reads the whole stream.
                    im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
                im.load()
            except OSError as e:
                text = str(e)
                if "truncated" in text.lower():
                    raise ImageCheckError(P.IMAGE_TRUNCATED, f"image {path} is truncated ({text})") from None
                raise ImageCheckError(P.IMAGE_UNREADABLE, f"cannot decode {path}: {text}") from None
            except (ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise ImageCheckError(P.IMAGE_UNREADABLE, f"cannot decode {path}: {e}") from None
        if exif_orientation(im) in _SWAPS_SIDES:  # (im.size may be the reduced draft size by now)
            width, height = height, width
    return ImageInfo(width, height, fmt, file_size)


def shape_problem(width: int, height: int, *, input_size: int | None = DEFAULT_INPUT_SIZE,
                  max_aspect_ratio: float = MAX_ASPECT_RATIO,
                  max_resized_pixels: int = MAX_RESIZED_PIXELS) -> tuple[str, str] | None:
    """(rule code, text) when an image of this size cannot be resized safely, else None: its longer side
    over ``max_aspect_ratio`` times the shorter one, or (``input_size``) more than ``max_resized_pixels`` pixels
    once its shorter side is resized to ``input_size``, as a model's input transform does."""
    short, long_ = min(width, height), max(width, height)
    if long_ > max_aspect_ratio * short:
        return P.ASPECT_RATIO, (f"is {width}x{height}, an aspect ratio of {long_ / short:,.0f}:1, over the limit of "
                                f"{max_aspect_ratio:g}:1 (resizing so thin an image to a model's input size would "
                                "need too much memory); crop or pad it")
    if input_size:
        scale = input_size / short
        resized = round(width * scale) * round(height * scale)
        if resized > max_resized_pixels:
            return P.TOO_MANY_PIXELS, (
                f"is {width}x{height}: resized to a shorter side of {input_size} it would be "
                f"{round(width * scale)}x{round(height * scale)} = {resized:,} pixels, over the limit of "
                f"{max_resized_pixels:,}; crop it or use a smaller input size")
    return None


def exif_orientation(im: Image.Image) -> int:
    """The image's EXIF Orientation (1..8; 1 when absent or invalid), read without decoding the pixels
    (a PNG's eXIf chunk is seen when it comes before the image data, or once the image is loaded)."""
    try:
        if im.format == "PNG":  # im.getexif() would decode the whole image to look for a late chunk
            raw = im.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = im.getexif()
        value = exif.get(EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block is ignored, as viewers do
        return 1
    return value if type(value) is int and 1 <= value <= 8 else 1


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of the image as displayed, from its header: the sides swapped when the EXIF
    orientation turns it by 90 degrees (what converters writing image_details should use)."""
    width, height = im.size
    return (height, width) if exif_orientation(im) in _SWAPS_SIDES else (width, height)


def as_displayed(im: Image.Image) -> Image.Image:
    """The image as a viewer shows it: rotated or flipped as its EXIF orientation says (the one rule for
    validation sizes, training and serving). A damaged EXIF block leaves the image as it is."""
    if exif_orientation(im) == 1:
        return im
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def read_rgb(path: str, *, where: str, input_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
             max_aspect_ratio: float = MAX_ASPECT_RATIO, draft: int | None = None) -> Image.Image:
    """The image at ``path`` as displayed (EXIF orientation applied), in RGB, for training.

    Refuses, before decoding, an image over the pixel limit or too thin to resize (``shape_problem``
    with the shorter side the model resizes to, ``input_size``). ``draft``: JPEGs at least this size on
    both sides are decoded at a reduced scale. Raises DataError starting with ``where`` (file:line).
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > max_pixels:
                raise DataError(f"{where}: image {path} is {width}x{height} = {width * height:,} pixels, over "
                                f"the limit of {max_pixels:,}")
            shape = shape_problem(width, height, input_size=input_size, max_aspect_ratio=max_aspect_ratio)
            if shape is not None:
                raise DataError(f"{where}: image {path} {shape[1]}")
            if draft:
                im.draft("RGB", (draft, draft))
            image = as_displayed(im)
            return image.convert("RGB") if image.mode != "RGB" or image is im else image
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{where}: cannot read image {path}: {e}") from None


def parse_dimension(value) -> int | None:
    """``image_details`` width/height: an int, or a string such as ``"400"`` or ``"400px"``. None if invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value > 0 else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text.endswith("px"):
            text = text[:-2].strip()
        if text.isdigit() and int(text) > 0:
            return int(text)
    return None
