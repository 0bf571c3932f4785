"""The spec's training recipe: focal loss, the schedule, the epoch loop, parallel members and ``fit``."""
