"""Ship an encoder's exported graph without its weights, so that its first use costs no export from torch.

Writes ``src/geoscope/assets/encoders/NAME-FP.onnx`` (the operators, every weight an external tensor) and
``NAME-FP.json`` (the weights file it was made for, by package, name and SHA-256, and where each tensor comes
from); see :mod:`geoscope.encoders.shipped`. Rerun it when the encoder's fingerprint changes (its architecture,
preprocessing or weights file): ``tests/test_shipped_graph.py`` says so. Run:
``.venv/bin/python scripts/ship_encoder_graph.py [NAME ...]`` (default: the default model's encoder).
"""

from __future__ import annotations

import argparse

from geoscope.encoders.image import image_encoder_spec
from geoscope.encoders.shipped import ship
from geoscope.predict import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="encoder names (default: the default model's)")
    args = parser.parse_args()
    for name in args.names or [load_model().image_side.cached_encoder]:
        graph, card = ship(image_encoder_spec(name))
        print(f"{name}: {graph} ({graph.stat().st_size:,} bytes), {card.name}")


if __name__ == "__main__":
    main()
