"""CVM-Net (Hu et al., CVPR 2018) in PyTorch: models, preprocessing, training and evaluation."""

__version__ = "0.1.0"
