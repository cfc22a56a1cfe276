"""Run every benchmark, or those named: ``python -m bench [inspect] [pipeline] [resign]
[load] [poll]``."""

import sys

from bench import inspect_bench, load_bench, pipeline_bench, poll_bench, resign_bench

BENCHES = {
    "inspect": inspect_bench.main,
    "pipeline": pipeline_bench.main,
    "resign": resign_bench.main,
    "load": load_bench.main,
    "poll": poll_bench.main,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or BENCHES:
        BENCHES[name]()
