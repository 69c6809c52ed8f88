"""lungseg: LIDC-IDRI lung nodule segmentation with memory-efficient invertible U-Nets."""

__version__ = "0.1.0"
