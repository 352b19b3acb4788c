"""``python -m hf_topafa.cli ...``: the ``hf-topafa`` command."""

import sys

from .cli import main

sys.exit(main())
