"""Prediction on new inputs: ``vidcls.load(RUN_DIR)`` -> a Predictor, batch prediction, its outputs, the trust verdict."""
