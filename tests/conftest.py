"""Shared pytest setup for clipbranches.

Tests run offline: with ``HF_HUB_OFFLINE=1`` a model lookup on the Hugging Face hub fails
at once instead of retrying a download for about a minute. Set at import time so that it
also reaches subprocesses started by tests.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
