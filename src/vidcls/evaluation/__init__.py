"""What a run decides after training: metrics, the member/TTA/ensemble policy, scoring a saved run, calibration."""
