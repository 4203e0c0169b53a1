"""Floor 3, the networks: the generator, the discriminators and the factory that builds them."""
