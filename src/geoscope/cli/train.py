"""``geoscope train MANIFEST --labels geocells|grid|cities|h3|column -o MODEL_DIR``."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
from dataclasses import fields
from pathlib import Path

from .. import distributed
from ..data.manifest import Manifest, read_manifest
from ..data.provenance import read_dataset_card
from ..distributed import DEVICES
from ..encoders.image import image_encoder_spec
from ..encoders.text import check_text_encoder
from ..errors import GeoscopeError, one_line
from ..evaluate.claims import fit_claim_check
from ..fileio import check_writable, sole_writer
from ..geo.labels import KINDS
from ..models.image_side import ImageSide
from ..training.data import with_split
from ..training.fit import FitOptions, fit
from ..training.loop import TrainConfig
from .labels import add_scheme_arguments, scheme_from_args
from .options import at_least_one, finetune_blocks


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a place model on a manifest")
    parser.add_argument("manifest")
    parser.add_argument("--labels", choices=KINDS, default="grid",
                        help="geocells (regions split by data density), grid, cities, h3 or column (grid)")
    add_scheme_arguments(parser)
    parser.add_argument("-o", "--output", required=True,
                        help="model bundle directory to write (while training, OUTPUT.partial/ holds each epoch's "
                             "state: the same command run again after a stop resumes from it)")
    parser.add_argument("--encoder", default="efficientnet-lite0",
                        help="image encoder: efficientnet-lite0 (default), efficientnet-lite2, <name>/stats, "
                             "<name>/layout (the default model's), <name>/stages, hf:<repo>, or several joined by + "
                             "(efficientnet-lite0/stats+efficientnet-lite2/stats)")
    parser.add_argument("--text-encoder", default="minilm")
    parser.add_argument("--block-km", type=float, default=1.0,
                        help="without a split column, split by blocks of this size (val 10%%, test 10%%; default 1)")
    parser.add_argument("--gap-km", type=float, default=0.1,
                        help="…and leave out training images this close to a val or test image (default 0.1)")
    parser.add_argument("--finetune-blocks", type=finetune_blocks, default=0, metavar="N|all",
                        help="fine-tune the image encoder's last N blocks on cached activations, or all of it from "
                             "the images, decoded as each batch needs them (meant for GPUs; all also under "
                             "<name>/layout, /stats or /stages; default 0: frozen)")
    parser.add_argument("--crops", type=int, default=1,
                        help="square crops along each image's long side, averaged (for wide frames; default 1)")
    parser.add_argument("--name", default=None, help="model name (default: the output folder's)")
    parser.add_argument("--no-augment", dest="augment", action="store_false",
                        help="do not add horizontally flipped copies")
    parser.add_argument("--no-level-expert", dest="level_expert", action="store_false",
                        help="do not multiply in a linear probe over the coarsest level of the labels' hierarchy "
                             "(country, else region)")
    parser.add_argument("--search", action="store_true",
                        help="search learning rate, weight decay, patience and factor by val loss")
    parser.add_argument("--restarts", type=at_least_one, default=1, metavar="N",
                        help="train each configuration N times from consecutive seeds and keep the lowest val "
                             "loss (default 1)")
    parser.add_argument("--members", type=at_least_one, default=1, metavar="K",
                        help="keep the K runs of lowest val loss as one model, their logits averaged (at most "
                             "the number of runs: --restarts × search; default 1)")
    parser.add_argument("--refiner", metavar="GPS_MODEL_DIR",
                        help="a GPS head's bundle (train --head gps) trained on the same manifest and split: each "
                             "guess is then moved to its likeliest point near the guessed label")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="train on the CPU or a GPU (auto: a GPU when torch sees one); under torchrun each "
                             "process takes the GPU of its local rank")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        if isinstance(default, bool):  # type=bool would read "False" as True
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default, choices=TrainConfig.CHOICES.get(f.name),
                                help=f"(default {default})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # everything that can be checked before hours of encoding and training is checked here
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    scheme = scheme_from_args(args.labels, args)
    ImageSide(args.encoder, args.finetune_blocks, args.crops)  # validates the fine-tuning and crops
    image_encoder_spec(args.encoder)  # an unknown name, or a hub checkpoint out of reach: one line now
    check_writable(args.output, folder=True)
    check_text_encoder(args.text_encoder)
    manifest = read_manifest(args.manifest)
    with distributed.session(args.device) as run:  # torchrun: one process group; else one process
        options = FitOptions(scheme=scheme, image_encoder=args.encoder,
                             text_encoder=args.text_encoder, train=config, augment=args.augment,
                             finetune_blocks=args.finetune_blocks, crops=args.crops,
                             search=args.search, restarts=args.restarts, members=args.members,
                             refiner=args.refiner, level_expert=args.level_expert,
                             name=args.name or args.output.rstrip("/").split("/")[-1],
                             block_km=args.block_km, gap_km=args.gap_km,
                             provenance=read_dataset_card(args.manifest), device=run.device)
        saved = partial_folder(args.output)
        with sole_writer(saved) if run.main else contextlib.nullcontext():  # one run writes a checkpoint at a time
            try:
                path, result = fit(manifest, options, args.output, command=["geoscope", *args.argv],
                                   checkpoints=saved)
            finally:  # a folder that kept nothing (stopped in the first epoch, a full disk) is not left behind
                if run.main:
                    with contextlib.suppress(OSError):
                        saved.rmdir()
    if not run.main:
        return 0
    print(f"best epoch {result.best_epoch} (val loss {result.best_val_loss:.4f})")
    for split, record in result.metrics.items():
        print(f"  {split:5s}  accuracy {record['accuracy']:6.1%}  mean {record['mean_km']:8.1f} km"
              f"  median {record['median_km']:8.1f} km")
    _fit_claim_check(path, manifest, options, args.manifest)
    shutil.rmtree(partial_folder(args.output), ignore_errors=True)  # the run is done: nothing left to resume
    print(f"wrote {path}")
    return 0


def partial_folder(output: str) -> Path:
    """Where a training run writing ``output`` keeps its state between epochs: ``OUTPUT.partial`` beside it."""
    target = Path(output)
    return target.with_name(f"{target.name}.partial")


def _fit_claim_check(path: str, manifest: Manifest, options: FitOptions, source: str) -> None:
    """``geoscope verify`` for the new model: its claim check fitted on the validation rows it was trained with
    (a model too small to fit one says so and answers ``verify`` with an error naming the reason)."""
    split = with_split(manifest, options)
    validation = split.subset((split.frame["split"] == "val").to_numpy())
    try:
        fit_claim_check(path, validation, {"manifests": [source], "split": "val"})
    except GeoscopeError as exc:
        print(f"geoscope: no claim check fitted ({one_line(str(exc))}): `geoscope verify` will say so",
              file=sys.stderr)
