"""``python -m asyncpoll``: the same as the ``asyncpoll`` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
