"""Stage ``download``: LIDC-IDRI's CT series from the Imaging Data Commons into ``lidc_root``."""
