"""The GPS head: GeoCLIP's location encoder over a gallery of points, trained and answered like any head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, shared_rows

from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest, write_manifest
from geoscope.geo.sphere import haversine_km
from geoscope.models.location import LocationEncoder, equal_earth, geoclip_weights_path, load_geoclip
from geoscope.predict import load_model


def test_equal_earth_keeps_the_origin_and_the_symmetries() -> None:
    points = torch.tensor([[0.0, 0.0], [40.0, 30.0], [-40.0, 30.0], [40.0, -30.0], [90.0, 0.0]])
    xy = equal_earth(points)
    assert torch.allclose(xy[0], torch.zeros(2))
    assert torch.allclose(xy[1, 0], xy[2, 0]) and torch.allclose(xy[1, 1], -xy[2, 1])  # mirror across the equator
    assert torch.allclose(xy[1, 0], -xy[3, 0]) and torch.allclose(xy[1, 1], xy[3, 1])  # and the prime meridian
    assert xy[:, 1].abs().max() <= 1.0 and xy[4, 0] == 0


def test_geoclip_weights_give_geoclip_s_embedding() -> None:
    """Our encoder with GeoCLIP's weights computes what GeoCLIP's layers compute (written out here from its file)."""
    ours = load_geoclip(LocationEncoder()).eval()
    state = torch.load(geoclip_weights_path(), map_location="cpu", weights_only=True)
    coords = torch.tensor([[51.5, -0.12], [45.81, 15.98], [-33.87, 151.21], [36.17, -115.14]])
    projected, expected = equal_earth(coords), 0
    for i in range(3):
        w = {k.removeprefix(f"LocEnc{i}."): v for k, v in state.items() if k.startswith(f"LocEnc{i}.")}
        angles = 2 * math.pi * projected @ w["capsule.0.b"].T
        h = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
        for layer in ("capsule.1", "capsule.3", "capsule.5"):
            h = torch.relu(h @ w[f"{layer}.weight"].T + w[f"{layer}.bias"])
        expected = expected + h @ w["head.0.weight"].T + w["head.0.bias"]
    with torch.no_grad():
        torch.testing.assert_close(ours(coords), expected, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def london_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """800 real London images (no split column: train splits them by blocks)."""
    frame = shared_rows("london-uk", 800)
    out = tmp_path_factory.mktemp("london-small") / "manifest.csv"
    write_manifest(frame.reset_index(drop=True), out)
    return out


def test_the_gps_head_trains_on_a_gallery_and_answers_with_distinct_points(
        london_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gps"
    assert main(["train", str(london_small), "--head", "gps", "--labels", "grid", "--cell-km", "2", "-o", str(out),
                 "--max-epochs", "2", "--no-augment", "--label-smoothing-km", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["place_clip"]["places_from"] == "coordinates" and config["text_encoder"] is None
    assert config["answer"]["merge_km"] == 5.0
    assert "location encoder" in (out / "README.md").read_text()
    model = load_model(out)
    assert len(model.labels) > 20 and not any(k.startswith("model.place_tower.") for k in model.files.tensors)
    # points close together are read alike by the location encoder: their embeddings are more similar
    lat, lon = model.labels["lat"].to_numpy(), model.labels["lon"].to_numpy()
    e = model.head.places.numpy()
    d = haversine_km(lat[:, None], lon[:, None], lat[None], lon[None])
    similarity = e @ e.T
    near, far = (d > 0) & (d < 4), d > 15
    assert near.any() and far.any() and similarity[near].mean() > similarity[far].mean()

    image = str(read_manifest(london_small).image_paths[0])
    capsys.readouterr()
    assert main(["predict", image, "--model", str(out), "--json", "--top-k", "5"]) == 0
    guesses = json.loads(capsys.readouterr().out)[0]["guesses"]
    assert len(guesses) == 5
    points = np.array([[g["lat"], g["lon"]] for g in guesses])
    apart = haversine_km(points[:, None, 0], points[:, None, 1], points[None, :, 0], points[None, :, 1])
    assert apart[np.triu_indices(5, 1)].min() > 5.0  # merged: no two guesses within 5 km
    probabilities = [g["probability"] for g in guesses]
    assert probabilities == sorted(probabilities, reverse=True)  # the guesses by probability (the answer apart)


def test_a_frozen_location_encoder_reads_the_gallery_once() -> None:
    from geoscope.models.place_clip import PlaceCLIP, PlaceCLIPConfig

    def model(location: str) -> tuple[PlaceCLIP, list[int]]:
        m = PlaceCLIP(PlaceCLIPConfig(8, 2, 16, places_from="coordinates", location=location))
        calls: list[int] = []
        m.place_tower.register_forward_hook(lambda *_: calls.append(1))
        return m, calls

    gallery = torch.tensor([[51.5, -0.1], [51.6, -0.2], [45.8, 16.0]])
    frozen, calls = model("geoclip-frozen")
    for _ in range(3):
        frozen.embed_places(gallery).sum().backward()
    assert len(calls) == 1  # the training loop's steps all read one gallery: encoded once
    assert frozen.text_head.projection.weight.grad is not None  # what reads it still trains
    assert all(p.grad is None for p in frozen.place_tower.parameters())
    frozen.embed_places(gallery.clone())
    assert len(calls) == 2  # other places: encoded again

    trained, calls = model("geoclip")
    for _ in range(3):
        trained.embed_places(gallery).sum().backward()
    assert len(calls) == 3 and all(p.grad is not None for p in trained.place_tower.parameters())


@pytest.fixture(scope="module")
def refined_pair(london_small: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A GPS head on a 2 km gallery and a place head on 5 km cells that carries it as its refiner."""
    folder = tmp_path_factory.mktemp("refined")
    common = ["--max-epochs", "2", "--no-augment", "--labels", "grid"]
    assert main(["train", str(london_small), "--head", "gps", "--cell-km", "2", "-o", str(folder / "gps"),
                 "--label-smoothing-km", "3", *common]) == 0
    assert main(["train", str(london_small), "--cell-km", "5", "-o", str(folder / "place"),
                 "--refiner", str(folder / "gps"), *common]) == 0
    return folder / "place", folder / "gps"


def _guesses(capsys: pytest.CaptureFixture, *argv: str) -> list[list[dict]]:
    capsys.readouterr()
    assert main(["predict", *argv, "--json", "--top-k", "3"]) == 0
    return [record["guesses"] for record in json.loads(capsys.readouterr().out)]


def test_a_gps_refiner_moves_each_guess_to_its_likeliest_point_near_the_label(
        refined_pair: tuple[Path, Path], london_small: Path, capsys: pytest.CaptureFixture) -> None:
    place, gps = refined_pair
    model = load_model(place)
    assert model.refine == "gps" and sorted(model.refiners) == ["gps", "knn"]
    assert model.config["refiner"]["points"] == len(load_model(gps).labels)
    assert "GPS head" in (place / "README.md").read_text()
    images = [str(p) for p in read_manifest(london_small).image_paths[:6]]
    labels = model.labels.set_index("name")
    gps_labels = load_model(gps).labels
    points = {(round(a, 6), round(o, 6)): (row.place, row.region, row.country)  # the GPS head's names for them
              for a, o, row in zip(model.files.tensors["refiner.lat"], model.files.tensors["refiner.lon"],
                                   gps_labels.fillna("").itertuples(), strict=True)}
    refined, plain = _guesses(capsys, *images, "--model", str(place)), \
        _guesses(capsys, *images, "--model", str(place), "--refine", "none")
    moved = 0
    for by_gps, by_label in zip(refined, plain, strict=True):
        for h in by_label:  # not refined: each guess at its label's own place, named as its label
            home = labels.loc[h["label"]]
            assert (h["lat"], h["lon"]) == pytest.approx((home["lat"], home["lon"]), abs=1e-6)
            assert (h["place"], h["region"], h["country"]) == (home["place"], home["region"], home["country"])
            assert h["name"] == h["label"]
        for g in by_gps:
            home = labels.loc[g["label"]]  # the label it came from
            if (g["lat"], g["lon"]) == pytest.approx((home["lat"], home["lon"]), abs=1e-6) and g["name"] == g["label"]:
                continue  # kept its label's place: an earlier guess took its point
            assert (g["lat"], g["lon"]) in points  # a point of the GPS head's gallery…
            assert haversine_km(g["lat"], g["lon"], home["lat"], home["lon"]) <= 50.0  # …near its label…
            assert (g["place"], g["region"], g["country"]) == points[g["lat"], g["lon"]]  # …named as the point
            moved += 1
        assert len({(g["lat"], g["lon"]) for g in by_gps}) == len(by_gps)
        assert len({g["name"] for g in by_gps}) == len(by_gps)  # guesses named alike are one guess
    assert moved > 0


def test_no_two_guesses_of_one_answer_are_refined_to_the_same_point() -> None:
    model = load_model(None)  # the default model: three London labels share the GPS head's likeliest point
    assert model.refine == "gps"
    for answer in model.predict(sorted((REPO / "examples" / "images").glob("*.jpg")), top_k=5):
        points = [(g.lat, g.lon) for g in answer.guesses]
        assert len(points) == 5 and len(set(points)) == 5, answer.image


def test_a_refiner_must_be_a_gps_head_trained_on_the_same_images(
        refined_pair: tuple[Path, Path], london_small: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    place, gps = refined_pair
    capsys.readouterr()
    base = ["train", str(london_small), "--max-epochs", "1", "--no-augment", "-o", str(tmp_path / "out")]
    assert main([*base, "--refiner", str(place)]) == 2
    assert "a refiner is a GPS head's bundle" in capsys.readouterr().err
    fewer = tmp_path / "fewer.csv"
    write_manifest(read_manifest(london_small).frame.iloc[:600], fewer)
    assert main(["train", str(fewer), *base[2:], "--refiner", str(gps)]) == 2
    assert "trained on other images" in capsys.readouterr().err.strip().splitlines()[-1]  # after the encoding
    assert not (tmp_path / "out").exists()
    image = str(read_manifest(london_small).image_paths[0])
    assert main(["predict", image, "--model", str(gps), "--refine", "gps"]) == 2  # a bundle without a refiner
    assert "holds no GPS head" in capsys.readouterr().err
