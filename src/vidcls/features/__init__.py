"""From video files to frame features: decoding and sampling, dataset folders, frame CNNs, extraction."""
