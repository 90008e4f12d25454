"""Evidence with every answer: the training places whose photos are most like the photo."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from fastapi.testclient import TestClient

from geoscope.geo.sphere import haversine_km
from geoscope.predict import GeoModel
from geoscope.serve import create_app

EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))


def test_evidence_is_the_most_alike_training_places_each_once(model: GeoModel) -> None:
    for prediction in model.predict(EXAMPLES, evidence=4):
        found = prediction.evidence
        assert len(found) == 4
        assert [e.similarity for e in found] == sorted((e.similarity for e in found), reverse=True)
        spots = {(round(e.lat, 3), round(e.lon, 3)) for e in found}
        assert len(spots) == 4  # distinct places, not four photos of one spot
        km = haversine_km(prediction.answer.lat, prediction.answer.lon, [e.lat for e in found], [e.lon for e in found])
        np.testing.assert_allclose([e.km_from_answer for e in found], km, rtol=1e-9)
        assert all(e.label in set(model.labels["name"]) for e in found)
        features = model.image_features([prediction.image]).embeddings
        gallery = model.gallery
        query = model.gallery_query(features)
        best = float((query / np.linalg.norm(query) @ gallery.T).max())
        assert found[0].similarity == pytest.approx(best, abs=1e-4)  # the most alike image of all
    assert all(p.evidence is None for p in model.predict(EXAMPLES[:1]))  # only when asked


def test_the_cli_and_the_api_give_evidence_when_asked() -> None:
    done = subprocess.run([sys.executable, "-m", "geoscope", "predict", str(EXAMPLES[0]), "--evidence", "2", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)[0]["evidence"]) == 2
    table = subprocess.run([sys.executable, "-m", "geoscope", "predict", str(EXAMPLES[0]), "--evidence", "2"],
                           capture_output=True, text=True, timeout=300)
    assert "most like training photos at" in table.stdout
    with TestClient(create_app()) as client:
        body = EXAMPLES[0].read_bytes()
        assert len(client.post("/predict?evidence=3", content=body).json()["evidence"]) == 3
        assert "evidence" not in client.post("/predict", content=body).json()
        refused = client.post("/predict?evidence=21", content=body)
        assert refused.status_code == 422 and "evidence" in refused.json()["error"]
