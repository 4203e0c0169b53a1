"""Floor 3, the networks: layers, the generator, the discriminators and the factory that builds them."""
