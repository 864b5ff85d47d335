"""Code that both the training and the serving image need, written once."""
