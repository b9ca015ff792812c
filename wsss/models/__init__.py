"""Networks: timm backbones, the IRN CAM baseline, the CoBra dual-branch classifier."""
