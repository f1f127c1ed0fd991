"""``python -m kexue.shuffle``: the ``kexue-shuffle`` command line."""
import sys

from .cli import main

sys.exit(main())
