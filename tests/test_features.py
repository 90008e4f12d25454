"""Feature extraction: cache hits by content, resuming, bad images, views, the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, shared_dataset
from PIL import Image

from geoscope.cli.main import main
from geoscope.encoders.image import get_image_encoder
from geoscope.errors import GeoscopeError
from geoscope.features.cache import FeatureSet, extract_features

ENCODER = "efficientnet-lite0"


@pytest.fixture(scope="module")
def encoder():
    return get_image_encoder(ENCODER)


def _manifest(folder: Path, names: list[str]) -> Path:
    path = folder / "manifest.csv"
    rows = [f"{name},51.5,-0.1" for name in names]
    path.write_text("image,lat,lon\n" + "\n".join(rows) + "\n")
    return path


def test_rerun_is_all_cache_hits_and_copies_hit(tmp_path: Path, encoder) -> None:
    paths = make_images(tmp_path / "a", 6)
    first = extract_features(paths, encoder, batch_size=4, progress=False, cache=tmp_path / "cache")
    assert (first.encoded, first.cached) == (6, 0)
    assert first.embeddings.shape == (6, 1280) and first.valid.all() and not first.errors
    copy = tmp_path / "b" / "renamed.jpg"
    copy.parent.mkdir()
    shutil.copy(paths[2], copy)
    again = extract_features([*paths, copy], encoder, progress=False, cache=tmp_path / "cache")
    assert (again.encoded, again.cached, again.duplicates) == (0, 7, 1)
    np.testing.assert_array_equal(again.embeddings[:6], first.embeddings)
    np.testing.assert_array_equal(again.embeddings[6], first.embeddings[2])


def test_resume_encodes_only_the_missing(tmp_path: Path, encoder) -> None:
    paths = make_images(tmp_path / "imgs", 10, seed=1)
    cache = tmp_path / "cache"
    partial = extract_features(paths[:6], encoder, shard_size=4, progress=False, cache=cache)
    shards = sorted(cache.glob("*/plain/shard-*.safetensors"))
    assert partial.encoded == 6 and len(shards) == 2  # 4 + 2
    full = extract_features(paths, encoder, shard_size=4, progress=False, cache=cache)
    assert (full.encoded, full.cached) == (4, 6)
    np.testing.assert_allclose(full.embeddings[:6], partial.embeddings, atol=1e-5)
    torch_run = extract_features(paths, ENCODER, backend="torch", progress=False, cache=cache)
    assert torch_run.encoded == 0  # one cache for both backends


def test_interrupted_run_keeps_finished_shards(tmp_path: Path) -> None:
    from geoscope.encoders.image import ImageEncoder, image_encoder_spec

    class DiesAfterThreeBatches(ImageEncoder):  # a real encoder, interrupted like Ctrl-C
        calls = 0

        def encode(self, batch: np.ndarray) -> np.ndarray:
            self.calls += 1
            if self.calls > 3:
                raise KeyboardInterrupt
            return super().encode(batch)

    paths = make_images(tmp_path / "imgs", 12, seed=8)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        extract_features(paths, DiesAfterThreeBatches(image_encoder_spec(ENCODER)), batch_size=2,
                         shard_size=4, progress=False, cache=cache)
    assert len(list(cache.glob("*/plain/shard-*.safetensors"))) == 1  # 3 batches of 2: one shard of 4
    assert not list(cache.rglob("*.part"))
    resumed = extract_features(paths, ENCODER, shard_size=4, progress=False, cache=cache)
    assert (resumed.encoded, resumed.cached) == (8, 4)


def test_bad_images_are_reported_and_skipped(tmp_path: Path, encoder) -> None:
    good = make_images(tmp_path, 3, seed=2)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + np.random.default_rng(0).bytes(3000))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good[0].read_bytes()[:400])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image\n")
    bomb = tmp_path / "bomb.png"
    Image.new("1", (9000, 9000)).save(bomb)  # 81 MP, a few kB on disk
    missing = tmp_path / "missing.jpg"
    paths = [good[0], corrupt, good[1], truncated, text, bomb, missing, good[2]]
    result = extract_features(paths, encoder, batch_size=2, progress=False, cache=tmp_path / "c")
    assert result.valid.tolist() == [True, False, True, False, False, False, False, True]
    assert np.isnan(result.embeddings[~result.valid]).all()
    assert np.isfinite(result.embeddings[result.valid]).all()
    assert len(result.errors) == 5
    for path, word in ((corrupt, "corrupt"), (truncated, "truncated"), (text, "not an image"),
                       (bomb, "decompression bomb"), (missing, "not found")):
        line = next(e for e in result.errors if e.startswith(str(path)))
        assert word in line and "\n" not in line
    rerun = extract_features(paths, encoder, progress=False, cache=tmp_path / "c")
    assert rerun.encoded == 0 and rerun.errors == result.errors  # failures are cached too


def test_views_flip_and_grid(tmp_path: Path, encoder) -> None:
    rng = np.random.default_rng(3)
    wide = tmp_path / "wide.png"  # lossless, so the mirrored file is exactly the mirror
    pixels = rng.integers(0, 255, (224, 448, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(wide)
    mirrored = tmp_path / "mirrored.png"
    Image.fromarray(pixels[:, ::-1]).save(mirrored)
    cache = tmp_path / "cache"
    plain = extract_features([wide, mirrored], encoder, progress=False, cache=cache)
    flipped = extract_features([wide], encoder, augment="hflip", progress=False, cache=cache)
    assert flipped.views == "hflip" and flipped.encoded == 1
    np.testing.assert_allclose(flipped.embeddings[0], plain.embeddings[1], atol=1e-4)
    stacked = extract_features([wide], encoder, augment="grid", combine="stack", progress=False, cache=cache)
    assert stacked.embeddings.shape == (1, 3, 1280)
    np.testing.assert_allclose(stacked.embeddings[0, 1], plain.embeddings[0], atol=1e-4)  # centre crop
    assert not np.allclose(stacked.embeddings[0, 0], stacked.embeddings[0, 2], atol=1e-2)
    averaged = extract_features([wide], encoder, augment="grid", progress=False, cache=cache)
    assert averaged.encoded == 0 and averaged.embeddings.shape == (1, 1280)
    np.testing.assert_allclose(averaged.embeddings[0], stacked.embeddings[0].mean(axis=0), atol=1e-5)
    assert {p.name for p in next(cache.iterdir()).iterdir()} == {"plain", "hflip", "crops3"}


def test_trunk_maps_cache_as_float16(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 2, seed=4)
    result = extract_features(paths, f"{ENCODER}/trunk-2", progress=False, cache=tmp_path / "c")
    assert result.output_shape == (192, 7, 7) and result.embeddings.shape == (2, 192 * 49)
    assert result.embeddings.dtype == np.float32 and result.valid.all()


def test_save_and_load(tmp_path: Path, encoder) -> None:
    paths = make_images(tmp_path, 2, seed=5)
    result = extract_features(paths, encoder, progress=False, cache=tmp_path / "c")
    loaded = FeatureSet.load(result.save(tmp_path / "out.npz"))
    np.testing.assert_array_equal(loaded.embeddings, result.embeddings)
    assert loaded.paths == result.paths and loaded.encoder_name == ENCODER
    with pytest.raises(GeoscopeError):
        FeatureSet.load(paths[0])


def test_cli_features(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_images(tmp_path / "images", 3, seed=6)
    manifest = _manifest(tmp_path, [f"images/img_{i:03d}.jpg" for i in range(3)])
    out = tmp_path / "features.npz"
    assert main(["features", str(manifest), "--encoder", ENCODER, "--quiet", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "encoded now  3" in text and "bad images   0" in text
    assert FeatureSet.load(out).embeddings.shape == (3, 1280)
    assert main(["features", str(manifest), "--encoder", ENCODER, "--quiet"]) == 0
    assert "encoded now  0" in capsys.readouterr().out
    assert main(["features", str(manifest), "--encoder", "nope"]) == 2
    assert "unknown image encoder 'nope'" in capsys.readouterr().err


@pytest.mark.shared_data
def test_real_set_second_run_does_no_work(tmp_path: Path, encoder) -> None:
    folder = shared_dataset("us-west")
    from geoscope.data.manifest import read_manifest

    manifest = read_manifest(folder / "manifest.csv")
    sample = manifest.subset(np.arange(len(manifest)) < 24)
    first = extract_features(sample, encoder, progress=False, cache=tmp_path / "c")
    second = extract_features(sample, encoder, progress=False, cache=tmp_path / "c")
    assert first.encoded == 24 and first.valid.all()
    assert second.encoded == 0 and second.seconds < 2.0
    np.testing.assert_array_equal(first.embeddings, second.embeddings)


def test_progress_bar_names_the_flipped_copies(tmp_path: Path, encoder, capsys: pytest.CaptureFixture[str]) -> None:
    images = make_images(tmp_path, 2, seed=5)
    extract_features(images, encoder, augment="hflip", workers=0, cache=tmp_path / "cache")
    assert "encoding efficientnet-lite0, flipped copies" in capsys.readouterr().err
    extract_features(images, encoder, workers=0, cache=tmp_path / "cache")
    err = capsys.readouterr().err
    assert "encoding efficientnet-lite0" in err and "flipped" not in err
