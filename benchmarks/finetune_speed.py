"""Fine-tuning speed on this CPU: float32 against bfloat16 autocast, contiguous against channels-last.

Times one training step (forward, backward, AdamW step) of the fine-tuned image side the way the training
loop runs it (:class:`geoscope.models.image_side.TrunkTop` in training mode: random windows, batch-norm
statistics frozen) on real London images decoded once beforehand (decoding is not timed), followed by a
linear layer and a cross-entropy: the whole of EfficientNet-Lite0 from pixels (``--finetune-blocks all``) and
its last block on trunk maps (``--finetune-blocks 1``). The settings are interleaved, round after round, so a
neighbour's load falls on all of them alike; the table gives the median step and images/s, and how far each
setting's features (eval mode, same weights) lie from float32's.

Run: ``python benchmarks/finetune_speed.py [--batch 32] [--rounds 5] [--threads N]``. Prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time

import torch
from phone_photos import DATA
from torch import nn

SETTINGS = (("float32", False), ("float32", True), ("bfloat16 autocast", False), ("bfloat16 autocast", True))
"""(precision, channels-last) pairs, timed in this order each round."""


def _inputs(blocks: int | str, batch: int) -> tuple[nn.Module, torch.Tensor]:
    """The fine-tuned image side and one batch of its inputs (pixels, or trunk maps of the same images)."""
    import pandas as pd

    from geoscope.encoders.image import get_image_encoder, image_encoder_spec
    from geoscope.features.pixels import read_pixels
    from geoscope.models.image_side import ImageSide

    side = ImageSide("efficientnet-lite0", blocks)
    manifest = DATA / "london-uk" / "manifest.csv"
    paths = [manifest.parent / p for p in pd.read_csv(manifest)["image"].iloc[:batch]]
    pixels = read_pixels(paths, image_encoder_spec(side.name).preprocess).embeddings
    if side.end_to_end:
        return side.adapter(), torch.from_numpy(pixels)
    trunk = get_image_encoder(side.cached_encoder)
    return side.adapter(), torch.from_numpy(trunk.encode(pixels.reshape(batch, 3, 224, 224)))


def _step(adapter: nn.Module, classifier: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
          labels: torch.Tensor, bf16: bool) -> None:
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with cast:
        loss = nn.functional.cross_entropy(classifier(adapter(x)).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


@torch.no_grad()
def _features(adapter: nn.Module, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    adapter.eval()
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with cast:
        out = adapter(x).float()
    adapter.train()
    return out


def measure(blocks: int | str, batch: int, rounds: int) -> list[dict]:
    """Median step time of each setting over ``rounds`` interleaved rounds (after one warm-up round)."""
    import copy

    base, x = _inputs(blocks, batch)
    labels = torch.arange(batch) % 10
    runs = []
    for precision, last in SETTINGS:
        adapter = copy.deepcopy(base)
        if last:
            adapter = adapter.to(memory_format=torch.channels_last)
        classifier = nn.Linear(1280, 10)
        params = [p for p in [*adapter.parameters(), *classifier.parameters()] if p.requires_grad]
        runs.append({"precision": precision, "channels_last": last, "adapter": adapter.train(),
                     "classifier": classifier, "optimizer": torch.optim.AdamW(params, lr=1e-5), "times": []})
    reference = _features(runs[0]["adapter"], x, False)
    for run in runs:  # the features of the same (not yet trained) weights, against float32's
        got = _features(run["adapter"], x, run["precision"] != "float32")
        run["cosine"] = float(nn.functional.cosine_similarity(got, reference).min())
    for r in range(rounds + 1):
        for run in runs:
            start = time.perf_counter()
            _step(run["adapter"], run["classifier"], run["optimizer"], x, labels, run["precision"] != "float32")
            if r:  # round 0 warms up (oneDNN picks its kernels)
                run["times"].append(time.perf_counter() - start)
    return [{k: v for k, v in run.items() if k not in {"adapter", "classifier", "optimizer"}} for run in runs]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32, help="images a step (32)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of every setting (5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if not (DATA / "london-uk" / "manifest.csv").is_file():
        print(f"needs the real datasets in {DATA}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.rounds} rounds; bf16 kernels: {torch.backends.mkldnn.is_available()} (oneDNN)\n")
    print("| fine-tuned | precision | channels-last | step (median) | images/s | × float32 | min cosine to float32 |\n"
          "|---|---|---|---|---|---|---|")
    for blocks in ("all", 1):
        rows = measure(blocks, args.batch, args.rounds)
        base = statistics.median(rows[0]["times"])
        for row in rows:
            step = statistics.median(row["times"])
            label = "whole encoder, from pixels" if blocks == "all" else "last block, on trunk maps"
            print(f"| {label} | {row['precision']} | {'yes' if row['channels_last'] else 'no'} | {step:.3f} s | "
                  f"{args.batch / step:.1f} | {base / step:.2f}× | {row['cosine']:.5f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
