"""dipcore.imageio: decode every mode and format, 8/16-bit round trips, EXIF, decompression guard, bad data."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from dipcore.errors import ConfigError, ImageDecodeError, ImageTooLargeError
from dipcore.imageio import DEFAULT_MAX_PIXELS, decode_image, encode_image, encode_png, load_image, to_float_image


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _filter_rows(raw: np.ndarray, bpp: int, filters: tuple[int, ...]) -> bytes:
    """PNG-filter (H, rowbytes) uint8 rows, row i with filter filters[i % len]; an independent reference encoder."""
    out, prev = [], np.zeros(raw.shape[1], np.int64)
    for i, row in enumerate(raw.astype(np.int64)):
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        f = filters[i % len(filters)]
        pred = [0 * row, left, prev, (left + prev) // 2, _paeth(left, prev, upleft)][f]
        out.append(bytes([f]) + ((row - pred) % 256).astype(np.uint8).tobytes())
        prev = row
    return b"".join(out)


_ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]


def _png16(a: np.ndarray, *, filters=(0, 1, 2, 3, 4), interlace: bool = False) -> bytes:
    """A 16-bit PNG of uint16 (H, W, C), C = 1..4 -> colour type 0, 4, 2, 6, written without Pillow."""
    h, w, c = a.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    passes = _ADAM7 if interlace else [(0, 0, 1, 1)]  # (y0, x0, dy, dx)
    idat = b""
    for y0, x0, dy, dx in passes:
        sub = a[y0::dy, x0::dx]
        if sub.size:
            rows = sub.astype(">u2").view(np.uint8).reshape(sub.shape[0], -1)
            idat += _filter_rows(rows, 2 * c, filters)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, int(interlace))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(idat)) + _chunk(b"IEND", b"")


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w×h pixels but carries almost no data: decoding it would fail as truncated."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 100))


# --- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_png_8bit_round_trip(rng, channels):
    x = rng.random((13, 17, channels)).astype(np.float32)
    y = decode_image(encode_png(x))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_array_equal(y, (np.rint(x.astype(np.float64) * 255) / 255).astype(np.float32))
    assert np.abs(y - x).max() <= 0.5 / 255 + 1e-7


@pytest.mark.parametrize("channels", [1, 3])
def test_png_16bit_round_trip(rng, channels):
    x = rng.random((13, 17, channels))
    data = encode_png(x, bits=16)
    assert data[24] == 16  # IHDR bit depth
    y = decode_image(data)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= 0.5 / 65535 + 1e-7  # an 8-bit path would be off by up to 1/510


@pytest.mark.parametrize("bits", [8, 16])
def test_encode_rounds_instead_of_truncating(bits):
    top = 2**bits - 1
    x = np.array([[0.6, 100.4, 100.6]]) / top
    assert np.rint(decode_image(encode_png(x, bits=bits)).ravel() * top).tolist() == [1, 100, 101]


def test_encode_png_rejects_bad_input():
    with pytest.raises(ConfigError):
        encode_png(np.full((2, 2), 1.5))
    with pytest.raises(ConfigError):
        encode_png(np.zeros((2, 2)), bits=12)


# --- 16-bit PNGs ---------------------------------------------------------------------------------------------------


def test_16bit_grey_png_scales_by_bit_depth_not_maximum():
    a = np.array([[0, 1000, 3000]], np.uint16)  # max far below 65535
    y = decode_image(_save(Image.fromarray(a), "PNG"))  # Pillow writes I;16
    np.testing.assert_allclose(y[..., 0], a / 65535, rtol=0, atol=1e-8)


@pytest.mark.parametrize("interlace", [False, True])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_keeps_all_bits_through_every_filter(rng, channels, interlace):
    a = rng.integers(0, 40000, (11, 13, channels), dtype=np.uint16)  # max < 65535: no max scaling
    y = decode_image(_png16(a, interlace=interlace))
    keep = 1 if channels <= 2 else 3  # alpha dropped
    assert y.shape == (11, 13, keep)
    np.testing.assert_array_equal(y, a[:, :, :keep].astype(np.float32) / 65535)


# --- modes ---------------------------------------------------------------------------------------------------------


def _rgb(rng, h=6, w=7) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_mode_1(rng):
    bits = rng.random((6, 7)) > 0.5
    y = decode_image(_save(Image.fromarray(bits), "PNG"))
    assert y.shape == (6, 7, 1)
    np.testing.assert_array_equal(y[..., 0], bits.astype(np.float32))


def test_mode_l_and_la(rng):
    g = _rgb(rng)[..., 0]
    la = Image.merge("LA", [Image.fromarray(g), Image.fromarray(255 - g)])
    for im in (Image.fromarray(g), la):
        y = decode_image(_save(im, "PNG"))
        assert y.shape == (6, 7, 1)
        np.testing.assert_array_equal(y[..., 0], g / np.float32(255))


def test_rgba_drops_alpha_without_compositing(rng):
    rgb = _rgb(rng)
    alpha = np.zeros(rgb.shape[:2], np.uint8)  # fully transparent: compositing over white would give 1.0
    y = decode_image(_save(Image.fromarray(np.dstack([rgb, alpha])), "PNG"))
    np.testing.assert_array_equal(y, rgb / np.float32(255))


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_images(rng, transparency):
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (6, 7), dtype=np.uint8)
    im = Image.frombytes("P", (7, 6), idx.tobytes())
    im.putpalette(palette.ravel().tolist())
    kw = {"transparency": int(idx[0, 0])} if transparency else {}
    for fmt in ("PNG", "GIF"):
        y = decode_image(_save(im, fmt, **kw))
        assert y.shape == (6, 7, 3)
        np.testing.assert_array_equal(y, palette[idx] / np.float32(255))  # transparent entry keeps its colour


def test_cmyk(rng):
    cmyk = Image.fromarray(rng.integers(0, 256, (6, 7, 4), dtype=np.uint8), mode="CMYK")
    expected = np.asarray(cmyk.convert("RGB")) / np.float32(255)
    np.testing.assert_array_equal(decode_image(_save(cmyk, "TIFF")), expected)
    y = decode_image(_save(cmyk, "JPEG", quality=100))
    assert y.shape == (6, 7, 3) and np.abs(y - expected).mean() < 0.05


def test_cyan_cmyk_is_cyan():
    y = decode_image(_save(Image.new("CMYK", (3, 2), (255, 0, 0, 0)), "TIFF"))
    np.testing.assert_array_equal(y[0, 0], [0, 1, 1])


def test_mode_i_int32_tiff():
    a = np.array([[0, 2**20, 2**31 - 1]], np.int32)
    im = Image.fromarray(a)
    assert im.mode == "I"
    y = decode_image(_save(im, "TIFF"))
    np.testing.assert_allclose(y[..., 0], a / (2**31 - 1), rtol=1e-6)
    with pytest.raises(ImageDecodeError, match="negative"):
        decode_image(_save(Image.fromarray(np.array([[-5, 3]], np.int32)), "TIFF"))


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_16bit_grey_tiff(mode):
    a = np.array([[0, 1000, 65535]], np.uint16)
    im = Image.frombytes(mode, (3, 1), a.astype("<u2" if mode == "I;16" else ">u2").tobytes())
    reopened = Image.open(io.BytesIO(_save(im, "TIFF")))
    assert reopened.mode == mode
    np.testing.assert_array_equal(decode_image(_save(im, "TIFF"))[..., 0], a / np.float32(65535))


def test_mode_f_tiff():
    f = np.array([[0.0, 0.25, 1.0]], np.float32)
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(f), "TIFF"))[..., 0], f)
    with pytest.raises(ImageDecodeError, match=r"outside \[0, 1\]"):
        decode_image(_save(Image.fromarray(f * 255), "TIFF"), name="f.tif")


def test_mode_argument(rng):
    rgb = _rgb(rng)
    grey = decode_image(_save(Image.fromarray(rgb[..., 0]), "PNG"), mode="RGB")
    assert grey.shape == (6, 7, 3) and (grey == grey[..., :1]).all()
    luma = decode_image(_save(Image.fromarray(rgb), "PNG"), mode="L")
    assert luma.shape == (6, 7, 1)
    np.testing.assert_allclose(luma[..., 0], rgb @ [0.299, 0.587, 0.114] / 255, atol=1e-6)
    with pytest.raises(ConfigError):
        decode_image(_save(Image.fromarray(rgb), "PNG"), mode="RGBA")


# --- formats and EXIF ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, kw", [("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {}), ("PPM", {})])
def test_lossless_formats(rng, fmt, kw):
    rgb = _rgb(rng)
    np.testing.assert_array_equal(decode_image(_save(Image.fromarray(rgb), fmt, **kw)), rgb / np.float32(255))


def test_jpeg_and_lossy_webp(rng):
    smooth = np.linspace(0, 1, 32 * 32 * 3).reshape(32, 32, 3)
    for fmt in ("JPEG", "WEBP"):
        y = decode_image(_save(Image.fromarray(np.uint8(smooth * 255)), fmt, quality=95))
        assert y.shape == (32, 32, 3) and np.abs(y - smooth).mean() < 0.02


def test_exif_orientation_6_jpeg():
    exif = Image.Exif()
    exif[0x0112] = 6
    y = decode_image(_save(Image.new("RGB", (30, 20), (200, 10, 10)), "JPEG", exif=exif))
    assert y.shape == (30, 20, 3)  # rotated: H and W swap


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(rng, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(Image.fromarray(_rgb(rng, 4, 6)), "PNG", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))) / np.float32(255)
    np.testing.assert_array_equal(decode_image(data), expected)


def test_exif_orientation_on_16bit_colour_png(rng):
    a = rng.integers(0, 65536, (4, 6, 3), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 8
    body = _png16(a)
    data = body[:-12] + _chunk(b"eXIf", exif.tobytes()) + body[-12:]  # eXIf before IEND
    np.testing.assert_array_equal(decode_image(data), np.rot90(a, 1).astype(np.float32) / 65535)


# --- guard and errors ----------------------------------------------------------------------------------------------


def test_decompression_guard_on_real_png():
    data = _save(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(ImageTooLargeError, match="2000×2000") as err:
        decode_image(data, max_pixels=1_000_000, name="big.png")
    assert "big.png" in str(err.value)
    assert decode_image(data, max_pixels=4_000_000).shape == (2000, 2000, 1)


def test_guard_runs_before_pixel_decoding():
    # 9000×9000 > 64 Mpx but under Pillow's limit; the data is truncated, so only a header check says "too large"
    assert DEFAULT_MAX_PIXELS < 9000 * 9000 < Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageTooLargeError, match="9000×9000"):
        decode_image(_png_header_only(9000, 9000))
    with pytest.raises(ImageDecodeError) as err:
        decode_image(_png_header_only(9000, 9000), max_pixels=10**8)
    assert type(err.value) is ImageDecodeError and "truncated" in str(err.value)


def test_pillow_bomb_error_becomes_image_too_large():
    with pytest.raises(ImageTooLargeError):
        decode_image(_png_header_only(20000, 20000), max_pixels=10**12, name="bomb.png")  # > 2 × Pillow's limit


def _assert_decode_error(data: bytes, fragment: str) -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, name="photo-17.png")
    assert type(err.value) is ImageDecodeError  # not ImageTooLargeError, not a Pillow or zlib type
    assert "photo-17.png" in str(err.value) and fragment in str(err.value)


def test_empty_and_non_image_data():
    _assert_decode_error(b"", "empty file")
    _assert_decode_error(b"hello, this is a text file\n" * 20, "not a recognised image format")
    _assert_decode_error(bytes(range(256)) * 4, "not a recognised image format")


def test_truncated_files(rng):
    png = encode_png(rng.random((64, 64, 3)))
    _assert_decode_error(png[: len(png) // 2], "truncated")
    jpeg = _save(Image.fromarray(_rgb(rng, 64, 64)), "JPEG")
    _assert_decode_error(jpeg[: len(jpeg) // 2], "truncated")
    _assert_decode_error(_png16(rng.integers(0, 65536, (32, 32, 3), dtype=np.uint16))[:-200], "truncated")


def test_corrupt_png(rng):
    png = bytearray(encode_png(rng.random((64, 64, 3))))
    start = png.index(b"IDAT") + 4
    png[start + 100 : start + 110] = bytes(b ^ 0xFF for b in png[start + 100 : start + 110])
    _assert_decode_error(bytes(png), "corrupt")
    # The same damage with a recomputed CRC: now the deflate stream itself must be found broken.
    length = struct.unpack(">I", png[start - 8 : start - 4])[0]
    png[start + length : start + length + 4] = struct.pack(">I", zlib.crc32(png[start - 4 : start + length]))
    _assert_decode_error(bytes(png), "corrupt")


def test_non_bytes_input():
    with pytest.raises(ConfigError, match="load_image"):
        decode_image("picture.png")  # type: ignore[arg-type]


def test_load_image(tmp_path, rng):
    x = rng.random((5, 6, 3))
    path = tmp_path / "x.png"
    path.write_bytes(encode_png(x, bits=16))
    np.testing.assert_array_equal(load_image(path), decode_image(path.read_bytes()))
    assert load_image(path, mode="L").shape == (5, 6, 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"bad\.png: empty file"):
        load_image(bad)
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


# --- to_float_image and encode_image -------------------------------------------------------------------------------


def test_to_float_image_dtypes_and_shapes():
    u8 = np.array([[0, 51, 255]], np.uint8)
    np.testing.assert_allclose(to_float_image(u8)[..., 0], [[0, 0.2, 1]], atol=1e-7)
    assert to_float_image(np.array([[1000]], np.uint16)).item() == np.float32(1000) / 65535  # by range, not max
    assert to_float_image(np.array([[True, False]])).ravel().tolist() == [1.0, 0.0]
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., 3] = 255
    assert to_float_image(rgba).shape == (2, 3, 3)
    assert to_float_image(np.zeros((2, 3), np.float64)).dtype == np.float32
    x = np.full((2, 2, 3), 0.5, np.float32)
    y = to_float_image(x)
    y[:] = 0
    assert x[0, 0, 0] == 0.5  # a copy, never a view of the input


@pytest.mark.parametrize(
    "bad",
    [
        np.full((2, 2), 1.01),
        np.full((2, 2), -0.1),
        np.full((2, 2), np.nan),
        np.zeros((2, 2), np.int32),
        np.zeros((2, 2, 5)),
        np.zeros((2, 2, 3, 1)),
        [[0.5]],
        "x.png",
    ],
)
def test_to_float_image_rejects(bad):
    with pytest.raises(ConfigError):
        to_float_image(bad)


def test_to_float_image_torch_and_pil(rng):
    torch = pytest.importorskip("torch")
    x = rng.random((3, 4, 5)).astype(np.float32)  # (C, H, W)
    t = torch.from_numpy(x)
    np.testing.assert_array_equal(to_float_image(t), x.transpose(1, 2, 0))
    np.testing.assert_array_equal(to_float_image(t[None]), x.transpose(1, 2, 0))
    assert to_float_image(t[0]).shape == (4, 5, 1)
    rgb = _rgb(rng)
    np.testing.assert_array_equal(to_float_image(Image.fromarray(rgb)), rgb / np.float32(255))
    assert to_float_image(Image.fromarray(rgb).convert("LA")).shape == (6, 7, 1)


def test_encode_image_formats(rng):
    x = np.linspace(0, 1, 16 * 16 * 3).reshape(16, 16, 3)
    for fmt in ("png", "jpeg", "webp", "tiff"):
        assert np.abs(decode_image(encode_image(x, format=fmt)) - x).mean() < 0.02, fmt
    grey = rng.random((5, 6, 1))
    assert np.abs(decode_image(encode_image(grey, format="tiff", bits=16)) - grey).max() <= 0.5 / 65535 + 1e-7
    with pytest.raises(ConfigError):
        encode_image(x, format="jpeg", bits=16)
    with pytest.raises(ConfigError):
        encode_image(x, format="gif")
