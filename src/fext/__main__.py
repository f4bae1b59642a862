"""``python -m fext`` is the ``fext`` command."""

import sys

from fext.cli import main

sys.exit(main())
