"""The evaluation report: every section present, numbers that match, nothing from the network.

Results are built from made images (always) and from real us-west rows (when
../shared/data is present), with predictions jittered from the truth by known distances.
One test renders the page in headless Chromium and saves a screenshot under artifacts/.
"""

from __future__ import annotations

import base64
import io
import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import render, require_chromium
from conftest import REPO, make_images, shared_dataset
from PIL import Image

from geoscope.errors import GeoscopeError
from geoscope.evaluate.results import CENTROID, KNN, MODEL, EvaluationResult
from geoscope.geo.sphere import EARTH_RADIUS_KM, haversine_km, spherical_mean, summarize_errors
from geoscope.report import SEED_FIGURES, read_comparison_csv, write_report

ARTIFACTS = REPO / "artifacts"
SECTIONS = ("metrics", "comparison", "error-curve", "map", "examples", "labels", "splits",
            "training")
CITIES = ("Aberdeen", "Bristol", "Cardiff", "Dundee", "Exeter", "Leeds", "York")
JITTER_KM = np.array([0.4, 3.0, 12.0, 40.0, 150.0, 420.0, 900.0, 1800.0])


# --- building results with known errors ---------------------------------------------------


def _jitter(lat: np.ndarray, lon: np.ndarray, km: np.ndarray, rng: np.random.Generator):
    """Move each point ``km`` along a random bearing on the sphere (exact great-circle)."""
    bearing = rng.uniform(0, 2 * np.pi, len(lat))
    phi, lam, delta = np.radians(lat), np.radians(lon), np.asarray(km) / EARTH_RADIUS_KM
    phi2 = np.arcsin(np.sin(phi) * np.cos(delta) + np.cos(phi) * np.sin(delta) * np.cos(bearing))
    lam2 = lam + np.arctan2(np.sin(bearing) * np.sin(delta) * np.cos(phi),
                            np.cos(delta) - np.sin(phi) * np.sin(phi2))
    return np.degrees(phi2), (np.degrees(lam2) + 180.0) % 360.0 - 180.0


def build_result(
    frame: pd.DataFrame, *, labels: pd.Series | None, splits: bool, history: bool,
    model_name: str = "test-net", dataset: str = "test data", seed: int = 0,
) -> tuple[EvaluationResult, np.ndarray]:
    """An EvaluationResult whose model errs by chosen distances; returns it and those distances."""
    rng = np.random.default_rng(seed)
    lat, lon = frame["lat"].to_numpy(float), frame["lon"].to_numpy(float)
    intended = JITTER_KM[np.arange(len(frame)) % len(JITTER_KM)]
    plat, plon = _jitter(lat, lon, intended, rng)
    p = pd.DataFrame({"image": frame["image"].to_numpy(), "lat": lat, "lon": lon,
                      "pred_lat": plat, "pred_lon": plon})
    p["error_km"] = haversine_km(lat, lon, plat, plon)
    p["probability"] = rng.uniform(0.1, 0.9, len(p))
    if labels is not None:
        p["true_label"] = labels.to_numpy()
        names = np.unique(labels.to_numpy())
        wrong = rng.choice(names, len(p))
        p["pred_label"] = np.where(intended < 100, p["true_label"], wrong)
    if splits:
        p["split"] = np.array(["train", "val", "test"])[np.arange(len(p)) % 3]

    clat, clon = spherical_mean(lat, lon)
    centroid = pd.DataFrame({"pred_lat": np.full(len(p), clat), "pred_lon": np.full(len(p), clon)},
                            index=p.index)
    klat, klon = _jitter(lat, lon, np.full(len(p), 250.0), rng)
    knn = pd.DataFrame({"pred_lat": klat, "pred_lon": klon}, index=p.index)
    for base in (centroid, knn):
        base["error_km"] = haversine_km(lat, lon, base["pred_lat"], base["pred_lon"])
    if labels is not None:
        centroid["pred_label"] = labels.value_counts().index[0]
        knn["pred_label"] = rng.choice(np.unique(labels.to_numpy()), len(p))

    metrics = {}
    for name, pred in ((MODEL, p), (CENTROID, centroid), (KNN, knn)):
        metrics[name] = summarize_errors(pred["error_km"]).to_dict()
        if labels is not None:
            metrics[name]["label_accuracy"] = float((pred["pred_label"] == p["true_label"]).mean())
    hist = []
    if history:
        for epoch in range(1, 7):
            for split, offset in (("train", 0.0), ("val", 0.3)):
                hist.append({"epoch": epoch, "split": split, "loss": 2.5 / epoch + offset,
                             "accuracy": 0.1 + 0.08 * epoch - offset / 3,
                             "mean_km": 500 / epoch + 100 * offset,
                             "median_km": 300 / epoch + 80 * offset})
    result = EvaluationResult(p, {CENTROID: centroid, KNN: knn}, metrics, model_name, dataset,
                              history=hist)
    return result, intended


def made_frame(folder: Path, n: int = 42) -> pd.DataFrame:
    """Made images scattered over Britain, labelled with a city each."""
    rng = np.random.default_rng(1)
    paths = make_images(folder, n, size=(96, 64))
    return pd.DataFrame({"image": [str(p) for p in paths], "lat": rng.uniform(50.5, 56.5, n),
                         "lon": rng.uniform(-4.5, 0.5, n),
                         "label": np.array(CITIES)[np.arange(n) % len(CITIES)]})


def us_west_frame(n: int = 240) -> pd.DataFrame:
    folder = shared_dataset("us-west")
    frame = pd.read_csv(folder / "manifest.csv", dtype={"location_id": str}).sample(
        n, random_state=3).reset_index(drop=True)
    frame["image"] = [str(folder / p) for p in frame["image"]]
    frame["label"] = "cell " + frame["grid_cell"].astype(str)
    return frame


# --- reading the page back ------------------------------------------------------------------


class Page(HTMLParser):
    """The parts of the report the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.h2: list[str] = []
        self.images: list[str] = []
        self.urls: list[str] = []
        self.cells: dict[tuple[str, int], tuple[str | None, str]] = {}
        self._metric: str | None = None
        self._column = 0
        self._in: str | None = None
        self._cell_value: str | None = None
        self._text = ""
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key])
        if tag == "img":
            self.images.append(a["src"])
        if tag == "link" or tag == "script":
            self.urls.append(a.get("src") or a.get("href") or f"<{tag}>")
        if tag == "tr":
            self._metric, self._column = a.get("data-metric"), 0
        if tag == "td" and self._metric:
            self._in, self._cell_value, self._text = "td", a.get("data-value"), ""
        if tag == "h2":
            self._in, self._text = "h2", ""

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._in == "td":
            self.cells[(self._metric, self._column)] = (self._cell_value, self._text)
            self._column += 1
            self._in = None
        if tag == "h2" and self._in == "h2":
            self.h2.append(self._text)
            self._in = None


def expected_text(value: float, kind: str) -> str:
    if kind == "count":
        return f"{round(value):,d}"
    if kind == "share":
        return f"{100 * value:.1f}%"
    if kind == "km":
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def check_report(index: Path, result: EvaluationResult) -> Page:
    """Every section, every image, the metrics, no network: what a reader relies on."""
    text = index.read_text(encoding="utf-8")
    page = Page(text)
    assert set(SECTIONS) <= page.ids, f"missing sections {set(SECTIONS) - page.ids}"
    assert {"examples-best", "examples-worst", "examples-random", "metrics-table",
            "comparison-table", "error-curve-figure", "map-figure"} <= page.ids
    assert "http://" not in text and "https://" not in text and "//" not in "".join(page.urls)
    assert page.images, "the report shows no images"
    for src in page.images:
        if src.startswith("data:"):
            Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
        else:
            path = index.parent / src
            assert path.is_file(), f"<img src={src!r}> points at nothing"
            with Image.open(path) as image:
                image.verify()
                if src.startswith("thumbs/"):
                    assert max(image.size) <= 256
    names = [MODEL, *result.baselines]
    for column, name in enumerate(names):
        metrics = result.metrics[name]
        wanted = {"n": (metrics["n"], "count"), "median_km": (metrics["median_km"], "km"),
                  "mean_km": (metrics["mean_km"], "km"), "geoscore": (metrics["geoscore"], "score")}
        wanted |= {f"within_km.{k}": (v, "share") for k, v in metrics["within_km"].items()}
        if math.isfinite(metrics.get("label_accuracy", math.nan)):
            wanted["label_accuracy"] = (metrics["label_accuracy"], "share")
        for key, (value, kind) in wanted.items():
            data, shown = page.cells[(key, column)]
            assert float(data) == pytest.approx(value, rel=1e-12), (key, name)
            assert shown == expected_text(value, kind), (key, name, shown)
    return page


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvaluationResult, np.ndarray, Path]:
    root = tmp_path_factory.mktemp("made")
    frame = made_frame(root / "images")
    result, intended = build_result(frame, labels=frame["label"], splits=True, history=True)
    index = write_report(result, root / "report", examples_per_grid=6, seed=5)
    return result, intended, index


@pytest.fixture(scope="module")
def us_west(tmp_path_factory: pytest.TempPathFactory) -> tuple[EvaluationResult, np.ndarray, Path]:
    frame = us_west_frame()
    result, intended = build_result(frame, labels=frame["label"], splits=True, history=True,
                                    model_name="jitter", dataset="us-west (240 images)")
    index = write_report(result, tmp_path_factory.mktemp("us-west") / "report")
    return result, intended, index


# --- tests ----------------------------------------------------------------------------------


def test_made_report_has_every_section_and_the_right_numbers(made) -> None:
    result, intended, index = made
    assert index == index.parent / "index.html"
    assert np.allclose(result.predictions["error_km"], intended, rtol=1e-6)
    page = check_report(index, result)
    assert {"per-label-table", "confusion-figure", "split-table", "split-curves-figure",
            "training-figure"} <= page.ids
    assert (index.parent / "per_label.csv").is_file()
    text = index.read_text(encoding="utf-8")
    assert text.count('class="example') == 18  # three grids of six
    assert "Predicted: " in text and "  True: " in text and "error 0.4 km" in text
    best = result.predictions.nsmallest(1, "error_km").iloc[0]
    assert f"Predicted: {best['pred_label']}  True: {best['true_label']}" in text


def test_comparison_table_shows_the_seed_figures_as_another_dataset(made) -> None:
    _, _, index = made
    text = index.read_text(encoding="utf-8")
    table = text[text.index('id="comparison-table"'):]
    table = table[: table.index("</table>")]
    for shown in ("2.28%", "292", "14.34%", "128", "27.08%", "131"):
        assert f">{shown}</td>" in table
    assert table.count("a different dataset") == len(SEED_FIGURES) == 3
    assert "test-net (this model)" in table and "kNN baseline" in table


def test_per_split_numbers_match_the_predictions(made) -> None:
    result, _, index = made
    text = index.read_text(encoding="utf-8")
    p = result.predictions
    for split in ("train", "val", "test"):
        row = text[text.index(f'data-split="{split}"'):]
        row = row[: row.index("</tr>")]
        median = float(np.median(p.loc[p["split"] == split, "error_km"]))
        assert f'data-value="{median!r}"' in row


def test_report_without_labels_splits_or_history(tmp_path: Path) -> None:
    frame = made_frame(tmp_path / "images", n=12)
    result, _, = build_result(frame, labels=None, splits=False, history=False)
    index = write_report(result, tmp_path / "report", examples_per_grid=3)
    page = check_report(index, result)
    text = index.read_text(encoding="utf-8")
    assert "predicts coordinates, not labels" in text
    assert "no split column" in text and "no training history" in text
    assert "confusion-figure" not in page.ids and "training-figure" not in page.ids
    row = result.predictions.nsmallest(1, "error_km").iloc[0]
    assert (f"Predicted: {row['pred_lat']:.2f}, {row['pred_lon']:.2f}  "
            f"True: {row['lat']:.2f}, {row['lon']:.2f}") in text


def test_text_is_escaped_and_unreadable_images_do_not_break_the_page(tmp_path: Path) -> None:
    frame = made_frame(tmp_path / "images", n=8)
    frame.loc[0, "image"] = str(tmp_path / "gone.jpg")
    frame["label"] = ['<script>alert("x")</script>', *frame["label"][1:]]
    result, _ = build_result(frame, labels=frame["label"], splits=False, history=False,
                             model_name='net <b>"bold"</b> & co', dataset="<i>set</i>")
    index = write_report(result, tmp_path / "report", examples_per_grid=8)
    check_report(index, result)
    text = index.read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>" not in text and "<i>set" not in text
    assert "net &lt;b&gt;&quot;bold&quot;&lt;/b&gt; &amp; co" in text
    assert "image unavailable" in text


def test_user_comparison_csv_rows_appear(tmp_path: Path, made) -> None:
    result, _, _ = made
    csv = tmp_path / "theirs.csv"
    csv.write_text("name,dataset,accuracy,mean_km,median_km\n"
                   "GeoCLIP zero-shot,us-west,31.5%,210,95.5\n"
                   "PIGEON-ish,\"Im2GPS3k, full\",0.4,,\n")
    rows = read_comparison_csv(csv)
    assert [r.accuracy for r in rows] == [pytest.approx(0.315), 0.4]
    assert rows[1].mean_km is None and rows[1].dataset == "Im2GPS3k, full"
    index = write_report(result, tmp_path / "report", comparison_csv=csv, examples_per_grid=2)
    text = index.read_text(encoding="utf-8")
    assert "GeoCLIP zero-shot" in text and "31.50%" in text and "Im2GPS3k, full" in text


@pytest.mark.parametrize(("content", "message"), [
    (None, "not found"),
    ("name,dataset,mean_km\nx,y,3\n", "lacks column accuracy"),
    ("name,dataset,accuracy,mean_km\n", "no rows"),
    ("name,dataset,accuracy,mean_km\nx,y,0.2,far\n", "row 2: mean_km 'far' is not a number"),
    ("name,dataset,accuracy,mean_km\nx,y,0.2,3\nz,y,14,3\n", "row 3: accuracy '14' is over 1"),
    ("name,dataset,accuracy,mean_km\n,y,0.2,3\n", "row 2: name is empty"),
    ("name,dataset,accuracy,mean_km\nx,y,0.2,-3\n", "must be a non-negative number"),
])
def test_bad_comparison_csv_is_one_line_error(tmp_path: Path, content: str | None,
                                              message: str) -> None:
    csv = tmp_path / "bad.csv"
    if content is not None:
        csv.write_text(content)
    with pytest.raises(GeoscopeError, match=message) as info:
        read_comparison_csv(csv)
    assert "\n" not in str(info.value)


def test_report_folder_is_replaced_whole_and_foreign_folders_are_refused(made, tmp_path) -> None:
    result, _, _ = made
    out = tmp_path / "report"
    write_report(result, out, examples_per_grid=4)
    (out / "stale.txt").write_text("from an earlier run")
    write_report(result, out, examples_per_grid=2)
    assert not (out / "stale.txt").exists()
    assert len(list((out / "thumbs").iterdir())) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temp folders left

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(GeoscopeError, match="holds something other than a geoscope report"):
        write_report(result, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(GeoscopeError, match="is a file"):
        write_report(result, foreign / "notes.txt")


def test_empty_result_is_refused(tmp_path: Path) -> None:
    empty = pd.DataFrame(columns=["image", "lat", "lon", "pred_lat", "pred_lon", "error_km"])
    result = EvaluationResult(empty, {}, {MODEL: summarize_errors([]).to_dict()}, "m", "d")
    with pytest.raises(GeoscopeError, match="no predictions"):
        write_report(result, tmp_path / "report")
    assert not (tmp_path / "report").exists()


@pytest.mark.shared_data
def test_us_west_report_with_known_errors(us_west) -> None:
    result, intended, index = us_west
    assert np.allclose(result.predictions["error_km"], intended, rtol=1e-6)
    check_report(index, result)
    median = float(np.median(intended))
    assert math.isclose(result.metrics[MODEL]["median_km"], median, rel_tol=1e-6)
    assert "cell " in index.read_text(encoding="utf-8")


def test_page_renders_in_headless_chromium_with_nothing_broken(made) -> None:
    require_chromium()
    _, _, index = made
    shown = render(index, ARTIFACTS / "report-made.png")
    for section in SECTIONS:
        assert f'<section id="{section}">' in shown.dom
    assert shown.images >= 18 + 5 and shown.broken_images == []
    assert shown.failed_requests == []
    assert shown.screenshot is not None
    with Image.open(shown.screenshot) as shot:
        assert shot.size[0] == 1280 and shot.size[1] >= 2000


def test_browser_check_sees_a_broken_image(tmp_path: Path) -> None:
    require_chromium()
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="missing.png"></body></html>')
    shown = render(page)
    assert shown.broken_images == ["missing.png"]


@pytest.mark.shared_data
def test_us_west_report_screenshot(us_west) -> None:
    require_chromium()
    _, _, index = us_west
    shown = render(index, ARTIFACTS / "report-us-west.png")
    assert shown.broken_images == [] and shown.failed_requests == []


def test_a_failure_midway_leaves_the_earlier_report(made, tmp_path, monkeypatch) -> None:
    import geoscope.report.build as build

    result, _, _ = made
    out = tmp_path / "report"
    index = write_report(result, out, examples_per_grid=1)
    before = index.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(build, "error_map_figure", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_report(result, out, examples_per_grid=1)
    assert index.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_one_item_without_baselines(tmp_path: Path) -> None:
    image = make_images(tmp_path / "images", 1)[0]
    p = pd.DataFrame({"image": [str(image)], "lat": [48.2], "lon": [16.37], "pred_lat": [48.2],
                      "pred_lon": [16.37], "error_km": [0.0], "probability": [1.0],
                      "true_label": ["Vienna"], "pred_label": ["Vienna"]})
    metrics = {MODEL: summarize_errors([0.0]).to_dict() | {"label_accuracy": 1.0}}
    result = EvaluationResult(p, {}, metrics, "solo", "one photo")
    index = write_report(result, tmp_path / "report")
    page = check_report(index, result)
    assert "confusion-figure" in page.ids
    assert "Predicted: Vienna  True: Vienna" in index.read_text(encoding="utf-8")


def test_predicted_labels_without_true_labels(tmp_path: Path) -> None:
    """A label model evaluated where no truth label is known (evaluate stores None)."""
    frame = made_frame(tmp_path / "images", n=6)
    result, _ = build_result(frame, labels=frame["label"], splits=False, history=False)
    result.predictions["true_label"] = None
    for metrics in result.metrics.values():
        metrics["label_accuracy"] = float("nan")
    index = write_report(result, tmp_path / "report", examples_per_grid=2)
    page = check_report(index, result)
    text = index.read_text(encoding="utf-8")
    assert ("label_accuracy", 0) not in page.cells and "predicts coordinates" in text
    row = result.predictions.nsmallest(1, "error_km").iloc[0]
    assert f"Predicted: {row['pred_label']}  True: {row['lat']:.2f}, {row['lon']:.2f}" in text
