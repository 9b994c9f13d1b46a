"""``python -m ctmil.cli``: the ``ctmil`` command."""

import sys

from ctmil.cli.main import main

sys.exit(main())
