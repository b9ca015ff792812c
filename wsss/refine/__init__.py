"""Refinement of CAM seeds: dense CRF wrappers and IRN-style confident / ignore (IR) labels."""
