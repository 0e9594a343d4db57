"""`python -m recommender.cli`: the `recommender` command (how the service starts its serving workers)."""

import sys

from recommender.cli import main

sys.exit(main())
