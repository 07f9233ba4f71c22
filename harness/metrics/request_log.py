"""Moved: the request log lives in :mod:`harness.model.requestlog` (import it from there)."""

from harness.model.requestlog import *  # noqa: F403
from harness.model.requestlog import ERROR_KINDS, REQUEST_DTYPE, TIERS, tier_code  # noqa: F401
