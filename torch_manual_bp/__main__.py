"""``python -m torch_manual_bp train | compare | parity``: see ``torch_manual_bp.cli``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
