"""``python -m dbnet.bench [NAME ...] [--batch 256 64] [--repeats 5] [--json FILE] [--quick]``."""

import argparse
import sys

from dbnet.bench.commands import add_arguments, handler

parser = argparse.ArgumentParser(prog="python -m dbnet.bench", description="dbnet benchmarks")
add_arguments(parser)
sys.exit(handler(parser.parse_args()))
