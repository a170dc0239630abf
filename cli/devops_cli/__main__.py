"""``python -m devops_cli`` is ``devops-model``."""

import sys

from . import main

sys.exit(main())
