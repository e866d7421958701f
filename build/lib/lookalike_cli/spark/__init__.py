"""The Apache Spark engine: local session, scoring and expansion over Spark tables (extra [spark]).
"""
