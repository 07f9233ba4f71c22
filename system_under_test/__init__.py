"""The sharded PyTorch recommender that recchaos ships with and breaks.

Runs alone (``python -m system_under_test ...``) and never imports the harness. torch is
imported only inside this package, and only by the modules that need it (never at import time
of this ``__init__``), so the launcher can start without paying for torch.
"""
