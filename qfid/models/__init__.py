"""Model loading, architecture knowledge (as data), the default model."""
