"""`python -m soar_fast` = the `soar-fast` command."""

import sys

from soar_fast.cli import main

sys.exit(main())
