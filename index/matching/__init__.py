"""Fusion, the match-quality stages and the one self-match path."""
