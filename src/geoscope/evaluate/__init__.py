"""Honest evaluation: a model's answers scored on a manifest beside baselines."""
