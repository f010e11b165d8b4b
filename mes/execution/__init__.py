"""Batch execution (ISA-95 Level 3 / ISA-88 control recipes): master recipe versions in
the database, work orders, batches and their steps, deviations, corrections, review by
exception and release. :mod:`~mes.execution.operations` is the engine's public surface
(its modules are listed there); the blueprint and the CLI are thin shells over it."""
