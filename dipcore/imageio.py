"""Image decode and encode with validation: bytes in, float32 ``H×W×C`` arrays in ``[0, 1]`` out.

Decoding is strict: empty, truncated, corrupt or unknown data raises :class:`~dipcore.errors.ImageDecodeError`
and an image larger than ``max_pixels`` raises :class:`~dipcore.errors.ImageTooLargeError` before its pixels are
decoded. Alpha is dropped, not composited: the Deep Image Prior restores colour, and alpha is not restored.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from .errors import ConfigError, ImageDecodeError, ImageTooLargeError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "decode_image",
    "encode_image",
    "encode_png",
    "image_shape",
    "load_image",
    "to_float_image",
]

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024  # 64 megapixels: a 8k×8k photo, ~800 MB as float32 RGB
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF", "PPM")  # no EPS etc.: they run external programs
# Named in messages: what each format means here (PPM is Pillow's name for PBM/PGM/PPM/PNM); one frame only.
_SUPPORTED = "PNG, JPEG, TIFF, BMP, WebP, GIF or PBM/PGM/PPM, single-frame"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_ONE_CHANNEL_MODES = {"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_ORIENT = {  # EXIF orientation -> transform of an H×W×C array (same as PIL.ImageOps.exif_transpose)
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def decode_image(
    data: bytes,
    *,
    mode: Literal["RGB", "L", "keep"] = "keep",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP/WebP (also GIF, PBM/PGM/PPM) bytes to a float32 ``H×W×C`` array in ``[0, 1]``.

    An animated or multi-frame file (an animated GIF, WebP or PNG, a multi-page TIFF) is refused
    (`ImageDecodeError`): restoring its first frame alone would pass off one frame as the whole file.

    8- and 16-bit samples are divided by ``2**bits - 1`` of the file (16-bit colour PNGs and TIFFs keep all 16
    bits); alpha is dropped (`dipcore.decode_with_info` keeps it); the EXIF orientation is applied. Pillow's
    ``MAX_IMAGE_PIXELS`` still applies on top of ``max_pixels`` for images over ~179 megapixels.

    :param bytes data: the encoded file.
    :param str mode: ``"keep"`` gives 1 channel for L/LA/1/I/F/I;16 images and 3 for all others, ``"RGB"`` always 3
        (grey repeated), ``"L"`` always 1 (BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` of colour images).
    :param int max_pixels: largest ``width * height`` accepted, checked before any pixel is decoded.
    :param str name: a file name or URI, put in error messages.
    :raises ImageTooLargeError: the image has more than ``max_pixels`` pixels.
    :raises ImageDecodeError: empty, truncated, corrupt or unsupported data.

    >>> x = decode_image(encode_png(np.full((2, 3, 3), 0.5, np.float32)))
    >>> x.shape, x.dtype, round(float(x[0, 0, 0]) * 255)
    ((2, 3, 3), dtype('float32'), 128)
    """
    if mode not in ("RGB", "L", "keep"):
        raise ConfigError(f"mode must be 'RGB', 'L' or 'keep', not {mode!r}")
    return np.ascontiguousarray(_to_mode(_decode_parts(data, max_pixels=max_pixels, name=name).image, mode))


@dataclass
class _Parts:
    """What `_decode_parts` read: the colour samples (float32 H×W×C, oriented), the alpha samples (uint8/uint16
    H×W, oriented) when asked for, the opened image (format, info, mode) and the depth the samples were read at."""

    image: np.ndarray
    alpha: np.ndarray | None
    im: Image.Image
    bits: int  # per colour sample, as read: 1..16 for integers, 32 for mode I/F
    full_depth: bool  # False: a 16-bit layout Pillow reads at 8 bits only


@contextlib.contextmanager
def _no_bomb_warning() -> Iterator[None]:
    """Pillow's DecompressionBombWarning silenced: our max_pixels check replaces it. Its hard error (over
    2 * MAX_IMAGE_PIXELS) remains."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _decode_parts(data: Any, *, max_pixels: int, name: str | None, alpha: bool = False) -> _Parts:
    """`decode_image`'s work (checks, full-depth 16-bit PNG and TIFF colour, EXIF orientation), keeping what the
    file holds beside the colour samples; ``alpha=True`` also reads the alpha channel."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ConfigError(f"decode_image takes bytes, not {type(data).__name__}; use load_image for a path")
    data = bytes(data)
    where = f"{name}: " if name else ""
    if not data:
        raise ImageDecodeError(f"{where}empty file")
    try:
        with _no_bomb_warning():
            im = Image.open(io.BytesIO(data), formats=FORMATS)  # lazy: reads the header only
            width, height = im.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{where}image is {width}×{height} = {width * height:,} pixels, more than max_pixels={max_pixels:,}"
                )
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise ImageDecodeError(
                    f"{where}animated or multi-frame images are not supported ({im.format}, {frames} frames); "
                    "save the frame to restore as its own file (e.g. PNG)"
                )
            if im.format == "PNG":
                _check_png_chunks(data, where)
            bits, full_depth = _sample_bits(data, im), True
            if _is_png16_colour(data, im):
                array, a, im = _decode_png16(data)
            elif _is_tiff16_colour(im):
                array, a, im = _decode_tiff16(data)
            else:
                im.load()  # forces a full decode: truncation and corruption surface here
                array = _pil_to_array(im, name=where)
                a = _alpha_of(im) if alpha else None
                # Deeper samples in one of Pillow's 8-bit modes (a premultiplied or CMYK 16-bit TIFF) lost bits.
                full_depth = bits <= 8 or im.mode in ("I", "F") or im.mode.startswith("I;16")
            orientation = _orientation(im)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{where}{e}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageDecodeError(f"{where}not a recognised image format (expected {_SUPPORTED})") from e
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, struct.error, ...
        raise ImageDecodeError(f"{where}truncated or corrupt image data: {e}") from e
    if orientation in _ORIENT:
        array = _ORIENT[orientation](array)
        a = None if a is None else _ORIENT[orientation](a[:, :, None])[:, :, 0]
    return _Parts(np.ascontiguousarray(array), None if a is None else np.ascontiguousarray(a), im, bits, full_depth)


def image_shape(data: bytes, *, name: str | None = None) -> tuple[int, int, int]:
    """``(H, W, C)`` that :func:`decode_image` (``mode="keep"``) would return, from the header alone.

    No pixel is decoded (Pillow opens lazily), so a scheduler can group images by shape cheaply; the EXIF
    orientation is applied as ``decode_image`` applies it. A file whose pixels are corrupt may still pass here.

    :raises ImageDecodeError: empty data, or a header Pillow cannot read.

    >>> image_shape(encode_png(np.zeros((2, 3, 1), np.float32)))
    (2, 3, 1)
    """
    where = f"{name}: " if name else ""
    if not data:
        raise ImageDecodeError(f"{where}empty file")
    try:
        with _no_bomb_warning(), Image.open(io.BytesIO(bytes(data)), formats=FORMATS) as im:
            (width, height), mode, orientation = im.size, im.mode, _orientation(im)
    except Exception as e:  # Pillow raises many types for a bad header
        raise ImageDecodeError(f"{where}unreadable image header: {e}") from e
    if orientation in (5, 6, 7, 8):  # the transposing orientations (_ORIENT)
        width, height = height, width
    return height, width, 1 if mode in _ONE_CHANNEL_MODES else 3


def load_image(
    path: str | os.PathLike[str],
    *,
    mode: Literal["RGB", "L", "keep"] = "keep",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> np.ndarray:
    """Read a local file and :func:`decode_image` it; ``name`` defaults to the path.

    A missing or unreadable file raises the usual ``OSError`` (``FileNotFoundError``, ...).
    """
    with open(path, "rb") as f:
        data = f.read()
    return decode_image(data, mode=mode, max_pixels=max_pixels, name=str(path) if name is None else name)


def to_float_image(x: Any) -> np.ndarray:
    """Normalise an image to a float32 ``H×W×C`` array in ``[0, 1]`` (C = 1 or 3).

    Accepts a PIL image (converted as :func:`decode_image` does, alpha dropped), a numpy array ``H×W`` or
    ``H×W×C`` (C in 1..4; a 2nd/4th channel is alpha and dropped) of dtype bool, uint8 (÷255), uint16 (÷65535)
    or float (must lie in ``[0, 1]``), or a torch tensor ``C×H×W``, ``1×C×H×W`` or ``H×W`` (channels first).
    Always returns a new array.

    :raises ConfigError: another type, dtype or shape, or float values outside ``[0, 1]``.

    >>> to_float_image(np.array([[0, 255]], np.uint8)).tolist()
    [[[0.0], [1.0]]]
    """
    if isinstance(x, Image.Image):
        return np.ascontiguousarray(_pil_to_array(x, name="", error=ConfigError))
    torch = sys.modules.get("torch")  # only look at tensors if torch is already imported
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        elif t.ndim != 2:
            raise ConfigError(f"a tensor image must be C×H×W, 1×C×H×W or H×W, got shape {tuple(x.shape)}")
        x = t.float().numpy() if t.is_floating_point() else t.numpy()
    if not isinstance(x, np.ndarray):
        raise ConfigError(f"expected a PIL image, numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[2] not in (1, 2, 3, 4) or x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(f"an image must be H×W or H×W×C with C in 1..4, got shape {x.shape}")
    x = x[:, :, :1] if x.shape[2] == 2 else x[:, :, :3]  # drop alpha
    if x.dtype == np.bool_:
        out = x.astype(np.float32)
    elif x.dtype == np.uint8:
        out = x.astype(np.float32) / 255
    elif x.dtype == np.uint16:
        out = x.astype(np.float32) / 65535
    elif np.issubdtype(x.dtype, np.floating):
        out = x.astype(np.float32)  # always a copy
        if not np.isfinite(out).all():
            raise ConfigError("a float image contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0 or hi > 1:
            raise ConfigError(f"a float image must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
    else:
        raise ConfigError(f"image arrays must be bool, uint8, uint16 or float, not {x.dtype}")
    return np.ascontiguousarray(out)


def encode_png(image: Any, *, bits: Literal[8, 16] = 8) -> bytes:
    """Encode an image (anything :func:`to_float_image` takes) as an 8- or 16-bit grey or RGB PNG.

    Samples are rounded to the nearest code, ``round(x * (2**bits - 1))``. Pillow cannot write 48-bit RGB PNGs,
    so 16-bit colour is written here directly (filter 0 rows, zlib).

    >>> round(decode_image(encode_png(np.array([[0.25]]), bits=16)).item() * 65535)  # 0.25 * 65535 = 16383.75
    16384
    """
    if bits not in (8, 16):
        raise ConfigError(f"bits must be 8 or 16, not {bits!r}")
    codes = _quantise(to_float_image(image), bits)  # (H, W, C)
    if bits == 16 and codes.shape[2] == 3:
        return _write_png16(codes)
    im = Image.fromarray(codes[:, :, 0] if codes.shape[2] == 1 else codes)  # L, RGB or I;16
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def encode_image(
    image: Any, *, format: Literal["png", "jpeg", "webp", "tiff"] = "png", bits: Literal[8, 16] = 8, quality: int = 95
) -> bytes:
    """Encode an image as PNG (8/16 bit), JPEG or WebP (8 bit, ``quality``) or TIFF (8 bit, 16 bit grey only)."""
    fmt = format.lower()
    if fmt == "png":
        return encode_png(image, bits=bits)
    if fmt not in ("jpeg", "jpg", "webp", "tiff", "tif"):
        raise ConfigError(f"format must be 'png', 'jpeg', 'webp' or 'tiff', not {format!r}")
    if bits not in (8, 16):
        raise ConfigError(f"bits must be 8 or 16, not {bits!r}")
    codes = _quantise(to_float_image(image), bits)
    if bits == 16 and (fmt not in ("tiff", "tif") or codes.shape[2] != 1):
        raise ConfigError(f"16-bit {fmt.upper()} is not supported for this image; use format='png'")
    im = Image.fromarray(codes[:, :, 0] if codes.shape[2] == 1 else codes)
    buf = io.BytesIO()
    if fmt in ("tiff", "tif"):
        im.save(buf, format="TIFF", compression="tiff_deflate")
    else:
        im.save(buf, format="JPEG" if fmt in ("jpeg", "jpg") else "WEBP", quality=int(quality))
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------


def _pil_to_array(im: Image.Image, *, name: str, error: type[Exception] = ImageDecodeError) -> np.ndarray:
    """A loaded PIL image -> float32 (H, W, C) in [0, 1], C = 1 for grey modes and 3 otherwise, alpha dropped."""
    m = im.mode
    if m in ("LA", "La"):
        im, m = im.getchannel(0), "L"
    if m in ("P", "PA"):
        im, m = im.convert("RGBA"), "RGBA"  # via RGBA: keeps palette colours of transparent entries, no warning
    if m in ("RGBA", "RGBa", "RGBX"):
        im, m = im.convert("RGB") if m == "RGBa" else im, "RGB"
    if m not in _ONE_CHANNEL_MODES and m != "RGB":
        im, m = im.convert("RGB"), "RGB"  # CMYK, YCbCr, LAB, HSV
    a = np.asarray(im)
    if m == "RGB":
        a = a[:, :, :3]  # RGBA/RGBX: keep RGB (not composited)
    if m in ("1", "L", "RGB"):
        out = a.astype(np.float32) / (1 if m == "1" else 255)
    elif m.startswith("I;16"):
        out = a.astype(np.float32) / 65535
    elif m == "I":
        bits = _int_bits(im)
        if a.min() < 0:
            raise error(f"{name}signed integer image with negative values; expected intensities")
        out = (a.astype(np.float64) / (2**bits - 1)).astype(np.float32)
    else:  # "F"
        out = a.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            raise error(f"{name}floating-point image with values outside [0, 1] (or NaN); normalise it first")
    return out[:, :, None] if out.ndim == 2 else out


def _int_bits(im: Image.Image) -> int:
    """Bit depth of a mode-"I" image from its file (PNG: 16; TIFF: BitsPerSample); 31 for Pillow's int32."""
    if im.format == "PNG":
        return 16
    tag = getattr(im, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    bits = int(tag[0] if isinstance(tag, tuple) else tag) if tag else 32
    return min(bits, 31)  # mode I is signed 32-bit: its largest value is 2**31 - 1


def _to_mode(a: np.ndarray, mode: str) -> np.ndarray:
    if mode == "RGB" and a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if mode == "L" and a.shape[2] == 3:
        luma = a.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # BT.601 luma, as Pillow's convert("L")
        return np.clip(luma, 0, 1).astype(np.float32)[:, :, None]
    return a


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))  # EXIF, TIFF or XMP orientation
    except Exception:  # noqa: BLE001 - a broken EXIF block (any error Pillow raises) leaves the pixels readable
        return 1


def _quantise(x: np.ndarray, bits: int) -> np.ndarray:
    top = 2**bits - 1
    return np.rint(x.astype(np.float64) * top).astype(np.uint8 if bits == 8 else np.uint16)


# --- PNG details ---------------------------------------------------------------------------------------------------


def _check_png_chunks(data: bytes, where: str) -> None:
    """Walk the PNG chunks: a chunk cut short is truncation, a bad CRC on a critical chunk is corruption.

    Pillow does not check IDAT CRCs, so flipped bytes in pixel data could otherwise decode silently.
    """
    pos = len(_PNG_MAGIC)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ImageDecodeError(f"{where}truncated PNG: chunk {ctype!r} needs {end - len(data)} more bytes")
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if ctype[:1].isupper() and zlib.crc32(data[pos + 4 : end - 4]) != crc:
            raise ImageDecodeError(f"{where}corrupt PNG: CRC mismatch in {ctype.decode('latin-1')} chunk")
        if ctype == b"IEND":
            return
        pos = end


def _is_png16_colour(data: bytes, im: Image.Image) -> bool:
    """16-bit RGB, RGBA or grey+alpha PNG: Pillow would keep only the high byte of each sample."""
    return im.format == "PNG" and data[24] == 16 and data[25] in (2, 4, 6)  # IHDR bit depth, colour type


def _decode_png16(data: bytes) -> tuple[np.ndarray, np.ndarray | None, Image.Image]:
    """Full-precision decode of a 16-bit colour PNG through Pillow's own unfiltering: (colour, alpha, image).

    Pillow decodes these to 8 bits per sample. Its PNG decoder unfilters and de-interlaces, then an unpacker
    picks bytes; swapping in another unpacker with the same pixel size ("RGB;16L" reads the low byte of each
    big-endian sample where "RGB;16B" reads the high one) recovers every byte.
    """
    colour_type = data[25]
    if colour_type == 4:  # grey+alpha, 4 bytes a pixel: read raw bytes as RGBA = (Lhi, Llo, Ahi, Alo)
        im = _load_with_rawmode(data, "RGBA")
        raw = np.asarray(im).astype(np.uint16)
        grey = raw[:, :, 0] * 256 + raw[:, :, 1]
        return (grey.astype(np.float32) / 65535)[:, :, None], raw[:, :, 2] * 256 + raw[:, :, 3], im
    base = "RGB" if colour_type == 2 else "RGBA"
    hi = np.asarray(_load_with_rawmode(data, base + ";16B")).astype(np.uint16)
    im = _load_with_rawmode(data, base + ";16L")
    codes = hi * 256 + np.asarray(im).astype(np.uint16)
    alpha = codes[:, :, 3] if colour_type == 6 else None
    return codes[:, :, :3].astype(np.float32) / 65535, alpha, im


def _load_with_rawmode(data: bytes, rawmode: str) -> Image.Image:
    im = Image.open(io.BytesIO(data), formats=["PNG"])
    im.tile = [t._replace(args=rawmode) if hasattr(t, "_replace") else (*t[:3], rawmode) for t in im.tile]
    im.load()
    return im


def _write_png16(codes: np.ndarray, chunks: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A 16-bit PNG of uint16 (H, W, K), K = 2, 3, 4 (grey+alpha, RGB, RGBA: colour types 4, 2, 6), which Pillow
    cannot write: IHDR, `chunks` (iCCP, pHYs …), one IDAT of rows with filter byte 0, IEND."""
    h, w, k = codes.shape
    rows = np.empty((h, 1 + 2 * k * w), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = codes.astype(">u2").view(np.uint8).reshape(h, 2 * k * w)  # big-endian samples

    def chunk(ctype: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {2: 4, 3: 2, 4: 6}[k], 0, 0, 0)  # deflate, adaptive filters, progressive
    extra = b"".join(chunk(t, body) for t, body in chunks)
    idat = chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
    return _PNG_MAGIC + chunk(b"IHDR", ihdr) + extra + idat + chunk(b"IEND", b"")


# --- TIFF and alpha details ------------------------------------------------------------------------------------------

# Pillow's unpackers of 16-bit colour TIFF samples keep the high byte; the other byte order's unpacker of the same
# pixel size reads the low one. Premultiplied (RGBa) and CMYK samples are not swapped: they are read at 8 bits.
_TIFF16_RAWMODES = {f"{m};16{e}" for m in ("RGB", "RGBA", "RGBX") for e in "LBN"}


def _is_tiff16_colour(im: Image.Image) -> bool:
    """A 16-bit RGB(A) TIFF: Pillow would keep only the high byte of each sample."""
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA"):
        return False
    return all(_tile_rawmode(t) in _TIFF16_RAWMODES for t in im.tile)


def _tile_rawmode(tile: Any) -> str:
    args = tile.args if hasattr(tile, "args") else tile[3]
    return args[0] if isinstance(args, tuple) else args


def _decode_tiff16(data: bytes) -> tuple[np.ndarray, np.ndarray | None, Image.Image]:
    """Full-precision decode of a 16-bit RGB(A) TIFF (raw or libtiff-decoded), as `_decode_png16` does for PNG."""
    other = {"L": "B", "B": "L", "N": "B" if sys.byteorder == "little" else "L"}

    def load(swap: bool) -> Image.Image:
        one = Image.open(io.BytesIO(data), formats=["TIFF"])
        if swap:
            one.tile = [t._replace(args=_with_rawmode(t.args, other)) for t in one.tile]
        one.load()
        return one

    high = load(swap=False)
    codes = np.asarray(high).astype(np.uint16) * 256 + np.asarray(load(swap=True)).astype(np.uint16)
    alpha = codes[:, :, 3] if high.mode == "RGBA" else None
    return codes[:, :, :3].astype(np.float32) / 65535, alpha, high


def _with_rawmode(args: Any, other: dict[str, str]) -> Any:
    """A tile's decoder arguments with the rawmode's byte order swapped (raw: a string or a tuple; libtiff: a
    tuple whose first item is the rawmode)."""
    raw = args[0] if isinstance(args, tuple) else args
    swapped = raw[:-1] + other[raw[-1]]
    return (swapped, *args[1:]) if isinstance(args, tuple) else swapped


def _sample_bits(data: bytes, im: Image.Image) -> int:
    """Bits per colour sample in the file: the PNG's IHDR depth (8 for a palette), the TIFF's BitsPerSample, 16 for
    Pillow's 16-bit modes, 32 for I and F, 8 otherwise."""
    if im.format == "PNG" and len(data) > 25:
        return 8 if data[25] == 3 else data[24]
    if im.format == "TIFF":
        tag = getattr(im, "tag_v2", {}).get(258)
        if tag:
            return int(tag[0] if isinstance(tag, tuple) else tag)
    if im.mode.startswith("I;16"):
        return 16
    return 32 if im.mode in ("I", "F") else 8


def _alpha_of(im: Image.Image) -> np.ndarray | None:
    """The alpha samples (uint8 H×W) of a loaded image: its A band, or a palette's or tRNS chunk's transparency."""
    if im.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        return np.asarray(im.getchannel("A"))
    if "transparency" in im.info and im.mode in ("1", "L", "P", "RGB"):
        return np.asarray(im.convert("RGBA").getchannel("A"))
    return None
