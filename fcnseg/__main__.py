"""``python -m fcnseg`` accepts everything the ``fcnseg`` command does (torchrun launches it this way)."""
import sys

from .cli import main

sys.exit(main())
