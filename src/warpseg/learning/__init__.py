"""What learned methods share: preprocessing, losses, checkpoints, training data and the training loop."""
