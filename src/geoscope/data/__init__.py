"""Datasets: the manifest table, where images come from, and how they are split."""
