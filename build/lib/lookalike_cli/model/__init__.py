"""The model layer: feature encoding, the two-tower customer encoder, training, ONNX export and scoring.

Reads dbt marts (training_features, similarity_pairs, customer_features); writes model artifacts and customer_embeddings.
"""
