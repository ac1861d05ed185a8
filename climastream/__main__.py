"""``python -m climastream``: the same command line as the ``climastream`` script.

It runs the CLI from a checkout or a virtualenv whose ``bin/`` is not on ``PATH``.
"""

from __future__ import annotations

import sys

from climastream.cli import main

if __name__ == "__main__":
    sys.exit(main())
