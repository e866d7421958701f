"""Evidence about audiences: backtests (as of a date), explanations and overlaps.
"""
