"""The index layer: FAISS indexes over customer_embeddings, their manifests, recall self-checks and exact search.
"""
