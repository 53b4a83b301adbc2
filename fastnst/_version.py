"""The one place fastnst's version is written. setup.py parses this file (without importing
fastnst, which needs torch); ``fastnst.__version__`` and ``fastnst info`` read it from here."""

__version__ = "0.1.0"
