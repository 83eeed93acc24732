"""``python -m clockwork.bench``: the same as ``clockwork bench``."""

import sys

from clockwork.bench import main

sys.exit(main())
