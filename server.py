"""`python server.py`: the gRPC server with its JSON/HTTP gateway on port 8001 (the guide's command)."""

import sys

from recommender.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
