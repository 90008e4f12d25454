"""Training that resumes: a run stopped after an epoch and started again ends as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from geoscope.errors import GeoscopeError
from geoscope.models.heads.place_names import PlaceNamesHead
from geoscope.training.loop import TrainConfig, TrainingData, TrainResult, train


class Stopped(Exception):
    """Stands for a Ctrl-C between two epochs."""


def _data() -> tuple[TrainingData, TrainingData, np.ndarray]:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 150)
    x = (rng.standard_normal((4, 12))[labels] + 1.5 * rng.standard_normal((2, 150, 12))).astype(np.float32)
    lat, lon = 50.0 + labels * 0.5, labels * 0.5
    coords = np.array([[50.0 + i * 0.5, i * 0.5] for i in range(4)])
    return (TrainingData(x[:, :110], labels[:110], lat[:110], lon[:110]),
            TrainingData(x[:, 110:], labels[110:], lat[110:], lon[110:]), coords)


def _run(config: TrainConfig, checkpoint: Path | None = None, stop_after: int | None = None,
         torch_seed: int = 1234) -> TrainResult:
    """A fresh head and a trainable image side (dropout: torch's generator counts) from the config's seed."""
    train_data, val, coords = _data()
    torch.manual_seed(config.seed)
    adapter = nn.Sequential(nn.Linear(12, 12), nn.Dropout(0.2))
    head = PlaceNamesHead.create(config, 12, np.random.default_rng(config.seed).standard_normal((4, 6))
                                 .astype(np.float32))

    def stop(epoch: int, _: object) -> None:
        if epoch == stop_after:
            raise Stopped

    torch.manual_seed(torch_seed)  # the generator a resumed process starts with is its own
    return train(head, train_data, val, coords, config, image_adapter=adapter, progress=False, on_epoch=stop,
                 checkpoint=checkpoint)


@pytest.mark.parametrize("config", [
    TrainConfig(max_epochs=5, batch_size=16, embed_dim=16, schedule="cosine", average_weights=0.9),
    TrainConfig(max_epochs=6, batch_size=16, embed_dim=16, patience=1, early_stop=3, lr_head=3e-2),
], ids=["cosine-averaged", "plateau-early-stop"])
def test_a_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_result(config: TrainConfig,
                                                                          tmp_path: Path) -> None:
    whole = _run(config)
    saved = tmp_path / "run.pt"
    with pytest.raises(Stopped):
        _run(config, saved, stop_after=2)
    assert saved.is_file()
    before = torch.load(saved, weights_only=True)["seconds"]  # epoch 1's, in the stopped process
    resumed = _run(config, saved, torch_seed=99)
    assert 0 < before < resumed.seconds  # the epochs of both processes
    assert resumed.history == whole.history and len({r["epoch"] for r in whole.history}) > 2
    assert resumed.best_epoch == whole.best_epoch and resumed.best_val_loss == whole.best_val_loss
    for a, b in ((whole.head, resumed.head), (whole.image_adapter, resumed.image_adapter)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.equal(x, y), name
    again = _run(config, saved)  # a finished run is read back, not trained again
    assert again.history == whole.history and again.best_epoch == whole.best_epoch


def test_a_checkpoint_of_another_run_is_refused_in_one_line(tmp_path: Path) -> None:
    config = TrainConfig(max_epochs=3, batch_size=16, embed_dim=16)
    saved = tmp_path / "run.pt"
    with pytest.raises(Stopped):
        _run(config, saved, stop_after=2)  # stopped in epoch 2: epoch 1 was written
    with pytest.raises(GeoscopeError, match="another training run") as refused:
        _run(TrainConfig(max_epochs=3, batch_size=16, embed_dim=16, lr_head=2e-3), saved)
    assert "\n" not in str(refused.value)
    saved.write_bytes(saved.read_bytes()[:200])  # cut short
    with pytest.raises(GeoscopeError, match="not a geoscope training checkpoint"):
        _run(config, saved)
