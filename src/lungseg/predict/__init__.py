"""Outputs of `lungseg predict`: NIfTI, DICOM SEG and radiomics features of found nodules."""
