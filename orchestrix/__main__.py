"""``python -m orchestrix``: the same command as the ``orchestrix`` console script."""

import sys

from orchestrix.cli import main

if __name__ == "__main__":
    sys.exit(main())
