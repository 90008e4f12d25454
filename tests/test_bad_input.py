"""The bad-input corpus: broken images, manifests, model bundles, paths and options, each run
through every CLI verb that reads it.

Every case is made here (no binary fixtures). Each ends in exit 2 with at most one error line
naming the file, row or column, or in a correct answer; never in a traceback, and never leaves a
partial output file behind. The corpus size per group is the number of parametrized cases pytest
reports for each test function below.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_images
from PIL import Image
from safetensors.numpy import load_file, save_file

from geoscope.bundle import DEFAULT_BUNDLE
from geoscope.cli.main import main

EXAMPLES = REPO / "examples" / "images"
EXAMPLE_COORDS = {  # from examples/SOURCES.md
    "london-uk-1.jpg": (51.43061, -0.16432), "london-uk-2.jpg": (51.48615, -0.21346),
    "london-on-1.jpg": (42.98352, -81.29355), "london-on-2.jpg": (42.98690, -81.15284),
    "us-west-1.jpg": (34.80047, -114.49958), "us-west-2.jpg": (41.53869, -122.08704),
    "croatia-1.jpg": (45.02275, 15.20586), "croatia-2.jpg": (45.37848, 17.67761),
}
ERROR_LINE = re.compile(r"^geoscope(?: [\w-]+)*: error:")


# ---------------------------------------------------------------- running and judging


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if ERROR_LINE.match(line)]


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> Run:
    """``geoscope ARGV`` in this process; an exception other than argparse's exit is a traceback."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refuses a bad option with exit 2
        code = exc.code if isinstance(exc.code, int) else 2
    out, err = capsys.readouterr()
    return Run(int(code), out, err)


def no_partial_files(*paths: Path) -> None:
    """Neither the output nor a temporary sibling of it is left behind."""
    for path in paths:
        assert not path.exists(), f"{path} was written"
        if path.parent.is_dir():
            strays = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
            assert not strays, f"temporary files left beside {path}: {strays}"


def refused(run: Run, *needles: str, outputs: tuple[Path, ...] = ()) -> None:
    """Exit 2, no traceback, one error line that contains every needle, no output file."""
    assert "Traceback" not in run.err, run.err
    assert run.code == 2, f"exit {run.code}\nstdout: {run.out}\nstderr: {run.err}"
    lines = run.error_lines
    assert len(lines) == 1, f"expected one error line, got: {run.err!r}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    no_partial_files(*outputs)


def answered(run: Run) -> None:
    assert "Traceback" not in run.err, run.err
    assert run.code == 0, f"exit {run.code}\nstdout: {run.out}\nstderr: {run.err}"
    assert not run.error_lines, run.err


def strict_json(text: str):
    """Parse JSON refusing NaN and Infinity, which JSON does not have."""
    def bad(value: str):
        raise AssertionError(f"not strict JSON: {value}")
    return json.loads(text, parse_constant=bad)


# ---------------------------------------------------------------- images


def _jpeg(seed: int = 0, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 1×1 PNG whose header claims ``width`` × ``height`` pixels (CRC fixed, so only the size is wrong)."""
    data = bytearray(_png(Image.new("RGB", (1, 1))))
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _directory(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# name → (maker of the bad file in a folder, the name the error must show)
BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty-file": (lambda d: _write(d / "empty.jpg", b""), "empty.jpg"),
    "truncated-jpeg": (lambda d: _write(d / "cut.jpg", _jpeg()[:400]), "cut.jpg"),
    "text-named-jpg": (lambda d: _write(d / "notes.jpg", b"this is a text file\n"), "notes.jpg"),
    "directory": (lambda d: _directory(d / "folder.jpg"), "folder.jpg"),
    "bomb-png-header": (lambda d: _write(d / "bomb.png", _png_claiming(60000, 60000)), "bomb.png"),
    "over-limit-png": (lambda d: _write(d / "huge.png", _png_claiming(10000, 9000)), "huge.png"),
    "corrupt-png-data": (lambda d: _write(d / "rot.png", _png(Image.new("RGB", (32, 32), "red"))[:60]
                                          + b"\x00" * 40), "rot.png"),
    "missing-file": (lambda d: d / "gone.jpg", "gone.jpg"),
    "newline-in-name": (lambda d: _write(d / "two\nlines.jpg", b"not an image"), "lines.jpg"),
    "control-char-name": (lambda d: _write(d / "bell\x07esc\x1b.jpg", b"not an image"), "esc"),
}

# images that must be answered, whatever their name or mode
GOOD_IMAGES: dict[str, Callable[[Path], Path]] = {
    "space-in-name": lambda d: _write(d / "my photo 1.jpg", _jpeg(1)),
    "unicode-name": lambda d: _write(d / "Zürich-東京-ø.jpg", _jpeg(2)),
    "newline-in-name": lambda d: _write(d / "good\nname.jpg", _jpeg(3)),
    "one-pixel": lambda d: _write(d / "dot.jpg", _jpeg(4, (1, 1))),
    "grayscale-png": lambda d: _write(d / "grey.png", _png(Image.new("L", (40, 30), 120))),
    "palette-png": lambda d: _write(d / "pal.png", _png(Image.new("RGB", (40, 30), "teal").convert("P"))),
    "rgba-png": lambda d: _write(d / "alpha.png", _png(Image.new("RGBA", (40, 30), (10, 200, 30, 90)))),
    "cmyk-jpeg": lambda d: _write(d / "print.jpg", _jpeg(5, mode="CMYK")),
    "png-named-jpg": lambda d: _write(d / "really-png.jpg", _png(Image.new("RGB", (40, 30), "navy"))),
}


def _image_manifest(folder: Path, images: list[Path]) -> Path:
    rows = [{"image": os.path.relpath(p, folder), "lat": 51.5 + i / 100, "lon": -0.1} for i, p in enumerate(images)]
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


IMAGE_VERBS = ("predict", "predict-json", "predict-batch", "features-only", "features-batch", "evaluate-batch")


@pytest.mark.parametrize("verb", IMAGE_VERBS)
@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_image(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, verb: str) -> None:
    make, name = BAD_IMAGES[kind]
    bad = make(tmp_path / "pics")
    good = _write(tmp_path / "pics" / "good.jpg", (EXAMPLES / "london-uk-1.jpg").read_bytes())
    out = tmp_path / "out.npz"
    if kind == "directory" and verb.startswith("predict"):  # predict searches a folder for images: none here
        if verb == "predict-batch":
            run = cli(capsys, "predict", good, bad, "--json")
            answered(run)
            assert [a["image"] for a in strict_json(run.out)] == [str(good)]
        else:
            refused(cli(capsys, "predict", bad, *(("--json",) if verb == "predict-json" else ())), name)
    elif verb == "predict":
        refused(cli(capsys, "predict", bad), name)
    elif verb == "predict-json":
        run = cli(capsys, "predict", bad, "--json")
        refused(run, name)
        answer = strict_json(run.out)
        assert len(answer) == 1 and answer[0]["guesses"] == [] and name in answer[0]["error"]
    elif verb == "predict-batch":  # the good image is answered, the bad one named
        run = cli(capsys, "predict", good, bad, "--json")
        refused(run, name)
        first, second = strict_json(run.out)
        assert len(first["guesses"]) == 5 and "error" not in first
        assert second["guesses"] == [] and name in second["error"]
    elif verb == "features-only":  # nothing readable: an error, and no .npz
        refused(cli(capsys, "features", _image_manifest(tmp_path, [bad]), "--encoder",
                    "efficientnet-lite0/stats", "--quiet", "-o", out), "no image", outputs=(out,))
    elif verb == "features-batch":  # the good one is encoded, the bad one named on one line
        run = cli(capsys, "features", _image_manifest(tmp_path, [good, bad]), "--encoder",
                  "efficientnet-lite0/stats", "--quiet", "-o", out)
        answered(run)
        assert "1 of 2 images could not be read" in run.err
        assert [line for line in run.err.splitlines() if name in line], run.err
        assert np.load(out)["valid"].tolist() == [True, False]
    else:  # evaluate: a missing file or a folder fails the manifest check; others are skipped, named
        # the good image is one the default model was trained on: keep it measured
        run = cli(capsys, "evaluate", _image_manifest(tmp_path, [good, bad]), "--include-training-rows")
        if kind in ("missing-file", "directory"):
            refused(run, "row 3", name)
        else:
            answered(run)
            skipped = [line for line in run.err.splitlines() if line.startswith("geoscope: skipped")]
            assert len(skipped) == 1 and name in skipped[0], run.err
            assert "1 evaluated" in run.out


@pytest.mark.parametrize("verb", ("predict", "features"))
@pytest.mark.parametrize("kind", sorted(GOOD_IMAGES))
def test_odd_image_is_answered(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, verb: str) -> None:
    image = GOOD_IMAGES[kind](tmp_path / "pics")
    if verb == "predict":
        run = cli(capsys, "predict", image, "--json", "--top-k", "3")
        answered(run)
        (answer,) = strict_json(run.out)
        assert len(answer["guesses"]) == 3 and answer["image"] == str(image)
        assert all(0 <= g["probability"] <= 1 for g in answer["guesses"])
    else:
        out = tmp_path / "f.npz"
        run = cli(capsys, "features", _image_manifest(tmp_path, [image]), "--encoder",
                  "efficientnet-lite0/stats", "--quiet", "-o", out)
        answered(run)
        features = np.load(out)
        assert features["valid"].tolist() == [True] and np.isfinite(features["embeddings"]).all()


# ---------------------------------------------------------------- manifests


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


_ROWS = "images/img_000.jpg,51.50,-0.10\nimages/img_001.jpg,51.51,-0.11\nimages/img_002.jpg,51.52,-0.12\n"

# name → (file name, contents (text or bytes, None: no file), what the error must say)
BAD_MANIFESTS: dict[str, tuple[str, str | bytes | None, tuple[str, ...]]] = {
    "not-found": ("m.csv", None, ("m.csv", "not found")),
    "zero-bytes": ("m.csv", "", ("m.csv",)),
    "header-only": ("m.csv", "image,lat,lon\n", ("m.csv", "no rows")),
    "missing-column": ("m.csv", "image,lat\nimages/img_000.jpg,51.5\n", ("'lon'",)),
    "lat-91": ("m.csv", "image,lat,lon\nimages/img_000.jpg,51.5,-0.1\nimages/img_001.jpg,91,-0.1\n",
               ("lat", "row 3")),
    "lon-abc": ("m.csv", "image,lat,lon\nimages/img_000.jpg,51.5,abc\n", ("lon", "row 2")),
    "lat-inf": ("m.csv", "image,lat,lon\nimages/img_000.jpg,inf,0\n", ("lat", "row 2")),
    "lat-empty": ("m.csv", "image,lat,lon\nimages/img_000.jpg,,0\n", ("lat", "row 2")),
    "duplicate-rows": ("m.csv", "image,lat,lon\n" + _ROWS + "images/img_001.jpg,51.51,-0.11\n",
                       ("duplicate", "row 5")),
    "bad-split-value": ("m.csv", "image,lat,lon,split\nimages/img_000.jpg,51.5,-0.1,training\n",
                        ("split", "row 2")),
    "binary-garbage": ("m.csv", bytes(range(256)) * 4, ("m.csv",)),
    "some-images-missing": ("m.csv", "image,lat,lon\n" + _ROWS + "images/nope.jpg,51.6,-0.1\n",
                            ("row 5", "nope.jpg")),
    "all-images-missing": ("m.csv", "image,lat,lon\nimages/a.jpg,51.5,-0.1\nimages/b.jpg,51.6,-0.1\n",
                           ("rows 2, 3",)),
    "parquet-lat-strings": ("m.parquet", _parquet(pd.DataFrame({
        "image": ["images/img_000.jpg", "images/img_001.jpg"], "lat": ["51.5", "north"], "lon": [-0.1, -0.2]})),
        ("'lat'", "str")),
    "parquet-image-ints": ("m.parquet", _parquet(pd.DataFrame({"image": [0, 1], "lat": [51.5, 51.6],
                                                               "lon": [-0.1, -0.2]})), ("'image'", "int64")),
    "parquet-lon-bool": ("m.parquet", _parquet(pd.DataFrame({"image": ["images/img_000.jpg"], "lat": [51.5],
                                                             "lon": [True]})), ("'lon'", "bool")),
    "parquet-corrupt": ("m.parquet", b"PAR1" + bytes(200) + b"PAR1", ("m.parquet",)),
}
MANIFEST_VERBS = ("check", "split", "features", "labels", "train", "evaluate")


@pytest.mark.parametrize("verb", MANIFEST_VERBS)
@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_bad_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, verb: str) -> None:
    name, contents, needles = BAD_MANIFESTS[kind]
    make_images(tmp_path / "images", 3, size=(16, 16))
    path = tmp_path / name
    if isinstance(contents, str):
        path.write_text(contents)
    elif contents is not None:
        path.write_bytes(contents)
    before = path.read_bytes() if path.exists() else None
    out = {"split": tmp_path / "split.csv", "features": tmp_path / "f.npz", "labels": tmp_path / "lab.csv",
           "train": tmp_path / "model"}.get(verb)
    argv = {
        "check": ("data", "check", path),
        "split": ("data", "split", path, "-o", out),
        "features": ("features", path, "--encoder", "efficientnet-lite0/stats", "--quiet", "-o", out),
        "labels": ("labels", "grid", path, "-o", out),
        "train": ("train", path, "-o", out, "--max-epochs", "1"),
        "evaluate": ("evaluate", path),
    }[verb]
    run = cli(capsys, *argv)
    outputs = (out,) if out is not None else ()
    if verb == "features" and kind == "some-images-missing":  # features reads what it can, names the rest
        answered(run)
        assert "1 of 4 images could not be read" in run.err and "nope.jpg" in run.err
        assert np.load(out)["valid"].tolist() == [True, True, True, False]
    elif verb == "features" and kind == "all-images-missing":
        refused(run, "no image", outputs=outputs)
    else:
        refused(run, *needles, outputs=outputs)
    if before is not None:
        assert path.read_bytes() == before, "the manifest was changed"


def test_evaluate_names_an_absent_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = [_write(tmp_path / n, (EXAMPLES / n).read_bytes()) for n in ("london-uk-1.jpg", "croatia-1.jpg")]
    path = tmp_path / "m.csv"
    pd.DataFrame({"image": [p.name for p in images], "lat": [51.45, 45.55], "lon": [0.0, 15.9],
                  "split": ["train", "val"]}).to_csv(path, index=False)
    refused(cli(capsys, "evaluate", path, "--split", "test"),
            "no row of the manifest is in split 'test' (splits present: train, val)")
    no_split = tmp_path / "plain.csv"
    pd.DataFrame({"image": [p.name for p in images], "lat": [51.45, 45.55], "lon": [0.0, 15.9]}).to_csv(
        no_split, index=False)
    refused(cli(capsys, "evaluate", no_split, "--split", "test"), "no 'split' column")


def test_evaluate_says_how_many_items_each_figure_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = _examples_manifest(tmp_path)
    frame = pd.read_csv(manifest)
    frame.loc[frame["image"] == "us-west-1.jpg", ["lat", "lon"]] = (0.0, -150.0)  # in no cell of the model
    frame.to_csv(manifest, index=False)
    run = cli(capsys, "evaluate", manifest, "--views", "separate", "--include-training-rows")
    answered(run)
    assert "8 evaluated" in run.out and "label accuracy (7 of 8 labelled)" in run.out
    run = cli(capsys, "evaluate", manifest, "--views", "separate", "--json", "--include-training-rows")
    metrics = strict_json(run.out)["metrics"]["model"]
    assert (metrics["n"], metrics["n_labelled"]) == (8, 7)


# ---------------------------------------------------------------- model bundles


def _examples_manifest(folder: Path) -> Path:
    for name in EXAMPLE_COORDS:
        shutil.copy(EXAMPLES / name, folder / name)
    path = folder / "examples.csv"
    pd.DataFrame([{"image": n, "lat": lat, "lon": lon} for n, (lat, lon) in EXAMPLE_COORDS.items()]).to_csv(
        path, index=False)
    return path


def _edit_json(name: str, edit: Callable[[object], object]) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        path = bundle / name
        path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    return apply


def _edit_labels(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        path = bundle / "labels.csv"
        edit(pd.read_csv(path)).to_csv(path, index=False)
    return apply


def _edit_weights(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        path = bundle / "weights.safetensors"
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path))
    return apply


def _set(key: str, index: tuple, value: float) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        tensors[key] = tensors[key].copy()
        tensors[key][index] = value
    return edit


def _reshape(key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict], None]:
    def edit(tensors: dict) -> None:
        tensors[key] = np.ascontiguousarray(fn(tensors[key]))
    return edit


def _without(key: str) -> Callable[[dict], object]:
    def edit(data: dict) -> object:
        data.pop(key)
        return data
    return edit


def _cell(column: str, row: int, value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame
    return edit


def _text(name: str, data: str | bytes) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        path = bundle / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return apply


def _truncate(name: str) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        path = bundle / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return apply


def _remove(name: str) -> Callable[[Path], None]:
    return lambda bundle: (bundle / name).unlink()


# name → (how to break a copy of the default bundle, what the error must say)
BAD_BUNDLES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "config-missing": (_remove("config.json"), ("config.json",)),
    "config-not-json": (_text("config.json", "{ not json"), ("config.json", "not valid JSON")),
    "config-a-list": (_text("config.json", "[1, 2, 3]"), ("config.json", "object")),
    "config-other-format": (_edit_json("config.json", lambda c: {**c, "format": "keras"}), ("keras",)),
    "config-version-99": (_edit_json("config.json", lambda c: {**c, "format_version": 99}), ("version 99",)),
    "config-no-model": (_edit_json("config.json", _without("model")), ("'model'",)),
    "config-no-image-encoder": (_edit_json("config.json", _without("image_encoder")), ("'image_encoder'",)),
    "config-no-labels": (_edit_json("config.json", _without("labels")), ("'labels'",)),
    "config-centroid-nan": (_edit_json("config.json", lambda c: {**c, "training": {
        **c["training"], "centroid": ["north", 0]}}), ("centroid",)),
    "config-image-head-unknown": (_edit_json("config.json", lambda c: {**c, "model": {**c["model"], "place_clip": {
        **c["model"]["place_clip"], "image_head": "magic"}}}), ("incompatible", "image_head", "'magic'")),
    "labels-missing": (_remove("labels.csv"), ("labels.csv",)),
    "labels-empty-file": (_text("labels.csv", ""), ("labels.csv", "empty")),
    "labels-header-only": (_text("labels.csv", "label,name,lat,lon\n"), ("labels.csv", "no rows")),
    "labels-binary": (_text("labels.csv", bytes(range(256)) * 8), ("labels.csv",)),
    "labels-no-lat": (_edit_labels(lambda f: f.drop(columns="lat")), ("labels.csv", "'lat'")),
    "labels-no-name": (_edit_labels(lambda f: f.drop(columns="name")), ("labels.csv", "'name'")),
    "labels-lat-999": (_edit_labels(_cell("lat", 3, 999.0)), ("labels.csv", "lat", "row 5")),
    "labels-lon-empty": (_edit_labels(_cell("lon", 0, None)), ("labels.csv", "lon", "row 2")),
    "labels-lat-text": (_edit_labels(_cell("lat", 1, "north")), ("labels.csv", "lat", "row 3")),
    "labels-one-row-short": (_edit_labels(lambda f: f.iloc[:-1]), ("labels.csv", "158")),
    "weights-missing": (_remove("weights.safetensors"), ("weights.safetensors",)),
    "weights-truncated": (_truncate("weights.safetensors"), ("weights.safetensors", "truncated")),
    "weights-text": (_text("weights.safetensors", "hello"), ("weights.safetensors",)),
    "weights-nan": (_edit_weights(_set("model.members.0.image_head.projection.weight.scale", (0, 0), math.nan)),
                    ("model.members.0.image_head.projection.weight", "NaN")),
    "weights-inf": (_edit_weights(_set("model.members.1.logit_scale", (0,), math.inf)),
                    ("model.members.1.logit_scale", "inf")),
    "weights-nan-gallery": (_edit_weights(_set("gallery.features", (5, 5), math.nan)), ("gallery.features",)),
    "weights-no-place-embeddings": (_edit_weights(lambda t: t.pop("place_embeddings")), ("place_embeddings",)),
    "weights-head-shape": (_edit_weights(_reshape("model.members.0.image_head.projection.weight",
                                                  lambda a: a[:, :100])), ("incompatible",)),
    "members-one-missing": (_edit_weights(lambda t: [t.pop(k) for k in list(t) if k.startswith("model.members.2.")]),
                            ("incompatible", "model.members.2.")),
    "refiner-no-points": (_edit_weights(lambda t: t.pop("refiner.lat")), ("GPS refiner", "'refiner.lat'")),
    "refiner-points-short": (_edit_weights(_reshape("refiner.lon", lambda a: a[:-1])), ("refiner's points",)),
    "refiner-lat-999": (_edit_weights(_set("refiner.lat", (3,), 999.0)), ("refiner.lat", "out of range")),
    "refiner-head-shape": (_edit_weights(_reshape("refiner.model.image_head.projection.weight",
                                                  lambda a: a[:, :100])), ("incompatible refiner",)),
    "refiner-not-gps": (_edit_json("config.json", lambda c: {**c, "refiner": {**c["refiner"], "kind": "knn"}}),
                        ("'refiner'", "kind 'gps'")),
    "refiner-places-short": (_edit_json("config.json", lambda c: {**c, "refiner": {
        **c["refiner"], "places": c["refiner"]["places"][:-1]}}), ("refiner's 'places'", "points")),
    "answer-refine-unknown": (_edit_json("config.json", lambda c: {**c, "answer": {**c["answer"], "refine": "magic"}}),
                              ("refine with 'magic'",)),
    "gallery-lat-short": (_edit_weights(_reshape("gallery.lat", lambda a: a[:-5])), ("gallery.lat",)),
    "gallery-features-rows": (_edit_weights(_reshape("gallery.features", lambda a: a[:-1])),
                              ("gallery.features",)),
    "gallery-pca-width": (_edit_weights(_reshape("gallery.pca_components", lambda a: a[:, :-1])),
                          ("gallery.pca_components",)),
    "gallery-pca-rows": (_edit_weights(_reshape("gallery.pca_components", lambda a: a[:-1])),
                         ("gallery.pca_components",)),
    "gallery-half-missing": (_edit_weights(lambda t: t.pop("gallery.lon")), ("gallery",)),
    "coverage-no-typicality": (_edit_weights(lambda t: t.pop("typicality.projection")),
                               ("config.json", "typicality.projection")),
    "coverage-typicality-shape": (_edit_weights(_reshape("typicality.precision_root", lambda a: a[:-1])),
                                  ("typicality", "precision_root")),
    "coverage-quantiles-falling": (_edit_json("config.json", lambda c: {**c, "coverage": {
        **c["coverage"], "quantiles": {"gallery": [1.0, 0.0]}}}), ("config.json", "rising")),
    "coverage-unknown-test": (_edit_json("config.json", lambda c: {**c, "coverage": {
        **c["coverage"], "quantiles": {"energy": [0.0, 1.0]}}}), ("config.json", "'energy'")),
    "bundle-is-a-file": (lambda b: (shutil.rmtree(b), b.write_text("hi")), ("model bundle",)),
    "bundle-not-found": (lambda b: shutil.rmtree(b), ("not found",)),
}
# an optional file that is broken is reported once and ignored
BROKEN_OPTIONAL = {
    "history-not-json": _text("history.json", "[{ cut"),
    "history-not-a-list": _text("history.json", '{"epoch": 1}'),
    "history-binary": _text("history.json", bytes(range(256))),
}
BUNDLE_VERBS = ("predict", "predict-json", "evaluate")


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    _examples_manifest(folder)
    return folder


def _broken_bundle(tmp_path: Path, breaker: Callable[[Path], None]) -> Path:
    bundle = tmp_path / "model"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    breaker(bundle)
    return bundle


def _bundle_argv(verb: str, bundle: Path, examples: Path) -> tuple:
    if verb == "evaluate":
        return ("evaluate", examples / "examples.csv", "--model", bundle)
    json_flag = ("--json",) if verb == "predict-json" else ()
    return ("predict", examples / "london-uk-1.jpg", "--model", bundle, *json_flag)


@pytest.mark.parametrize("verb", BUNDLE_VERBS)
@pytest.mark.parametrize("kind", sorted(BAD_BUNDLES))
def test_bad_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str], examples_dir: Path,
                    kind: str, verb: str) -> None:
    breaker, needles = BAD_BUNDLES[kind]
    bundle = _broken_bundle(tmp_path, breaker)
    run = cli(capsys, *_bundle_argv(verb, bundle, examples_dir))
    refused(run, *needles)
    assert run.out == "", "a refused bundle must not print an answer"


@pytest.mark.parametrize("verb", BUNDLE_VERBS)
@pytest.mark.parametrize("kind", sorted(BROKEN_OPTIONAL))
def test_broken_optional_file_is_reported_and_ignored(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      examples_dir: Path, kind: str, verb: str) -> None:
    bundle = _broken_bundle(tmp_path, BROKEN_OPTIONAL[kind])
    run = cli(capsys, *_bundle_argv(verb, bundle, examples_dir))
    answered(run)
    warnings = [line for line in run.err.splitlines() if line.startswith("geoscope: warning:")]
    assert len(warnings) == 1 and "history.json" in warnings[0], run.err
    if verb == "predict-json":
        assert len(strict_json(run.out)[0]["guesses"]) == 5


# ---------------------------------------------------------------- environment and output paths


def _blocker(tmp_path: Path) -> Path:
    """A plain file, so that anything below it cannot be created."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


def _one_image_manifest(tmp_path: Path) -> Path:
    return _image_manifest(tmp_path, [_write(tmp_path / "pics" / "a.jpg", _jpeg(7))])


CACHES = {"below-a-file": lambda t: _blocker(t) / "cache", "proc": lambda t: Path("/proc/geoscope-cache")}


@pytest.mark.parametrize("verb", ("predict", "features"))
@pytest.mark.parametrize("kind", sorted(CACHES))
def test_unusable_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                        kind: str, verb: str) -> None:
    cache = CACHES[kind](tmp_path)
    manifest = _one_image_manifest(tmp_path)
    monkeypatch.setenv("GEOSCOPE_CACHE", str(cache))
    out = tmp_path / "f.npz"
    argv = ("predict", tmp_path / "pics" / "a.jpg") if verb == "predict" else \
        ("features", manifest, "--quiet", "-o", out)
    refused(cli(capsys, *argv), "GEOSCOPE_CACHE", str(cache), outputs=(out,))


OUTPUTS = {"below-a-file": lambda t: _blocker(t) / "sub" / "out", "proc": lambda t: Path("/proc/geoscope-out")}
OUTPUT_VERBS = ("features", "labels", "labels-table", "split", "import-csv", "import-folder", "train",
                "evaluate-report", "plan", "fetch")


@pytest.mark.parametrize("verb", OUTPUT_VERBS)
@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_unwritable_output_is_refused_before_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch, kind: str, verb: str) -> None:
    target = OUTPUTS[kind](tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEOSCOPE_CACHE", str(cache))
    manifest = _one_image_manifest(tmp_path)
    argv = {
        "features": ("features", manifest, "--quiet", "-o", f"{target}.npz"),
        "labels": ("labels", "grid", manifest, "-o", f"{target}.csv"),
        "labels-table": ("labels", "grid", manifest, "-o", tmp_path / "fine.csv", "--table", f"{target}.csv"),
        "split": ("data", "split", manifest, "-o", f"{target}.csv"),
        "import-csv": ("data", "import-csv", manifest, "-o", f"{target}.csv"),
        "import-folder": ("data", "import-folder", tmp_path / "pics", "-o", f"{target}.csv"),
        "train": ("train", manifest, "-o", target),
        "evaluate-report": ("evaluate", manifest, "--report", target),
        "plan": ("data", "plan", "grid", "--region", "LU", "-o", target),
        "fetch": ("data", "fetch", manifest, "--source", "streetview", "-o", target),
    }[verb]
    before = manifest.read_bytes()
    refused(cli(capsys, *argv), target.name)
    assert not (cache / "features").exists() or not any((cache / "features").rglob("shard-*")), \
        "images were encoded before the output was checked"
    assert manifest.read_bytes() == before
    assert not (tmp_path / "fine.csv").exists()


# ---------------------------------------------------------------- options


TRAIN_OPTIONS = {
    "loss-foo": (("--loss", "foo"), "invalid choice"),
    "dropout-negative": (("--dropout", "-0.1"), "dropout"),
    "dropout-one": (("--dropout", "1"), "dropout"),
    "lr-head-zero": (("--lr-head", "0"), "lr_head"),
    "lr-image-nan": (("--lr-image", "nan"), "lr_image"),
    "wd-text-negative": (("--wd-text", "-1"), "wd_text"),
    "batch-size-zero": (("--batch-size", "0"), "batch_size"),
    "max-epochs-zero": (("--max-epochs", "0"), "max_epochs"),
    "patience-negative": (("--patience", "-1"), "patience"),
    "factor-one": (("--factor", "1"), "factor"),
    "early-stop-zero": (("--early-stop", "0"), "early_stop"),
    "feature-noise-negative": (("--feature-noise", "-1"), "feature_noise"),
    "smoothing-negative": (("--label-smoothing-km", "-5"), "label_smoothing_km"),
    "embed-dim-zero": (("--embed-dim", "0"), "embed_dim"),
    "finetune-blocks-negative": (("--finetune-blocks", "-1"), "finetune"),
    "crops-zero": (("--crops", "0"), "crop"),
    "cell-km-zero": (("--cell-km", "0"), "--cell-km"),
    "top-zero": (("--labels", "cities", "--top", "0"), "--top"),
    "text-encoder-unknown": (("--text-encoder", "word2vec"), "word2vec"),
    "members-zero": (("--members", "0"), "--members"),
    "members-above-runs": (("--restarts", "2", "--members", "3"), "members must be between 1 and"),
    "refiner-not-found": (("--refiner", "no-such-model"), "not found"),
    "refiner-a-place-head": (("--refiner", str(DEFAULT_BUNDLE)), "a refiner is a GPS head's bundle"),
}


@pytest.mark.parametrize("kind", sorted(TRAIN_OPTIONS))
def test_bad_train_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                          kind: str) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GEOSCOPE_CACHE", str(cache))
    options, needle = TRAIN_OPTIONS[kind]
    out = tmp_path / "model"
    refused(cli(capsys, "train", _one_image_manifest(tmp_path), "-o", out, *options), needle, outputs=(out,))
    assert not (cache / "features").exists(), "images were encoded before the options were checked"


OTHER_OPTIONS = {
    "features-batch-size-zero": (("features", "{m}", "--batch-size", "0"), "--batch-size"),
    "features-views-unknown": (("features", "{m}", "--views", "sideways"), "sideways"),
    "features-encoder-unknown": (("features", "{m}", "--encoder", "vgg99"), "vgg99"),
    "features-encoder-input-size-huge": (("features", "{m}", "--encoder", "efficientnet-lite0@99999"), "input size"),
    "split-val-negative": (("data", "split", "{m}", "--val", "-0.1"), "val"),
    "split-block-km-zero": (("data", "split", "{m}", "--by", "block", "--block-km", "0"), "block"),
    "labels-cell-km-negative": (("labels", "grid", "{m}", "--cell-km", "-3"), "--cell-km"),
    "plan-min-land-above-one": (("data", "plan", "grid", "--region", "LU", "--min-land", "1.5", "-o", "{t}/p"),
                                "--min-land"),
    "plan-per-cell-zero": (("data", "plan", "grid", "--region", "LU", "--per-cell", "0", "-o", "{t}/p"),
                           "points per cell"),
    "evaluate-views-unknown": (("evaluate", "{m}", "--views", "all"), "invalid choice"),
}


@pytest.mark.parametrize("kind", sorted(OTHER_OPTIONS))
def test_bad_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    argv, needle = OTHER_OPTIONS[kind]
    manifest = _one_image_manifest(tmp_path)
    before = manifest.read_bytes()
    refused(cli(capsys, *(a.format(m=manifest, t=tmp_path) for a in argv)), needle)
    assert manifest.read_bytes() == before
    assert not (tmp_path / "p").exists()


def test_grid_plan_leaves_out_cells_with_almost_no_land(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the Rockall box: one islet of a few hundred square metres in 25 km cells of sea
    refused(cli(capsys, "data", "plan", "grid", "--region=57.4,-14.0,57.8,-13.4", "-o", tmp_path / "r"),
            "land")
    assert not (tmp_path / "r").exists()
    run = cli(capsys, "data", "plan", "grid", "--region=57.4,-14.0,57.8,-13.4", "--min-land", "0",
              "--per-cell", "3", "-o", tmp_path / "r")
    answered(run)  # asked for: any land at all
    points = pd.read_csv(tmp_path / "r" / "points.csv")
    assert len(points) == 3


# ---------------------------------------------------------------- end to end: no traceback from the real command


def _geoscope(*argv: object, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.run([sys.executable, "-m", "geoscope.cli.main", *map(str, argv)], capture_output=True,
                          text=True, env=environment, timeout=120)


def _one_line(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("geoscope: error: "), result.stderr
    for needle in needles:
        assert needle in result.stderr


SUBPROCESS_CASES = ("newline-name", "config-a-list", "cache-in-proc", "output-in-proc", "text-encoder-offline")


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_end_to_end_one_line(tmp_path: Path, case: str) -> None:
    if case == "newline-name":
        bad = _write(tmp_path / "evil\nname.jpg", b"garbage")
        _one_line(_geoscope("predict", bad), "name.jpg")
    elif case == "config-a-list":
        bundle = _broken_bundle(tmp_path, _text("config.json", "[1, 2, 3]"))
        _one_line(_geoscope("predict", EXAMPLES / "croatia-1.jpg", "--model", bundle), "config.json")
    elif case == "cache-in-proc":
        _one_line(_geoscope("predict", EXAMPLES / "croatia-1.jpg", env={"GEOSCOPE_CACHE": "/proc/x"}),
                  "GEOSCOPE_CACHE", "/proc/x")
    elif case == "output-in-proc":
        manifest = _one_image_manifest(tmp_path)
        _one_line(_geoscope("features", manifest, "-o", "/proc/x.npz"), "/proc/x.npz")
    else:  # a hub name offline: one line at once, not a minute of retries
        manifest = _one_image_manifest(tmp_path)
        env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
        result = _geoscope("train", manifest, "-o", tmp_path / "m", "--text-encoder", "distilbert", env=env)
        _one_line(result, "cannot fetch 'distilbert-base-uncased' from the Hugging Face hub",
                  "not in the local cache")
        result = _geoscope("train", manifest, "-o", tmp_path / "m", "--text-encoder", "hf:nobody/no-such-model",
                           env=env)
        _one_line(result, "'nobody/no-such-model'")
