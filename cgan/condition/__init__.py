"""Floor 1, the condition: frozen text encoder, attributes, and their fusion into condition tokens."""
