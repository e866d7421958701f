"""The `lookalike` command line: one module per command group, thin wrappers over the library.
"""
