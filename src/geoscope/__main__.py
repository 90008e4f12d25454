"""``python -m geoscope …``: the ``geoscope`` command, also as torchrun starts it (``torchrun … -m geoscope train``)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
