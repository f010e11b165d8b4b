"""Step kinds, one module each (``mes/steps/<kind>.py``), and their registry.

:mod:`mes.steps.base` is the abstract :class:`~mes.steps.base.StepKind` with every hook of a
kind (recipe fields and schema, checks, scaling, engine handler, kiosk screen, simulated
operator, batch record); :mod:`mes.steps.registry` finds a kind by name (built-ins and
``mes.step_kinds`` entry-point plugins); :mod:`mes.steps.context` is what an engine
handler sees. How to add a kind: ``docs/step-kinds.md``.
"""
