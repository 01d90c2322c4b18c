"""The child side of tests/harness.py, pointed at another program folder (bench/evaluate.py's comparisons).

    python -m bench._harness_child PROGRAM_DIR < request.json

PROGRAM_DIR holds a __main__.py (and whatever it imports); everything else, mocks included, is the harness's own.
"""

import sys
from pathlib import Path

import tests.harness as harness

if __name__ == "__main__":
    harness.ROOT = Path(sys.argv[1]).resolve()
    harness._child_main()
