"""Beyond one process: the Ray Data engine of `pricematch match --engine ray`."""
