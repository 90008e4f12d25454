"""Readable answers: label names, geocells, H3, the hierarchy, coverage, confidence and refinement."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from geoscope.answer.answerer import (
    Answerer,
    Calibration,
    best_guesses,
    fit_calibration,
    mass_near_top,
    unit_rows,
)
from geoscope.answer.refine import Refined, refine_in_labels
from geoscope.errors import GeoscopeError
from geoscope.geo.geocells import geocell_ids
from geoscope.geo.labels import LabelScheme, assign_labels, make_labels
from geoscope.geo.naming import MAX_REACH_KM, geographic_medoid, locate, name_labels, naming_towns
from geoscope.geo.places import load_places, own_spelling, post_towns
from geoscope.geo.sphere import haversine_km
from geoscope.predict import load_model


def _cloud(lat: float, lon: float, n: int, km: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return lat + rng.normal(0, km / 111, n), lon + rng.normal(0, km / 111 / np.cos(np.radians(lat)), n)


def test_locate_names_country_and_region() -> None:
    where = locate([51.38, 45.81, 40.97, 42.98], [-0.10, 15.98, -117.73, -81.25])
    assert where["country_code"].tolist() == ["GB", "HR", "US", "CA"]
    assert where["region"].tolist() == ["England", "Grad Zagreb", "Nevada", "Ontario"]


def test_medoid_is_where_the_images_are() -> None:
    rng = np.random.default_rng(0)
    lat, lon = _cloud(51.5, -0.1, 200, 3, rng)
    lat, lon = np.r_[lat, 40.0], np.r_[lon, -100.0]  # one far outlier pulls a mean, not a medoid
    mlat, mlon = geographic_medoid(lat, lon)
    assert haversine_km(mlat, mlon, 51.5, -0.1) < 2


def test_label_names_are_unique_true_places_with_region_and_country() -> None:
    towns = load_places(None, min_population=500)
    # Two labels around Croydon, one in the Nevada desert near a post-office town only, one far from any.
    names = name_labels([51.372, 51.380, 41.70, 39.40], [-0.098, -0.090, -117.59, -116.80], [3, 3, 20, 20],
                        ["GB", "GB", "US", "US"], ["England", "England", "Nevada", "Nevada"])
    assert names["name"].is_unique
    assert not names["name"].str.contains(r"\(\d+\)").any()
    assert names["name"][0] == "Croydon, England, United Kingdom"
    assert names["country"].tolist() == ["United Kingdom", "United Kingdom", "United States", "United States"]
    second = towns[(towns["name"] == names["place"][1]) & (towns["country_code"] == "GB")]
    assert not second.empty and haversine_km(51.380, -0.090, second["lat"], second["lon"]).min() <= 5
    # No GeoNames place of 500 people within 40 km of the desert label: a US post-office town names it.
    assert towns[haversine_km(41.70, -117.59, towns["lat"], towns["lon"]) <= MAX_REACH_KM].empty
    post = post_towns()
    town = post[post["name"] == names["place"][2]]
    assert not town.empty and haversine_km(41.70, -117.59, town["lat"], town["lon"]).min() <= MAX_REACH_KM
    assert names["name"][2].endswith(", Nevada, United States")
    # No town of either kind within 40 km: the name says how far and which way.
    assert names["place"][3].startswith(tuple(f"{d} km" for d in range(40, 200)))
    assert " of " in names["place"][3]


def test_a_town_is_named_with_its_own_region() -> None:
    """Every label of the bundled model named after a town says that town's region ("Medford, Oregon" for
    a label mostly in California)."""
    towns = naming_towns()
    labels = load_model().labels
    named = labels[~labels["place"].str.contains(" of ")]
    for row in named.itertuples():
        town = towns[(towns["name"] == row.place) & (towns["country_code"] == row.country_code)]
        nearest = town.iloc[int(np.argmin(haversine_km(row.lat, row.lon, town["lat"], town["lon"])))]
        assert row.name == ", ".join(dict.fromkeys((row.place, nearest["region"], row.country)))


def test_geocells_follow_countries_and_the_density_of_the_data() -> None:
    rng = np.random.default_rng(1)
    clouds = [_cloud(48.85, 2.35, 300, 4, rng), _cloud(45.76, 4.84, 12, 4, rng), _cloud(52.52, 13.40, 90, 4, rng)]
    lat = np.concatenate([c[0] for c in clouds])
    lon = np.concatenate([c[1] for c in clouds])
    ids = geocell_ids(lat, lon, min_images=20, max_images=100)
    countries = locate(lat, lon)["country_code"].to_numpy()
    for cell in np.unique(ids):
        assert len(set(countries[ids == cell])) == 1  # never across a border
        assert np.sum(ids == cell) >= 20  # Lyon's 12 images joined another French cell
    assert len(np.unique(ids[:300])) >= 3  # dense Paris is cut into parts of at most ~100
    assert len(np.unique(ids[312:])) == 1


def test_geocell_and_h3_labels_assign_new_points_consistently() -> None:
    rng = np.random.default_rng(2)
    lat, lon = np.concatenate([_cloud(48.85, 2.35, 60, 3, rng)[0], _cloud(52.52, 13.40, 60, 3, rng)[0]]), \
        np.concatenate([_cloud(48.85, 2.35, 60, 3, rng)[1], _cloud(52.52, 13.40, 60, 3, rng)[1]])
    frame = pd.DataFrame({"lat": lat, "lon": lon})
    for scheme in (LabelScheme("geocells", {"min_images": 10, "max_images": 200}), LabelScheme("h3", {"h3_res": 3})):
        ids, table = make_labels(frame, scheme)
        assert (assign_labels(lat, lon, table, scheme) == ids).mean() > 0.95
        assert set(table["country"]) == {"France", "Germany"}
        assert table["name"].is_unique


def _labels() -> pd.DataFrame:
    return pd.DataFrame({
        "name": ["Croydon, England, United Kingdom", "Camden, England, United Kingdom", "London, Ontario, Canada"],
        "lat": [51.37, 51.54, 42.98], "lon": [-0.10, -0.14, -81.25], "place": ["Croydon", "Camden", "London"],
        "region": ["England", "England", "Ontario"], "country": ["United Kingdom", "United Kingdom", "Canada"],
    })


def test_answer_sums_probabilities_per_country_and_region() -> None:
    answer = Answerer(_labels()).answer("a.jpg", np.array([0.3, 0.5, 0.2]), top_k=2)
    assert [g.place for g in answer.guesses] == ["Camden", "Croydon"]
    assert answer.levels["country"][0] == {"name": "United Kingdom", "probability": pytest.approx(0.8)}
    assert answer.levels["region"][1]["name"] == "Ontario, Canada"
    by_country = Answerer(_labels()).answer("a.jpg", np.array([0.3, 0.5, 0.2]), level="country")
    assert [(g.label, round(g.probability, 3)) for g in by_country.guesses] == [("United Kingdom", 0.8),
                                                                                  ("Canada", 0.2)]
    assert by_country.guesses[0].lat == 51.54  # its most probable place
    with pytest.raises(GeoscopeError, match="level must be one of"):
        Answerer(_labels()).answer("a.jpg", np.array([0.3, 0.5, 0.2]), level="city")


def test_the_first_guess_is_where_most_probability_lies_then_the_likeliest_place_there() -> None:
    lat = np.array([51.50, 51.50, 51.50, 42.98])  # three places 30 km apart in England, one in Ontario
    lon = np.array([-0.12, 0.31, 0.74, -81.25])
    p = np.array([[0.30, 0.10, 0.25, 0.35],  # Ontario is the single most probable place, England holds 65 %
                  [0.10, 0.20, 0.10, 0.60],  # Ontario holds the most
                  [0.20, 0.25, 0.20, 0.35]])  # England: its middle place is also its likeliest
    assert list(p.argmax(axis=1)) == [3, 3, 3]
    assert list(best_guesses(p, lat, lon)) == [0, 3, 1]
    answer = Answerer(pd.DataFrame({"name": list("ABCD"), "lat": lat, "lon": lon})).answer("x", p[0], top_k=4)
    assert answer.answer.label == answer.answer.name == "A"  # the best single answer, kept apart…
    assert [g.label for g in answer.guesses] == ["D", "A", "C", "B"]  # …from the guesses, by probability alone


def test_calibrated_confidence_follows_how_often_the_top_guess_is_close() -> None:
    rng = np.random.default_rng(4)
    labels = _labels()
    lat, lon = labels["lat"].to_numpy(), labels["lon"].to_numpy()
    n = 600
    sharp = rng.random(n) < 0.5  # sharp rows are confident and right; flat rows are unsure and often wrong
    probs = np.where(sharp[:, None], [0.9, 0.05, 0.05], [0.4, 0.3, 0.3])
    truth = np.where(sharp | (rng.random(n) < 0.4), 0, 2)
    calibration = fit_calibration(probs, lat[truth], lon[truth], lat, lon)
    every = calibration(mass_near_top(probs, lat, lon))
    confidence = every["25"]
    assert confidence[sharp].mean() > 0.9 and confidence[~sharp].mean() == pytest.approx(0.4, abs=0.08)
    # A wider circle is never less likely, whatever the separate fits say.
    odd = Calibration({"25": (1.0, 0.0), "200": (1.0, 2.0), "750": (0.2, -1.0)})
    wide = odd(mass_near_top(rng.dirichlet(np.ones(3), size=200), lat, lon))
    assert (wide["25"] <= wide["200"]).all() and (wide["200"] <= wide["750"]).all()
    assert Calibration.from_dict(calibration.to_dict()) == calibration


def test_refinement_moves_a_guess_to_its_most_similar_training_images() -> None:
    rng = np.random.default_rng(5)
    # Label 0 holds two neighbourhoods 20 km apart whose images look different; label 1 is elsewhere.
    gallery = np.r_[rng.normal(0, 0.1, (30, 8)) + np.eye(8)[0], rng.normal(0, 0.1, (30, 8)) + np.eye(8)[1],
                    rng.normal(0, 0.1, (30, 8)) + np.eye(8)[2]]
    g_lat = np.r_[np.full(30, 51.40), np.full(30, 51.58), np.full(30, 42.98)]
    g_lon = np.r_[np.full(30, -0.10), np.full(30, -0.10), np.full(30, -81.25)]
    g_label = np.r_[np.zeros(60, int), np.ones(30, int)]
    query = np.eye(8)[[1, 0]]
    lat, lon = refine_in_labels(query, np.array([[0], [0]]), unit_rows(gallery), g_lat, g_lon, g_label,
                                np.array([51.49, 42.98]), np.array([-0.10, -81.25]))
    assert lat[:, 0].tolist() == [51.58, 51.40]
    assert lon[:, 0].tolist() == [-0.10, -0.10]


def _four_labels() -> pd.DataFrame:
    """Two labels in Croatia's Sisak-Moslavina county, one in Zagreb, one in Ontario."""
    return pd.DataFrame({
        "name": ["Kutina, Sisačko-moslavačka, Croatia", "Sisak, Sisačko-moslavačka, Croatia",
                 "Zagreb, Grad Zagreb, Croatia", "London, Ontario, Canada"],
        "lat": [45.48, 45.47, 45.81, 42.98], "lon": [16.78, 16.37, 15.98, -81.25],
        "place": ["Kutina", "Sisak", "Zagreb", "London"],
        "region": ["Sisačko-moslavačka", "Sisačko-moslavačka", "Grad Zagreb", "Ontario"],
        "country": ["Croatia", "Croatia", "Croatia", "Canada"],
    })


def test_the_answer_stands_apart_and_the_guesses_are_ranked_by_probability_alone() -> None:
    p = np.array([[0.27, 0.25, 0.18, 0.30]])  # Croatia holds 70 %, London (Ontario) alone is the likeliest label
    (prediction,) = Answerer(_four_labels()).answer_rows(["x.jpg"], p, top_k=4)
    assert prediction.answer.label == "Kutina, Sisačko-moslavačka, Croatia"  # where most probability lies
    assert [g.name for g in prediction.guesses] == ["London, Ontario, Canada", "Kutina, Sisačko-moslavačka, Croatia",
                                                   "Sisak, Sisačko-moslavačka, Croatia", "Zagreb, Grad Zagreb, Croatia"]
    chances = [g.probability for g in prediction.guesses]
    assert chances == sorted(chances, reverse=True)
    record = prediction.to_dict()
    assert list(record) == ["image", "answer", "guesses", "levels", "in_coverage", "coverage_score", "confidence"]
    assert record["answer"]["name"] == "Kutina, Sisačko-moslavačka, Croatia"
    assert record["answer"]["probability"] == pytest.approx(0.27)
    assert 0 < record["answer"]["expected_geoscore"] <= 5000


def test_guesses_named_alike_are_one_guess_and_the_hierarchy_follows_the_answer() -> None:
    """A refiner moves two labels to points of one town: one guess, its probabilities summed, never two."""
    labels = _four_labels()
    p = np.array([[0.40, 0.35, 0.20, 0.05]])

    def refine(rows: np.ndarray, chosen: np.ndarray) -> Refined:
        # every Sisak-county label moves to a point named Popovača; the others stay where their labels are
        moved = np.isin(chosen, [0, 1])
        names = np.empty(chosen.shape, dtype=object)
        names[:] = [[("Popovača", "Sisačko-moslavačka", "Croatia") if m else None for m in row] for row in moved]
        lat = np.where(moved, 45.57 + 0.01 * chosen, labels["lat"].to_numpy()[chosen])
        lon = np.where(moved, 16.62, labels["lon"].to_numpy()[chosen])
        return Refined(lat, lon, names)

    (prediction,) = Answerer(labels).answer_rows(["x.jpg"], p, top_k=3, refine=refine)
    names = [g.name for g in prediction.guesses]
    assert len(names) == len(set(names)) == 3
    popovaca = prediction.guesses[0]
    assert popovaca.name == "Popovača, Sisačko-moslavačka, Croatia" and popovaca.probability == pytest.approx(0.75)
    assert (popovaca.lat, popovaca.lon) == (45.57, 16.62)  # at the more probable label's point
    assert popovaca.label == "Kutina, Sisačko-moslavačka, Croatia"  # the label it came from: secondary
    answer = prediction.answer
    assert (answer.name, answer.lat, answer.lon, answer.probability) == \
        (popovaca.name, popovaca.lat, popovaca.lon, popovaca.probability)  # the answer reads like its guess
    assert [(s["level"], s["name"]) for s in answer.hierarchy] == [
        ("country", "Croatia"), ("region", "Sisačko-moslavačka"), ("place", "Popovača")]
    assert [s["probability"] for s in answer.hierarchy] == pytest.approx([0.95, 0.75, 0.75])


def test_region_names_keep_their_own_spelling() -> None:
    assert own_spelling("HR", "Virovitick-Podravska") == "Virovitičko-podravska"  # cut in GeoNames' ASCII table
    assert own_spelling("HR", "Sisacko-Moslavacka") == "Sisačko-moslavačka"
    assert own_spelling("HR", "Grad Zagreb") == "Grad Zagreb"
    assert own_spelling("GB", "England") == "England" and own_spelling("US", "Nevada") == "Nevada"
    assert own_spelling("DE", "Bavaria") == "Bavaria"  # no ISO name alike: GeoNames' stays
    towns = naming_towns()
    croatian = set(towns.loc[towns["country_code"] == "HR", "region"])
    assert {"Virovitičko-podravska", "Sisačko-moslavačka", "Grad Zagreb"} <= croatian
    # the bundled model's labels and its GPS refiner's points say them so too
    model = load_model()
    regions = set(model.labels["region"]) | {p[1] for p in model.config["refiner"]["places"]}
    assert {"Virovitičko-podravska", "Sisačko-moslavačka", "Šibensko-kninska"} <= regions
    assert not regions & {"Virovitick-Podravska", "Sisacko-Moslavacka", "Sibensko-Kniniska"}


def test_guesses_moved_to_one_point_are_one_guess_under_the_first_name() -> None:
    """A refiner without names (``knn``) moves two labels onto one point: one guess, named after the more probable
    label, at that point, their probabilities summed; the labels of other rows are not touched."""
    labels = _four_labels()
    p = np.array([[0.40, 0.35, 0.20, 0.05], [0.05, 0.20, 0.35, 0.40]])

    def refine(rows: np.ndarray, chosen: np.ndarray) -> Refined:
        onto = (rows[:, None] == 0) & np.isin(chosen, [0, 1])  # in the first row only
        lat = np.where(onto, 45.5, labels["lat"].to_numpy()[chosen])
        lon = np.where(onto, 16.5, labels["lon"].to_numpy()[chosen])
        return Refined(lat, lon)

    first, second = Answerer(labels).answer_rows(["a.jpg", "b.jpg"], p, top_k=4, refine=refine)
    assert [(g.name, g.lat, g.lon) for g in first.guesses[:1]] == [("Kutina, Sisačko-moslavačka, Croatia", 45.5, 16.5)]
    assert first.guesses[0].probability == pytest.approx(0.75) and len(first.guesses) == 3
    assert sorted(g.name for g in second.guesses) == sorted(labels["name"])  # four guesses, each where its label is
    assert {(g.lat, g.lon) for g in second.guesses} == set(zip(labels["lat"], labels["lon"], strict=True))
