"""Models: embedding recommenders (the shared base) and the models built on it."""
