"""Fine-tuning the whole encoder from pixels (``--finetune-blocks all``), on a few real images."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_rows
from PIL import Image

from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest, write_manifest
from geoscope.encoders.efficientnet import load_efficientnet
from geoscope.encoders.image import image_encoder_spec
from geoscope.encoders.preprocess import Views
from geoscope.features.pixels import ImagePixels, readable
from geoscope.images import open_image
from geoscope.predict import load_model


@pytest.fixture(scope="module")
def croatia_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sixteen real Croatian places (64 images), split by place."""
    frame = shared_rows("croatia", 64)
    rank = pd.factorize(frame["location_id"].astype(str))[0]
    frame["split"] = np.where(rank < 10, "train", np.where(rank < 13, "val", "test"))
    out = tmp_path_factory.mktemp("croatia-small") / "manifest.csv"
    write_manifest(frame.reset_index(drop=True), out)
    return out


def test_pixels_are_read_when_asked_as_the_encoder_wants_them(croatia_small: Path, tmp_path: Path) -> None:
    paths = read_manifest(croatia_small).image_paths[:6]
    pre = image_encoder_spec("efficientnet-lite0").preprocess
    pixels = ImagePixels(paths, pre, variants=2)
    assert pixels.shape == (2, 6, 3 * 224 * 224)
    rows = pixels[np.array([0, 1, 0]), np.array([4, 4, 2])]
    first = pre.views(open_image(paths[4], min_size=pre.decode_size), Views())
    flipped = pre.views(open_image(paths[4], min_size=pre.decode_size), Views(hflip=True))
    assert np.array_equal(rows[0], first.ravel()) and np.array_equal(rows[1], flipped.ravel())
    subset = pixels[:, np.array([False, False, True, False, False, False])]
    assert len(subset) == 1 and np.array_equal(subset[0, [0]][0], rows[2])

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(paths[0]).read_bytes()[:300])
    Image.new("RGB", (40, 30), "red").save(tmp_path / "fine.png")
    valid, errors = readable([broken, tmp_path / "fine.png"], pre, progress=False)
    assert valid.tolist() == [False, True] and len(errors) == 1 and "broken.jpg" in errors[0]


def test_the_whole_encoder_trains_from_the_images_and_predicts(croatia_small: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "all"
    assert main(["train", str(croatia_small), "--labels", "grid", "--cell-km", "100", "-o", str(out),
                 "--finetune-blocks", "all", "--max-epochs", "1", "--batch-size", "16", "--no-augment",
                 "--schedule", "cosine"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["image_encoder"]["finetune_blocks"] == "all"
    assert "whole encoder fine-tuned from pixels" in (out / "README.md").read_text()
    model = load_model(out)
    # the stem and the first block trained too: the bundle's encoder is no longer the pretrained one
    pretrained = load_efficientnet("efficientnet-lite0").state_dict()
    saved = {k.removeprefix("image_top.top.net."): v for k, v in model.files.tensors.items()
             if k.startswith("image_top.top.net.")}
    assert not np.allclose(saved["_conv_stem.weight"], pretrained["_conv_stem.weight"].numpy())
    assert not np.allclose(saved["_blocks.0._depthwise_conv.weight"],
                           pretrained["_blocks.0._depthwise_conv.weight"].numpy())

    image = str(read_manifest(croatia_small).image_paths[-1])
    capsys.readouterr()
    assert main(["predict", image, "--model", str(out), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)[0]
    assert answer["guesses"] and answer["guesses"][0]["country"] == "Croatia"
    # predict reads the image through the fine-tuned encoder: its features are the saved network's output
    pre = image_encoder_spec("efficientnet-lite0").preprocess
    x = torch.from_numpy(pre.views(open_image(image, min_size=pre.decode_size), Views()))
    with torch.no_grad():
        expected = model.adapter.top(x).numpy()
    np.testing.assert_allclose(model.image_features([image]).embeddings, expected, rtol=1e-4, atol=1e-4)
    # outside training the encoder reads a few images at a time (faster on a CPU): each row as it reads alone
    many = torch.from_numpy(ImagePixels(read_manifest(croatia_small).image_paths[:11], pre)[0, np.arange(11)])
    assert model.adapter.eval_batch < len(many)
    with torch.no_grad():
        alone = torch.cat([model.adapter.top(row.reshape(1, 3, 224, 224)) for row in many]).numpy()
        np.testing.assert_allclose(model.adapter(many).numpy(), alone, rtol=1e-4, atol=1e-4)


def test_finetune_blocks_takes_a_count_or_all(croatia_small: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as refused:  # argparse refuses a bad option with exit 2
        main(["train", str(croatia_small), "-o", str(tmp_path / "m"), "--finetune-blocks", "most"])
    assert refused.value.code == 2
    assert "a number of blocks or 'all'" in capsys.readouterr().err
    assert main(["train", str(croatia_small), "-o", str(tmp_path / "m"), "--encoder", "efficientnet-lite0/layout",
                 "--finetune-blocks", "1"]) == 2  # the stage statistics read the whole network: all of it or none
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only with all of it fine-tuned" in err and not (tmp_path / "m").exists()


def test_the_whole_layout_encoder_trains_and_a_killed_run_resumes(croatia_small: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "layout"
    command = ["train", str(croatia_small), "--labels", "grid", "--cell-km", "100", "-o", str(out),
               "--encoder", "efficientnet-lite0/layout", "--finetune-blocks", "all", "--max-epochs", "4",
               "--batch-size", "16", "--no-augment", "--schedule", "cosine"]
    first = subprocess.Popen([sys.executable, "-m", "geoscope", *command], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    saved = tmp_path / "layout.partial" / "run-1.pt"
    while not saved.is_file() and first.poll() is None:
        time.sleep(0.05)
    first.kill()  # as a machine going down would, after the first epoch's state was written
    assert first.wait() == -signal.SIGKILL, first.stderr.read()
    capsys.readouterr()
    assert main([*command, "--lr-head", "2e-3"]) == 2  # another run's checkpoint: one line, and it stays
    err = capsys.readouterr().err  # after the images' check: the refusal, no traceback
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "layout.partial" in last and "another training run" in last and saved.is_file()
    assert main(command) == 0
    assert "resuming from epoch 2" in capsys.readouterr().err
    assert not saved.parent.exists() and len(json.loads((out / "history.json").read_text())) > 0
    seconds = json.loads((out / "config.json").read_text())["training"]["seconds"]
    assert len(seconds["runs"]) == 1 and seconds["runs"][0] > 0 and seconds["data"] > 0
    assert "Training took" in (out / "README.md").read_text()  # the model card says how long, on what
    model = load_model(out)
    assert model.config["image_encoder"]["name"] == "efficientnet-lite0/layout"
    # the features are the fine-tuned network's stage statistics (8,512 values), read from the decoded image
    image = str(read_manifest(croatia_small).image_paths[-1])
    pre = image_encoder_spec("efficientnet-lite0").preprocess
    x = torch.from_numpy(pre.views(open_image(image, min_size=pre.decode_size), Views()))
    with torch.no_grad():
        expected = model.adapter.top(x).numpy()
    assert expected.shape == (1, 8512)
    np.testing.assert_allclose(model.image_features([image]).embeddings, expected, rtol=1e-4, atol=1e-4)
