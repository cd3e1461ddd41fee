#!/usr/bin/env python
"""Point-PEFT Bench: the one command line.

Every sub-command lives in its own module under ``harness/cli/``; this file only
assembles them, so ``python run_all.py --help`` lists everything the project can do.
"""
from __future__ import annotations

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
