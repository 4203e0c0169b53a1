"""cgan: a text-and-attribute conditioned GAN image generator."""

from cgan.core import __version__

__all__ = ["CGANPipeline", "__version__"]


def __getattr__(name: str):
    if name == "CGANPipeline":  # lazy: `import cgan` stays light
        from cgan.pipeline import CGANPipeline

        return CGANPipeline
    raise AttributeError(name)
