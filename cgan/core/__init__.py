"""Floor 0: what every layer uses: the error base class, the config, files and images."""
