"""The feature-sequence data layer shared by training and inference: dataset, splits, collate, samplers, frame-budget batches."""
