"""The HTTP service: answers, errors as JSON, limits and timeouts, micro-batching, the map page.

Most tests talk to the application in-process (FastAPI's TestClient); what needs a real
socket (the listen backlog, a client that lies about its body, concurrency, the page in a
browser) runs one uvicorn server on 127.0.0.1. The model is the bundled default; the
photos are the repository's examples.
"""

from __future__ import annotations

import dataclasses
import html
import http.client
import json
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from browser import MARKER_ID, _run, drop_script, page_with_photo, require_chromium
from conftest import REPO, make_images
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from PIL import Image

from geoscope.answer.refine import REFINERS
from geoscope.cli.main import main
from geoscope.paths import cache_dir
from geoscope.predict import Answer, GeoModel, Guess, Prediction, load_model
from geoscope.serve import MAX_UPLOAD_BYTES, ServeSettings, create_app, uvicorn_config
from geoscope.serve.page import WEB_ASSETS
from geoscope.serve.server import listen

EXAMPLES = REPO / "examples" / "images"
LONDON, LONDON_2, US_WEST = EXAMPLES / "london-uk-1.jpg", EXAMPLES / "london-uk-2.jpg", EXAMPLES / "us-west-1.jpg"
ARTIFACTS = REPO / "artifacts"
BODY_TIMEOUT = 2.0
QUEUE = 16


class LiveServer:
    """The application under a real uvicorn on 127.0.0.1, in a thread."""

    def __init__(self, app) -> None:
        self.app = app
        config = uvicorn_config(app, "127.0.0.1", 0)
        self.server = uvicorn.Server(config)
        sock = listen("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def post(self, body: bytes, path: str = "/predict", timeout: float = 120) -> tuple[int, dict, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
            reply = connection.getresponse()
            return reply.status, dict(reply.getheaders()), json.loads(reply.read())
        finally:
            connection.close()


@pytest.fixture(scope="module")
def live(model: GeoModel) -> Iterator[LiveServer]:
    app = create_app(model, ServeSettings(queue=QUEUE, body_timeout=BODY_TIMEOUT))
    app.add_api_route("/drop-test", _drop_test_page, include_in_schema=False)
    server = LiveServer(app)
    yield server
    server.stop()


# --- answers ------------------------------------------------------------------------------------


def test_a_raw_upload_is_answered_like_predict_on_the_file(client: TestClient) -> None:
    expected = load_model().predict([LONDON, US_WEST], top_k=3)
    for path, want in zip((LONDON, US_WEST), expected, strict=True):
        reply = client.post("/predict?top_k=3", content=path.read_bytes())
        assert reply.status_code == 200
        answer = reply.json()
        assert answer["image"] == "upload"
        got = answer["guesses"]
        assert [g["label"] for g in got] == [g.label for g in want.guesses]
        assert np.allclose([g["probability"] for g in got], [g.probability for g in want.guesses], atol=1e-4)


def test_several_files_get_one_answer_each_and_views_fuse_them(client: TestClient) -> None:
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in (LONDON, US_WEST)]
    reply = client.post("/predict?top_k=2", files=files)
    assert reply.status_code == 200
    answers = reply.json()["predictions"]
    assert [a["image"] for a in answers] == [LONDON.name, US_WEST.name]
    assert all(len(a["guesses"]) == 2 for a in answers)

    views = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in (LONDON, LONDON_2)]
    fused = client.post("/predict?top_k=4&views=true", files=views).json()
    want = load_model().predict([LONDON, LONDON_2], top_k=4, views=True)[0]
    assert fused["views"] == [LONDON.name, LONDON_2.name]
    assert [g["label"] for g in fused["guesses"]] == [g.label for g in want.guesses]
    assert np.allclose([g["probability"] for g in fused["guesses"]], [g.probability for g in want.guesses], atol=1e-4)


def test_an_unreadable_view_is_refused_unless_the_others_may_answer(client: TestClient) -> None:
    files = [("files", ("good.jpg", LONDON.read_bytes(), "image/jpeg")),
             ("files", ("bad.jpg", b"not a photo", "image/jpeg"))]
    refused = client.post("/predict?views=true", files=files)
    assert refused.status_code == 400
    assert "bad.jpg: not an image file" in refused.json()["error"]
    reply = client.post("/predict?views=true&allow_missing_views=true", files=files)
    assert reply.status_code == 200
    answer = reply.json()
    assert answer["views"] == ["good.jpg"] and "bad.jpg" in " ".join(answer["warnings"])
    solo = client.post("/predict?views=true", files=files[:1]).json()
    assert answer["guesses"] == solo["guesses"]


def test_level_answers_with_countries_or_regions(client: TestClient) -> None:
    place = client.post("/predict?level=place&top_k=3", content=LONDON.read_bytes()).json()
    for level in ("country", "region"):
        coarse = client.post(f"/predict?level={level}&top_k=3", content=LONDON.read_bytes()).json()
        ranked = place["levels"].get(level, [])[:3]
        assert [g["label"] for g in coarse["guesses"]] == [e["name"] for e in ranked]
        assert [g["probability"] for g in coarse["guesses"]] == pytest.approx([e["probability"] for e in ranked])


# --- errors are JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "field"), [("top_k=0", "top_k"), ("top_k=51", "top_k"), ("top_k=x", "top_k"),
                                              ("level=city", "level"), ("refine=magic", "refine"),
                                              ("views=perhaps", "views")])
def test_bad_query_parameters_are_422_naming_the_parameter(client: TestClient, query: str, field: str) -> None:
    reply = client.post(f"/predict?{query}", content=LONDON.read_bytes())
    assert reply.status_code == 422
    assert reply.headers["content-type"] == "application/json"
    assert reply.json()["error"].startswith(f"{field}: ")


@pytest.mark.parametrize("refine", REFINERS)
def test_each_refiner_answers_or_says_why_not(client: TestClient, model: GeoModel, refine: str) -> None:
    reply = client.post(f"/predict?refine={refine}&top_k=2", content=LONDON.read_bytes())
    if refine == "none" or refine in model.refiners:
        assert reply.status_code == 200 and len(reply.json()["guesses"]) == 2
        if refine == model.refine:  # without the parameter: the bundle's own choice
            default = client.post("/predict?top_k=2", content=LONDON.read_bytes()).json()
            assert default["guesses"] == reply.json()["guesses"]
    else:  # a bundle without that refiner
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert f"cannot refine with {refine}" in error and str(model.path) not in error  # no server paths


def test_bad_uploads_are_400_naming_the_problem(client: TestClient, tmp_path: Path) -> None:
    reply = client.post("/predict", content=b"definitely not a photo")
    assert reply.status_code == 400 and reply.json()["error"] == "upload: not an image file (unrecognised format)"
    truncated = LONDON.read_bytes()[:3000]
    reply = client.post("/predict", content=truncated)
    assert reply.status_code == 400 and "corrupt or truncated" in reply.json()["error"]
    reply = client.post("/predict", content=b"")
    assert reply.status_code == 400 and "empty upload" in reply.json()["error"]
    form = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file here\r\n--b--\r\n'
    reply = client.post("/predict", content=form, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert reply.status_code == 400 and "holds no file" in reply.json()["error"]
    bad_name = [("files", ("evil\nname.jpg", b"junk", "image/jpeg"))]
    message = client.post("/predict", files=bad_name).json()["error"]
    assert "\n" not in message and "not an image" in message


def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    reply = client.post("/predict", content=b"\xff" * (MAX_UPLOAD_BYTES + 1))
    assert reply.status_code == 413
    assert reply.json() == {"error": "request body over the 20 MiB limit"}


def test_unknown_paths_and_methods_are_json(client: TestClient) -> None:
    reply = client.get("/no/such/thing")
    assert reply.status_code == 404 and reply.json() == {"error": "no such path /no/such/thing"}
    assert client.get("/static/missing.js").json() == {"error": "no such path /static/missing.js"}
    for method in ("GET", "PUT", "DELETE", "OPTIONS", "PATCH"):
        reply = client.request(method, "/predict")
        assert reply.status_code == 405, method
        assert reply.json()["error"] == f"method {method} not allowed on /predict (use POST)"
        assert reply.headers["allow"] == "POST"
    assert client.head("/predict").status_code == 405
    assert client.head("/").status_code == 200 and client.head("/health").status_code == 200


# --- what the page and clients read ----------------------------------------------------------------


def test_health_model_places_and_openapi(client: TestClient, model: GeoModel) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["labels"] == len(model.labels)
    info = client.get("/model").json()
    assert info["name"] == model.config["name"] and info["labels"] == len(model.labels)
    assert info["card"] == (model.path / "README.md").read_text(encoding="utf-8")
    assert "coverage" in info
    places = client.get("/model/places").json()["places"]
    assert len(places) == len(model.labels)
    assert {p["name"] for p in places} == set(model.labels["name"].astype(str))
    schema = client.get("/openapi.json").json()
    assert "/predict" in schema["paths"] and "post" in schema["paths"]["/predict"]
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_the_reply_schema_is_derived_from_the_prediction_dataclasses(client: TestClient) -> None:
    """The API documents what ``Prediction.to_dict`` sends: the schema comes from the dataclasses themselves."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    reply = client.post("/predict?top_k=2", content=LONDON.read_bytes()).json()
    for name, cls, record in (("Prediction", Prediction, reply), ("Answer", Answer, reply["answer"]),
                              ("Guess", Guess, reply["guesses"][0])):
        properties = set(schemas[name]["properties"])
        assert properties == {f.name for f in dataclasses.fields(cls)}
        assert set(record) <= properties, name
    assert set(reply["answer"]["hierarchy"][0]) == set(schemas["Step"]["properties"])


def test_the_base_map_is_every_country_simplified_and_gzipped(client: TestClient) -> None:
    reply = client.get("/countries.geojson", headers={"Accept-Encoding": "gzip"})
    assert reply.status_code == 200 and reply.headers["content-encoding"] == "gzip"
    assert int(reply.headers["content-length"]) < 800_000  # on the wire, zipped
    collection = reply.json()
    names = {f["properties"]["name"] for f in collection["features"]}
    assert len(names) > 200 and {"United Kingdom", "Croatia", "Canada"} <= names
    lons = [x for f in collection["features"] for x in _coordinates(f["geometry"], 0)]
    lats = [y for f in collection["features"] for y in _coordinates(f["geometry"], 1)]
    assert -180 <= min(lons) < max(lons) <= 180 and -90 <= min(lats) < max(lats) <= 90
    plain = client.get("/countries.geojson", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and json.loads(plain.content) == collection


def _coordinates(geometry: dict, axis: int) -> list[float]:
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [point[axis] for polygon in polygons for ring in polygon for point in ring]


def test_the_page_and_its_assets_need_nothing_from_the_internet(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="drop"' in page.text and 'id="views"' in page.text and 'id="map"' in page.text
    for name in ("app.js", "style.css"):
        reply = client.get(f"/static/{name}")
        assert reply.status_code == 200
    for asset in (WEB_ASSETS / "index.html", WEB_ASSETS / "app.js", WEB_ASSETS / "style.css"):
        text = asset.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, asset.name


def test_uploads_are_not_written_to_the_feature_cache(client: TestClient, tmp_path: Path) -> None:
    features = cache_dir() / "features"

    def cached() -> int:
        return sum(1 for p in features.rglob("*") if p.is_file()) if features.exists() else 0

    before = cached()
    for path in make_images(tmp_path, 4, size=(240, 240), seed=7):
        assert client.post("/predict", content=path.read_bytes()).status_code == 200
    assert cached() == before
    load_model().predict(make_images(tmp_path / "cli", 1, size=(240, 240), seed=8))
    assert cached() > before  # the file path does cache: the count above can change


# --- a real server: headers, lying clients, bursts, batching -------------------------------------------


def test_no_server_header(live: LiveServer) -> None:
    status, headers, _ = live.post(LONDON.read_bytes())
    assert status == 200
    names = {k.lower() for k in headers}
    assert "server" not in names and "date" in names


def test_a_client_that_lies_about_its_body_is_cut_after_the_timeout(live: LiveServer) -> None:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n\r\nonly this much")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    took = time.monotonic() - start
    assert BODY_TIMEOUT - 0.01 <= took < BODY_TIMEOUT + 3  # uvloop's timers: millisecond clock
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert json.loads(body) == {"error": f"request body stalled for {BODY_TIMEOUT:g} s"}


def test_a_malformed_content_length_gets_an_answer(live: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Length: lots\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")


def test_two_hundred_connections_at_once_are_all_answered(live: LiveServer) -> None:
    body = LONDON.read_bytes()
    outcomes: list[object] = []
    gate = threading.Barrier(200)

    def one() -> None:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=120)
            connection.connect()
            gate.wait(timeout=60)
            connection.request("POST", "/predict", body=body)
            reply = connection.getresponse()
            answer = json.loads(reply.read())
            outcomes.append((reply.status, reply.getheader("Retry-After"), "error" in answer))
        except Exception as exc:  # a reset or refused connection is what this test looks for
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    statuses = Counter(o[0] if isinstance(o, tuple) else o for o in outcomes)
    assert len(outcomes) == 200 and set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= QUEUE and statuses[503] > 0  # the queue bounds what is accepted at once
    assert all(retry == "1" and error for status, retry, error in outcomes if status == 503)
    assert all(retry is None and not error for status, retry, error in outcomes if status == 200)


def test_concurrent_requests_are_encoded_in_shared_batches(live: LiveServer) -> None:
    batcher = live.app.state.batcher
    batcher.stats.recent_sizes.clear()
    batcher.stats.recent_answers.clear()
    bodies = [p.read_bytes() for p in sorted(EXAMPLES.glob("*.jpg"))]
    gate = threading.Barrier(8)
    statuses: list[int] = []

    def client(i: int) -> None:
        gate.wait(timeout=60)
        for j in range(3):
            statuses.append(live.post(bodies[(i + j) % len(bodies)])[0])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    sizes, answered = list(batcher.stats.recent_sizes), list(batcher.stats.recent_answers)
    assert statuses == [200] * 24
    assert sum(sizes) == 24 and max(sizes) > 1
    assert sum(answered) == 24 and max(answered) > 1  # requests encoded together are answered in one call


# --- the page in a browser ------------------------------------------------------------------------------


DROP_SCRIPT = drop_script(
    """const map = document.getElementById("map");
    const done = document.body.dataset.state === "answered" && map.dataset.ready === "1";""",
    """const world = document.getElementById("world");
    const scale = () => Number(/scale\\(([^)]+)\\)/.exec(world.getAttribute("transform"))[1]);
    const before = scale();
    document.getElementById("zoom-in").click();
    const zoomed = scale() / before;
    document.getElementById("zoom-out").click();
    marker.setAttribute("data-zoom", zoomed.toFixed(3));
    marker.setAttribute("data-restored", String(Math.abs(scale() / before - 1) < 1e-9));
    marker.setAttribute("data-state", document.body.dataset.state);
    marker.setAttribute("data-countries", String(document.querySelectorAll("#countries path.country").length));
    marker.setAttribute("data-markers", String(document.querySelectorAll("#markers .marker").length));
    marker.setAttribute("data-evidence", String(document.querySelectorAll("#markers rect.evidence").length));""",
    seconds=60)


async def _drop_test_page() -> HTMLResponse:
    """The real page, plus a script that drops the London example on it once it has loaded."""
    return HTMLResponse(page_with_photo(DROP_SCRIPT, LONDON))


def test_the_page_shows_the_guesses_on_an_offline_map(live: LiveServer, tmp_path: Path) -> None:
    browser = require_chromium()
    url = f"http://127.0.0.1:{live.port}/drop-test"
    # tests/browser.py cuts every host name off; this page also needs the server on 127.0.0.1.
    local = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--virtual-time-budget=30000"]
    done = _run(browser, ["--dump-dom", "--window-size=1280,800", *local, url], tmp_path / "dom-profile", 120)
    marker = re.search(rf'<div id="{MARKER_ID}"[^>]*>', done.stdout)
    assert marker, f"the page never finished: {done.stderr[-2000:]}"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', marker.group(0)))
    assert attrs["state"] == "answered"
    assert int(attrs["countries"]) > 200 and int(attrs["markers"]) == 5 + 1  # five guesses and the answer
    assert int(attrs["evidence"]) == 5  # and the training places most like the photo
    assert attrs["zoom"] == "2.000" and attrs["restored"] == "true"  # the + and - buttons zoom the map
    expected = load_model().predict([LONDON], top_k=5)[0]
    assert f"{expected.answer.name}<small>" in done.stdout  # the answer is shown under its name…
    assert all(f">{html.escape(g.name)}<small>" in done.stdout for g in expected.guesses)  # …and every guess
    assert "best single answer" not in done.stdout  # no footnote of the page's own

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    shot.unlink(missing_ok=True)
    _run(browser, [f"--screenshot={shot}", "--window-size=1280,800", "--hide-scrollbars", *local, url],
         tmp_path / "shot-profile", 120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.std() > 20  # not a blank page
    map_area = pixels[60:, 450:]  # right of the panel, below the header
    marker_red = (np.abs(map_area - [210, 69, 47]).sum(axis=2) < 40).sum()
    land = (np.abs(map_area - [246, 243, 234]).sum(axis=2) < 12).sum()
    assert marker_red > 200 and land > 5000  # the guesses are drawn over the country outlines


# --- the command ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "no/such/bundle"], "no/such/bundle: model bundle not found"),
    (["--max-batch", "0"], "must be at least 1"),
    (["--port", "70000"], "--port must be in 0..65535"),
])
def test_serve_refuses_bad_options_in_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("geoscope: error: ") and message in err


def test_serve_says_when_the_port_is_taken(capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"geoscope: error: cannot listen on 127.0.0.1:{port} (Address already in use)\n"
