"""Root conftest: makes the repository importable for pytest runs from a checkout, and enables
the recchaos pytest plugin (``harness/pytest_plugin.py``).

An installed recchaos (``pip install -e .``) registers the plugin through its ``pytest11`` entry
point, and pytest loads entry points before any conftest: the module is then imported already
and listing it here again would register it twice (an error). So it is listed only when it is
not loaded yet (a checkout without the entry point, or plugin autoloading turned off).
"""

import sys

pytest_plugins = [] if "harness.pytest_plugin" in sys.modules else ["harness.pytest_plugin"]
