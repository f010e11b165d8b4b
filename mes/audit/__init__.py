"""Tamper-evident audit log: canonical entries, RFC 9162 Merkle tree, signed checkpoints.

The modules here (``canonical``, ``merkle``, ``checkpoint``, ``keys``, ``verify``) are the
database-free core that implements ``shared/specs/audit-log.md``; they depend only on the
standard library and ``cryptography``. ``models`` holds the database tables.
"""
