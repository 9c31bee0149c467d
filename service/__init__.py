"""The pricematch HTTP service (FastAPI), built on `index`."""
