"""Process-level run-time settings for long CPU jobs (DESIGN.md: fastnst/runtime/)."""
