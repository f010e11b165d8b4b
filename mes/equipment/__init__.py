"""Equipment: the registry of scales, lines, rooms and vessels, their status, cleaning and
calibration records, and the checks the batch execution engine calls before equipment or a
scale is used (``check_equipment``, ``check_scale_for_weighing``, ``check_reading``).

The service functions live in :mod:`mes.equipment.operations`.
"""
