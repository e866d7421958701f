"""lookalike: warehouse-native lookalike audiences.

Library first: every CLI command is a thin wrapper over a function importable from
this package (see the modules named in each command's help).
"""

__version__ = "0.1.0"
