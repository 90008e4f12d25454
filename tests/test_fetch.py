"""Fetching a plan's images from Street View and Mapillary, against a local fake of each API.

The server (tests/fake_providers.py) runs on 127.0.0.1; the client is geoscope's own, the
one users run, pointed at it through its configurable base URL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_providers import MLY_TOKEN, SV_KEY, FakeProviders

from geoscope.cli import main as cli
from geoscope.data.fetch import JOURNAL, fetch, image_relpath
from geoscope.data.manifest import read_manifest, summarize
from geoscope.data.sources import make_source
from geoscope.data.sources.http import AuthError, Budget, HttpClient, NetworkError, scrub
from geoscope.data.sources.streetview import StreetView
from geoscope.images import open_image

SECRET_FORMS = (SV_KEY, urllib.parse.quote(SV_KEY, safe=""), urllib.parse.quote_plus(SV_KEY), MLY_TOKEN,
                urllib.parse.quote(MLY_TOKEN, safe=""))
CLI = "import sys, geoscope.cli.main as m; m.TOP_LEVEL = (); sys.exit(m.main(sys.argv[1:]))"
"""The real entry point with only the ``data`` commands registered (others are not this test's)."""


@pytest.fixture
def fp():
    with FakeProviders() as server:
        yield server


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", SV_KEY)
    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", MLY_TOKEN)


def make_plan(path: Path, fp: FakeProviders, n: int = 40, seed: int = 0) -> dict:
    """Points near the fake world's grid centres (some sharing a panorama, some without
    imagery); returns the plan path and the counts a fetch must reach."""
    rng = np.random.default_rng(seed)
    i = rng.integers(25700, 25712, n)
    j = rng.integers(-80, -70, n)
    lat = i * fp.snap_deg + rng.uniform(-1e-4, 1e-4, n)
    lon = j * fp.snap_deg + rng.uniform(-1e-4, 1e-4, n)
    pd.DataFrame({"point_id": np.arange(n) + 100, "lat": lat.round(6), "lon": lon.round(6),
                  "cell_id": i % 7}).to_csv(path, index=False)
    cells = [fp.cell(a, b) for a, b in zip(lat, lon, strict=True)]
    with_imagery = [c for c in cells if fp.has_imagery(*c)]
    return {"plan": path, "points": n, "places": len(set(with_imagery)),
            "none": n - len(with_imagery), "duplicates": len(with_imagery) - len(set(with_imagery))}


def run_fetch(plan: Path, out: Path, fp: FakeProviders, source: str = "streetview", *,
              headings=(0, 90, 180), max_requests: int | None = None, retries: int = 2, **kw):
    client = HttpClient(retries=retries, backoff_s=0.01, budget=Budget(max_requests), sleep=kw.pop("sleep", None))
    url = fp.sv_url if source == "streetview" else fp.mly_url
    src = make_source(source, client, headings=headings, base_url=url)
    return fetch(plan, out, src, client, workers=4, progress=False, **kw)


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(cli, "TOP_LEVEL", ())
    return cli.main(list(argv))


def cli_env(fp: FakeProviders) -> dict:
    return {**os.environ, "GOOGLE_MAPS_API_KEY": SV_KEY, "MAPILLARY_ACCESS_TOKEN": MLY_TOKEN,
            "GEOSCOPE_STREETVIEW_URL": fp.sv_url, "GEOSCOPE_MAPILLARY_URL": fp.mly_url}


def assert_no_secrets(out: Path, *texts: str) -> None:
    for path in out.rglob("*"):
        if path.is_file() and path.suffix != ".jpg":
            content = path.read_text(errors="replace")
            assert not any(s in content for s in SECRET_FORMS), path
    for text in texts:
        assert not any(s in text for s in SECRET_FORMS), text


def assert_complete(out: Path, expected: dict, views: int = 3) -> pd.DataFrame:
    manifest = read_manifest(out / "manifest.csv")
    frame = manifest.frame
    summary = summarize(manifest)
    assert summary["places"] == expected["places"]
    assert summary["views_per_place"] == {str(views): expected["places"]}
    assert len(frame) == views * expected["places"]
    assert frame["image"].is_unique
    assert not frame.duplicated(["location_id", "heading"]).any()
    assert not list(out.rglob("*.part"))
    for path in manifest.image_paths:
        open_image(path)
    return frame


def test_streetview_fetch_end_to_end(fp, keys, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp)
    out = tmp_path / "sv"
    result = run_fetch(expected["plan"], out, fp)
    assert (result.with_imagery, result.no_imagery, result.duplicates) == (
        expected["places"], expected["none"], expected["duplicates"])
    assert result.images == result.new_images == 3 * expected["places"]
    assert result.finished == result.points == expected["points"] and not result.budget_hit
    frame = assert_complete(out, expected)
    assert sorted(frame["heading"].unique()) == [0, 90, 180]
    assert (frame["location_id"] == frame["source_id"]).all()  # one panorama, its three views
    assert frame["capture_date"].str.match(r"^\d{4}-\d{2}$").all()
    assert {"point_id", "plan_lat", "plan_lon", "cell_id", "source"} <= set(frame.columns)
    # metadata once per point; one image per heading per panorama, none twice
    assert fp.count("sv_meta") == expected["points"]
    assert fp.count("sv_image") == 3 * expected["places"]
    assert max(fp.downloads.values()) == 1
    assert result.requests == expected["points"] + 3 * expected["places"]
    assert_no_secrets(out)
    # `geoscope data check` accepts the manifest
    assert run_cli(monkeypatch, "data", "check", str(out / "manifest.csv")) == 0
    assert "valid" in capsys.readouterr().out

    fp.reset_counts()
    before = (out / "manifest.csv").read_bytes()
    again = run_fetch(expected["plan"], out, fp)
    assert again.requests == 0 and again.new_images == 0 and fp.log == []
    assert (out / "manifest.csv").read_bytes() == before


def test_mapillary_fetch_end_to_end(fp, keys, tmp_path) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=30, seed=3)
    out = tmp_path / "mly"
    result = run_fetch(expected["plan"], out, fp, "mapillary", headings=(0, 90, 180, 270))
    # each fake place has perspective images at 10°, 100°, 190° and a panorama at 300°:
    # 270° finds only the panorama, which is skipped
    frame = assert_complete(out, expected)
    assert result.images == 3 * expected["places"]
    assert sorted(frame["heading"].unique()) == [10, 100, 190]
    assert frame["capture_date"].str.match(r"^\d{4}-\d{2}-\d{2}$").all()
    searches = [(p, h) for kind, p, h in fp.log if kind == "mly_search"]
    assert len(searches) == expected["points"]
    for params, headers in searches:
        assert "access_token" not in params and headers["authorization"] == f"OAuth {MLY_TOKEN}"
        west, south, east, north = map(float, params["bbox"].split(","))
        assert west < east and south < north and (north - south) * 111_195 == pytest.approx(100, rel=0.01)
    thumbs = [h for kind, _, h in fp.log if kind == "mly_thumb"]
    assert len(thumbs) == 3 * expected["places"] and not any("authorization" in h for h in thumbs)
    assert_no_secrets(out)


def test_retry_after_is_honoured_on_429(fp, keys, tmp_path) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=3)
    waits: list[float] = []
    fp.fail_next(3, 429, retry_after="7")
    result = run_fetch(expected["plan"], tmp_path / "out", fp, retries=5, sleep=waits.append)
    assert waits == [7.0, 7.0, 7.0]
    assert result.finished == 3 and result.images == 3 * expected["places"]
    assert result.requests == 3 + 3 + 3 * expected["places"]


def test_exponential_backoff_on_5xx_then_give_up(fp, keys, tmp_path) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=1, seed=5)
    waits: list[float] = []
    fp.fail_next(2, 503, retry_after=None)
    client = HttpClient(retries=4, backoff_s=1.0, sleep=waits.append)
    client.get(f"{fp.sv_url}/metadata", {"location": "51.4,-0.15", "key": SV_KEY})
    assert len(waits) == 2 and 0.75 <= waits[0] <= 1.25 and 1.5 <= waits[1] <= 2.5

    fp.fail_next(10, 500, retry_after=None)
    with pytest.raises(NetworkError) as info:
        run_fetch(expected["plan"], tmp_path / "out", fp, retries=2, sleep=lambda s: None)
    message = str(info.value)
    assert "HTTP 500" in message and "after 3 tries" in message and "key=***" in message
    assert_no_secrets(tmp_path / "out", message)


def test_bad_key_is_one_line_exit_2_without_the_key(fp, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=5)
    wrong = "WRONG-key-0123456789"
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", wrong)
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "streetview",
                   "--base-url", fp.sv_url, "-o", str(tmp_path / "out"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("geoscope: error: Street View refused the key") and "GOOGLE_MAPS_API_KEY" in err
    assert wrong not in err and "Traceback" not in err
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or wrong not in path.read_text(errors="replace")

    # an image request with a bad key answers 403
    good = StreetView(HttpClient(secrets=(SV_KEY,)), SV_KEY, base_url=fp.sv_url)
    view = next(v for p in range(50) for v in good.locate(51.4 + p * 0.002, -0.15, 0).views)
    bad = StreetView(HttpClient(secrets=(wrong,)), wrong, base_url=fp.sv_url)
    with pytest.raises(AuthError, match="HTTP 403") as info:
        bad.download(type(view)(**{**view.__dict__, "url": bad._image_url(view.source_id, 0)}))
    assert wrong not in str(info.value)

    monkeypatch.setenv("MAPILLARY_ACCESS_TOKEN", "MLY|1|wrong-token")
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "mapillary",
                   "--base-url", fp.mly_url, "-o", str(tmp_path / "mly"), "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and "Mapillary refused the token (HTTP 401" in err and "wrong-token" not in err


def test_missing_key_is_a_clear_error(fp, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=2)
    monkeypatch.delenv("GOOGLE_MAPS_API_KEY", raising=False)
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "streetview",
                   "-o", str(tmp_path / "out"))
    assert code == 2 and "set GOOGLE_MAPS_API_KEY" in capsys.readouterr().err


def test_max_requests_stops_cleanly_and_resumes(fp, tmp_path) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=30, seed=1)
    out = tmp_path / "out"
    argv = [sys.executable, "-c", CLI, "data", "fetch", str(expected["plan"]), "--source", "streetview",
            "-o", str(out), "--no-progress", "--workers", "3"]
    first = subprocess.run([*argv, "--max-requests", "25"], env=cli_env(fp), capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "stopped at the request budget" in first.stdout
    assert len(fp.log) == 25
    partial = read_manifest(out / "manifest.csv").frame
    assert 0 < len(partial) < 3 * expected["places"]
    assert not list(out.rglob("*.part"))

    second = subprocess.run(argv, env=cli_env(fp), capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "stopped" not in second.stdout
    assert_complete(out, expected)
    assert max(fp.downloads.values()) == 1
    assert_no_secrets(out, first.stdout, first.stderr, second.stdout, second.stderr)


def test_kill_9_midway_then_resume(tmp_path) -> None:
    with FakeProviders(image_delay_s=0.04) as fp:
        expected = make_plan(tmp_path / "plan.csv", fp, n=60, seed=2)
        out = tmp_path / "out"
        argv = [sys.executable, "-c", CLI, "data", "fetch", str(expected["plan"]), "--source",
                "streetview", "-o", str(out), "--no-progress", "--workers", "4"]
        proc = subprocess.Popen(argv, env=cli_env(fp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        journal = out / JOURNAL
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b'"type":"point"') >= 10:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL

        lines = journal.read_bytes().split(b"\n")
        finished = {json.loads(x)["point_id"] for x in lines[:-1] if b'"type":"point"' in x}
        assert 10 <= len(finished) < expected["points"]
        on_disk = {p.name for p in (out / "images").rglob("*.jpg")}
        assert on_disk
        fp.wait_idle()  # requests the killed run left in flight are not the rerun's
        fp.reset_counts()

        rerun = subprocess.run(argv, env=cli_env(fp), capture_output=True, text=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        frame = assert_complete(out, expected)
        assert set(frame["point_id"]) <= set(pd.read_csv(expected["plan"])["point_id"])
        # finished points were not asked again; finished images were not downloaded again
        assert fp.count("sv_meta") == expected["points"] - len(finished)
        for key, count in fp.downloads.items():
            pano, heading = key.split("@")
            assert f"sv_{pano}_{heading}.jpg" not in on_disk and count == 1
        assert len(fp.downloads) == 3 * expected["places"] - len(on_disk)
        journal_points = [json.loads(x) for x in journal.read_bytes().splitlines() if b'"point"' in x]
        assert len(journal_points) == len({e["point_id"] for e in journal_points}) == expected["points"]


def test_network_down_keeps_what_was_fetched(fp, keys, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=20, seed=4)
    out = tmp_path / "out"
    run_fetch(expected["plan"], out, fp, max_requests=30)
    before = read_manifest(out / "manifest.csv").frame
    journal_before = (out / JOURNAL).read_bytes()
    assert len(before) > 0

    with socket.socket() as sock:  # a port on which nothing listens
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/maps/api/streetview"
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "streetview",
                   "--base-url", dead, "-o", str(out), "--retries", "1", "--backoff", "0",
                   "--no-progress")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot connect" in err and "after 2 tries" in err
    assert_no_secrets(out, err)
    after = read_manifest(out / "manifest.csv").frame
    pd.testing.assert_frame_equal(before, after)
    assert (out / JOURNAL).read_bytes().startswith(journal_before)
    run_fetch(expected["plan"], out, fp)
    assert_complete(out, expected)


def test_bad_plan_rows_are_one_line_exit_2(fp, keys, tmp_path, monkeypatch, capsys) -> None:
    plan = tmp_path / "plan.csv"
    plan.write_text("lat,lon\n51.4,-0.15\n,-0.1\n51.5,abc\n")
    code = run_cli(monkeypatch, "data", "fetch", str(plan), "--source", "streetview",
                   "--base-url", fp.sv_url, "-o", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "rows 3, 4" in err
    assert not (tmp_path / "out").exists() and fp.log == []


def test_rerun_must_match_plan_and_settings(fp, keys, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=6)
    out = tmp_path / "out"
    run_fetch(expected["plan"], out, fp)
    manifest = (out / "manifest.csv").read_bytes()
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "streetview",
                   "--headings", "0,90", "--base-url", fp.sv_url, "-o", str(out))
    assert code == 2 and "other settings" in capsys.readouterr().err
    other = make_plan(tmp_path / "other.csv", fp, n=6, seed=9)
    code = run_cli(monkeypatch, "data", "fetch", str(other["plan"]), "--source", "streetview",
                   "--base-url", fp.sv_url, "-o", str(out))
    assert code == 2 and "another plan" in capsys.readouterr().err
    assert (out / "manifest.csv").read_bytes() == manifest


def test_a_journal_line_cut_by_a_crash_is_dropped(fp, keys, tmp_path) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=8)
    out = tmp_path / "out"
    run_fetch(expected["plan"], out, fp)
    with open(out / JOURNAL, "ab") as handle:
        handle.write(b'{"type":"point","point_id":10')
    # a stray temporary file as a kill during a write would leave
    stray = out / image_relpath("sv_x_0.jpg")
    stray.parent.mkdir(parents=True, exist_ok=True)
    (stray.parent / ".sv_x_0.jpg.abc123.part").write_bytes(b"\xff\xd8 half")
    fp.reset_counts()
    result = run_fetch(expected["plan"], out, fp)
    assert result.requests == 0 and fp.log == []
    assert (out / JOURNAL).read_bytes().endswith(b"\n")
    assert not list(out.rglob("*.part"))
    assert_complete(out, expected)


def test_scrub_hides_keys_in_urls_and_text() -> None:
    url = f"https://x/y?location=1,2&key={urllib.parse.quote_plus(SV_KEY)}&access_token=abc&z=1"
    clean = scrub(url, [SV_KEY])
    assert "key=***" in clean and "access_token=***" in clean and "z=1" in clean
    assert not any(s in clean for s in SECRET_FORMS)
    assert scrub(f"token {MLY_TOKEN} here", [MLY_TOKEN]) == "token *** here"


def test_an_image_deleted_later_is_fetched_again(fp, keys, tmp_path) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=8)
    out = tmp_path / "out"
    run_fetch(expected["plan"], out, fp)
    lost = read_manifest(out / "manifest.csv").image_paths[4]
    lost.unlink()
    fp.reset_counts()
    result = run_fetch(expected["plan"], out, fp)
    assert (fp.count("sv_meta"), fp.count("sv_image"), result.new_images) == (1, 1, 1)
    assert lost.is_file()
    assert_complete(out, expected)


def test_a_bad_base_url_is_one_line_without_the_key(fp, keys, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=2)
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "streetview",
                   "--base-url", "ftp://example.invalid/sv", "-o", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2 and "bad base URL" in err and err.count("\n") == 1
    assert_no_secrets(tmp_path / "out", err)


def test_a_provider_that_refuses_every_request_is_an_error(fp, keys, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=4)
    fp.fail_next(10_000, 404, retry_after=None)
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "streetview", "--base-url",
                   fp.sv_url, "-o", str(tmp_path / "out"), "--retries", "0", "--no-progress")
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "nothing fetched: all 4 points tried failed (first: " in errors[0]
    assert_no_secrets(tmp_path / "out", err)


def test_a_run_where_some_points_failed_says_how_many(fp, keys, tmp_path, monkeypatch, capsys) -> None:
    expected = make_plan(tmp_path / "plan.csv", fp, n=6)
    fp.fail_next(2, 404, retry_after=None)
    code = run_cli(monkeypatch, "data", "fetch", str(expected["plan"]), "--source", "streetview", "--base-url",
                   fp.sv_url, "-o", str(tmp_path / "out"), "--retries", "0", "--no-progress", "--workers", "1")
    out = capsys.readouterr().out
    assert code == 1 and "2 points failed (first: " in out
