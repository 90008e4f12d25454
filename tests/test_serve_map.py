"""What the page adds for investigators: first-level borders and places on the map (approximate, drawn from
GeoNames towns, nothing from the internet) and where in the photo the answer comes from (occlusion maps).

The model is the bundled default (Great Britain, Canada, the United States, Croatia); the photos are the
repository's examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import SERVED, _run, drop_script, page_with_photo, read_marker, require_chromium
from conftest import REPO, make_images
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from PIL import Image
from test_serve import ARTIFACTS, LiveServer

from geoscope.geo.regions import country_of
from geoscope.investigate.explain import GRID, explain
from geoscope.predict import GeoModel
from geoscope.serve import create_app
from geoscope.serve.page import model_countries

EXAMPLES = REPO / "examples" / "images"
CROATIA, LONDON = EXAMPLES / "croatia-1.jpg", EXAMPLES / "london-uk-1.jpg"
CROATIAN_COUNTIES = 21


def _features(reply) -> list[dict]:
    assert reply.status_code == 200, reply.text
    return reply.json()["features"]


def test_the_model_countries_get_approximate_borders_region_names_and_places(client: TestClient,
                                                                           model: GeoModel) -> None:
    assert model_countries(model) == ["CA", "GB", "HR", "US"]
    reply = client.get("/regions.geojson", headers={"Accept-Encoding": "gzip"})
    assert reply.headers["content-encoding"] == "gzip" and int(reply.headers["content-length"]) < 400_000
    collection = reply.json()
    assert collection["countries"] == ["CA", "GB", "HR", "US"] and "approximated from GeoNames towns" in \
        collection["approximate"]
    kinds = {(f["properties"]["country"], f["properties"]["kind"]) for f in collection["features"]}
    assert kinds == {(c, k) for c in ("CA", "GB", "HR", "US") for k in ("borders", "region", "place")}
    croatia = [f for f in collection["features"] if f["properties"]["country"] == "HR"]
    counties = {f["properties"]["name"] for f in croatia if f["properties"]["kind"] == "region"}
    assert len(counties) == CROATIAN_COUNTIES and {"Virovitičko-podravska", "Grad Zagreb"} <= counties
    places = [f for f in croatia if f["properties"]["kind"] == "place"]
    names = [f["properties"]["name"] for f in places]
    assert names[:4] == ["Zagreb", "Split", "Rijeka", "Osijek"] and "Sesvete" not in names  # a district of Zagreb
    assert len(places) > 40
    for kind, share in (("borders", 0.95), ("region", 1.0), ("place", 0.85)):  # (coastal towns: at sea, for the
        lines = [line for f in croatia if f["properties"]["kind"] == kind for line in _lines(f["geometry"])]  # outline)
        points = np.array([np.mean(line[i:i + 2], axis=0) for line in lines for i in range(max(1, len(line) - 1))])
        assert (country_of(points[:, 1], points[:, 0]) == "HR").mean() >= share, kind  # segments' middles
    plain = client.get("/regions.geojson?countries=hr", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert json.loads(plain.content)["features"] == croatia  # one country alone is the same layer


def _lines(geometry: dict) -> list[list[list[float]]]:
    kind, coordinates = geometry["type"], geometry["coordinates"]
    return {"Point": [[coordinates]], "LineString": [coordinates], "MultiLineString": coordinates}[kind]


@pytest.mark.parametrize(("query", "status", "message"), [
    ("countries=XX", 400, "unknown region 'XX'"),
    ("countries=H1", 422, "countries: String should match pattern"),
    ("countries=" + ",".join(["HR"] * 3 + ["FR", "DE", "IT", "ES", "PT", "AT", "SI", "HU", "RS", "BA", "ME", "AL",
                                          "GR", "BG", "RO", "PL"]), 422, "at most 16"),
])
def test_bad_region_requests_are_one_line(client: TestClient, query: str, status: int, message: str) -> None:
    reply = client.get(f"/regions.geojson?{query}")
    assert reply.status_code == status and message in reply.json()["error"] and "\n" not in reply.json()["error"]


def test_explain_returns_the_occlusion_map_predict_explain_draws(client: TestClient, model: GeoModel) -> None:
    reply = client.post("/predict?explain=true", content=CROATIA.read_bytes()).json()
    found = reply["explanation"]
    assert found["label"] == reply["answer"]["label"] and found["image"] == reply["image"]
    expected = explain(model, [CROATIA])[0]
    assert found["country"] == expected.country
    for key in ("label_drop", "country_drop"):
        values = np.array(found[key])
        assert values.shape == (GRID, GRID)
        limit = np.abs(getattr(expected, key)).max()
        np.testing.assert_allclose(values, getattr(expected, key), atol=0.02 * limit)  # batches of 4 vs 16
    with Image.open(CROATIA) as image:
        width, height = image.size
    (left, top, right, bottom), = found["boxes"]  # the centre square of the photo
    assert (right - left) * width == pytest.approx((bottom - top) * height, abs=2)
    assert left == pytest.approx(1 - right, abs=0.01) and 0 <= top < bottom <= 1
    assert "explanation" not in client.post("/predict", content=CROATIA.read_bytes()).json()  # only when asked


def test_explain_keeps_to_single_photos_and_a_few_at_a_time(client: TestClient, tmp_path: Path) -> None:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in (CROATIA, LONDON)]
    refused = client.post("/predict?explain=true&views=true", files=files)
    assert refused.status_code == 422 and refused.json() == {"error": "explain maps single photos: leave out views"}
    many = [("files", (f"{i}.jpg", CROATIA.read_bytes(), "image/jpeg")) for i in range(5)]
    refused = client.post("/predict?explain=true", files=many)
    assert refused.status_code == 400 and refused.json()["error"] == (
        "5 files: explain maps at most 4 photos a request")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    mixed = client.post("/predict?explain=true", files=[*files, ("files", ("broken.jpg", broken.read_bytes()))])
    answers = mixed.json()["predictions"]
    assert [("explanation" in a, bool(a.get("error"))) for a in answers] == [(True, False), (True, False),
                                                                               (False, True)]
    wide = make_images(tmp_path, 1, size=(480, 240), seed=3)[0]  # the model reads its centre square
    (left, top, right, bottom), = client.post("/predict?explain=true", content=wide.read_bytes()).json()[
        "explanation"]["boxes"]
    assert (right - left) * 480 == pytest.approx((bottom - top) * 240, abs=2) and right - left < 0.55
    assert left == pytest.approx(1 - right, abs=0.01) and top == pytest.approx(1 - bottom, abs=0.01)


def test_the_reply_schema_documents_the_explanation(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    reply = client.post("/predict?explain=true", content=LONDON.read_bytes()).json()
    assert set(reply) <= set(schemas["ExplainedPrediction"]["properties"])
    assert set(reply["explanation"]) == set(schemas["WhereInThePhoto"]["properties"])
    parameters = {p["name"] for p in client.get("/openapi.json").json()["paths"]["/predict"]["post"]["parameters"]}
    assert "explain" in parameters


# --- the page in a browser ------------------------------------------------------------------------------


MAP_SCRIPT = drop_script(
    """const map = document.getElementById("map");
    const done = document.body.dataset.state === "answered" && map.dataset.ready === "1" &&
      document.querySelectorAll('#borders path[data-country="HR"]').length === 1;""",
    """marker.setAttribute("data-borders", String(document.querySelectorAll("#borders path.border").length));
    const names = (selector) => Array.from(document.querySelectorAll(selector)).map((t) => t.textContent);
    marker.setAttribute("data-regions", JSON.stringify(names("#labels text.region-name")));
    marker.setAttribute("data-places", JSON.stringify(names("#labels text.place-name")));
    for (let i = 0; i < 8; i++) document.getElementById("zoom-out").click();
    marker.setAttribute("data-far", String(document.querySelectorAll("#labels text.place-name").length));
    document.getElementById("zoom-fit").click();""")


@pytest.fixture(scope="module")
def live(model: GeoModel) -> Iterator[LiveServer]:
    async def page() -> HTMLResponse:
        return HTMLResponse(page_with_photo(MAP_SCRIPT, CROATIA))

    app = create_app(model)
    app.add_api_route("/map-test", page, include_in_schema=False)
    server = LiveServer(app)
    yield server
    server.stop()


def test_a_guess_in_croatia_lands_among_county_lines_and_named_towns(live: LiveServer, client: TestClient,
                                                                     tmp_path: Path) -> None:
    browser = require_chromium()
    url = f"http://127.0.0.1:{live.port}/map-test"
    attrs, dom = read_marker(url, tmp_path / "dom")
    assert int(attrs["borders"]) == 4  # the model's four countries, Croatia's drawn once
    counties = {f["properties"]["name"] for f in _features(client.get("/regions.geojson?countries=HR"))
                if f["properties"]["kind"] == "region"}
    shown = set(json.loads(attrs["regions"]))
    assert len(shown & counties) >= 5  # county names in their own spelling, around the answer
    places = json.loads(attrs["places"])
    assert len(places) >= 10 and len(places) == len(set(places))
    assert attrs["far"] == "0"  # zoomed out to the world: no town names
    assert "regions (approximate, from towns)" in dom  # the legend says how the lines were drawn

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page-croatia.png"
    shot.unlink(missing_ok=True)
    _run(browser, [f"--screenshot={shot}", "--window-size=1280,800", "--hide-scrollbars", *SERVED, url],
         tmp_path / "shot", 150)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20  # not a blank page
