"""cvm-index: satellite imagery -> tiles -> embeddings -> FAISS index + tile catalogue."""
