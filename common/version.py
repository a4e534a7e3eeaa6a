"""The one version string: the installed distribution's, as pyproject.toml sets it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cbp-tuning")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
