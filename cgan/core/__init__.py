"""Floor 0: what every layer uses: the error base class, the config, files, images and the
network building blocks (equalized-lr layers, attention)."""

__version__ = "0.1.0"
