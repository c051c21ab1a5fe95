"""``python -m tokenbridge_cli``: the same as the ``tokenbridge`` console script."""

import sys

from tokenbridge_cli.cli import main

sys.exit(main())
