"""One module per CLI verb; each stays thin and calls the shared layers."""
