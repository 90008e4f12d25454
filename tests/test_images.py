"""Decoding every image mode to the right 8-bit RGB, reduced-size JPEG decoding, and bad images."""

from __future__ import annotations

import importlib.util
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, SHARED_DATA
from PIL import Image, ImageCms

from geoscope.encoders.efficientnet import lite_preprocess
from geoscope.encoders.preprocess import Views
from geoscope.errors import BadImageError
from geoscope.images import open_image, read_rgb

EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))


def real_rgb(index: int = 0) -> np.ndarray:
    """One of the example street photos as an 8-bit RGB array."""
    with Image.open(EXAMPLES[index]) as image:
        return np.asarray(image.convert("RGB"))


def decoded(path: Path | bytes, **kwargs) -> np.ndarray:
    return np.asarray(open_image(path, **kwargs)).astype(int)


def write_png16(path: Path, values: np.ndarray) -> None:
    """A 16-bit PNG (gray, gray+alpha, RGB or RGBA by the last axis), written by hand: PIL cannot."""
    values = values if values.ndim == 3 else values[:, :, None]
    height, width, channels = values.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None].astype(float) / 255
    return np.rint(rgb * a + 255 * (1 - a)).astype(int)


def test_16_bit_gradient_png_matches_its_8_bit_twin(tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 65535, 640).round().astype(np.uint16), (48, 1))
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    Image.fromarray(np.rint(gradient / 257).astype(np.uint8)).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    wide, narrow = decoded(tmp_path / "g16.png"), decoded(tmp_path / "g8.png")
    assert narrow.max() == 255 and narrow.min() == 0  # a real gradient, not all white
    assert np.abs(wide - narrow).max() <= 1
    assert (wide == 255).mean() < 0.01  # the bug: everything above level 255 came out white


@pytest.mark.parametrize("kind", ["I;16 png", "I;16B tiff", "I tiff", "F tiff", "F tiff 0-255"])
def test_wide_gray_modes_of_a_real_photo_match_its_8_bit_gray(tmp_path: Path, kind: str) -> None:
    gray8 = np.asarray(Image.fromarray(real_rgb(1)).convert("L"))
    rng = np.random.default_rng(0)
    gray16 = np.clip(gray8.astype(np.int64) * 257 + rng.integers(-100, 101, gray8.shape), 0, 65535)
    arrays = {
        "I;16 png": gray16.astype(np.uint16), "I;16B tiff": gray16.astype(">u2"), "I tiff": gray16.astype(np.int32),
        "F tiff": (gray16 / 65535).astype(np.float32), "F tiff 0-255": gray8.astype(np.float32),
    }
    path = tmp_path / ("wide.png" if kind.endswith("png") else "wide.tif")
    Image.fromarray(arrays[kind]).save(path)
    assert Image.open(path).mode == kind.split()[0]
    got = decoded(path)
    assert got.shape == (*gray8.shape, 3)
    assert np.abs(got - gray8[..., None]).max() <= 1


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16_bit_png_with_colour_and_alpha_matches_the_8_bit_picture(tmp_path: Path, channels: int) -> None:
    rgb = real_rgb(2)
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    alpha = np.full(gray.shape, 255, dtype=np.uint8)
    alpha[:, : gray.shape[1] // 3] = 0  # a transparent band, shown white
    alpha[:, gray.shape[1] // 3: gray.shape[1] // 2] = 128
    base = rgb if channels >= 3 else gray[..., None]
    planes = np.concatenate([base, alpha[..., None]], axis=2) if channels in (2, 4) else base
    write_png16(tmp_path / "wide.png", planes.astype(np.uint16) * 257)
    expected = base.astype(int) if channels in (1, 3) else on_white(base, alpha)
    got = decoded(tmp_path / "wide.png")
    assert np.abs(got - np.broadcast_to(expected, got.shape)).max() <= 1


def test_one_bit_palette_and_transparency_modes(tmp_path: Path) -> None:
    rgb = real_rgb(3)
    bw = Image.fromarray(rgb).convert("L").point(lambda v: 255 if v > 127 else 0).convert("1")
    bw.save(tmp_path / "bw.png")
    assert np.array_equal(decoded(tmp_path / "bw.png")[..., 0], np.asarray(bw.convert("L")))

    palette = Image.fromarray(rgb).quantize(64)
    index = np.asarray(palette)
    transparent = int(index[0, 0])
    palette.save(tmp_path / "p.png", transparency=transparent)
    assert Image.open(tmp_path / "p.png").mode == "P"
    expected = np.asarray(palette.convert("RGB")).astype(int)
    expected[index == transparent] = 255
    assert np.array_equal(decoded(tmp_path / "p.png"), expected)

    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).round().astype(np.uint8), (rgb.shape[0], 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    assert np.abs(decoded(tmp_path / "rgba.png") - on_white(rgb, alpha)).max() <= 1
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    assert np.abs(decoded(tmp_path / "la.png") - on_white(gray[..., None], alpha)).max() <= 1
    opaque = np.dstack([rgb, np.full(alpha.shape, 255, np.uint8)])
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    assert np.array_equal(decoded(tmp_path / "opaque.png"), rgb)


def test_cmyk_jpeg_and_lab_tiff_come_back_as_the_rgb_original(tmp_path: Path) -> None:
    rgb = real_rgb(4)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    cmyk_error = np.abs(decoded(tmp_path / "cmyk.jpg") - rgb).mean()
    assert cmyk_error <= 1.5 * np.abs(decoded(tmp_path / "rgb.jpg") - rgb).mean()  # only JPEG's own loss

    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    ImageCms.applyTransform(Image.fromarray(rgb), to_lab).save(tmp_path / "lab.tif")
    assert Image.open(tmp_path / "lab.tif").mode == "LAB"
    assert np.abs(decoded(tmp_path / "lab.tif") - rgb).mean() < 1.0


def test_exif_orientation_is_applied_also_when_decoding_reduced(tmp_path: Path) -> None:
    shown = Image.fromarray(real_rgb(5))
    stored = shown.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "turned.png", exif=exif)
    assert np.array_equal(decoded(tmp_path / "turned.png"), np.asarray(shown))

    tall = shown.resize((400, 1200), Image.Resampling.BICUBIC)
    tall.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", exif=exif, quality=95)
    full = open_image(tmp_path / "turned.jpg")
    reduced = open_image(tmp_path / "turned.jpg", min_size=(200, 600))  # as displayed: tall
    assert full.size == (400, 1200)
    assert reduced.size == (200, 600)  # decoded at 1/2: the displayed orientation was honoured
    halved = np.asarray(full.resize(reduced.size, Image.Resampling.BOX)).astype(int)
    assert np.abs(np.asarray(reduced).astype(int) - halved).mean() < 3


def test_large_jpeg_decodes_at_the_smallest_scale_that_keeps_the_encoder_input(tmp_path: Path) -> None:
    pre = lite_preprocess("efficientnet-lite0")
    big = Image.fromarray(real_rgb(6)).resize((1792, 1344), Image.Resampling.BICUBIC)
    big.save(tmp_path / "big.jpg", quality=90)
    reduced = open_image(tmp_path / "big.jpg", min_size=pre.decode_size)
    assert reduced.size == (448, 336)  # 1/4: 1/8 would be 224×168, below 224
    full = open_image(tmp_path / "big.jpg")
    assert full.size == (1792, 1344)
    a, b = pre(reduced), pre(full)
    assert np.abs(a - b).mean() < 0.05 * np.abs(b).mean()  # the same picture after preprocessing


def test_small_images_decode_bit_identically_with_min_size() -> None:
    pre = lite_preprocess("efficientnet-lite0")
    paths = list(EXAMPLES)
    for name in ("london-uk", "croatia", "us-west"):  # 224, 320×320, 448×224: under twice the input size
        paths += sorted((SHARED_DATA / name / "images").glob("*.jpg"))[:4]
    for path in paths:
        plain, reduced = open_image(path), open_image(path, min_size=pre.decode_size)
        assert plain.size == reduced.size
        assert np.array_equal(np.asarray(plain), np.asarray(reduced)), path
        assert np.array_equal(pre.views(plain, Views()), pre.views(reduced, Views()))


def test_bomb_limit_looks_at_the_declared_size_before_reduced_decoding(tmp_path: Path) -> None:
    Image.fromarray(real_rgb(7)).resize((1600, 1200)).save(tmp_path / "big.jpg", quality=80)
    with pytest.raises(BadImageError, match="decompression bomb"):
        open_image(tmp_path / "big.jpg", max_pixels=1_000_000, min_size=(224, 224))
    assert open_image(tmp_path / "big.jpg", min_size=(224, 224)).size == (400, 300)


def test_bad_images_get_one_line_naming_the_file(tmp_path: Path) -> None:
    data = (REPO / "examples" / "images" / "london-uk-1.jpg").read_bytes()
    odd = tmp_path / "broken\nname.jpg"
    odd.write_bytes(data[: len(data) // 3])
    for kwargs in ({}, {"min_size": (8, 8)}):
        with pytest.raises(BadImageError) as info:
            open_image(odd, **kwargs)
        message = str(info.value)
        assert "\n" not in message and "'" in message and "truncated" in message
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(BadImageError, match="not an image file"):
        open_image(tmp_path / "text.jpg")
    with pytest.raises(BadImageError, match="not found"):
        open_image(tmp_path / "missing.jpg")
    (tmp_path / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    if importlib.util.find_spec("pillow_heif") is None:
        with pytest.raises(BadImageError, match="pillow-heif"):
            open_image(tmp_path / "phone.heic")


def test_preprocess_reads_a_wide_mode_image_as_rgb() -> None:
    gray16 = Image.fromarray(np.full((240, 320), 30000, dtype=np.uint16))
    pre = lite_preprocess("efficientnet-lite0")
    level = 30000 / 257 / 255
    expected = (level - np.asarray(pre.mean)) / np.asarray(pre.std)
    got = pre(gray16)
    assert np.allclose(got.mean(axis=(1, 2)), expected, atol=0.01)


def test_normalisation_and_crops_match_float_arithmetic_to_the_bit() -> None:
    pre = lite_preprocess("efficientnet-lite0")
    rgb = real_rgb(0)
    mean, std = np.asarray(pre.mean, np.float32), np.asarray(pre.std, np.float32)
    expected = ((rgb.astype(np.float32) - mean * 255.0) * (1.0 / (std * 255.0))).transpose(2, 0, 1)
    got = pre.to_array(Image.fromarray(rgb))
    assert got.dtype == np.float32 and np.array_equal(got, expected)
    wide = Image.fromarray(rgb).resize((448, 224), Image.Resampling.BICUBIC)
    crops = pre.views(wide, Views(hflip=True, crops=3))
    flipped = wide.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    boxes = pre.crop_boxes(448, 224, n=3)
    assert np.array_equal(crops, np.stack([pre.to_array(flipped.crop(box)) for box in boxes]))


def _jpeg_variants(folder: Path) -> list[Path]:
    """Real street photos as JPEGs of every common kind: baseline 4:2:0, progressive, 4:4:4, odd sizes."""
    paths = list(EXAMPLES)
    for name in ("london-uk", "croatia", "us-west"):
        paths += sorted((SHARED_DATA / name / "images").glob("*.jpg"))[:3]
    photo = Image.fromarray(real_rgb(3))
    for kind, options in {"progressive": {"progressive": True}, "444": {"subsampling": 0},
                          "odd": {"subsampling": 2}}.items():
        image = photo.resize((237, 229)) if kind == "odd" else photo
        image.save(folder / f"{kind}.jpg", quality=88, **options)
        paths.append(folder / f"{kind}.jpg")
    return paths


def test_read_rgb_decodes_upright_colour_jpegs_to_the_same_pixels_as_pil(tmp_path: Path) -> None:
    pre = lite_preprocess("efficientnet-lite0")
    for path in _jpeg_variants(tmp_path):
        fast = read_rgb(path, min_size=pre.decode_size)
        assert isinstance(fast, np.ndarray) and fast.dtype == np.uint8, path
        assert np.array_equal(fast, np.asarray(open_image(path))), path
        assert np.array_equal(read_rgb(path.read_bytes()), fast)
        for views in (Views(), Views(hflip=True), Views(crops=3)):  # as array views, or resized through PIL
            assert np.array_equal(pre.views(fast, views), pre.views(open_image(path), views)), (path, views)


def test_read_rgb_decodes_big_and_turned_jpegs_at_pils_scale_and_orientation(tmp_path: Path) -> None:
    photo = Image.fromarray(real_rgb(5)).resize((1800, 1352))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"turned-{orientation}.jpg"
        photo.save(path, exif=exif, quality=90, subsampling=2 if orientation % 2 else 1)
        for min_size in (None, (900, 600), (400, 400), (224, 224), (100, 224), (4000, 224)):  # 1, 1/2, 1/4, 1/8, 1
            fast = read_rgb(path, min_size=min_size)
            assert isinstance(fast, np.ndarray), (orientation, min_size)
            assert np.array_equal(fast, np.asarray(open_image(path, min_size=min_size))), (orientation, min_size)
    pre = lite_preprocess("efficientnet-lite0")
    fast = read_rgb(tmp_path / "turned-6.jpg", min_size=pre.decode_size)  # a strided view: preprocessed alike
    for views in (Views(), Views(hflip=True), Views(crops=3)):
        shown = open_image(tmp_path / "turned-6.jpg", min_size=pre.decode_size)
        assert np.array_equal(pre.views(fast, views), pre.views(shown, views))


def test_read_rgb_leaves_every_other_image_to_pil(tmp_path: Path) -> None:
    shown = Image.fromarray(real_rgb(5))
    shown.convert("L").save(tmp_path / "gray.jpg")
    shown.save(tmp_path / "photo.png")
    shown.convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("gray.jpg", "photo.png", "cmyk.jpg"):
        got = read_rgb(tmp_path / name, min_size=(224, 224))
        assert isinstance(got, Image.Image) and got.mode == "RGB", name
        assert np.array_equal(np.asarray(got), np.asarray(open_image(tmp_path / name, min_size=(224, 224))))
    shown.resize((1792, 1344)).save(tmp_path / "big.jpg", quality=90)
    data = (REPO / "examples" / "images" / "london-uk-1.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadImageError, match="truncated"):  # PIL names what is wrong
        read_rgb(tmp_path / "cut.jpg")
    with pytest.raises(BadImageError, match="decompression bomb"):
        read_rgb(tmp_path / "big.jpg", max_pixels=1_000_000)
