"""Model runners: llamacpp (default), fake (unit tests of the API layer only)."""
