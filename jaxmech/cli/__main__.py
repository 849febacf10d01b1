"""``python -m jaxmech.cli``: the ``jaxmech`` command."""

import sys

from jaxmech.cli import main

sys.exit(main())
