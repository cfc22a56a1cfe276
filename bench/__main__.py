"""Run every benchmark: ``python -m bench [inspect]``."""

import sys

from bench import inspect_bench

BENCHES = {"inspect": inspect_bench.main}

if __name__ == "__main__":
    for name in sys.argv[1:] or BENCHES:
        BENCHES[name]()
