"""Materials: items, lots, containers, holds, consumption and lot genealogy.

The service functions live in :mod:`mes.materials.operations`; the batch execution
engine calls them (``check_usable``, ``consume``, ``reverse_consumption``, ``produce``).
"""
