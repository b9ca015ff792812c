"""Class activation maps: multi-scale extraction, HDF5 storage, fusion, thresholds."""
