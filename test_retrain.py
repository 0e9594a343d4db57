"""`python test_retrain.py`: the guide's automated retrain test against a running service (see --help)."""

import sys

from recommender.cli.retrain_check import main

if __name__ == "__main__":
    sys.exit(main())
