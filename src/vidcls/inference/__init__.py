"""Using trained members: metrics, test-time augmentation, the ensemble policy, scoring a saved run."""
