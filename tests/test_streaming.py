"""Large manifests: read in chunks, features encoded chunk by chunk into one output file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_images

from geoscope.cli.main import main
from geoscope.data.manifest import iter_manifest, read_manifest
from geoscope.errors import ManifestError
from geoscope.features.cache import FeatureSet, extract_features
from geoscope.features.manifest import manifest_features
from geoscope.outputs.batch import ManifestUnits


def _table(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"image": [f"img_{i:03d}.jpg" for i in range(rows)], "lat": np.linspace(-50, 50, rows),
                         "lon": np.linspace(-100, 100, rows), "split": ["train", "val", "test"] * (rows // 3)})


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_chunks_cover_the_manifest_and_problems_name_the_file_rows(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"manifest{suffix}"
    table = _table(30)
    (table.to_parquet(path, index=False) if suffix == ".parquet" else table.to_csv(path, index=False))
    chunks = list(iter_manifest(path, chunk_rows=7))
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 2]
    whole = read_manifest(path, check_images=False)
    pd.testing.assert_frame_equal(pd.concat([c.frame for c in chunks], ignore_index=True), whole.frame)
    assert chunks[0].root == whole.root

    table.loc[17, "lat"] = 95.0  # in the third chunk
    (table.to_parquet(path, index=False) if suffix == ".parquet" else table.to_csv(path, index=False))
    with pytest.raises(ManifestError) as whole_error:
        read_manifest(path, check_images=False)
    with pytest.raises(ManifestError) as chunk_error:
        list(iter_manifest(path, chunk_rows=7))
    assert "row 19" in str(whole_error.value) and str(chunk_error.value) == str(whole_error.value)


def test_an_empty_or_unreadable_manifest_fails_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("image,lat,lon\n")
    with pytest.raises(ManifestError, match="no rows"):
        list(iter_manifest(empty))
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(ManifestError, match="cannot parse"):
        list(iter_manifest(broken))


@pytest.fixture(scope="module")
def linked_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 rows, distinct paths through symlinked folders to 5 image files (4 distinct, one with an odd name)
    and a corrupt one."""
    root = tmp_path_factory.mktemp("linked")
    images = make_images(root / "images", 4, seed=21)
    odd = root / "images" / "straße\nnacht ü.jpg"
    shutil.copy(images[0], odd)  # byte-identical to the first: shares its features
    (root / "images" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(500))
    for i in range(7):
        (root / f"view{i}").symlink_to(root / "images")
    names = [p.name for p in [*images, odd]] + ["corrupt.jpg"]
    rows = [f"view{v}/{name}" for v in range(7) for name in names][:40]
    path = root / "manifest.parquet"
    pd.DataFrame({"image": rows, "lat": 48.0, "lon": 11.0}).to_parquet(path, index=False)
    return path


def test_features_of_a_manifest_in_chunks_equal_the_whole_at_once(linked_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "features.npz"
    streamed = manifest_features(linked_manifest, "efficientnet-lite0", output=out, chunk_rows=6,
                                 cache=tmp_path / "cache", progress=False)
    whole = extract_features(linked_manifest, "efficientnet-lite0", cache=tmp_path / "cache", progress=False)
    assert (streamed.rows, streamed.encoded, streamed.bad) == (40, 5, len(whole.errors))  # the corrupt file counts
    assert streamed.errors == whole.errors[:10] and "corrupt.jpg" in streamed.errors[0]
    loaded = FeatureSet.load(out)
    np.testing.assert_array_equal(loaded.embeddings, whole.embeddings)  # NaN rows compare equal too
    np.testing.assert_array_equal(loaded.valid, whole.valid)
    assert loaded.paths == whole.paths and any("\n" in p for p in loaded.paths)
    assert loaded.errors == whole.errors
    assert (loaded.encoder_name, loaded.views, loaded.output_shape) == ("efficientnet-lite0", "plain", (1280,))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "features.npz"]  # no temporary file left


def test_cli_features_on_a_parquet_manifest(linked_manifest: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "f.npz"
    assert main(["features", str(linked_manifest), "--quiet", "--device", "cpu", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    corrupt = pd.read_parquet(linked_manifest)["image"].str.endswith("corrupt.jpg").sum()
    assert "40 images" in text and "encoded now  5" in text and f"bad images   {corrupt}" in text
    assert FeatureSet.load(out).embeddings.shape == (40, 1280)


def test_predict_streams_a_manifest_into_a_file_and_resumes(linked_manifest: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "guesses.jsonl"
    args = ["predict", str(linked_manifest), "-o", str(out), "--chunk-size", "8", "--top-k", "1"]
    assert main([*args, "--limit", "30"]) == 2  # the corrupt rows cannot be answered
    assert "30 added" in capsys.readouterr().err
    assert main(args) == 2
    assert "30 already in" in capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    manifest = read_manifest(linked_manifest, check_images=False)
    assert [r["image"] for r in records] == [str(p) for p in manifest.image_paths]
    corrupt = [r for r in records if r["image"].endswith("corrupt.jpg")]
    assert corrupt and all(r.get("error") and not r["guesses"] for r in corrupt)
    assert all(r["guesses"] for r in records if r not in corrupt)


def test_manifest_views_are_runs_of_rows_sharing_a_place_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "places.csv"
    pd.DataFrame({"image": [f"{i}.jpg" for i in range(5)], "lat": 1.0, "lon": 2.0,
                  "location_id": ["a", "a", "b", "c", "c"]}).to_csv(path, index=False)
    units = list(ManifestUnits(path, views=True, chunk_rows=2))  # chunks [a a] [b c] [c]
    assert [[Path(p).name for p in u.paths] for u in units] == [["0.jpg", "1.jpg"], ["2.jpg"], ["3.jpg", "4.jpg"]]
    assert [u.key for u in units] == [u.paths[0] for u in units]
    assert len(list(ManifestUnits(path, chunk_rows=2))) == 5  # without views: one unit per row
