"""`python -m heliosproxy`: the same entry point as the `heliosproxy` console script."""

from __future__ import annotations

import sys

from heliosproxy.cli import main

if __name__ == "__main__":
    sys.exit(main())
