"""Test-time use of the trained segmenter: multi-scale + flip probabilities and label maps."""
