""""Don't know": the gallery and typicality tests, their p-values, and the threshold fitted on validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geoscope.answer.answerer import Answerer, Calibration
from geoscope.answer.coverage import Coverage, Covered, Typicality, gallery_scores, scores_by_test


def _labels() -> pd.DataFrame:
    return pd.DataFrame({"name": ["a", "b", "c"], "lat": [51.5, 51.4, 43.0], "lon": [-0.1, -0.2, -81.2]})


def _regions(rng: np.random.Generator, n: int, mean: np.ndarray) -> np.ndarray:
    """Street photos of one region: much variation shared by all regions (16 dims), a little of their own."""
    shared = rng.normal(0, 3.0, (n, 16))
    own = mean + rng.normal(0, 0.4, (n, len(mean)))
    return np.c_[shared, own]


REGION_MEANS = 2.0 * np.eye(3, 8)  # three regions apart along their own directions


def _training(rng: np.random.Generator, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([_regions(rng, n, m) for m in REGION_MEANS])
    return x, np.repeat(np.arange(3), n)


def test_gallery_test_flags_what_is_unlike_the_gallery() -> None:
    rng = np.random.default_rng(3)
    gallery = rng.normal(0, 1, (500, 16)) + np.r_[5.0, np.zeros(15)]
    near = gallery[:20] + rng.normal(0, 0.1, (20, 16))
    far = np.r_[rng.normal(0, 1, (10, 16)) - np.r_[5.0, np.zeros(15)],  # another direction
                3.0 * (gallery[:10] - gallery.mean(axis=0)) + gallery.mean(axis=0)]  # the same directions, far out
    assert gallery_scores(near, gallery, 10).min() > gallery_scores(far, gallery, 10).max()
    query = np.r_[near, far]
    distances = np.sqrt(((query[:, None] - gallery[None]) ** 2).sum(axis=2))  # every pair, the slow way
    expected = -np.sort(distances, axis=1)[:, :10].mean(axis=1)
    assert np.allclose(gallery_scores(query, gallery, 10), expected, rtol=1e-4)


def test_typicality_flags_a_region_between_the_known_ones_where_the_gallery_cannot() -> None:
    rng = np.random.default_rng(5)
    train, groups = _training(rng)
    typicality = Typicality.fit(train, groups)
    assert typicality is not None and typicality.tensors()["typicality.projection"].dtype == np.float16  # small
    held_out, _ = _training(rng, 100)
    elsewhere = _regions(rng, 300, REGION_MEANS.mean(axis=0))  # a fourth region, in the middle of the three
    t_in, t_out = typicality.scores(held_out), typicality.scores(elsewhere)
    g_in, g_out = (gallery_scores(x, train, 10) for x in (held_out, elsewhere))
    flagged = {name: (out < np.quantile(inside, 0.05)).mean()
               for name, inside, out in (("typicality", t_in, t_out), ("gallery", g_in, g_out))}
    assert flagged["typicality"] > 0.8 and flagged["gallery"] < 0.5, flagged
    assert Typicality.from_tensors(typicality.tensors()).scores(elsewhere[:5]) == pytest.approx(t_out[:5])
    assert Typicality.fit(train, np.zeros(len(train))) is None  # one group: nothing to be typical of


def test_coverage_keeps_its_share_of_validation_items_and_flags_either_test() -> None:
    rng = np.random.default_rng(6)
    val = {"gallery": rng.normal(0, 1, 2000), "typicality": rng.normal(0, 1, 2000)}
    coverage = Coverage.fit(val, kept=0.95, k=10, groups="country")
    fresh = {"gallery": rng.normal(0, 1, 4000), "typicality": rng.normal(0, 1, 4000)}
    assert (coverage.combine(fresh) >= coverage.threshold).mean() == pytest.approx(0.95, abs=0.015)
    one_fails = {"gallery": np.array([0.0, -4.0, 0.0]), "typicality": np.array([0.0, 0.0, -4.0])}
    assert list(coverage.combine(one_fails) >= coverage.threshold) == [True, False, False]
    assert Coverage.from_dict(coverage.to_dict()) == coverage
    few = Coverage.fit({"gallery": np.arange(10.0)}, kept=0.95, k=10, groups=None)  # a few validation items
    assert list(few.combine({"gallery": np.array([-50.0, -0.5, 5.0, 60.0])}) < few.threshold) == \
        [True, True, False, False]  # far below every one of them is out, however few they are
    assert Coverage.from_dict({"score": "knn-distance", "threshold": -3.0}) is None  # an older kind: unknown


def test_the_answer_says_whether_the_photo_is_in_coverage() -> None:
    coverage = Coverage(threshold=0.04, quantiles={"gallery": [0.0, 1.0]})
    answer = Answerer(_labels(), coverage).answer
    assert [answer("x", np.array([0.2, 0.3, 0.5]), coverage_score=s).in_coverage for s in (0.5, 0.01)] == \
        [True, False]
    assert Answerer(_labels()).answer("x", np.array([0.2, 0.3, 0.5]), coverage_score=0.1).in_coverage is None


def test_a_photo_the_coverage_test_barely_keeps_is_never_near_certain() -> None:
    calibration = Calibration({d: (0.0, 12.0) for d in ("25", "200", "750")})  # says 99.9994 % whatever it sees
    coverage = Coverage(threshold=0.04, quantiles={"gallery": [0.0, 1.0]}, items=1000)
    answer = Answerer(_labels(), coverage, calibration).answer
    typical, barely = (answer("x", np.array([0.2, 0.3, 0.5]), coverage_score=s).confidence["25"] for s in (0.8, 0.05))
    assert typical == pytest.approx(1 - 1 / 802, abs=1e-4) and barely == pytest.approx(1 - 1 / 52, abs=1e-4)
    unrecorded = Answerer(_labels(), Coverage(threshold=0.04, quantiles={"gallery": [0.0, 1.0]}), calibration)
    assert unrecorded.answer("x", np.array([0.2, 0.3, 0.5]), coverage_score=0.05).confidence["25"] > 0.9999


@pytest.mark.parametrize("shape", [(300, 40), (40, 300)])  # more images than features, and fewer
def test_principal_axes_are_the_svds_first_rows(shape: tuple[int, int]) -> None:
    from geoscope.answer.pca import principal_axes

    rng = np.random.default_rng(3)
    z = rng.normal(size=shape) * np.geomspace(10, 0.1, shape[1])  # a spectrum that falls, as features' does
    z -= z.mean(axis=0)
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    top, axes = principal_axes(z, 12)
    assert axes.shape == (12, shape[1])
    np.testing.assert_allclose(top, s[:12], rtol=1e-8)
    np.testing.assert_allclose(np.abs((axes * vt[:12]).sum(axis=1)), 1.0, atol=1e-8)  # the same axes, up to sign
    assert principal_axes(z, 10**6)[0].shape == (min(shape),)  # never more than the matrix has


def _country(rng: np.random.Generator, n: int, region: int, country: np.ndarray) -> np.ndarray:
    """Street photos of one region of a country: the country's look, and a little of the region's own (dims 8…11)."""
    own = np.zeros(4)
    own[region] = 2.5
    return np.c_[_regions(rng, n, country)[:, :24], own + rng.normal(0, 0.4, (n, 4))]


def test_the_test_one_level_down_flags_a_region_of_a_known_country_it_never_saw() -> None:
    rng = np.random.default_rng(7)
    countries = 3.0 * np.eye(2, 8)  # two countries; the first known by three of its four regions only
    parts = [(_country(rng, 300, r, countries[0]), 0, f"r{r}") for r in range(3)] + \
        [(_country(rng, 300, r, countries[1]), 1, "") for r in range(4)]  # the second wholly (no test below)
    train = np.concatenate([x for x, _, _ in parts])
    groups = np.concatenate([np.full(len(x), g) for x, g, _ in parts])
    subgroups = np.concatenate([np.full(len(x), s) for x, _, s in parts])
    typicality = Typicality.fit(train, groups, subgroups=subgroups)
    assert typicality is not None and set(typicality.within) == {0}
    back = Typicality.from_tensors(typicality.tensors())
    assert set(back.within) == {0} and "typicality.0.projection" in typicality.tensors()
    covered = Covered("Country A", "region", ("r0", "r1", "r2"))
    val = np.concatenate([_country(rng, 100, r, countries[c]) for c, r in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 3)]])
    gallery = train[::3]
    coverage = Coverage.fit(scores_by_test(val, val, gallery, 10, back), 0.95, 10, "country",
                            {"typicality.0": covered})
    unseen = _country(rng, 300, 3, countries[0])  # the first country's fourth region
    tests = scores_by_test(unseen, unseen, gallery, 10, back)
    assert np.isfinite(tests["typicality.0"]).mean() > 0.9  # it resembles the first country
    flagged = coverage.combine(tests) < coverage.threshold
    plain = Coverage.fit({k: v for k, v in scores_by_test(val, val, gallery, 10, back).items() if k != "typicality.0"},
                         0.95, 10, "country")
    assert flagged.mean() > 0.6 and (plain.combine(tests) < plain.threshold).mean() < 0.3
    fresh = np.concatenate([_country(rng, 200, r, countries[0]) for r in range(3)])
    assert (coverage.combine(scores_by_test(fresh, fresh, gallery, 10, back)) >= coverage.threshold).mean() > 0.9
    reasons = coverage.reasons(tests)
    assert reasons[int(np.flatnonzero(flagged)[0])] == ("it resembles Country A, but none of the regions of it the "
                                                        "model was trained on (r0, r1, r2)")
    assert all(r is None for r, f in zip(reasons, flagged, strict=True) if not f)
    assert Coverage.from_dict(coverage.to_dict()) == coverage


def test_coverage_written_before_the_test_one_level_down_reads_as_it_did() -> None:
    old = {"score": "gallery+typicality", "k": 10, "threshold": 0.03, "kept": 0.95, "groups": "country",
           "quantiles": {"gallery": [0.0, 1.0], "typicality": [0.0, 2.0]}}
    coverage = Coverage.from_dict(old)
    assert coverage is not None and coverage.within == {} and "within" not in coverage.to_dict()
    assert coverage.reasons({"gallery": np.array([-5.0, 0.5]), "typicality": np.array([1.0, -3.0])}) == \
        ["it is unlike every training photo", "it resembles none of the countries the model was trained on"]


def test_the_answer_says_why_a_photo_is_out_of_coverage() -> None:
    from geoscope.outputs.formats import csv_values, render_table

    covered = Covered("United States", "region", ("California", "Nevada"))
    coverage = Coverage(threshold=0.04, quantiles={"gallery": [0.0, 1.0], "typicality.1": [0.0, 1.0]},
                        within={"typicality.1": covered})
    why = coverage.reasons({"gallery": np.array([0.5, 0.5]), "typicality.1": np.array([-0.5, np.nan])})
    assert why == ["it resembles United States, but none of the regions of it the model was trained on "
                   "(California, Nevada)", None]  # the second: the test does not apply, the gallery keeps it
    answer = Answerer(_labels(), coverage).answer_rows(["x", "y"], np.array([[0.2, 0.3, 0.5]] * 2),
                                                       coverage_scores=[0.01, 0.5], coverage_reasons=why)
    record = answer[0].to_dict()
    assert record["in_coverage"] is False and record["coverage_reason"] == why[0]
    assert "coverage_reason" not in answer[1].to_dict()
    assert ("warning: outside what this model knows (it resembles United States, but none of the regions of it "
            "the model was trained on (California, Nevada)): the answer and guesses below") in render_table(record)
    assert csv_values(record)["coverage_reason"] == why[0]


def test_a_bundle_without_the_test_one_level_down_loads_validates_and_answers(tmp_path) -> None:
    import json
    import shutil

    from geoscope.bundle import read_bundle
    from geoscope.errors import ModelError
    from geoscope.predict import load_model

    default = Path(__file__).resolve().parents[1] / "src" / "geoscope" / "assets" / "default-model"
    model = load_model(default)  # written before it: read and validated as it was
    assert model.coverage is not None and model.coverage.within == {}
    assert model._stored_gallery().typicality.within == {}
    x = np.random.default_rng(0).normal(size=(3, model.head.image_dim)).astype(np.float32)
    assert set(model.coverage_tests(x)) == {"gallery", "typicality"}
    broken = tmp_path / "broken"
    shutil.copytree(default, broken)
    config = json.loads((broken / "config.json").read_text())
    config["coverage"]["quantiles"]["typicality.2"] = [0.0, 1.0]
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"typicality\.2 test, but weights.safetensors has no"):
        read_bundle(broken)


def test_a_model_trained_on_some_states_asks_which_of_them_a_photo_resembles(tmp_path) -> None:
    """Real streets: a tiny model on the western USA without Washington (and on Croatia, a second country)
    tests the US photos one level down, among the states it was trained on, and keeps its covered ones."""
    from conftest import shared_rows

    from geoscope.data.manifest import Manifest
    from geoscope.geo.labels import LabelScheme
    from geoscope.geo.naming import locate
    from geoscope.predict import load_model
    from geoscope.training.fit import FitOptions, fit
    from geoscope.training.loop import TrainConfig

    usa, croatia = shared_rows("us-west"), shared_rows("croatia")
    usa["state"] = locate(usa["lat"], usa["lon"])["region"].to_numpy()
    rows = []
    for state, places in (("California", 25), ("Nevada", 20), ("Idaho", 20), ("Washington", 10)):
        ids = usa.loc[usa["state"] == state, "location_id"].drop_duplicates().iloc[:places]
        rows.append(usa[usa["location_id"].isin(ids)])
    rows.append(croatia[croatia["location_id"].isin(croatia["location_id"].drop_duplicates().iloc[:30])])
    frame = pd.concat(rows, ignore_index=True)[["image", "lat", "lon", "location_id", "state"]]
    frame["location_id"] = frame["location_id"].astype(str) + np.where(frame["state"].isna(), "/hr", "/us")
    held = (frame["state"] == "Washington").to_numpy()
    rng = np.random.default_rng(0)
    place_split = {p: rng.choice(["train", "val", "test"], p=[0.6, 0.25, 0.15]) for p in frame["location_id"].unique()}
    frame["split"] = frame["location_id"].map(place_split)
    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 300.0}), augment=False, level_expert=False,
                         train=TrainConfig(max_epochs=4, batch_size=32, early_stop=4))
    fit(Manifest(frame[~held].drop(columns="state").reset_index(drop=True), Path("/")), options, tmp_path / "m",
        progress=False)
    model = load_model(tmp_path / "m")
    assert model.coverage is not None and model.coverage.groups == "country"
    test, covered = next((t, c) for t, c in model.coverage.within.items() if c.name == "United States")
    assert covered.name == "United States" and covered.covered == ("California", "Idaho", "Nevada")
    assert "United States: California, Idaho, Nevada" in (tmp_path / "m" / "README.md").read_text()
    photos = model.predict(list(frame.loc[held, "image"]))
    asked = model.coverage_tests(np.nan_to_num(model.image_features(list(frame.loc[held, "image"])).embeddings))
    assert np.isfinite(asked[test]).mean() > 0.8  # Washington's streets resemble the US: asked which state
    for p in photos:
        if p.in_coverage is False and p.coverage_reason.startswith("it resembles United States"):
            assert p.coverage_reason.endswith("(California, Idaho, Nevada)")
    kept = [p.in_coverage for p in model.predict(list(frame.loc[(frame["split"] == "test") & ~held, "image"]))]
    assert np.mean(kept) >= 0.85
