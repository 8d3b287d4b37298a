"""Raw videos to samples: probe, plan, encode, run (see ARCHITECTURE.md)."""
