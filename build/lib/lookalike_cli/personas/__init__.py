"""Personas and segments: LLM-style persona labels propagated over the embedding graph, and k-means segments.
"""
