"""Artifact I/O: atomic writes, HDF5 stores, CSV tables."""
