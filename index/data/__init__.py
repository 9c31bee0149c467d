"""Listings in and out: the CSV reader/writer, synthetic catalogues, the out-of-fold format."""
