"""Inference endpoints: a trained model behind an API, with the user's own pre- and post-processing."""
