"""Every door, second round: special files, one file under several spellings, unreadable folders,
manifests that look right and are not, providers that refuse everything.

Each case runs through the CLI as a user would; each ends in an answer or in one line naming the
problem and exit 2, never in a hang or a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

EXAMPLE = REPO / "examples" / "images" / "croatia-1.jpg"
GEOSCOPE = [sys.executable, "-m", "geoscope"]


def run(*argv: object, cwd: Path | None = None, prefix: list[str] | None = None, timeout: float = 120):
    """``geoscope ARGV`` in a child process (a hang is a failure, not a stuck suite)."""
    return subprocess.run([*(prefix or []), *GEOSCOPE, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a file system of 300 kB (a tmpfs: needs root, as CI runs), unmounted afterwards."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({mounted.stderr.decode().strip() or 'not root'})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_while_caching_features_is_one_line(tmp_path, small_disk):
    from conftest import make_images

    images = make_images(tmp_path / "images", 40, size=(224, 224))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,lat,lon\n" + "".join(f"{p},45.5,15.9\n" for p in images))
    result = subprocess.run([*GEOSCOPE, "features", str(manifest), "--encoder", "efficientnet-lite0/stats"],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "GEOSCOPE_CACHE": str(small_disk / "cache")})
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("geoscope: error: ")
    assert "the disk is full" in result.stderr


def test_special_files_are_named_and_skipped_not_waited_on(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(EXAMPLE, folder / "real.jpg")
    os.mkfifo(folder / "x.jpg")  # opening it for reading would wait for a writer forever
    result = run("predict", folder, "/dev/zero", "--json", "--top-k", "1")
    assert "Traceback" not in result.stderr
    records = {Path(r["image"]).name: r for r in json.loads(result.stdout)}
    assert records["real.jpg"]["guesses"]
    assert "FIFO" in records["x.jpg"]["error"] and "character device" in records["zero"]["error"]


def test_one_file_is_one_answer_however_it_is_spelled(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "uk.jpg")
    result = run("predict", "uk.jpg", "./uk.jpg", tmp_path / "uk.jpg", "--json", cwd=tmp_path)
    records = json.loads(result.stdout)
    assert [r["image"] for r in records] == ["uk.jpg"]  # the first spelling


def test_a_folder_that_cannot_be_listed_is_said(tmp_path):
    (tmp_path / "open").mkdir()
    (tmp_path / "closed").mkdir()
    shutil.copy(EXAMPLE, tmp_path / "open" / "a.jpg")
    shutil.copy(EXAMPLE, tmp_path / "closed" / "b.jpg")
    (tmp_path / "closed").chmod(0)
    prefix = []
    if os.geteuid() == 0:  # root lists every folder: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv (util-linux) to drop the read-any-folder capability")
        prefix = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search"]
    try:
        result = run("predict", tmp_path, "--json", "--top-k", "1", prefix=prefix)
    finally:
        (tmp_path / "closed").chmod(0o755)
    assert result.returncode == 0, result.stderr
    assert [Path(r["image"]).name for r in json.loads(result.stdout)] == ["a.jpg"]
    assert f"skipped {tmp_path / 'closed'}: cannot list folder" in result.stderr


def _manifest(folder: Path, rows: list[dict], name: str = "manifest.csv") -> Path:
    import pandas as pd

    for row in rows:
        if not (folder / row["image"]).exists():
            shutil.copy(EXAMPLE, folder / row["image"])
    path = folder / name
    frame = pd.DataFrame(rows)
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    return path


PLACES = [{"image": "a.jpg", "lat": 45.5, "lon": 15.9, "location_id": "p1", "heading": 0},
          {"image": "b.jpg", "lat": 45.5, "lon": 15.9, "location_id": "p1", "heading": 90},
          {"image": "c.jpg", "lat": 45.8, "lon": 16.0, "location_id": "p2", "heading": 0}]


@pytest.mark.parametrize(("edit", "said"), [
    (lambda text: text.replace("image,lat,lon", "image,lat,lat", 1), "column 'lat' appears more than once"),
    (lambda text: text.replace(",90\n", ",east\n"), "heading is not a number in degrees at row 3 (e.g. 'east')"),
    (lambda text: text.replace("45.8,16.0,p2", "45.8,16.0,p1"), "location_id 'p1' names rows 1+ km apart at row 4"),
])
def test_a_manifest_that_looks_right_and_is_not_is_refused_in_one_line(tmp_path, edit, said):
    path = _manifest(tmp_path, PLACES)
    path.write_text(edit(path.read_text()))
    for verb in (["data", "check", path], ["evaluate", path], ["predict", path, "--views"]):
        result = run(*verb)
        assert result.returncode == 2, (verb, result.stderr)
        assert said in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_views_of_one_place_on_rows_apart_are_refused_not_answered_twice(tmp_path):
    path = _manifest(tmp_path, [PLACES[0], PLACES[2], PLACES[1]])
    result = run("predict", path, "--views", "--json")
    assert result.returncode == 2 and "row 4 is a view of place 'p1'" in result.stderr
    assert result.stdout == ""


def test_a_float16_parquet_manifest_reads_without_warnings(tmp_path):
    import pandas as pd

    path = _manifest(tmp_path, PLACES, "manifest.parquet")
    frame = pd.read_parquet(path).astype({"lat": "float16", "lon": "float16"})
    frame.to_parquet(path)
    result = subprocess.run([*GEOSCOPE, "data", "check", str(path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"})
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr


def test_serve_with_workers_refuses_a_broken_bundle_before_any_worker_starts(tmp_path):
    from geoscope.bundle import DEFAULT_BUNDLE

    bundle = tmp_path / "model"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    config = json.loads((bundle / "config.json").read_text())
    config["model"]["place_clip"]["embed_dim"] = "wide"  # reads as JSON, breaks the model that workers would build
    (bundle / "config.json").write_text(json.dumps(config))
    result = run("serve", "--model", bundle, "--workers", "2", "--port", "0", timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and str(bundle) in result.stderr


def _photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    examples = sorted((REPO / "examples" / "images").glob("*.jpg"))
    paths = []
    for i in range(n):
        paths.append(folder / f"p{i:03d}.jpg")
        shutil.copy(examples[i % len(examples)], paths[-1])
    return paths


def test_a_second_writer_of_one_output_is_refused_and_rows_stay_one_per_image(tmp_path):
    from geoscope.fileio import sole_writer

    _photos(tmp_path / "photos", 60)
    out = tmp_path / "out.jsonl"
    with sole_writer(out):  # a first writer at work
        refused = run("predict", tmp_path / "photos", "-o", out)
    assert refused.returncode == 2 and "another geoscope is writing it" in refused.stderr
    assert not out.exists()
    both = [subprocess.Popen([*GEOSCOPE, "predict", str(tmp_path / "photos"), "-o", str(out), "--chunk-size", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(p.wait(timeout=300) for p in both)
    assert codes[0] == 0
    rows = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert len(rows) == len(set(rows)) == 60
    assert run("predict", tmp_path / "photos", "-o", out).returncode == 0  # the lock is let go
    assert len(out.read_text().splitlines()) == 60
    nested = tmp_path / "new" / "folder" / "out.jsonl"  # the lock lives beside an output whose folder is new
    assert run("predict", tmp_path / "photos" / "p000.jpg", "-o", nested).returncode == 0
    assert len(nested.read_text().splitlines()) == 1 and not list(nested.parent.glob(".*.lock"))


def test_a_full_disk_while_writing_answers_leaves_whole_chunks_only(tmp_path, small_disk):
    _photos(tmp_path / "photos", 60)  # about 2 kB of JSON each: 120 kB in all, 8 to a chunk
    out = small_disk / "out.jsonl"
    (small_disk / "ballast").write_bytes(b"\0" * 240_000)  # leaves room for some chunks, not all
    argv = ("predict", tmp_path / "photos", "-o", out, "--chunk-size", "8", "--top-k", "3")
    full = run(*argv)
    assert full.returncode == 2 and "Traceback" not in full.stderr and "the chunk was not added" in full.stderr
    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line)["guesses"] for line in lines[:-1])
    assert 0 < len(lines) - 1 < 60 and (len(lines) - 1) % 8 == 0
    (small_disk / "ballast").unlink()
    rerun = run(*argv)
    assert rerun.returncode == 0, rerun.stderr
    images = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert len(images) == len(set(images)) == 60


@pytest.mark.parametrize("suffix", [".jsonl", ".geojson", ".csv"])
def test_file_names_that_are_not_utf8_are_written_and_resumed(tmp_path, suffix):
    folder = tmp_path / "photos"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9-\xff.jpg")  # Latin-1 bytes: not UTF-8
    shutil.copy(EXAMPLE, folder / name)
    shutil.copy(EXAMPLE, folder / "plain.jpg")
    out = tmp_path / f"out{suffix}"
    first = run("predict", folder, "-o", out)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr
    again = run("predict", folder, "-o", out)
    assert again.returncode == 0 and "2 already in" in again.stderr and "0 added" in again.stderr
    if suffix != ".csv":
        text = out.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines()] if suffix == ".jsonl" else \
            [f["properties"] for f in json.loads(text)["features"]]
        assert {os.fsencode(Path(r["image"]).name) for r in records} == {b"caf\xe9-\xff.jpg", b"plain.jpg"}


@pytest.mark.parametrize(("section", "key", "value", "said"), [
    ("coverage", "threshold", float("nan"), "coverage.threshold must be a number in [0, 1], not nan"),
    ("answer", "merge_km", "far", "answer.merge_km must be a number in [0, inf], not 'far'"),
    ("refiner", "radius_km", float("nan"), "refiner.radius_km must be a number"),
    ("calibration", "25", ["a", 1], "calibration.25 must be two finite numbers"),
])
def test_a_bundle_config_with_impossible_numbers_is_refused_in_one_line(tmp_path, section, key, value, said):
    from geoscope.bundle import DEFAULT_BUNDLE

    bundle = tmp_path / "model"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    config = json.loads((bundle / "config.json").read_text())
    config[section][key] = value
    (bundle / "config.json").write_text(json.dumps(config))
    result = run("predict", EXAMPLE, "--model", bundle)
    assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_model_too_small_to_test_coverage_says_so_and_is_never_near_certain(tmp_path):
    """60 Croatian photos (6 of them validation places): asked about western-USA photos 9,000 km away, it must
    not call them in coverage, nor be sure of its answer."""
    from conftest import shared_dataset

    from geoscope.data.manifest import read_manifest, write_manifest
    from geoscope.geo.labels import LabelScheme
    from geoscope.predict import load_model
    from geoscope.training.fit import FitOptions, fit
    from geoscope.training.loop import TrainConfig

    croatia = read_manifest(shared_dataset("croatia") / "manifest.csv")
    frame = croatia.frame.iloc[:60].assign(image=[str(p) for p in croatia.image_paths[:60]])
    places = frame["location_id"].drop_duplicates().tolist()
    frame["split"] = frame["location_id"].map(lambda p: "val" if places.index(p) % 5 == 0 else "train")
    write_manifest(frame, tmp_path / "small.csv")
    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 100.0}), augment=False, level_expert=False,
                         train=TrainConfig(max_epochs=3))
    fit(read_manifest(tmp_path / "small.csv"), options, tmp_path / "model", progress=False)
    model = load_model(tmp_path / "model")
    assert model.coverage.too_few
    usa = read_manifest(shared_dataset("us-west") / "manifest.csv").image_paths[:10]
    bound = 1 - 1 / (model.coverage.items + 2)
    for answer in model.predict(usa):
        assert answer.in_coverage is None and "too few to tell" in " ".join(answer.warnings)
        assert max(answer.confidence.values()) <= bound < 0.9
    far = read_manifest(shared_dataset("us-west") / "manifest.csv").frame.iloc[:9]
    write_manifest(far.assign(image=[str(p) for p in usa[:9]]).drop(columns="grid_cell"), tmp_path / "usa.csv")
    said = run("evaluate", tmp_path / "usa.csv", "--model", tmp_path / "model")
    assert said.returncode == 0, said.stderr
    assert "coverage not tested: this model saw" in said.stdout and "flagged outside" not in said.stdout
    assert "labels not comparable: none of the 3 rows lies in one of this model's labels" in said.stdout


def test_a_full_disk_while_writing_a_bundle_leaves_the_previous_one_and_no_temporary_folder(tmp_path, small_disk):
    from conftest import shared_dataset

    from geoscope.data.manifest import read_manifest, write_manifest

    croatia = read_manifest(shared_dataset("croatia") / "manifest.csv")
    frame = croatia.frame.iloc[:40].assign(image=[str(p) for p in croatia.image_paths[:40]])
    places = frame["location_id"].drop_duplicates().tolist()
    frame["split"] = frame["location_id"].map(lambda p: "val" if places.index(p) % 5 == 0 else "train")
    write_manifest(frame, tmp_path / "small.csv")
    previous = small_disk / "model"
    previous.mkdir()
    (previous / "config.json").write_text("the previous bundle")
    abandoned = small_disk / ".model.999999999.x1y2"  # what a killed run leaves (no such process)
    abandoned.mkdir()
    result = run("train", tmp_path / "small.csv", "--labels", "grid", "--cell-km", "100", "--max-epochs", "1",
                 "--no-augment", "--no-level-expert", "-o", previous, timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"geoscope: error: {previous}: cannot write the bundle")
    # the training state (a few times the bundle's size) did not fit either: one warning, and training went on
    warnings = [line for line in result.stderr.splitlines() if "cannot keep the training state" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"geoscope: warning: {previous}.partial/run-1.pt")
    assert (previous / "config.json").read_text() == "the previous bundle"
    assert sorted(p.name for p in small_disk.iterdir()) == ["model"]
