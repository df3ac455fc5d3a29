"""core.data.imageio: every format, mode and bit depth we promise, EXIF, DICOM, and clear errors for bad files."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.imageio import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageData, ImageReadError, is_dicom_file,
                          is_mask_file, mask_image_stem, probe_image, read_grey, read_image, read_mask)
from tests.dicom_files import write_dicom

GREY_RAMP = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))  # 8 x 16, values 0..240


def colour_pattern() -> np.ndarray:
    """8 x 16 RGB with distinct channels (a real colour image)."""
    rgb = np.zeros((8, 16, 3), dtype=np.uint8)
    rgb[..., 0] = GREY_RAMP
    rgb[..., 1] = 255 - GREY_RAMP
    rgb[..., 2] = 77
    return rgb


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` but holds almost no data (a decompression bomb stand-in)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# -- raster formats and modes -----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix,kwargs", [(".png", {}), (".tif", {}), (".bmp", {}), (".tiff", {"compression": "tiff_lzw"})])
def test_lossless_grey_8bit(tmp_path, suffix, kwargs):
    path = save(tmp_path / f"grey{suffix}", Image.fromarray(GREY_RAMP, "L"), **kwargs)
    data = read_image(path)
    assert isinstance(data, ImageData)
    assert data.array.dtype == np.float32 and data.array.shape == (8, 16)
    assert not data.is_color and data.bit_depth == 8
    np.testing.assert_allclose(data.array, GREY_RAMP / 255.0, atol=1e-7)
    assert (data.width, data.height) == (16, 8)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_lossless_colour_rgb(tmp_path, suffix):
    rgb = colour_pattern()
    data = read_image(save(tmp_path / f"rgb{suffix}", Image.fromarray(rgb, "RGB")))
    assert data.is_color and data.array.shape == (8, 16, 3) and data.array.dtype == np.float32
    np.testing.assert_allclose(data.array, rgb / 255.0, atol=1e-7)


def test_rgb_with_identical_channels_comes_back_grey(tmp_path):
    rgb = np.repeat(GREY_RAMP[..., None], 3, axis=-1)
    data = read_image(save(tmp_path / "greyish.png", Image.fromarray(rgb, "RGB")))
    assert not data.is_color and data.array.shape == (8, 16)
    np.testing.assert_allclose(data.array, GREY_RAMP / 255.0, atol=1e-7)


def test_jpeg_grey_and_colour(tmp_path):
    grey = read_image(save(tmp_path / "g.jpg", Image.fromarray(GREY_RAMP, "L"), quality=100))
    assert grey.array.shape == (8, 16) and not grey.is_color
    np.testing.assert_allclose(grey.array, GREY_RAMP / 255.0, atol=0.05)
    colour = read_image(save(tmp_path / "c.jpeg", Image.fromarray(colour_pattern(), "RGB"), quality=100))
    assert colour.is_color and colour.array.shape == (8, 16, 3)
    np.testing.assert_allclose(colour.array, colour_pattern() / 255.0, atol=0.1)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = Image.fromarray(colour_pattern(), "RGB").convert("CMYK")
    data = read_image(save(tmp_path / "cmyk.jpg", cmyk, quality=100))
    assert data.meta["mode"] == "CMYK"
    assert data.is_color and data.array.shape == (8, 16, 3)
    assert 0.0 <= data.array.min() and data.array.max() <= 1.0


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.zeros((8, 16, 4), dtype=np.uint8)
    rgba[..., :3] = colour_pattern()
    rgba[..., 3] = 255
    rgba[:, :8, 3] = 0  # left half fully transparent
    data = read_image(save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA")))
    assert data.is_color and data.array.shape == (8, 16, 3)
    assert np.all(data.array[:, :8] == 0.0)
    np.testing.assert_allclose(data.array[:, 8:], colour_pattern()[:, 8:] / 255.0, atol=1e-6)


def test_grey_with_alpha_is_composited_on_black(tmp_path):
    la = np.stack([GREY_RAMP, np.full_like(GREY_RAMP, 255)], axis=-1)
    la[0, :, 1] = 0
    data = read_image(save(tmp_path / "la.png", Image.fromarray(la, "LA")))
    assert not data.is_color and data.array.shape == (8, 16)
    assert np.all(data.array[0] == 0.0)
    np.testing.assert_allclose(data.array[1:], GREY_RAMP[1:] / 255.0, atol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_palette_images(tmp_path, suffix):
    colour = Image.fromarray(colour_pattern(), "RGB").quantize(colors=64)
    data = read_image(save(tmp_path / f"pal{suffix}", colour))
    assert data.meta["mode"] == "P"
    assert data.is_color and data.array.shape == (8, 16, 3)
    np.testing.assert_allclose(data.array, np.asarray(colour.convert("RGB")) / 255.0, atol=1e-6)
    grey_palette = Image.fromarray(GREY_RAMP, "L").convert("P")
    grey = read_image(save(tmp_path / f"greypal{suffix}", grey_palette))
    assert not grey.is_color and grey.array.shape == (8, 16)


def test_palette_with_transparency(tmp_path):
    image = Image.fromarray(colour_pattern(), "RGB").quantize(colors=16)
    transparent_index = int(np.asarray(image)[0, 0])
    path = save(tmp_path / "paltrans.png", image, transparency=transparent_index)
    data = read_image(path)
    assert data.array.shape[:2] == (8, 16)
    assert np.all(data.array[0, 0] == 0.0)


def test_one_bit_image(tmp_path):
    bits = (GREY_RAMP > 100)
    data = read_image(save(tmp_path / "bits.png", Image.fromarray(bits)))
    assert data.bit_depth == 1 and not data.is_color
    np.testing.assert_array_equal(data.array, bits.astype(np.float32))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_scaled_by_type_max(tmp_path, suffix):
    values = (np.arange(8 * 16, dtype=np.uint16).reshape(8, 16) * 500)
    values[0, 0], values[-1, -1] = 0, 65535
    data = read_image(save(tmp_path / f"deep{suffix}", Image.fromarray(values)))
    assert data.meta["mode"].startswith("I;16")
    assert data.bit_depth == 16 and not data.is_color and data.array.dtype == np.float32
    np.testing.assert_allclose(data.array, values / 65535.0, rtol=1e-6)
    assert data.array.max() == 1.0


def test_int32_tiff_in_16bit_range_and_beyond(tmp_path):
    in_range = np.array([[0, 1000], [30000, 65535]], dtype=np.int32)
    data = read_image(save(tmp_path / "int.tif", Image.fromarray(in_range, "I")))
    assert data.meta["mode"] == "I" and data.bit_depth == 16
    np.testing.assert_allclose(data.array, in_range / 65535.0, rtol=1e-6)
    wide = np.array([[-100, 0], [100, 1_000_000]], dtype=np.int32)
    data = read_image(save(tmp_path / "wide.tif", Image.fromarray(wide, "I")))
    assert data.bit_depth == 32 and data.array.min() == 0.0 and data.array.max() == 1.0


def test_float_tiff(tmp_path):
    unit = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    data = read_image(save(tmp_path / "unit.tif", Image.fromarray(unit, "F")))
    assert data.meta["mode"] == "F"
    np.testing.assert_allclose(data.array, unit)
    hounsfield = np.array([[-1000.0, 0.0], [500.0, 1000.0]], dtype=np.float32)
    data = read_image(save(tmp_path / "hu.tif", Image.fromarray(hounsfield, "F")))
    np.testing.assert_allclose(data.array, [[0.0, 0.5], [0.75, 1.0]], atol=1e-6)


def test_exif_orientation_6_is_applied(tmp_path):
    """Orientation 6 means 'rotate 90 degrees clockwise to display': the left half ends up on top."""
    pixels = np.zeros((32, 64), dtype=np.uint8)
    pixels[:, 32:] = 255  # left half black, right half white
    image = Image.fromarray(pixels, "L")
    exif = image.getexif()
    exif[0x0112] = 6
    data = read_image(save(tmp_path / "phone.jpg", image, exif=exif, quality=95))
    assert data.array.shape == (64, 32)
    assert data.array[:28].mean() < 0.1 and data.array[36:].mean() > 0.9
    assert probe_image(tmp_path / "phone.jpg").width == 32


def test_read_grey_uses_luminance(tmp_path):
    rgb = colour_pattern()
    grey = read_grey(save(tmp_path / "c.png", Image.fromarray(rgb, "RGB")))
    expected = (rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    assert grey.shape == (8, 16) and grey.dtype == np.float32
    np.testing.assert_allclose(grey, expected, atol=1e-5)
    already_grey = read_grey(save(tmp_path / "g.png", Image.fromarray(GREY_RAMP, "L")))
    np.testing.assert_allclose(already_grey, GREY_RAMP / 255.0, atol=1e-7)


# -- masks ------------------------------------------------------------------------------------------------
def test_read_mask_is_the_union(tmp_path):
    first = np.zeros((8, 16), dtype=np.uint8)
    first[1:3, 1:4] = 255
    second = np.zeros((8, 16), dtype=np.uint8)
    second[5:7, 10:12] = 1  # any value > 0 is lesion
    a = save(tmp_path / "a_mask.png", Image.fromarray(first))
    b = save(tmp_path / "a_mask_1.png", Image.fromarray(second))
    union = read_mask([a, b])
    assert union.dtype == bool and union.shape == (8, 16)
    np.testing.assert_array_equal(union, (first > 0) | (second > 0))
    np.testing.assert_array_equal(read_mask(a), first > 0)


def test_read_mask_rejects_different_sizes(tmp_path):
    a = save(tmp_path / "a_mask.png", Image.new("L", (16, 8)))
    b = save(tmp_path / "a_mask_1.png", Image.new("L", (8, 8)))
    with pytest.raises(ImageReadError) as info:
        read_mask([a, b])
    assert info.value.path == b and "8x8" in info.value.reason


@pytest.mark.parametrize("name,is_mask,stem", [
    ("benign (1)_mask.png", True, "benign (1)"), ("benign (1)_mask_1.png", True, "benign (1)"),
    ("x_mask_12.PNG", True, "x"), ("benign (1).png", False, None), ("x_mask.jpg", False, None),
    ("x_masked.png", False, None), ("_mask.png", False, None), ("x_mask_a.png", False, None)])
def test_mask_names(name, is_mask, stem):
    assert is_mask_file(name) is is_mask
    assert mask_image_stem(name) == stem


# -- DICOM ------------------------------------------------------------------------------------------------
def test_dicom_rescale_window_and_meta(tmp_path):
    raw = np.array([[0, 532, 552], [1000, 400, 600]], dtype=np.uint16)  # HU = 2 * raw - 1024
    path = write_dicom(tmp_path / "ct.dcm", raw, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40,
                       WindowWidth=400, PatientID="P001", Modality="CT")
    data = read_image(path)
    hounsfield = raw * 2.0 - 1024.0
    expected = np.clip((hounsfield - 39.5) / 399.0 + 0.5, 0.0, 1.0)  # DICOM LINEAR window
    np.testing.assert_allclose(data.array, expected, atol=1e-6)
    assert data.array[0, 0] == 0.0 and data.array[1, 0] == 1.0
    assert data.array.dtype == np.float32 and not data.is_color and data.bit_depth == 16
    assert data.meta["case_id"] == "P001" and data.meta["modality"] == "CT"
    assert data.meta["n_frames"] == 1


def test_dicom_without_window_is_min_max_scaled_after_rescale(tmp_path):
    raw = np.array([[10, 20], [30, 50]], dtype=np.uint16)
    path = write_dicom(tmp_path / "plain.dcm", raw, RescaleSlope=0.5, RescaleIntercept=100, Modality="MR")
    data = read_image(path)
    np.testing.assert_allclose(data.array, (raw - 10) / 40.0, atol=1e-6)
    assert data.meta["modality"] == "MR" and data.meta["case_id"] is None


def test_dicom_signed_pixels_and_monochrome1(tmp_path):
    raw = np.array([[-100, 0], [100, 300]], dtype=np.int16)
    data = read_image(write_dicom(tmp_path / "m1.dcm", raw, photometric="MONOCHROME1"))
    np.testing.assert_allclose(data.array, 1.0 - (raw + 100) / 400.0, atol=1e-6)


def test_dicom_multiframe_takes_the_first_frame(tmp_path):
    frames = np.stack([np.full((4, 5), v, dtype=np.uint16) for v in (0, 1000, 2000)])
    frames[0, 0, 0] = 100  # so the first frame is not constant
    data = read_image(write_dicom(tmp_path / "cine.dcm", frames))
    assert data.array.shape == (4, 5) and data.meta["n_frames"] == 3
    assert data.array[0, 0] == 1.0 and data.array[1, 1] == 0.0


def test_dicom_rgb(tmp_path):
    rgb = colour_pattern()
    data = read_image(write_dicom(tmp_path / "us.dcm", rgb, photometric="RGB", Modality="US"))
    assert data.is_color and data.array.shape == (8, 16, 3)
    np.testing.assert_allclose(data.array, rgb / 255.0, atol=1e-6)


def test_dicom_found_by_preamble_without_suffix(tmp_path):
    path = write_dicom(tmp_path / "IM0001", np.array([[0, 4095]], dtype=np.uint16), PatientID="X")
    assert is_dicom_file(path)
    assert read_image(path).meta["case_id"] == "X"
    assert not is_dicom_file(save(tmp_path / "g.png", Image.fromarray(GREY_RAMP)))


# -- errors -----------------------------------------------------------------------------------------------
def assert_read_error(path: Path, *words: str, **kwargs) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    error = info.value
    assert error.path == path
    assert str(error) == f"{path}: {error.reason}"
    for word in words:
        assert word in error.reason.lower(), error.reason
    return error


def test_error_missing_and_empty(tmp_path):
    assert_read_error(tmp_path / "nope.png", "does not exist")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_read_error(empty, "empty")


def test_error_text_file_named_png(tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n" * 20)
    assert_read_error(fake, "not an image")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_error_truncated_file(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    path = save(tmp_path / f"cut{suffix}", Image.fromarray(noise))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_read_error(path, "truncated")


def test_error_decompression_bomb_checked_before_decoding(tmp_path):
    path = save(tmp_path / "big.png", Image.fromarray(np.zeros((64, 64), dtype=np.uint8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow must not warn first
        error = assert_read_error(path, "4,096 pixels", "limit of 1,000", max_pixels=1000)
    assert "64x64" in error.reason
    assert read_image(path, max_pixels=64 * 64).array.shape == (64, 64)


def test_bomb_header_is_refused_without_decoding(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 50_000, 50_000)
    assert_read_error(bomb, "limit", max_pixels=DEFAULT_MAX_PIXELS)
    with pytest.raises(ImageReadError, match="limit"):
        probe_image(bomb)


def test_pillow_limit_is_raised_to_ours(tmp_path, monkeypatch):
    """Above Pillow's default limit but within ours: the header is accepted without Pillow's warning."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    big = png_header_only(tmp_path / "tall.png", 10_000, 10_000)  # 1e8 > Pillow's ~8.9e7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        header = probe_image(big, max_pixels=150_000_000)
    assert (header.width, header.height) == (10_000, 10_000)


def test_error_corrupted_dicom(tmp_path):
    good = write_dicom(tmp_path / "good.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    truncated = tmp_path / "truncated.dcm"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) - 4000])
    assert_read_error(truncated, "dicom")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    assert_read_error(garbage, "dicom")
    text = tmp_path / "text.dcm"
    text.write_text("not dicom at all")
    assert_read_error(text, "dicom")


def test_image_extensions_cover_the_promised_formats():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm"} <= IMAGE_EXTENSIONS


def _samples_for_the_one_loader(tmp_path: Path) -> list[Path]:
    rgba = np.zeros((8, 16, 4), dtype=np.uint8)
    rgba[..., :3] = colour_pattern()
    rgba[..., 3] = 255
    rgba[:, :8, 3] = 0
    la = np.stack([np.full((8, 16), 200, np.uint8), np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))], -1)
    pal = Image.fromarray(colour_pattern()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    rotated = Image.fromarray(np.where(np.arange(64) < 32, 0, 255).astype(np.uint8)[None].repeat(32, 0), "L")
    exif = rotated.getexif()
    exif[0x0112] = 6
    return [save(tmp_path / "rgba.png", Image.fromarray(rgba, "RGBA")),
            save(tmp_path / "la.png", Image.fromarray(la, "LA")),
            save(tmp_path / "pal.png", pal, transparency=0),
            save(tmp_path / "phone.jpg", rotated, exif=exif, quality=95),
            save(tmp_path / "cmyk.jpg", Image.fromarray(colour_pattern()).convert("CMYK")),
            save(tmp_path / "grey16.png", Image.fromarray((np.arange(128).reshape(8, 16) * 500).astype(np.uint16))),
            save(tmp_path / "rgb.png", Image.fromarray(colour_pattern())),
            save(tmp_path / "grey.png", Image.fromarray(np.arange(128, dtype=np.uint8).reshape(8, 16)))]


def test_load_8bit_gives_the_pixels_read_image_gives(tmp_path):
    """Fine-tuning, ensembles and prediction (load_8bit) see the image scan, entropy, MAE and the viewer
    (read_image) see: EXIF rotation applied, alpha composited on black."""
    from core.data.transforms import load_8bit

    for path in _samples_for_the_one_loader(tmp_path):
        expected = (np.clip(read_image(path).array, 0, 1) * 255 + 0.5).astype(np.uint8)
        got = np.asarray(load_8bit(path))
        if got.ndim == 3 and expected.ndim == 2:
            expected = np.repeat(expected[..., None], 3, -1)
        assert got.shape == expected.shape, path.name
        np.testing.assert_array_equal(got, expected, err_msg=path.name)


def test_load_8bit_has_the_pixel_guard(tmp_path):
    from core.data.transforms import load_8bit

    bomb = png_header_only(tmp_path / "bomb.png", 12_000, 12_000)
    with pytest.raises(ImageReadError, match="limit") as err:
        load_8bit(bomb)
    assert err.value.path == bomb
    small = save(tmp_path / "small.png", Image.fromarray(np.zeros((64, 64), dtype=np.uint8)))
    with pytest.raises(ImageReadError, match="limit of 1,000"):
        load_8bit(small, max_pixels=1000)


def test_running_out_of_memory_is_not_called_a_broken_file(tmp_path, monkeypatch):
    """MemoryError says nothing about the file, so it is not turned into an ImageReadError (which callers
    record as the file's permanent reason): prediction and the scan see it as what it is."""
    import pydicom

    from core.data.transforms import load_8bit

    path = write_dicom(tmp_path / "IM0001", np.arange(64, dtype=np.uint16).reshape(8, 8))

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(pydicom, "dcmread", no_memory)
    with pytest.raises(MemoryError):
        read_image(path)
    with pytest.raises(MemoryError):
        load_8bit(path)
