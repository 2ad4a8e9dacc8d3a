"""Shared fixtures: private Ray instances bound to loopback, one per test module."""

from __future__ import annotations

import os

# Before Ray is imported anywhere: bind every Ray of the tests to 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
