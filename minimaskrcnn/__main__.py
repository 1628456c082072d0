"""``python -m minimaskrcnn``: the same command as ``minimaskrcnn`` (see cli.py)."""
import sys

from minimaskrcnn.cli import main

sys.exit(main())
