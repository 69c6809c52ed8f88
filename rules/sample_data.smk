# Stage 0: LIDC-shaped sample data (only when config lidc_root is empty).
