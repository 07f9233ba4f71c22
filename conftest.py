"""Root conftest: makes the repository importable for pytest runs from a checkout.

The recchaos pytest plugin (fixtures, markers, scenario collection) is enabled here once it lands.
"""
