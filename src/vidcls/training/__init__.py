"""The spec's training recipe: data and augmentation, focal loss, checkpoints, the epoch loop and ``fit``."""
