"""Every mode Pillow reads that an archive holds, as small files with what a restored output must keep of them: the
depth, grey or colour, the alpha samples and the ICC profile (built here, not read back by dipcore), and the note
its report row must carry where something cannot be kept. `check_fidelity` holds an output to them."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

from dipcore.imagefile import _write_tiff16
from dipcore.imageio import _write_png16

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@dataclass(frozen=True)
class Mode:
    key: str  # the file name in the dataset (unique stems: the outputs are <stem>.png)
    what: str
    data: bytes
    bits: int  # what the output must hold: depth per channel, grey or colour, the alpha samples, the profile
    grey: bool
    alpha: np.ndarray | None
    icc: bytes | None
    note: str | None = None  # a part of the row's notes (None: the notes must be null)


def _save(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **{k: v for k, v in params.items() if v is not None})
    return buf.getvalue()


def modes(size: int = 16) -> list[Mode]:
    """One small file per mode, with and without an ICC profile; the same files on every call."""
    rng = np.random.default_rng(25)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth8 = ((xx * 7 + yy * 3) % 256).astype(np.uint8)

    def u8(*shape: int) -> np.ndarray:
        return rng.integers(0, 256, (size, size, *shape), dtype=np.uint8)

    def u16(*shape: int) -> np.ndarray:
        return rng.integers(0, 65536, (size, size, *shape), dtype=np.uint16)

    def icc_chunk(icc: bytes | None) -> tuple:
        import zlib

        return ((b"iCCP", b"sRGB\0\0" + zlib.compress(icc)),) if icc else ()

    out = []
    for icc in (None, SRGB):
        tag = "-icc" if icc else ""
        la, rgba, p_alpha = u8(2), u8(4), np.arange(16, dtype=np.uint8) * 17
        la16, rgb16, rgba16 = u16(2), u16(3), u16(4)
        palette = Image.fromarray(smooth8 % 16, "P")
        palette.putpalette(list(rng.integers(0, 256, 48, dtype=np.uint8)))
        out += [
            Mode(f"rgb8{tag}.png", "8-bit RGB PNG", _save(Image.fromarray(u8(3)), "PNG", icc_profile=icc), 8, False,
                 None, icc),
            Mode(f"rgba8{tag}.png", "8-bit RGBA PNG", _save(Image.fromarray(rgba), "PNG", icc_profile=icc), 8, False,
                 rgba[:, :, 3], icc),
            Mode(f"p-trns{tag}.png", "palette PNG with tRNS", _save(palette, "PNG", transparency=p_alpha.tobytes(),
                 icc_profile=icc), 8, False, p_alpha[smooth8 % 16], icc),
            Mode(f"rgb16{tag}.png", "16-bit RGB PNG", _write_png16(rgb16, icc_chunk(icc)), 16, False, None, icc),
            Mode(f"rgba16{tag}.png", "16-bit RGBA PNG", _write_png16(rgba16, icc_chunk(icc)), 16, False,
                 rgba16[:, :, 3], icc),
            Mode(f"tif-rgb16{tag}.tif", "16-bit RGB TIFF", _write_tiff16(rgb16, icc=icc, dpi=None), 16, False, None,
                 icc),
            Mode(f"tif-rgba16{tag}.tif", "16-bit RGBA TIFF", _write_tiff16(rgba16, icc=icc, dpi=None), 16, False,
                 rgba16[:, :, 3], icc),
        ]  # fmt: skip
    out += [
        Mode("l8.png", "8-bit grey PNG", _save(Image.fromarray(u8()), "PNG"), 8, True, None, None),
        Mode("la8.png", "8-bit grey+alpha PNG", _save(Image.fromarray(la), "PNG"), 8, True, la[:, :, 1], None),
        Mode("l16.png", "16-bit grey PNG (I;16)", _save(Image.fromarray(u16()), "PNG"), 16, True, None, None),
        Mode("la16.png", "16-bit grey+alpha PNG", _write_png16(la16), 16, True, la16[:, :, 1], None),
        Mode("tif-l16.tif", "16-bit grey TIFF", _save(Image.fromarray(u16()), "TIFF"), 16, True, None, None),
        Mode("tif-rgb8.tif", "8-bit RGB TIFF", _save(Image.fromarray(u8(3)), "TIFF", icc_profile=SRGB), 8, False,
             None, SRGB),
        Mode("cmyk.jpg", "CMYK JPEG (converted to RGB)", _save(Image.fromarray(u8(4), "CMYK"), "JPEG"), 8, False,
             None, None, "CMYK converted to RGB"),
        Mode("tif-float.tif", "32-bit float TIFF (written as 16-bit)", _save(Image.fromarray(
             rng.random((size, size), dtype=np.float32), "F"), "TIFF"), 16, True, None, None, "32-bit floating"),
        Mode("exif.jpg", "JPEG with EXIF beyond orientation", _save(Image.fromarray(u8(3)), "JPEG",
             exif=_exif()), 8, False, None, None, "EXIF not kept"),
    ]  # fmt: skip
    return out


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "dipflow camera"  # Make
    return exif.tobytes()


def png_header(data: bytes) -> tuple[int, bool, bool]:
    """(bit depth, grey, alpha) from a PNG's IHDR, read without any decoder."""
    depth, colour_type = data[24], data[25]
    return depth, colour_type in (0, 4), colour_type in (4, 6)


def fidelity_problems(mode: Mode, output: bytes, notes: str | None) -> list[str]:
    """What `output` (a PNG) lost of `mode` without its row's notes saying so; empty when it kept everything."""
    import dipcore

    problems = []
    bits, grey, alpha = png_header(output)
    if (bits, grey, alpha) != (mode.bits, mode.grey, mode.alpha is not None):
        problems.append(f"{bits}-bit {'grey' if grey else 'colour'}{'+alpha' if alpha else ''} output")
    if Image.open(io.BytesIO(output)).info.get("icc_profile") != mode.icc:
        problems.append("ICC profile not kept")
    if mode.alpha is not None:
        got = dipcore.decode_with_info(output).info.alpha
        if got is None or got.dtype != mode.alpha.dtype or not np.array_equal(got, mode.alpha):
            problems.append("alpha samples changed")
    if mode.note is None and notes is not None:
        problems.append(f"notes {notes!r} where nothing was lost")
    if mode.note is not None and (notes is None or mode.note not in notes):
        problems.append(f"notes {notes!r} do not say {mode.note!r}")
    return problems
