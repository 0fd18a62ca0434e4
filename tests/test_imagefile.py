"""dipcore.imagefile: a file's depth, alpha, ICC profile and resolution read beside its samples and written back with
a restored image; the output format from a file name. Every mode's round trip through the user's paths is in
tests/faults/test_fidelity.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

import dipcore
from dipcore.imagefile import _write_tiff16

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.png", "PNG"), ("a.PNG", "PNG"), ("d/a.tif", "TIFF"), ("a.tiff", "TIFF"), ("s3://b/a.jpg", "JPEG"),
     ("a.jpeg", "JPEG"), ("a.webp", "WEBP")],
)  # fmt: skip
def test_format_for_path_follows_the_extension(name, fmt):
    assert dipcore.format_for_path(name) == fmt


@pytest.mark.parametrize("name", ["a.bmp", "a", "a.png.bak", "dir.png/a"])
def test_format_for_path_refuses_other_names(name):
    with pytest.raises(dipcore.ConfigError, match="cannot tell the output format"):
        dipcore.format_for_path(name)


def test_16bit_rgb_tiff_is_read_at_full_precision_where_pillow_reads_8_bits():
    codes = np.random.default_rng(0).integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    data = _write_tiff16(codes, icc=None, dpi=None)
    with Image.open(io.BytesIO(data)) as im:  # Pillow's own reading keeps the high byte only
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), (codes >> 8).astype(np.uint8))
    assert np.array_equal(np.rint(dipcore.decode_image(data) * 65535), codes)  # all 16 bits
    assert dipcore.decode_with_info(data).info.bits == 16


def test_alpha_is_resized_for_a_larger_output_with_bicubic_at_its_own_depth():
    alpha = np.random.default_rng(1).integers(0, 65536, (8, 6), dtype=np.uint16)
    rgba = np.concatenate([np.zeros((8, 6, 3), np.uint16), alpha[:, :, None]], axis=2)
    info = dipcore.decode_with_info(_write_tiff16(rgba, icc=None, dpi=(300.0, 300.0))).info
    out = dipcore.decode_with_info(dipcore.encode_like(np.zeros((32, 24, 3)), info).data).info  # ×4 (SR)
    expected = Image.fromarray(alpha.astype(np.float32), "F").resize((24, 32), Image.Resampling.BICUBIC)
    assert out.alpha.dtype == np.uint16 and out.alpha.shape == (32, 24)
    assert np.array_equal(out.alpha, np.clip(np.rint(np.asarray(expected)), 0, 65535).astype(np.uint16))
    assert out.dpi == pytest.approx((1200, 1200), rel=1e-4)  # the same print size


def test_what_jpeg_and_webp_cannot_hold_is_named_and_the_rest_kept():
    rgba16 = np.random.default_rng(2).integers(0, 65536, (8, 8, 4), dtype=np.uint16)
    info = dipcore.decode_with_info(_write_tiff16(rgba16, icc=SRGB, dpi=None)).info
    image = rgba16[:, :, :3] / 65535
    jpeg = dipcore.encode_like(image, info, format="JPEG")
    assert jpeg.notes == (
        "JPEG holds 8 bits per channel: 16-bit samples written as 8-bit",
        "JPEG has no alpha: the alpha channel was dropped",
    )
    with Image.open(io.BytesIO(jpeg.data)) as im:
        assert (im.format, im.mode, im.info["icc_profile"]) == ("JPEG", "RGB", SRGB)
    webp = dipcore.encode_like(image, info, format="webp")
    assert webp.notes == ("WebP holds 8 bits per channel: 16-bit samples written as 8-bit",)
    with Image.open(io.BytesIO(webp.data)) as im:
        assert (im.format, im.mode, im.info["icc_profile"]) == ("WEBP", "RGBA", SRGB)
        assert np.abs(np.asarray(im.getchannel("A")).astype(int) - np.rint(rgba16[:, :, 3] / 257)).max() <= 1


def test_a_cmyk_profile_is_not_put_on_rgb_samples():
    cmyk = _save(Image.new("CMYK", (4, 4), (0, 50, 100, 0)), "JPEG", icc_profile=SRGB[:16] + b"CMYK" + SRGB[20:])
    decoded = dipcore.decode_with_info(cmyk)
    assert decoded.info.icc_profile is None
    assert decoded.info.notes == ("CMYK converted to RGB without colour management, its ICC profile dropped",)
    assert dipcore.encode_like(decoded.image, decoded.info).notes == decoded.info.notes


def test_decode_image_and_encode_png_are_unchanged_for_their_callers():
    rgba = np.random.default_rng(3).integers(0, 256, (5, 4, 4), dtype=np.uint8)
    x = dipcore.decode_image(_save(Image.fromarray(rgba), "PNG"))
    assert x.shape == (5, 4, 3) and np.array_equal(np.rint(x * 255), rgba[:, :, :3])  # alpha dropped, as before
    assert dipcore.encode_png(x)[24:26] == b"\x08\x02"  # 8-bit RGB


def test_psnr_of_16bit_tiffs_sees_their_low_bytes():
    # Two references that differ only below the high byte: read at 8 bits (as before) they were identical (inf dB).
    codes = np.random.default_rng(4).integers(0, 65535, (16, 16, 3), dtype=np.uint16)
    a = dipcore.decode_image(_write_tiff16(codes, icc=None, dpi=None))
    b = dipcore.decode_image(_write_tiff16(codes + 1, icc=None, dpi=None))
    assert dipcore.psnr(a, b) == pytest.approx(20 * np.log10(65535), abs=1e-3)  # one code of 65,535 everywhere
