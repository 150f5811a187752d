"""Image classification: CrossFormer classifiers trained, fine-tuned and evaluated as the official code does."""
