"""``python -m harness.proxy``: run the fault proxy process (:func:`harness.proxy.server.main`)."""

import sys

from harness.proxy.server import main

if __name__ == "__main__":
    sys.exit(main())
