"""``python -m serve.chat``: the interactive terminal client (same as ``rxt chat``)."""

import sys

from rxt_dist.serving.client import main

if __name__ == "__main__":
    sys.exit(main())
