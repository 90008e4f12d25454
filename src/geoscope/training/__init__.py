"""Training: the one loop for every head, and the path from a manifest to a model bundle."""
