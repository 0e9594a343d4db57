"""`python train.py`: train a model version from the database now (the guide's command)."""

import sys

from recommender.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
