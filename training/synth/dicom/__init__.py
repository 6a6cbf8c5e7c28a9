"""Writing synthetic studies as DICOM: classic and Enhanced MR, vendor diffusion tags, encodings."""
