"""One image reader for the data sets, ``predict`` and the lessons: a file or an array in, the model's
(3, H, W) float32 RGB in [0, 1] out, with every intensity kept whatever the pixel format.

Pillow decodes the file; the mapping to [0, 1] goes by what a pixel can hold, never by what one image
happens to hold (torchvision's ``to_dtype(..., scale=True)`` rule): 8-bit / 255, 16-bit / 65535, 1-bit
0 or 1, floats as they are. Converting a 16-bit image with Pillow's ``convert("RGB")`` instead clips
every value above 255 to white, which is what this module exists to avoid.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from minimaskrcnn.errors import ImageError, PathLike

__all__ = [
    "EXIF_ORIENTATION_TAG",
    "FLOAT_TOLERANCE",
    "array_to_image",
    "as_model_image",
    "check_image_size",
    "exif_orientation",
    "image_size",
    "pil_to_image",
    "read_image",
]

EXIF_ORIENTATION_TAG = 0x0112  # EXIF "Orientation": 1 upright, 2-8 mirrored and/or rotated
# orientations after which the displayed image is the stored one turned by 90 degrees (width <-> height)
_SWAPS_SIDES = (5, 6, 7, 8)
_ORIENTATION_WORDS = {
    2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
    5: "mirrored and rotated 90 degrees", 6: "rotated 90 degrees clockwise",
    7: "mirrored and rotated 90 degrees", 8: "rotated 90 degrees counter-clockwise",
}
# float pixels may overshoot [0, 1] by this much (rounding in the program that wrote them); they are
# clipped to [0, 1]. Further out is an error: the file holds something other than intensities in [0, 1].
FLOAT_TOLERANCE = 1e-3
_MAX_16BIT = 65535.0
_MAX_8BIT = 255.0
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def _float_in_unit_range(values: np.ndarray, what: str) -> np.ndarray:
    """float32 values clipped to [0, 1]; ValueError naming the range found if they lie outside it."""
    values = values.astype(np.float32, copy=False)
    if values.size == 0:
        return values
    if not np.isfinite(values).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    low, high = float(values.min()), float(values.max())
    if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
        hint = " (8-bit values? divide them by 255)" if high <= 255.0 and low >= 0.0 else ""
        raise ValueError(f"{what} ranges from {low:g} to {high:g}; float intensities must lie in [0, 1]{hint}")
    return np.clip(values, 0.0, 1.0)


def _channels_first_rgb(gray_or_color: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C>=3) float32 -> (3, H, W) float32 contiguous (gray repeated, alpha dropped)."""
    if gray_or_color.ndim == 2:
        return np.ascontiguousarray(np.broadcast_to(gray_or_color[None], (3,) + gray_or_color.shape))
    return np.ascontiguousarray(gray_or_color[:, :, :3].transpose(2, 0, 1))


def pil_to_image(image: Image.Image) -> np.ndarray:
    """A Pillow image as the model's input, keeping its intensities.

    Pixel formats (Pillow modes) and how they map to [0, 1]:

    - "1" (1-bit): 0 or 1.
    - "L", "P", "RGB", "CMYK", "YCbCr", ... (8 bits per channel): value / 255. Palette images take
      their palette's colours; CMYK and YCbCr are converted to RGB by Pillow.
    - "I;16", "I;16B", ... (16-bit grayscale, e.g. a 12- or 16-bit camera's PNG or TIFF): value / 65535,
      so 12-bit data stored as the PNG standard asks (scaled to the full 16 bits) keeps its brightness,
      and raw 12-bit values 0-4095 read dark (0-0.0625), never clipped to white. 16-bit colour PNGs
      reach us as 8-bit RGB: Pillow keeps the high byte of each channel.
    - "I" (32-bit integer; Pillow's container for some 16-bit files): value / 65535 when every value
      lies in 0-65535, else an error.
    - "F" (32-bit float, e.g. a float TIFF): as stored; values must lie in [0, 1] (within
      ``FLOAT_TOLERANCE``, then clipped), else an error.
    - Alpha ("RGBA", "LA", "PA", a palette's transparency) is dropped: the colours stored under
      transparent pixels are used, as torchvision's ``ImageReadMode.RGB``.
    Grayscale is repeated into three channels. Only the first frame of a multi-frame file is read.

    Args:
        image: an opened Pillow image (decoded here).

    Returns:
        (3, H, W) float32 RGB in [0, 1], C-contiguous.

    Raises:
        ValueError: float pixels outside [0, 1] or non-finite, integer pixels beyond 16 bits, or a
            pixel format Pillow cannot convert to RGB (the message says which).
    """
    mode = image.mode
    if mode == "1":
        return _channels_first_rgb(np.asarray(image, dtype=np.float32))
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32) / np.float32(_MAX_16BIT)
        return _channels_first_rgb(values)
    if mode == "I":
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > _MAX_16BIT):
            raise ValueError(f"32-bit integer pixels range from {values.min()} to {values.max()}; integer images "
                             f"are read as 16-bit data (0-65535): save it as 16-bit or as float in [0, 1]")
        return _channels_first_rgb(values.astype(np.float32) / np.float32(_MAX_16BIT))
    if mode == "F":
        return _channels_first_rgb(_float_in_unit_range(np.asarray(image), "the float image"))
    if mode == "L":
        return _channels_first_rgb(np.asarray(image, dtype=np.float32) / np.float32(_MAX_8BIT))
    if mode in ("LA", "La"):
        return _channels_first_rgb(np.asarray(image.getchannel("L"), dtype=np.float32) / np.float32(_MAX_8BIT))
    if mode in ("P", "PA"):
        # through RGBA: a palette with a transparent entry converted straight to RGB makes Pillow warn
        image = image.convert("RGBA")
    elif mode not in ("RGB", "RGBA", "RGBX"):
        try:
            image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBa, ...
        except ValueError as e:
            raise ValueError(f"pixel format {mode!r} cannot be converted to RGB ({e})") from None
    return _channels_first_rgb(np.asarray(image, dtype=np.float32) / np.float32(_MAX_8BIT))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image: 1 (upright, also when there is no EXIF) to 8."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block: treat the image as upright
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _open_error(path: str, error: BaseException, record: str | None) -> ImageError:
    if isinstance(error, Image.DecompressionBombError):
        return ImageError(path, f"image too large to decode safely ({error})", record=record)
    return ImageError(path, f"cannot read the image ({type(error).__name__}: {error})", record=record)


def _size_problem(stored: tuple[int, int], orientation: int, expected: tuple[int, int], exif_transpose: bool) -> str:
    """The message for an image whose size differs from its record, with the EXIF explanation if one fits."""
    (w, h), (ew, eh) = stored, expected
    shown = (h, w) if orientation in _SWAPS_SIDES else (w, h)
    size = shown if exif_transpose else stored
    where = "after its EXIF orientation" if exif_transpose and shown != stored else "as stored"
    message = (f"image is {size[0]}x{size[1]} pixels (width x height) {where} but its record says "
               f"{ew}x{eh}")
    if not exif_transpose and shown == (ew, eh):
        message += (f"; the record gives the size after the image's EXIF orientation {orientation} "
                    f"({_ORIENTATION_WORDS[orientation]}), so the annotations were made on the image as a viewer "
                    f"shows it: read the images with their EXIF orientation applied (exif_transpose=True, "
                    f"--exif-transpose) or save them upright (PIL.ImageOps.exif_transpose)")
    elif exif_transpose and stored == (ew, eh):
        message += (f"; the record gives the stored size, before the image's EXIF orientation {orientation} "
                    f"({_ORIENTATION_WORDS[orientation]}): read the images as stored (without exif_transpose)")
    return message


def image_size(path: PathLike, *, exif_transpose: bool = False, record: str | None = None) -> tuple[int, int]:
    """The (width, height) of an image file from its header, without decoding the pixels.

    Args:
        path: the image file.
        exif_transpose: give the size after the EXIF orientation (width and height swapped for
            orientations 5-8), as ``read_image(..., exif_transpose=True)`` returns the image.
        record: how error messages name the image's record (e.g. "image id 7").

    Raises:
        ImageError: the file is missing or not an image Pillow can open.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(path, "image file not found", record=record)
    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = exif_orientation(image) if exif_transpose else 1
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _open_error(path, e, record) from None
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def check_image_size(path: PathLike, expected: tuple[int, int], *, exif_transpose: bool = False,
                     record: str | None = None) -> None:
    """Raise ImageError unless the image's (width, height) is ``expected``; reads only the header.

    Where the record holds the size of the image turned by its EXIF orientation (or the stored
    size while ``exif_transpose`` is on), the message says so and how to read the images instead.

    Raises:
        ImageError: missing, unreadable, or of another size, naming the file and the record.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(path, "image file not found", record=record)
    try:
        with Image.open(path) as image:
            stored, orientation = image.size, exif_orientation(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _open_error(path, e, record) from None
    shown = (stored[1], stored[0]) if exif_transpose and orientation in _SWAPS_SIDES else stored
    if shown != tuple(expected):
        raise ImageError(path, _size_problem(stored, orientation, tuple(expected), exif_transpose), record=record)


def read_image(path: PathLike, *, exif_transpose: bool = False, expected_size: tuple[int, int] | None = None,
               record: str | None = None) -> np.ndarray:
    """Read an image file as the model's input: (3, H, W) float32 RGB in [0, 1], intensities kept.

    The pixel formats and their mapping to [0, 1] are those of ``pil_to_image`` (8-bit, 16-bit,
    1-bit, palette, alpha, CMYK, 32-bit float TIFF ...).

    EXIF orientation: phone cameras store pixels as the sensor read them and record in EXIF how to
    turn them for display. By default the stored pixels are returned, unturned, because COCO's
    annotations (and torchvision's readers) refer to the stored pixel grid; with
    ``exif_transpose=True`` the image is turned as a viewer shows it (``PIL.ImageOps.exif_transpose``),
    which is what ``minimaskrcnn predict`` does with photos.

    Args:
        path: the image file (JPEG, PNG, TIFF, BMP, GIF, WebP ...).
        exif_transpose: turn the image by its EXIF orientation (see above).
        expected_size: (width, height) the image must have (as returned, i.e. after the EXIF turn
            when ``exif_transpose``); a different size raises ImageError, explaining when the
            record matches the image turned the other way.
        record: how error messages name the image's record (e.g. "image id 7").

    Returns:
        (3, H, W) float32, C-contiguous.

    Raises:
        ImageError: the file is missing, truncated or not an image; its size differs from
            ``expected_size``; or its pixels cannot be mapped to [0, 1] (see ``pil_to_image``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(path, "image file not found", record=record)
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, inside the try
            stored, orientation = image.size, exif_orientation(image)
            if expected_size is not None:
                shown = (stored[1], stored[0]) if exif_transpose and orientation in _SWAPS_SIDES else stored
                if shown != tuple(expected_size):
                    raise ImageError(path, _size_problem(stored, orientation, tuple(expected_size), exif_transpose),
                                     record=record)
            if exif_transpose and orientation != 1:
                image = ImageOps.exif_transpose(image)
            return pil_to_image(image)
    except ImageError:
        raise
    except ValueError as e:  # pixel values that have no place in [0, 1] (pil_to_image)
        raise ImageError(path, str(e), record=record) from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # UnidentifiedImageError is an OSError
        raise _open_error(path, e, record) from None


def array_to_image(array: Any) -> np.ndarray:
    """An image array given in Python as the model's input, mapped to [0, 1] by its dtype.

    Args:
        array: (H, W) grayscale; (C, H, W) with C = 1 (gray) or 3 (RGB), the model's layout, which
            wins when both readings fit (e.g. (3, 5, 3)); else (H, W, C) with C = 1, 3 or 4 (RGBA,
            alpha dropped). A NumPy array, a minimaskrcnn Tensor, a CuPy array, or anything
            ``np.asarray`` reads (a CPU torch tensor). dtypes:

            - bool: False 0, True 1;
            - uint8: / 255;
            - uint16: / 65535 (a 12-bit camera's raw values 0-4095 read dark, never white);
            - float16/32/64: as given; must lie in [0, 1] (within ``FLOAT_TOLERANCE``, then clipped).

    Returns:
        (3, H, W) float32, C-contiguous (a new array).

    Raises:
        ValueError: another layout, no pixels, float values outside [0, 1], NaN or Inf.
        TypeError: another dtype (int32, int64, ...): the message says which to use.
    """
    from minimaskrcnn.backend import to_numpy

    a = to_numpy(array)
    if a.ndim == 3:
        if a.shape[0] not in (1, 3):
            if a.shape[-1] not in (1, 3, 4):
                raise ValueError(f"expected an image (H, W), (H, W, C) with C in 1, 3, 4, or (C, H, W) with C in 1, 3; "
                                 f"got shape {a.shape}")
            a = a.transpose(2, 0, 1)
        if a.shape[0] == 1:
            a = a[0]
        else:
            a = a[:3]
    elif a.ndim != 2:
        raise ValueError(f"expected an image (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"the image has no pixels (shape {a.shape})")
    if a.dtype == np.bool_:
        values = a.astype(np.float32)
    elif a.dtype == np.uint8:
        values = a.astype(np.float32) / np.float32(_MAX_8BIT)
    elif a.dtype == np.uint16:
        values = a.astype(np.float32) / np.float32(_MAX_16BIT)
    elif a.dtype.kind == "f":
        values = _float_in_unit_range(a, "the float image")
    else:
        raise TypeError(f"image arrays of dtype {a.dtype} have no fixed range: give uint8 (0-255), uint16 "
                        f"(0-65535), bool, or float in [0, 1] (e.g. array.astype(np.uint8) for 8-bit values)")
    if values.ndim == 2:
        return np.ascontiguousarray(np.broadcast_to(values[None], (3,) + values.shape))
    return np.ascontiguousarray(values)


def as_model_image(image: Any, *, exif_transpose: bool = True) -> np.ndarray:
    """A path, Pillow image or array as the model's (3, H, W) float32 input in [0, 1].

    Args:
        image: a file path (read by ``read_image``), a Pillow image (``pil_to_image``) or an array
            (``array_to_image``: mapped to [0, 1] by its dtype).
        exif_transpose: for paths and Pillow images, turn the image by its EXIF orientation as a
            viewer shows it (the default here, for photos; data sets read the stored pixels).

    Returns:
        (3, H, W) float32, C-contiguous.

    Raises:
        ImageError: an unreadable file. ValueError / TypeError: see ``array_to_image``.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, exif_transpose=exif_transpose)
    if isinstance(image, Image.Image):
        if exif_transpose and exif_orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        return pil_to_image(image)
    return array_to_image(image)
