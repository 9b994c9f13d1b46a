"""The ``ctmil`` command line: one module per subcommand (``add_parser`` and ``run``), :mod:`~ctmil.cli.common` for
what they share and :mod:`~ctmil.cli.main` for the entry point. Each command turns its options into config
overrides or arguments and calls one library function; every training setting comes from the bundle's configs
(``--set KEY=VALUE`` with MONAI ``#`` ids, e.g. ``--set max_epochs=5 train#virtual_bags#start_epoch=3``).

Exit codes: 0 success, 1 a PACS that cannot be reached at all, 2 a usage or input error (one line on stderr, no
traceback unless ``-v``), 3 partial success (some cases failed), 130 interrupted.
"""

from ctmil.cli.common import EXIT_PARTIAL, EXIT_USAGE, UsageError, parse_overrides
from ctmil.cli.main import build_parser, main

__all__ = ["EXIT_PARTIAL", "EXIT_USAGE", "UsageError", "build_parser", "main", "parse_overrides"]
