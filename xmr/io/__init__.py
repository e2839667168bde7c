"""What several rooms share: atomic folder writes, the cache root, and readers of the file formats xmr takes."""
