"""(stub: being written) `dtf report`."""

from __future__ import annotations

import argparse


def report_args(sp: argparse.ArgumentParser) -> None:
    pass


def cmd_report(args: argparse.Namespace) -> int:
    raise SystemExit("dtf report: not written yet")
