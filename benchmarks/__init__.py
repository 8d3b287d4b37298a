"""Reproducible speed measurements quoted in the README (`vidshard bench ...`)."""
