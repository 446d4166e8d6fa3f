"""Inference: load a generator file or registered model, complete the attributes, draw avatars and pictures."""
