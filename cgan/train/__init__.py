"""Floor 5, training: the loop, its phase steps, losses, augmentation, EMA, recovery and checkpoints."""
