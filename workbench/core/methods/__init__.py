"""One module per adapter method; each attaches its weights and hooks to an unmodified transformers model."""
