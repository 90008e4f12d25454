"""The GPS head: GeoCLIP's location encoder over a gallery of points, trained and answered like any head."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_rows

from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest, write_manifest
from geoscope.geo import haversine_km
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
    e = model.place_embeddings.numpy()
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
    assert probabilities[1:] == sorted(probabilities[1:], reverse=True)  # after the best guess, by probability


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
