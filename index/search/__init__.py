"""All k-NN (dense, sparse, Hamming) and the vector stores."""
