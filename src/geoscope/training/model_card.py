"""The model card: a bundle's ``README.md``, rendered from its ``config.json`` (and label table) alone."""

from __future__ import annotations

import pandas as pd

from ..models.heads import head_class, head_kind
from ..models.image_side import ImageSide

_FUSION_SAID = {
    "mean": "averaging their embeddings",
    "lstm": "an LSTM over them in heading order (GeoguessrLSTM's way), correcting their average",
    "attention": "attention between them, each told its heading, correcting their average",
}

_TYPICALITY_SAID = {
    level: f"how much farther it lies from the nearest {level}'s training images than from all of them "
           "(a relative Mahalanobis distance; tells a street from these regions from a street elsewhere)"
    for level in ("country", "region", "label")
} | {None: "no second test (too few training images to fit the typicality test)"}


def model_card(config: dict, labels: pd.DataFrame) -> str:
    """The ``README.md`` of a bundle whose ``config.json`` is ``config`` and label table ``labels``."""
    training = config["training"]
    data = training["data"]
    box = data["bbox"]
    metrics = config["metrics"]
    rows = "\n".join(
        f"| {split} | {m['accuracy']:.1%} | {m['mean_km']:.1f} | {m['median_km']:.1f} |"
        for split, m in metrics.items()
    )
    side = ImageSide.from_dict(config["image_encoder"])
    image = (f"`{side.name}` image features (the whole encoder fine-tuned from pixels)" if side.end_to_end else
             f"`{side.name}` image features (its last {side.finetune_blocks} block(s) fine-tuned)"
             if side.finetune_blocks else f"frozen `{side.name}` image features")
    if side.crops > 1:
        image += f" averaged over {side.crops} square crops per image"
    countries = ", ".join(f"{c} ({n})" for c, n in labels.groupby("country")["count"].sum()
                          .sort_values(ascending=False).items())
    coverage = config["coverage"]
    skipped = data["skipped"]
    skipped_line = (f"{skipped['count']} unreadable image(s) were skipped, first: "
                    + "; ".join(f"`{line}`" for line in skipped["first"])) if skipped["count"] else \
        "No image was skipped."
    sources = (data.get("provenance") or {}).get("sources") or []
    provenance = "\n".join(map(_source_said, sources)) or "- not recorded (the manifest has no dataset card)"
    leak = data["leakage"]
    head = head_class(head_kind(config["model"]))
    members = int(config["model"].get("members", 1))
    return f"""# {config["name"]}

A geoscope {head.title} CLIP model: {image} and
{head.said(config, labels)}; the views of one place are fused by
{_FUSION_SAID[config["fusion"]]}; it answers with one of {len(labels)}
places ({config["labels"]["kind"]} labels: {config["labels"]}), each named after a
gazetteer place where its training images are, with its region and country, and each
answer also sums the probabilities per country and region.

## Where it works
Trained on {data['splits']['train']:,} of the manifest's {data['images']:,} images
({data['places']:,} places) within
lat {box['min_lat']:.2f}…{box['max_lat']:.2f}, lon {box['min_lon']:.2f}…{box['max_lon']:.2f};
training images per country: {countries}.
A photo from anywhere else can only get the most similar of these places: each answer says
`in_coverage: false` when the photo is unlike the training images. Two tests, each ranked among
held-out validation images of the training regions: its mean distance to its {coverage['k']} nearest
training images (tells a street photo from a blank, noisy, rotated or blurred frame) and
{_TYPICALITY_SAID[coverage['groups']]}{_within_said(coverage)}.
The coverage score is the lowest rank; below {coverage['threshold']:.3f} the photo is out of coverage,
which keeps {coverage['kept']:.0%} of the validation images in.
The confidence shown beside the guesses (probability that the top guess is within 25, 200
and 750 km) is calibrated on the validation images.

## Training data
{provenance}

Split: nearest validation image {_km(leak['nearest_train_val_km'])} and nearest test image
{_km(leak['nearest_train_test_km'])} from a training image. {skipped_line}

## Measured ({"the ensemble; its first head's best epoch " if members > 1 else "best epoch "}{training['best_epoch']})
| split | label accuracy | mean km | median km |
|---|---|---|---|
{rows}

{_time_said(training)}{_refiner_said(config.get("refiner"))}
{_level_expert_said(config.get("level_expert"))}
{_claim_check_said(config.get("verify"))}
## Limits
Street-level imagery of the training regions only; one ImageNet backbone.
"""


def _time_said(training: dict) -> str:
    """How long training took, said in the model card (nothing for a bundle that did not record it)."""
    seconds = training.get("seconds")
    if not seconds:
        return ""
    runs, devices = seconds["runs"], (training.get("distributed") or {}).get("devices") or ["cpu"]
    where = (f"{seconds['cores']} CPU core(s)" if devices == ["cpu"] else
             f"{len(devices)} process(es) on {', '.join(sorted(set(devices)))}")
    total = seconds["data"] + sum(runs) + seconds["stages"]
    return (f"Training took {_duration(total)} on {where}: the data {_duration(seconds['data'])} (images checked, "
            f"features cached or extracted), {len(runs)} run(s) {_duration(sum(runs))} (their epochs, summed over the "
            f"commands of a resumed run), the answer's stages {_duration(seconds['stages'])}.\n\n")


def _duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``3.2 h``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def _within_said(coverage: dict) -> str:
    """The coverage's tests one level down, said in the model card (nothing when it has none)."""
    within = coverage.get("within") or {}
    if not within:
        return ""
    parts = "; ".join(f"{c['group']}: {', '.join(c['covered'])}" for c in within.values())
    return ("; and, where the training images cover only some of a country's first-level regions, the same test "
            "among the regions they cover, for the photos most like that country, so that a street from one of its "
            f"other regions can be flagged (\"it resembles that country, but none of the regions of it the model was "
            f"trained on\"): {parts}")


def _level_expert_said(section: dict | None) -> str:
    """The model card's section on the level expert."""
    if section is None:
        return ("## Level expert\nNone: the head alone decides (trained with `--no-level-expert`, or no level of "
                "the hierarchy above the labels splits them).\n")
    head, both = section["val"]["head"], section["val"]["with_expert"]
    measured = (f"On the validation items the first guesses score a mean GeoScore of {head['geoscore']:.0f} from the "
                f"head alone ({head['right_group']:.1%} in the right {section['level']}) and {both['geoscore']:.0f} "
                f"with the expert ({both['right_group']:.1%})")
    return (f"## Level expert\nA logistic regression over the {section['groups']} {section['level']} groups of the "
            f"labels (standardised image features, C = {section['C']:g}), fitted on the training images, is "
            f"multiplied into every answer: p(label) ∝ p(label | head) · p({section['level']} of the label | probe). "
            f"{measured}.\n")


def _refiner_said(refiner: dict | None) -> str:
    """The model card's section on refinement."""
    if refiner is None:
        return ("## Refinement\nEach guess is its label's medoid, so an error inside a label's area is at least the "
                "distance to it; `--refine knn` moves it to the training images most like the photo.\n")
    return (f"## Refinement\nEach guess is moved to the likeliest point of a GPS head (`{refiner['name']}`, "
            f"{refiner['points']:,} points, trained on the same images) within {refiner['radius_km']:g} km of "
            "its label, and named as the GPS head names that point (PIGEON's hybrid; `--refine gps`, the default; "
            "`--refine none` answers with the label's medoid, `--refine knn` with the most similar training "
            "images).\n")


def _km(value: float | None) -> str:
    """A distance of the split's leakage report (``None`` or NaN: that split is empty)."""
    return "none (no such split)" if value is None or value != value else f"{value:.3f} km"


def _source_said(source: dict) -> str:
    """One source of the training data (an entry of the dataset card): where, on what terms, and how it was split."""
    line = f"- {source.get('kind')}: {source.get('location')} — terms: {source.get('terms')}"
    if source.get("dataset"):
        taken = f" ({source['taken']})" if source.get("taken") else ""
        line += f" — `{source['dataset']}`{taken}: {source['images']:,} images at {source['places']:,} places"
        splits = source.get("splits") or {}
        counts = [f"{splits[name]:,} {name}" for name in ("train", "val", "test") if name in splits]
        if splits.get("left_out_by_gap"):
            counts.append(f"{splits['left_out_by_gap']:,} left out (too close to a val or test image)")
        line += "; " + ", ".join(counts) if counts else ""
    return line


CLAIM_KM = 25.0
"""The radius the model card describes the claim check at (``geoscope verify``'s default)."""


def _claim_check_said(section: dict | None) -> str:
    """The model card's section on claim checks (``geoscope verify``): what the thresholds at 25 km mean."""
    if not section:
        return ""
    rule = min(section["rules"], key=lambda r: abs(r["km"] - CLAIM_KM))
    fitted = section["fitted_on"]
    shown = rule["validation"]

    def ratio(log10: float) -> str:
        value = 10.0 ** abs(log10)
        shown = f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
        return f"1/{shown}" if log10 < 0 else shown

    def shares(kind: str) -> str:
        v = shown.get(kind)
        return f"{v['consistent']:.1%} consistent, {v['inconsistent']:.1%} inconsistent" if v else "not measured"

    country, place = rule["country"], rule["place"]
    against = [f"the {level} ratio is at most {ratio(value)}" for level, value in
               (("country", country["inconsistent"]), ("place", place["inconsistent"])) if value is not None]
    support = (f"the country ratio is at least {ratio(country['consistent'])} and " if country["consistent"] is not None
               else "")
    return f"""## Claim checks
`geoscope verify PHOTO --at LAT,LON --km K` weighs the claim that the photo was taken within K km of the point:
the likelihood ratio is the posterior odds over the prior odds (the labels' share of the training images) of the
claim's circle, each label's images spread over a Gaussian of its `spread_km`, at two levels: the countries the
circle reaches, and the circle within them. Fitted on {fitted['photos']:,} validation places at
{", ".join(f"{r['km']:g}" for r in section['rules'])} km (interpolated between); at {rule['km']:g} km:
**inconsistent** when {" or ".join(against) or "never"};
**consistent** when {support}nothing is inconsistent;
**cannot tell** otherwise, for any photo out of coverage, and for a circle that reaches no label's area.
On the validation places: true claims {shares('true')};
claims in another country {shares('other_country')};
claims at least 200 km away in the same country {shares('same_country_far')}.
Read consistent as "nothing in the photo contradicts it", not proof.
"""
