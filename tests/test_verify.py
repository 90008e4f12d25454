"""Checking a claim (``geoscope verify``, ``POST /verify``): verdicts on held-out photos, "cannot tell" outside
coverage and where the model knows no place, bad input as one line, the API, and the fit on made probabilities.

The real-photo tests use the bundled default model (its fitted ``verify`` section) and the repository's example
photos, held-out test images of the default model with their coordinates in ``examples/SOURCES.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, shared_dataset
from fastapi.testclient import TestClient
from PIL import Image

from geoscope.answer.verify import (
    RADII_KM,
    ClaimCheck,
    LabelAreas,
    Rule,
    check_claim,
    country_of_points,
    parse_point,
)
from geoscope.cli.main import main
from geoscope.errors import GeoscopeError, ModelError
from geoscope.predict import GeoModel, load_model
from geoscope.serve import create_app

EXAMPLES = REPO / "examples" / "images"
DEFAULT_BUNDLE = REPO / "src" / "geoscope" / "assets" / "default-model"
TRUE_POINTS = {"london-uk-1.jpg": (51.43061, -0.16432), "london-on-1.jpg": (42.98352, -81.29355),
               "us-west-1.jpg": (34.80047, -114.49958), "croatia-1.jpg": (45.02275, 15.20586)}
"""Where the example photos were taken (examples/SOURCES.md)."""
LONDON, ZAGREB, MANCHESTER = (51.5072, -0.1276), (45.8150, 15.9819), (53.4808, -2.2426)


@pytest.fixture(scope="module")
def no_check_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundle without its ``verify`` section (the other files linked, not copied)."""
    bundle = tmp_path_factory.mktemp("no-verify")
    for item in DEFAULT_BUNDLE.iterdir():
        if item.name != "config.json":
            (bundle / item.name).symlink_to(item)
    config = json.loads((DEFAULT_BUNDLE / "config.json").read_text(encoding="utf-8"))
    del config["verify"]
    (bundle / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return bundle


# --- held-out photos --------------------------------------------------------------------------------------

def test_true_claims_about_held_out_photos_are_consistent(model: GeoModel) -> None:
    names = list(TRUE_POINTS)
    for name in names:
        lat, lon = TRUE_POINTS[name]
        verdict = model.verify([EXAMPLES / name], lat, lon)[0]
        assert verdict.verdict == "consistent", (name, verdict.reason)
        assert verdict.in_coverage is True
        assert verdict.likelihood_ratio > 1 and verdict.country_likelihood_ratio > 1
        assert 0 < verdict.probability <= 1 and verdict.prior_probability < verdict.probability
        assert verdict.claim.km == 25.0


def test_a_claim_in_another_country_is_inconsistent(model: GeoModel) -> None:
    croatia, london = model.verify([EXAMPLES / "croatia-1.jpg", EXAMPLES / "london-uk-1.jpg"], *LONDON, 25)[0], \
        model.verify([EXAMPLES / "london-uk-1.jpg"], *ZAGREB, 25)[0]
    for verdict, country in ((croatia, "United Kingdom"), (london, "Croatia")):
        assert verdict.verdict == "inconsistent", verdict.reason
        assert verdict.country == country
        assert verdict.country_likelihood_ratio < 0.01 and verdict.likelihood_ratio < 1
        assert f"points away from {country}" in verdict.reason
        assert verdict.probability < 0.01


def test_views_of_a_held_out_place_are_fused_into_one_verdict(model: GeoModel) -> None:
    folder = shared_dataset("croatia")
    views = sorted((folder / "images").glob("0167_*.jpg"))  # croatia-1.jpg's place: four headings
    assert len(views) == 4
    true, false = (model.verify(views, lat, lon, 25, views=True) for lat, lon in (TRUE_POINTS["croatia-1.jpg"],
                                                                                    LONDON))
    assert len(true) == len(false) == 1
    assert true[0].views == [str(v) for v in views]
    assert (true[0].verdict, false[0].verdict) == ("consistent", "inconsistent")


def test_a_claim_where_the_model_knows_no_place_cannot_be_told(model: GeoModel) -> None:
    verdict = model.verify([EXAMPLES / "london-uk-1.jpg"], *MANCHESTER, 25)[0]
    assert verdict.verdict == "cannot tell"
    assert "knows no place within 25 km" in verdict.reason and "London" in verdict.reason
    assert verdict.likelihood_ratio is None and verdict.probability is None
    wider = model.verify([EXAMPLES / "london-uk-1.jpg"], *MANCHESTER, 300)[0]  # a circle that reaches London
    assert wider.verdict == "consistent", wider.reason


def test_photos_outside_coverage_cannot_be_told(model: GeoModel, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noise, blank = tmp_path / "noise.png", tmp_path / "blank.png"
    Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(noise)
    Image.new("RGB", (256, 256), (128, 128, 128)).save(blank)
    for point in (LONDON, ZAGREB, TRUE_POINTS["us-west-1.jpg"]):
        for verdict in model.verify([noise, blank], *point, 25):
            assert verdict.in_coverage is False
            assert verdict.verdict == "cannot tell"
            assert "outside what this model knows" in verdict.reason


def test_a_place_with_an_unreadable_view_is_judged_only_when_allowed(model: GeoModel, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((EXAMPLES / "croatia-2.jpg").read_bytes()[:300])
    views = [EXAMPLES / "croatia-1.jpg", broken]
    refused = model.verify(views, *TRUE_POINTS["croatia-1.jpg"], views=True)[0]
    assert refused.verdict is None and "1 of 2 views could not be read" in refused.error
    judged = model.verify(views, *TRUE_POINTS["croatia-1.jpg"], views=True, allow_missing_views=True)[0]
    assert judged.verdict == "consistent" and judged.views == [str(EXAMPLES / "croatia-1.jpg")]
    assert judged.warnings and "answered from 1 of 2 views" in judged.warnings[0]


# --- the command line -------------------------------------------------------------------------------------

def run_cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_verdict_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    photo = EXAMPLES / "us-west-1.jpg"
    code, out, err = run_cli(capsys, "verify", photo, "--at", "34.80047,-114.49958")
    assert code == 0, err
    assert "verdict: consistent" in out and "within 25 km of 34.8005, -114.4996 (United States)" in out
    assert "likelihood ratio" in out and "P(within 25 km)" in out
    code, out, err = run_cli(capsys, "verify", photo, "--at", "45.815,15.9819", "--km", "50", "--json")
    assert code == 0, err
    record = json.loads(out)[0]
    assert record["verdict"] == "inconsistent" and record["claim"] == {"lat": 45.815, "lon": 15.9819, "km": 50.0}
    code, out, err = run_cli(capsys, "verify", photo, "--at", "-33.87,151.21")  # a southern latitude, unknown
    assert code == 0 and "verdict: cannot tell" in out, err


@pytest.mark.parametrize(("argv", "needle"), [
    (("--at", "91,0"), "latitude must be in -90…90"),
    (("--at", "10,181"), "longitude must be in -180…180"),
    (("--at", "abc"), "--at takes LAT,LON"),
    (("--at", "51.5"), "--at takes LAT,LON"),
    (("--at", "51.5,-0.1,3"), "--at takes LAT,LON"),
    (("--at", "nan,0"), "finite number"),
    (("--at", "51.5,-0.1", "--km", "0"), "km must be more than 0"),
    (("--at", "51.5,-0.1", "--km", "-5"), "km must be more than 0"),
    (("--at", "51.5,-0.1", "--km", "many"), "--km takes a number"),
    ((), "--at LAT,LON is required"),
])
def test_bad_claims_get_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: tuple, needle: str) -> None:
    code, out, err = run_cli(capsys, "verify", EXAMPLES / "london-uk-1.jpg", *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("geoscope: error: ") and needle in err, err


def test_a_bundle_without_a_claim_check_is_refused_in_one_line(capsys: pytest.CaptureFixture[str],
                                                               no_check_bundle: Path) -> None:
    code, out, err = run_cli(capsys, "verify", EXAMPLES / "london-uk-1.jpg", "--at", "51.5,-0.1", "--model",
                             no_check_bundle)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("geoscope: error: ")
    assert 'no "verify" section' in err and "scripts/fit_verify.py" in err


def test_a_broken_claim_check_is_refused(no_check_bundle: Path, tmp_path: Path) -> None:
    model = load_model(no_check_bundle)
    model.config["verify"] = {"method": "something-else", "rules": []}
    with pytest.raises(ModelError, match="another kind"):
        model.verify([EXAMPLES / "london-uk-1.jpg"], *LONDON)
    with pytest.raises(GeoscopeError, match="km must be more than 0"):
        load_model().verify([EXAMPLES / "london-uk-1.jpg"], *LONDON, km=0)


# --- the API ----------------------------------------------------------------------------------------------

def test_the_api_checks_claims(model: GeoModel, no_check_bundle: Path) -> None:
    photo = (EXAMPLES / "london-uk-1.jpg").read_bytes()
    with TestClient(create_app(model)) as client:
        reply = client.post("/verify?lat=51.43061&lon=-0.16432", content=photo)
        assert reply.status_code == 200
        assert reply.json()["verdict"] == "consistent" and reply.json()["claim"]["km"] == 25.0
        files = [("files", (name, (EXAMPLES / name).read_bytes(), "image/jpeg"))
                 for name in ("london-uk-1.jpg", "croatia-1.jpg")]
        reply = client.post("/verify?lat=51.5072&lon=-0.1276&km=50", files=files)
        assert [v["verdict"] for v in reply.json()["verdicts"]] == ["consistent", "inconsistent"]
        for query, field in (("lat=95&lon=0", "lat"), ("lat=10&lon=0&km=0", "km"), ("lon=0", "lat"),
                             ("lat=nan&lon=0", "lat")):
            reply = client.post(f"/verify?{query}", content=photo)
            assert reply.status_code == 422 and reply.json()["error"].startswith(f"{field}: "), reply.json()
        reply = client.post("/verify?lat=10&lon=0", content=b"not an image")
        assert reply.status_code == 400 and "not an image" in reply.json()["error"]
        schema = client.get("/openapi.json").json()
        verdict = schema["components"]["schemas"]["Verdict"]["properties"]
        assert {"verdict", "reason", "likelihood_ratio", "probability", "claim", "in_coverage"} <= set(verdict)
    with TestClient(create_app(load_model(no_check_bundle))) as client:
        reply = client.post("/verify?lat=10&lon=0", content=photo)
        assert reply.status_code == 501 and "cannot check claims" in reply.json()["error"]
        assert str(no_check_bundle) not in reply.json()["error"]


# --- the check itself, on made probabilities -------------------------------------------------------------

def _made_labels() -> pd.DataFrame:
    """Two countries: A with four labels along a line 150 km apart, B with two, far away."""
    rows = [("A1", 10.0, 10.0, "A"), ("A2", 10.0, 11.37, "A"), ("A3", 10.0, 12.74, "A"), ("A4", 10.0, 14.11, "A"),
            ("B1", 40.0, 50.0, "B"), ("B2", 40.0, 51.76, "B")]
    return pd.DataFrame({"name": [r[0] for r in rows], "lat": [r[1] for r in rows], "lon": [r[2] for r in rows],
                         "count": [40, 30, 30, 20, 60, 40], "spread_km": [10.0] * 6,
                         "country": [r[3] for r in rows]})


def _made_photos(labels: pd.DataFrame, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photos near a label drawn by its count; their probabilities put most mass on it (one in twenty on another
    label of its country)."""
    rng = np.random.default_rng(seed)
    prior = labels["count"].to_numpy() / labels["count"].sum()
    truth = rng.choice(len(labels), size=n, p=prior)
    lat = labels["lat"].to_numpy()[truth] + rng.normal(0, 0.08, n)
    lon = labels["lon"].to_numpy()[truth] + rng.normal(0, 0.08, n)
    country = labels["country"].to_numpy()
    neighbour = np.array([rng.choice(np.flatnonzero(country == country[t])) for t in truth])
    guessed = np.where(rng.random(n) < 0.95, truth, neighbour)
    logits = rng.normal(0, 0.5, (n, len(labels)))
    logits[np.arange(n), guessed] += 8
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True), lat, lon


def test_the_fit_on_made_probabilities_meets_its_targets_and_round_trips() -> None:
    labels = _made_labels()
    p, lat, lon = _made_photos(labels, 400, seed=0)
    check = ClaimCheck.fit(p, lat, lon, labels, radii=(10.0, 25.0, 100.0))
    assert [r.km for r in check.rules] == [10.0, 25.0, 100.0]
    for rule in check.rules:
        assert rule.country[0] < rule.country[1]
        assert rule.validation["true"]["inconsistent"] <= 0.01
        assert rule.validation["other_country"]["consistent"] <= 0.02
    # held-out made photos: true claims consistent, claims in the other country inconsistent
    q, qlat, qlon = _made_photos(labels, 300, seed=1)
    own = country_of_points(check.areas, qlat, qlon)
    truth = check.decide(check.evidence(q, qlat, qlon, 25.0), check.rule(25.0), None)
    assert (np.diag(truth) == 0).mean() > 0.8 and (np.diag(truth) == 1).mean() < 0.03
    other = own[:, None] != own[None]
    assert (truth[other] == 1).mean() > 0.8
    # stored and read back: the same verdicts
    again = ClaimCheck.from_dict(json.loads(json.dumps(check.to_dict())), labels)
    claim = check_claim(10.0, 11.37, 25.0)
    assert [v.to_dict() for v in again.check(q[:20], claim)] == [v.to_dict() for v in check.check(q[:20], claim)]
    # between fitted radii the rule is interpolated in log km; beyond them, the nearest
    middle = check.rule(50.0)
    assert middle.km == 50.0 and min(check.rules[1].place, check.rules[2].place) <= middle.place <= \
        max(check.rules[1].place, check.rules[2].place)
    assert check.rule(1.0) is check.rules[0] and check.rule(5000.0) is check.rules[-1]


def test_a_model_of_one_country_decides_by_place_alone() -> None:
    labels = _made_labels().query("country == 'A'").reset_index(drop=True)
    p, lat, lon = _made_photos(labels, 300, seed=2)
    check = ClaimCheck.fit(p, lat, lon, labels, radii=(25.0,))
    rule = check.rules[0]
    assert rule.country == (-np.inf, -np.inf)  # no other country to tell apart: the country level never decides
    assert Rule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule
    verdicts = check.check(p[:50], check_claim(10.0, 10.0, 25.0))
    assert {v.verdict for v in verdicts} <= {"consistent", "inconsistent", "cannot tell"}
    assert all(v.country_likelihood_ratio is None for v in verdicts)


def test_the_check_refuses_what_it_cannot_use() -> None:
    labels = _made_labels()
    with pytest.raises(ModelError, match="spread_km"):
        LabelAreas(labels.drop(columns="spread_km"))
    with pytest.raises(GeoscopeError, match="at least 20"):
        ClaimCheck.fit(np.full((5, 6), 1 / 6), np.zeros(5), np.zeros(5), labels)
    assert parse_point(" -33.87, 151.21 ") == (-33.87, 151.21)
    for bad in ("", "1,2,3", "north,south", "100,0"):
        with pytest.raises(GeoscopeError):
            parse_point(bad)
    assert max(RADII_KM) >= 1000 and min(RADII_KM) <= 1


@pytest.fixture(scope="module")
def two_londons_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 real photos from each London, 35 of each for training and 25 for validation (by row)."""
    from conftest import shared_rows

    from geoscope.data.manifest import write_manifest

    frames = []
    for name in ("london-uk", "london-on"):
        frame = shared_rows(name, 60)
        frame["split"] = ["train"] * 35 + ["val"] * 25
        frame["location_id"] = name + "/" + frame["location_id"].astype(str)
        frames.append(frame)
    out = tmp_path_factory.mktemp("two-londons") / "manifest.csv"
    write_manifest(pd.concat(frames, ignore_index=True), out)
    return out


def test_train_fits_the_claim_check_and_the_card_says_what_it_means(two_londons_split: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "model"
    assert main(["train", str(two_londons_split), "--labels", "grid", "--cell-km", "10", "-o", str(out),
                 "--max-epochs", "3", "--no-augment", "--no-level-expert"]) == 0
    capsys.readouterr()
    section = json.loads((out / "config.json").read_text())["verify"]
    assert section["fitted_on"]["photos"] == 50 and section["fitted_on"]["data"]["split"] == "val"
    assert [r["km"] for r in section["rules"]] == sorted(RADII_KM)
    card = (out / "README.md").read_text()
    assert "## Claim checks" in card and "Fitted on 50 validation places" in card
    frame = pd.read_csv(two_londons_split)
    photo = frame[(frame["split"] == "val")].iloc[0]  # a London, UK validation photo
    image = two_londons_split.parent / photo["image"] if not Path(photo["image"]).is_absolute() else photo["image"]
    code, own, err = run_cli(capsys, "verify", image, "--model", out, "--at", f"{photo['lat']},{photo['lon']}",
                             "--json")
    assert code == 0, err
    code, other, err = run_cli(capsys, "verify", image, "--model", out, "--at", "42.98352,-81.29355", "--json")
    assert code == 0, err
    assert json.loads(own)[0]["likelihood_ratio"] > json.loads(other)[0]["likelihood_ratio"]


def test_a_model_with_too_few_validation_photos_says_it_has_no_claim_check(two_londons_split: Path, tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    frame = pd.read_csv(two_londons_split)
    frame = frame[(frame["split"] == "train") | (frame.index % 5 == 0)]  # 10 validation photos
    manifest = tmp_path / "manifest.csv"
    frame.assign(image=[str(two_londons_split.parent / p) for p in frame["image"]]).to_csv(manifest, index=False)
    out = tmp_path / "model"
    assert main(["train", str(manifest), "--labels", "grid", "--cell-km", "10", "-o", str(out), "--max-epochs", "1",
                 "--no-augment", "--no-level-expert"]) == 0
    assert "no claim check fitted (fitting a claim check needs at least 20 validation photos" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "verify", frame["image"].iloc[0] if Path(frame["image"].iloc[0]).is_absolute()
                           else two_londons_split.parent / frame["image"].iloc[0], "--model", out, "--at", "51.5,-0.1")
    assert code == 2 and "cannot check claims" in err and "geoscope train" in err
