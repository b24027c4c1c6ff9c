"""Bottom layer: settings, domain errors, observability. Imports nothing else of llmaas."""
