"""Peer benchmark: fastrnn against the numpy reference, PyTorch and ONNX Runtime.

The suite lives in the package (fastrnn/cli/peers.py) so that `fastrnn bench` runs it
from any install; this script is the same entry point from a checkout:

    python bench/bench_peers.py [--threads 1 2] [--quick] [--write]
"""
import sys

from fastrnn.cli.peers import main

if __name__ == "__main__":
    sys.exit(main())
