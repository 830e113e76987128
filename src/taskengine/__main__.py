"""``python -m taskengine``: the ``taskengine`` command."""

import sys

from .tools.cli import main

sys.exit(main())
