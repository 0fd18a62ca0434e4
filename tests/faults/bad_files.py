"""The fault suite's catalogue of hostile input: files that are not what their name says, broken, extreme or odd,
and names that try to escape, inject or confuse. Each builder returns the file's bytes; all are seeded.

``expect`` is what a run must make of the file: ``"ok"`` (a restored output), ``"error"`` (an error row with a
readable message), ``"skipped"`` (a row that says why it was not read) or ``"either"`` (whichever it is, the
invariants still hold).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

SIZE = 16  # every decodable case is this small: the suite tests the plumbing, not the fit


@dataclass(frozen=True)
class BadFile:
    case: str  # the case's id in the suite and on docs/reliability.md
    name: str  # its file name in the source folder
    build: Callable[[], bytes]
    expect: Literal["ok", "error", "skipped", "either"]
    what: str  # one line for the reliability page


def _pixels(mode: str = "RGB", size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(w + h - 2, 1)], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)


def _save(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _png(mode: str = "RGB", size: tuple[int, int] = (SIZE, SIZE)) -> bytes:
    return _save(_pixels(mode, size), "PNG")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR (8-bit RGB) claiming width × height, and one tiny IDAT: a header that lies."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = _chunk(b"IDAT", zlib.compress(b"\0" * 16))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + pixels + _chunk(b"IEND", b"")


def _bad_crc() -> bytes:
    data = bytearray(_png())
    idat = data.index(b"IDAT")
    data[idat + 8] ^= 0xFF  # one byte of compressed pixels flipped: the chunk's CRC no longer matches
    return bytes(data)


def _png_16bit_gray() -> bytes:
    gray = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 251) % 65535
    return _save(Image.fromarray(gray.astype(np.uint16)), "PNG")


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise on display
    return _save(_pixels(size=(SIZE, SIZE // 2)), "JPEG", exif=exif, quality=95)


def _float_tiff() -> bytes:
    values = np.linspace(0.0, 1.0, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)
    return _save(Image.fromarray(values, mode="F"), "TIFF")


def _frames(fmt: str, **kwargs: object) -> bytes:
    first, second = _pixels(), _pixels().rotate(90)
    return _save(first, fmt, save_all=True, append_images=[second], **kwargs)


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("inside.png", _png())
    return buf.getvalue()


def _eps() -> bytes:
    # Pillow would hand EPS to Ghostscript; dipcore's decoder must not open it at all.
    return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n"


def _noise(n: int) -> bytes:
    return np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()


BAD_FILES: tuple[BadFile, ...] = (
    # not an image at all, under an image's name
    BadFile("empty", "empty.png", lambda: b"", "error", "a file of 0 bytes"),
    BadFile("random-bytes", "random.png", lambda: _noise(4096), "error", "4 KiB of random bytes"),
    BadFile("text", "text.jpg", lambda: b"just some words\n" * 20, "error", "a text file named .jpg"),
    BadFile("html", "page.png", lambda: b"<html><script>alert(1)</script></html>", "error", "HTML named .png"),
    BadFile("zip", "archive.png", _zip, "error", "a ZIP archive (holding a PNG) named .png"),
    BadFile("eps", "vector.png", _eps, "error", "EPS (Pillow would run Ghostscript) named .png"),
    # broken images
    BadFile("truncated-png", "truncated.png", lambda: _png()[: len(_png()) // 2], "error", "the first half of a PNG"),
    BadFile(
        "truncated-jpeg",
        "truncated-jpeg.jpg",
        lambda: _save(_pixels(), "JPEG")[:200],
        "error",
        "the first 200 bytes of a JPEG",
    ),
    BadFile("png-bad-crc", "crc.png", _bad_crc, "error", "a PNG whose pixel data fails its CRC"),
    BadFile("png-header-only", "header.png", lambda: _png()[:33], "error", "a PNG signature and IHDR, nothing more"),
    BadFile("jpeg-marker-only", "soi.jpg", lambda: b"\xff\xd8\xff", "error", "a JPEG start marker, nothing more"),
    BadFile("png-zero-width", "zero.png", lambda: _png_header(0, SIZE), "error", "a PNG header of width 0"),
    BadFile(
        "decompression-bomb",
        "bomb.png",
        lambda: _png_header(40_000, 40_000),
        "error",
        "a PNG header claiming 40000×40000 pixels (1.6 gigapixels)",
    ),
    # extreme sizes
    BadFile("one-pixel", "pixel.png", lambda: _png(size=(1, 1)), "either", "a 1×1 PNG"),
    BadFile("one-row", "row.png", lambda: _png(size=(64, 1)), "either", "a 64×1 PNG"),
    # odd but valid encodings
    BadFile("png-16bit-gray", "gray16.png", _png_16bit_gray, "ok", "a 16-bit grayscale PNG"),
    BadFile("png-rgba", "rgba.png", lambda: _png("RGBA"), "ok", "an RGBA PNG (alpha is dropped)"),
    BadFile("png-palette", "palette.png", lambda: _png("P"), "ok", "a palette PNG"),
    BadFile("png-gray-alpha", "la.png", lambda: _png("LA"), "ok", "a grayscale + alpha PNG"),
    BadFile("png-1bit", "bits.png", lambda: _png("1"), "ok", "a 1-bit PNG"),
    BadFile("jpeg-gray", "gray.jpg", lambda: _save(_pixels("L"), "JPEG"), "ok", "a grayscale JPEG"),
    BadFile("jpeg-cmyk", "cmyk.jpg", lambda: _save(_pixels("CMYK"), "JPEG"), "ok", "a CMYK JPEG"),
    BadFile("jpeg-exif-rotated", "rotated.jpg", _exif_rotated_jpeg, "ok", "a JPEG with an EXIF rotation"),
    BadFile("tiff-float", "float.tif", _float_tiff, "either", "a 32-bit float TIFF"),
    BadFile("tiff-multipage", "pages.tif", lambda: _frames("TIFF"), "error", "a TIFF of two pages (refused)"),
    BadFile("bmp", "plain.bmp", lambda: _save(_pixels(), "BMP"), "ok", "a BMP"),
    BadFile("webp", "plain-webp.webp", lambda: _save(_pixels(), "WEBP", lossless=True), "ok", "a lossless WebP"),
    BadFile("png-as-jpg", "liar.jpg", _png, "ok", "a PNG named .jpg"),
    BadFile("gif-as-png", "gif.png", lambda: _save(_pixels(), "GIF"), "ok", "a GIF named .png"),
    BadFile(
        "animated-gif-as-png",
        "animated.png",
        lambda: _frames("GIF", duration=100, loop=0),
        "error",
        "an animated GIF named .png (refused: one frame is not the file)",
    ),
    BadFile("png-trailing-bytes", "trailing.png", lambda: _png() + _noise(64), "ok", "a PNG followed by junk"),
)

# Names that try to escape the root, inject markup or confuse URL and glob parsing, each a valid small PNG, with what a
# run must make of it: "error" where `pipelines.storage.safe_key` refuses a key that could reach another path.
HOSTILE_NAMES: tuple[tuple[str, Literal["ok", "error"]], ...] = (
    ("with space.png", "ok"),
    ("ünïcödé-日本語.png", "ok"),
    ("hash#frag.png", "ok"),
    ("percent%2e%2e%2f.png", "error"),  # decodes to "../"
    ("question?query=1.png", "ok"),
    ("-leading-dash.png", "ok"),
    ("quote'and\"double.png", "ok"),
    ("<img src=x onerror=alert(1)>.png", "ok"),
    ("back\\slash.png", "error"),  # a separator on Windows
    ("star*.png", "ok"),
    ("[brackets].png", "ok"),
    ("dots..png", "ok"),
    ("semi;colon&amp.png", "ok"),
    ("colon:name.png", "ok"),
    ("UPPER.PNG", "ok"),
    ("x" * 200 + ".png", "ok"),
    ("n" * 251 + ".png", "ok"),  # 255 bytes, as long as most filesystems hold: its temporary name must not be longer
)


# Symbolic links in a local source (the policy of `pipelines.storage`: a link to a file inside the source is
# followed; one that leads out, a broken one and one to a folder are not, and get a skipped row): case, name, where
# the link points (relative to the source; "../" leaves it), expected ending.
SYMLINKS: tuple[tuple[str, str, str, Literal["ok", "skipped"]], ...] = (
    ("link to a file inside", "link-inside.png", "bmp-target.png", "ok"),
    ("link leading out of the source", "link-outside.png", "../outside.png", "skipped"),
    ("broken link", "link-broken.png", "no-such-file.png", "skipped"),
    ("link to a folder", "link-folder.png", "folder", "skipped"),
)
