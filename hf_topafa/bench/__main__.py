"""``python -m hf_topafa.bench ...``: ``hf-topafa bench ...``."""

import sys

from .bench import cli_main

sys.exit(cli_main())
