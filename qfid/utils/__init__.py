"""Small shared helpers (filesystem, timing)."""
