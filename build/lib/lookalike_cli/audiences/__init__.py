"""The audiences layer: seed audiences, candidate strategies and the blend, expansion (computes) and publishing (writes tables).
"""
