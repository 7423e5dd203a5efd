"""Plain backbones (no flow logic): encoders, dense blocks, UNet, Swin, VGG."""
