"""Fit a bundle's claim check (``geoscope verify``) on its validation images and store it in its config.json.

    python scripts/fit_verify.py BUNDLE MANIFEST [MANIFEST ...]   # the manifests' rows with split == "val"
    python scripts/fit_verify.py --default-model [--data ../shared/data]

Each place of the validation rows (rows of one ``location_id`` are views of one place, fused as ``evaluate``
fuses them) is answered through the model's own path (:meth:`GeoModel.place_evidence`); rows holding an image the
model trained on are left out. :func:`geoscope.evaluate.claims.fit_claim_check` fits the check on them: its
section ``"verify"`` replaces any earlier one in the bundle's ``config.json`` (written atomically) and the model
card's "Claim checks" paragraph is rendered anew; nothing else in the bundle changes. ``geoscope train`` does the
same for the models it writes: this script is for models trained before. ``--default-model`` fits the bundled
default model on the validation split that ``scripts/train_default_model.py`` trained it with. See docs/verify.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pandas as pd

from geoscope.answer.verify import VERDICTS
from geoscope.data.manifest import Manifest, read_manifest
from geoscope.errors import GeoscopeError, one_line
from geoscope.evaluate.claims import fit_claim_check

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "src" / "geoscope" / "assets" / "default-model"


def default_manifest(data: Path) -> Manifest:
    """The default model's four shared sets, split as ``scripts/train_default_model.py`` splits them."""
    spec = importlib.util.spec_from_file_location("train_default_model", REPO / "scripts" / "train_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.combined_manifest(data)


def validation_rows(paths: list[str]) -> Manifest:
    """The ``split == "val"`` rows of the manifests, image paths made absolute and place ids kept apart."""
    frames = []
    for i, path in enumerate(paths):
        manifest = read_manifest(path)
        frame = manifest.frame.copy()
        if "split" not in frame:
            raise GeoscopeError(f"{path}: no split column: say which rows are validation rows (split = val)")
        frame["image"] = [str(p) for p in manifest.image_paths]
        frame["location_id"] = f"{i}/" + manifest.place_ids.astype(str)
        frames.append(frame)
    return Manifest(pd.concat(frames, ignore_index=True), Path("/"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path, help="the model bundle directory")
    parser.add_argument("manifests", nargs="*", help="manifests with a split column (their val rows are used)")
    parser.add_argument("--default-model", action="store_true",
                        help="the bundled default model, on the validation split it was trained with")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                        help="with --default-model: the four shared sets (../shared/data)")
    args = parser.parse_args(argv)
    try:
        if args.default_model:
            if args.bundle is not None or args.manifests:
                raise GeoscopeError("--default-model takes no bundle or manifest")
            bundle, manifest = DEFAULT_MODEL, default_manifest(args.data)
            source = ["scripts/train_default_model.py combined_manifest (1 km blocks, seed 0, 100 m gap)"]
        else:
            if args.bundle is None or not args.manifests:
                raise GeoscopeError("name a bundle and at least one manifest, or --default-model")
            bundle, manifest, source = args.bundle, validation_rows(args.manifests), list(args.manifests)
        validation = manifest.subset((manifest.frame["split"] == "val").to_numpy())
        check = fit_claim_check(bundle, validation, {"manifests": source, "split": "val"}, progress=True)
    except GeoscopeError as exc:
        print(f"fit_verify: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    print(f"fitted on {check.fitted_on['photos']} validation places ({check.fitted_on['in_coverage']} in coverage); "
          f"wrote {Path(bundle) / 'config.json'} (section \"verify\")")
    print(f"{'km':>6}  {'kind':<20} " + " ".join(f"{v:>12}" for v in VERDICTS))
    for rule in check.rules:
        for kind, shares in rule.validation.items():
            print(f"{rule.km:>6g}  {kind:<20} " + " ".join(f"{100 * shares[v]:>11.1f}%" for v in VERDICTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
