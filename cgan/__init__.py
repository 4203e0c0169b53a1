"""cgan: a text-and-attribute conditioned GAN image generator."""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "CGANPipeline":  # lazy: `import cgan` stays light
        from cgan.pipeline import CGANPipeline

        return CGANPipeline
    raise AttributeError(name)
