"""What goes in comes back: an image file's depth, grey or colour, alpha, ICC profile and resolution, read beside
its colour samples (`decode_with_info`) and written back with a restored image (`encode_like`).

The rule of `encode_like`, for the restored float image of a decoded file:

- **Depth.** 8 bits per channel in, 8 out; 16 in, 16 out (a 16-bit file decoded and written again unchanged is the
  same samples, bit for bit). 1-, 2- and 4-bit files come back as 8-bit (a restoration has the levels between); 32-bit
  integer or floating-point TIFFs come back as 16-bit, and the notes say so.
- **Grey stays grey**, colour stays colour (a palette image comes back as RGB, its colours exact). CMYK, YCbCr, LAB
  and HSV files come back as RGB, without colour management, and the notes say so.
- **Alpha** is no task's to restore: it is carried through unchanged, at its own depth. Where the output's size is
  not the input's (super-resolution), the alpha is resized to it with Pillow's BICUBIC filter on its float samples
  (mode ``F``), clipped to its range and rounded to its depth.
- **ICC profile** embedded again, when the output's colour space is the profile's (a CMYK profile is not put on RGB
  samples). **Resolution** (dpi) kept, scaled with the image's size. **EXIF**: the orientation is applied to the
  pixels on reading, as `decode_image` does; the rest of the EXIF block is not written (it describes the capture, and
  its thumbnail and orientation would no longer match), and the notes say so.
- **Format**: PNG and TIFF hold all of the above. JPEG holds neither alpha nor 16 bits, WebP holds no 16 bits and no
  grey (Pillow writes grey WebP as RGB): what the chosen format cannot hold is written as it can be and named in the
  notes (`EncodedImage.notes`). `format_for_path` picks the format from a file name's extension.

Pure numpy/Pillow; the samples themselves are read by `dipcore.imageio` (full-depth 16-bit PNG and TIFF colour).
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from PIL.TiffImagePlugin import ImageFileDirectory_v2

from .errors import ConfigError
from .imageio import DEFAULT_MAX_PIXELS, _decode_parts, _quantise, _write_png16, to_float_image

__all__ = [
    "OUTPUT_FORMATS",
    "DecodedImage",
    "EncodedImage",
    "ImageInfo",
    "decode_with_info",
    "encode_like",
    "format_for_path",
]

OUTPUT_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
"""File-name extension (lower case) → the format `encode_like` writes."""

_CONVERTED = {"CMYK", "YCbCr", "LAB", "HSV"}  # Pillow modes decoded to RGB
_ICC_SPACE = {b"GRAY": 1, b"RGB ": 3}  # an ICC profile's data colour space (header bytes 16-20) → channels
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What a decoded file carries beside its colour samples (the image as `decode_image` gives it)."""

    format: str  # Pillow's name of the file's format: PNG, TIFF, JPEG, WEBP, …
    bits: int  # per channel, as `encode_like` writes it back: 8 or 16
    grey: bool  # one channel (True) or colour
    alpha: np.ndarray | None  # H×W uint8 or uint16 (its own depth), oriented like the image; None: no alpha
    icc_profile: bytes | None
    dpi: tuple[float, float] | None
    size: tuple[int, int]  # (H, W) of the decoded image: the alpha's and the dpi's reference
    notes: tuple[str, ...] = ()  # what no output can keep of this file, whatever its format

    @property
    def mode(self) -> str:
        """The Pillow-style mode the output is written in: L, LA, RGB or RGBA, with ``;16`` at 16 bits."""
        base = ("L" if self.grey else "RGB") + ("A" if self.alpha is not None else "")
        return base + (";16" if self.bits == 16 else "")


@dataclass(frozen=True)
class DecodedImage:
    """`decode_with_info`'s result: the float32 ``H×W×C`` image (as `decode_image` returns it) and its file's info."""

    image: np.ndarray
    info: ImageInfo


@dataclass(frozen=True)
class EncodedImage:
    """`encode_like`'s result: the file's bytes and what it could not keep of its input (empty: everything)."""

    data: bytes
    format: str
    notes: tuple[str, ...]


def decode_with_info(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> DecodedImage:
    """Decode as :func:`~dipcore.imageio.decode_image` does (``mode="keep"``; same errors), keeping what the file
    carries beside its colour samples: depth, grey or colour, alpha, ICC profile, dpi, format.

    >>> from dipcore.imageio import encode_png
    >>> d = decode_with_info(encode_png(np.zeros((2, 3, 3), np.float32), bits=16))
    >>> d.image.shape, d.info.format, d.info.bits, d.info.mode
    ((2, 3, 3), 'PNG', 16, 'RGB;16')
    """
    parts = _decode_parts(data, max_pixels=max_pixels, name=name, alpha=True)
    im, image = parts.im, parts.image
    notes = []
    bits = 16 if parts.bits > 8 and parts.full_depth else 8
    if parts.bits > 16:
        kind = "floating-point" if im.mode == "F" else "integer"
        notes.append(f"{parts.bits}-bit {kind} samples written as 16-bit")
    elif parts.bits > 8 and not parts.full_depth:
        notes.append(f"{parts.bits}-bit {im.mode} samples read at 8-bit precision (Pillow reads no more)")
    icc = im.info.get("icc_profile") or None
    if im.mode in _CONVERTED:
        notes.append(
            f"{im.mode} converted to RGB without colour management" + (", its ICC profile dropped" * bool(icc))
        )
        icc = None
    if im.format in ("JPEG", "PNG", "WEBP", "MPO") and _exif_beyond_orientation(im):
        notes.append("EXIF not kept (its orientation is applied to the pixels)")
    dpi = im.info.get("dpi")
    if im.format == "TIFF" and 282 not in getattr(im, "tag_v2", {}):
        dpi = None  # Pillow says 1 dpi for a TIFF that gives no resolution
    if dpi and parts.image.shape[:2] != (im.size[1], im.size[0]):  # a transposing EXIF orientation
        dpi = (dpi[1], dpi[0])
    info = ImageInfo(
        format=im.format or "?",
        bits=bits,
        grey=image.shape[2] == 1,
        alpha=parts.alpha,
        icc_profile=bytes(icc) if icc else None,
        dpi=(float(dpi[0]), float(dpi[1])) if dpi and dpi[0] and dpi[1] else None,
        size=(int(image.shape[0]), int(image.shape[1])),
        notes=tuple(notes),
    )
    return DecodedImage(image, info)


def format_for_path(path: str) -> str:
    """The format `encode_like` writes for a file name, from its extension (`OUTPUT_FORMATS`, any case).

    :raises ConfigError: another extension, or none.

    >>> format_for_path("out/restored.TIF"), format_for_path("s3://b/x.jpeg")
    ('TIFF', 'JPEG')
    """
    name = str(path).rsplit("/", 1)[-1]
    ext = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext not in OUTPUT_FORMATS:
        known = ", ".join(OUTPUT_FORMATS)
        raise ConfigError(f"cannot tell the output format from {name!r}: its name must end in one of {known}")
    return OUTPUT_FORMATS[ext]


def encode_like(image: Any, info: ImageInfo, *, format: str = "PNG", quality: int = 95) -> EncodedImage:
    """Encode a restored image (anything `to_float_image` takes) like the file `info` describes, as `format`
    (PNG, TIFF, JPEG or WEBP; JPEG and WebP at ``quality``): the module's rule, above, says what is kept.

    >>> d = decode_with_info(encode_like(np.full((2, 2, 1), 0.5), _plain(2, 2, bits=16)).data)
    >>> d.info.mode, round(float(d.image[0, 0, 0]) * 65535)
    ('L;16', 32768)
    """
    fmt = {"JPG": "JPEG", "TIF": "TIFF"}.get(str(format).upper(), str(format).upper())
    if fmt not in ("PNG", "TIFF", "JPEG", "WEBP"):
        raise ConfigError(f"format must be PNG, TIFF, JPEG or WEBP, not {format!r}")
    x = to_float_image(image)
    notes = list(info.notes)
    bits, alpha, icc = info.bits, _fit_alpha(info.alpha, x.shape[:2]), info.icc_profile
    if bits == 16 and fmt in ("JPEG", "WEBP"):
        notes.append(f"{_label(fmt)} holds 8 bits per channel: 16-bit samples written as 8-bit")
        bits = 8
    if alpha is not None and fmt == "JPEG":
        notes.append("JPEG has no alpha: the alpha channel was dropped")
        alpha = None
    if x.shape[2] == 1 and fmt == "WEBP":
        notes.append("WebP has no grey: written as RGB")
        x = np.repeat(x, 3, axis=2)
    if icc is not None and _ICC_SPACE.get(icc[16:20], x.shape[2]) != x.shape[2]:
        notes.append(f"its {icc[16:20].decode('latin-1').strip()} ICC profile dropped: the output is not in that space")
        icc = None
    if info.dpi and fmt == "WEBP":
        notes.append("WebP has no resolution: its dpi dropped")
    codes = _quantise(x, bits)
    if alpha is not None:
        codes = np.concatenate([codes, _alpha_codes(alpha, bits)[:, :, None]], axis=2)
    dpi = info.dpi and (info.dpi[0] * x.shape[1] / info.size[1], info.dpi[1] * x.shape[0] / info.size[0])
    data = _WRITERS[fmt](codes, bits=bits, icc=icc, dpi=dpi, quality=int(quality))
    return EncodedImage(data, fmt, tuple(notes))


# ---------------------------------------------------------------------------------------------------------------


def _label(fmt: str) -> str:
    return {"WEBP": "WebP"}.get(fmt, fmt)


def _plain(h: int, w: int, *, bits: int = 8, grey: bool = True) -> ImageInfo:
    """The info of a plain PNG without alpha, profile or resolution (for examples and tests)."""
    return ImageInfo("PNG", bits, grey, None, None, None, (h, w))


def _exif_beyond_orientation(im: Image.Image) -> bool:
    try:
        return any(tag != _EXIF_ORIENTATION for tag in im.getexif())
    except Exception:  # noqa: BLE001 - a broken EXIF block is not kept either way
        return "exif" in im.info


def _fit_alpha(alpha: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The alpha at the output's size: unchanged where the sizes agree, else Pillow BICUBIC on its float samples,
    clipped to its range and rounded to its depth."""
    if alpha is None or alpha.shape == tuple(shape):
        return alpha
    top = np.iinfo(alpha.dtype).max
    resized = Image.fromarray(alpha.astype(np.float32), "F").resize((shape[1], shape[0]), Image.Resampling.BICUBIC)
    return np.clip(np.rint(np.asarray(resized)), 0, top).astype(alpha.dtype)


def _alpha_codes(alpha: np.ndarray, bits: int) -> np.ndarray:
    """Alpha samples at the output's depth: 8→16 exactly (×257), 16→8 rounded."""
    if bits == 16:
        return alpha.astype(np.uint16) * (257 if alpha.dtype == np.uint8 else 1)
    if alpha.dtype == np.uint16:
        return np.rint(alpha / 257).astype(np.uint8)
    return alpha


def _pil(codes: np.ndarray) -> Image.Image:
    """L, LA, RGB, RGBA (uint8) or I;16 (uint16 grey) image of (H, W, K) samples."""
    return Image.fromarray(codes[:, :, 0] if codes.shape[2] == 1 else codes)


def _save(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **{k: v for k, v in params.items() if v is not None})
    return buf.getvalue()


def _write_png(codes: np.ndarray, *, bits: int, icc: bytes | None, dpi: Any, quality: int) -> bytes:
    if bits == 8 or codes.shape[2] == 1:
        return _save(_pil(codes), "PNG", icc_profile=icc, dpi=dpi)
    chunks = []  # Pillow cannot write 16-bit LA/RGB/RGBA: imageio writes them, with these ancillary chunks
    if icc:
        chunks.append((b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc)))
    if dpi:
        ppm = [max(1, round(d / 0.0254)) for d in dpi]  # pixels per metre
        chunks.append((b"pHYs", ppm[0].to_bytes(4, "big") + ppm[1].to_bytes(4, "big") + b"\x01"))
    return _write_png16(codes, tuple(chunks))


def _write_tiff(codes: np.ndarray, *, bits: int, icc: bytes | None, dpi: Any, quality: int) -> bytes:
    if bits == 8 or codes.shape[2] == 1:
        return _save(_pil(codes), "TIFF", compression="tiff_deflate", icc_profile=icc, dpi=dpi)
    return _write_tiff16(codes, icc=icc, dpi=dpi)


def _write_tiff16(codes: np.ndarray, *, icc: bytes | None, dpi: Any) -> bytes:
    """A 16-bit grey+alpha, RGB or RGBA TIFF (Pillow has no such mode to save): one Deflate strip, the directory
    serialised by Pillow's `ImageFileDirectory_v2`, which points the strip offset past itself."""
    h, w, k = codes.shape
    strip = zlib.compress(codes.astype("<u2").tobytes(), 6)
    ifd = ImageFileDirectory_v2(prefix=b"II")
    tags = {256: w, 257: h, 258: (16,) * k, 259: 8, 262: 1 if k == 2 else 2, 273: 0, 277: k, 278: h}
    tags.update({279: len(strip), 284: 1, 339: (1,) * k})
    if k in (2, 4):
        tags[338] = 2  # ExtraSamples: unassociated alpha
    if icc:
        tags[34675] = icc
    if dpi:
        tags.update({282: float(dpi[0]), 283: float(dpi[1]), 296: 2})  # resolution in inches
    for tag, value in tags.items():
        ifd[tag] = value
    for tag in (256, 257, 273, 278, 279):
        ifd.tagtype[tag] = 4  # LONG
    return b"II*\0" + (8).to_bytes(4, "little") + ifd.tobytes(8) + strip


def _write_jpeg(codes: np.ndarray, *, bits: int, icc: bytes | None, dpi: Any, quality: int) -> bytes:
    dpi = dpi and tuple(round(d) for d in dpi)
    return _save(_pil(codes), "JPEG", quality=quality, icc_profile=icc, dpi=dpi)


def _write_webp(codes: np.ndarray, *, bits: int, icc: bytes | None, dpi: Any, quality: int) -> bytes:
    return _save(_pil(codes), "WEBP", quality=quality, icc_profile=icc)  # Pillow writes no resolution to WebP


_WRITERS = {"PNG": _write_png, "TIFF": _write_tiff, "JPEG": _write_jpeg, "WEBP": _write_webp}
