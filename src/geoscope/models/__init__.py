"""Trainable heads that sit on top of frozen (or partly fine-tuned) encoders."""
