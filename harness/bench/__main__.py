"""``python -m harness.bench --one SPEC``: one model measurement in a fresh process."""
import sys

from harness.bench import main

sys.exit(main())
