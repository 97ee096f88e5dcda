"""Task networks that are not torchvision backbones: TransformerNet, AdaIN decoder, DnCNN, U-Net, EDSR."""
