"""The video ViT, the training and evaluation loops, checkpoints and metrics."""
