"""pricematch's library: catalogue reading, signals, search, fusion, metrics and bundles.

No torch here: encoders run on ONNX Runtime.
"""

__version__ = "0.1.0"
