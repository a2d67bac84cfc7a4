"""Medical segmentation: HBFormer, ParaTransCNN, DuoFormer (+ smp U-Net baseline) on NIfTI / DICOM / 2-D images."""
