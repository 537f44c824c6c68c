"""``python -m rerankq.cli``: the ``rerankq`` command."""

import sys

from rerankq.cli.main import main

sys.exit(main())
