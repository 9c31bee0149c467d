"""Metrics, threshold grids and the ablation."""
