"""Predictions on paper and in batches: the table, JSON, CSV, GeoJSON and JSON Lines."""
