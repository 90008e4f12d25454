"""Evidence with its photos: a bundle records where its gallery's training photos were (paths, never pixels);
predict names them where they are on this machine and the service shows thumbnails of those only.

The model is trained here on photos the test makes (three towns, each with its own look), so the photos exist.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import drop_script, page_with_photo, read_marker, require_chromium
from fastapi.responses import HTMLResponse
from fastapi.testclient import TestClient
from PIL import Image
from test_serve import LiveServer

from geoscope.bundle import CONFIG, read_bundle
from geoscope.bundle.gallery import Gallery
from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest, write_manifest
from geoscope.errors import ModelError
from geoscope.geo.labels import LabelScheme
from geoscope.predict import GeoModel, load_model
from geoscope.serve import create_app
from geoscope.serve.page import THUMBNAIL_PX
from geoscope.training.fit import FitOptions, fit
from geoscope.training.loop import TrainConfig

TOWNS = {"Zagreb": (45.813, 15.978, (200, 70, 60)), "Split": (43.515, 16.45, (60, 170, 70)),
         "Osijek": (45.555, 18.695, (70, 80, 200))}


def _photo(path: Path, colour: tuple[int, int, int], stripes: int, rng: np.random.Generator) -> None:
    base = np.array(colour, dtype=np.float64)[None, None, :] * np.ones((240, 320, 1))
    base = base * (0.75 + 0.25 * np.sin(np.arange(320)[None, :, None] * stripes * np.pi / 320))
    Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for t, (name, (lat, lon, colour)) in enumerate(TOWNS.items()):
        for i in range(16):
            path = root / "images" / f"{name}_{i:02d}.jpg"
            _photo(path, colour, 2 + 3 * t, rng)
            jitter = rng.normal(0, 0.02, 2)
            rows.append({"image": f"images/{path.name}", "lat": lat + jitter[0], "lon": lon + jitter[1],
                         "location_id": f"{name}-{i}", "split": "test" if i < 3 else "val" if i < 8 else "train"})
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def bundle(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "photos"
    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 50.0}), augment=False, level_expert=False,
                         train=TrainConfig(max_epochs=8, batch_size=16, early_stop=8, lr_head=3e-3, lr_text=3e-3))
    fit(read_manifest(manifest), options, out, progress=False)
    return out


@pytest.fixture(scope="module")
def model(bundle: Path) -> GeoModel:
    return load_model(bundle)


def test_the_bundle_records_where_its_gallery_photos_were_and_never_their_pixels(manifest: Path,
                                                                                 bundle: Path) -> None:
    section = json.loads((bundle / CONFIG).read_text())["gallery"]
    table = read_manifest(manifest).frame
    train = table[table["split"] == "train"]
    assert section["manifest_folder"] == str(manifest.parent.resolve())
    assert sorted(section["image_paths"]) == sorted(train["image"])  # as the manifest gives them: relative
    assert section["images"] == len(section["image_paths"])
    # Each row's recorded photo was taken where the gallery says the row was.
    gallery = Gallery.from_tensors(read_bundle(bundle).tensors)
    where = train.set_index("image")
    for row, image in enumerate(section["image_paths"]):
        assert gallery.lat[row] == pytest.approx(where.loc[image, "lat"], abs=1e-6)
        assert gallery.lon[row] == pytest.approx(where.loc[image, "lon"], abs=1e-6)
    assert set(section) == {"images", "dim", "typicality", "manifest_folder", "image_paths"}  # paths, no pixels


def test_predict_evidence_names_each_photo_where_it_is_and_null_where_it_is_not(
        manifest: Path, bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = manifest.parent / "images" / "Split_00.jpg"  # a test photo: never in the gallery
    assert main(["predict", str(photo), "--model", str(bundle), "--evidence", "3", "--json"]) == 0
    evidence = json.loads(capsys.readouterr().out)[0]["evidence"]
    assert len(evidence) == 3
    recorded = json.loads((bundle / CONFIG).read_text())["gallery"]["image_paths"]
    for item in evidence:
        path = Path(item["image"])
        assert path.is_absolute() and path.is_file() and path == path.resolve()
        assert path == (manifest.parent / recorded[item["gallery_row"]]).resolve()
        assert path.name.startswith("Split_")  # the look of Split: its own training photos

    # Moved away (another machine, or a copy of the bundle alone): no path, and no error.
    moved = tmp_path / "bundle"
    shutil.copytree(bundle, moved)
    config = json.loads((moved / CONFIG).read_text())
    config["gallery"]["manifest_folder"] = str(tmp_path / "not-here")
    (moved / CONFIG).write_text(json.dumps(config))
    assert main(["predict", str(photo), "--model", str(moved), "--evidence", "3", "--json"]) == 0
    elsewhere = json.loads(capsys.readouterr().out)[0]["evidence"]
    assert [e["image"] for e in elsewhere] == [None] * 3
    assert [e["gallery_row"] for e in elsewhere] == [e["gallery_row"] for e in evidence]
    assert main(["predict", str(photo), "--model", str(bundle), "--evidence", "2"]) == 0
    assert str(Path(evidence[0]["image"])) in capsys.readouterr().out  # the table names the photo too


def test_bundles_with_and_without_photo_paths_validate_and_broken_paths_are_refused(bundle: Path,
                                                                                  tmp_path: Path) -> None:
    read_bundle(bundle)
    old = read_bundle()  # the committed default model, written before paths were recorded
    assert "image_paths" not in old.config.get("gallery", {})
    assert all(e.image is None and e.gallery_row >= 0 for e in load_model().predict(
        [Path(__file__).parents[1] / "examples" / "images" / "croatia-1.jpg"], evidence=2)[0].evidence)
    for damage, message in (
        (lambda g: g["image_paths"].pop(), "gallery.image_paths names"),
        (lambda g: g.update(image_paths="images/a.jpg"), "must be a list of paths"),
        (lambda g: g.update(manifest_folder=None), "must be a list of paths"),
    ):
        broken = tmp_path / f"broken-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundle, broken)
        config = json.loads((broken / CONFIG).read_text())
        damage(config["gallery"])
        (broken / CONFIG).write_text(json.dumps(config))
        with pytest.raises(ModelError, match=message) as refused:
            read_bundle(broken)
        assert "\n" not in str(refused.value)


def test_the_api_gives_thumbnails_of_the_recorded_photos_only(manifest: Path, bundle: Path, model: GeoModel,
                                                              client: TestClient) -> None:
    photo = manifest.parent / "images" / "Osijek_01.jpg"
    reply = client.post("/predict?evidence=3", content=photo.read_bytes()).json()
    for item in reply["evidence"]:
        assert item["image"] == f"gallery/{item['gallery_row']}.jpg"  # an address, never a path on the server
        thumbnail = client.get(f"/{item['image']}")
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumbnail.content)) as image:
            assert max(image.size) == THUMBNAIL_PX  # made small from the 320 px photo
            original = np.asarray(Image.open(model.gallery_image(item["gallery_row"])).resize(image.size))
            assert np.abs(np.asarray(image, dtype=float) - original).mean() < 12  # that very photo
    rows = len(json.loads((bundle / CONFIG).read_text())["gallery"]["image_paths"])
    secret = bundle / CONFIG
    for path in ("/gallery/-1.jpg", f"/gallery/{rows}.jpg", "/gallery/../config.json", "/gallery/..%2Fconfig.json",
                 "/gallery/%2e%2e%2f%2e%2e%2fconfig.json.jpg", f"/gallery/{secret}", "/gallery/1e3.jpg",
                 "/gallery/0x1.jpg", "/gallery/.jpg", "/gallery//etc/passwd.jpg"):
        refused = client.get(path)
        assert refused.status_code in (404, 422), path
        assert "error" in refused.json() and b'"format"' not in refused.content and b"root:" not in refused.content
    by_query = client.get("/gallery/0.jpg", params={"path": str(secret)})  # a path in the request is ignored
    assert by_query.content == client.get("/gallery/0.jpg").content and by_query.content[:2] == b"\xff\xd8"


def test_a_recorded_path_that_is_not_an_image_is_never_served(bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    config = json.loads((tampered / CONFIG).read_text())
    config["gallery"]["image_paths"][0] = str(tampered / CONFIG)  # a text file
    config["gallery"]["image_paths"][1] = "../../../../../../../../etc/passwd"
    (tampered / CONFIG).write_text(json.dumps(config))
    with TestClient(create_app(tampered)) as client:
        for row in (0, 1):
            refused = client.get(f"/gallery/{row}.jpg")
            assert refused.status_code == 404 and refused.json() == {
                "error": f"no training photo of gallery row {row} on this server"}


# --- the page in a browser ------------------------------------------------------------------------------


PAGE_SCRIPT = drop_script(
    """const answered = document.body.dataset.state === "answered";
    const thumbs = Array.from(document.querySelectorAll(".evidence img"));
    if (answered && !asked) { asked = true; document.querySelector("button.explain").click(); }
    const canvas = document.querySelector(".where-photo canvas");
    const done = answered && canvas && canvas.dataset.painted === "1" && thumbs.every((i) => i.complete);""",
    """marker.setAttribute("data-thumbs", String(thumbs.length));
    marker.setAttribute("data-loaded", String(thumbs.filter((i) => i.naturalWidth > 0).length));
    marker.setAttribute("data-layer", canvas ? canvas.dataset.layer : "none");
    let red = 0;
    if (canvas) {
      const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 3] > 0 && pixels[i] > pixels[i + 2]) red++;
    }
    marker.setAttribute("data-red", String(red));
    document.querySelector('.where-photo button[data-layer=""]').click();
    marker.setAttribute("data-off", canvas ? canvas.dataset.layer : "none");""",
    before="let asked = false;")


def test_the_page_shows_evidence_thumbnails_and_where_in_the_photo(manifest: Path, model: GeoModel,
                                                                    tmp_path: Path) -> None:
    require_chromium()
    photo = manifest.parent / "images" / "Zagreb_02.jpg"

    async def page() -> HTMLResponse:
        return HTMLResponse(page_with_photo(PAGE_SCRIPT, photo))

    app = create_app(model)
    app.add_api_route("/evidence-test", page, include_in_schema=False)
    server = LiveServer(app)
    try:
        attrs, _ = read_marker(f"http://127.0.0.1:{server.port}/evidence-test", tmp_path / "profile",
                               window="1280,900")
    finally:
        server.stop()
    assert int(attrs["thumbs"]) == 5 and attrs["loaded"] == "5"  # every evidence shows its photo
    assert attrs["layer"] == "label_drop" and int(attrs["red"]) > 100  # the map over the photo, drawn
    assert attrs["off"] == ""  # and the toggle takes it away
