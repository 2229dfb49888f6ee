"""``python -m otaflow.cli``: the ``otaflow`` command."""

import sys

from otaflow.cli.main import main

sys.exit(main())
