"""Master recipes (ISA-88): the pure recipe layer of the MES.

YAML master recipes (format ``mes.master-recipe/v1``, documented in ``recipes/README.md``
and published as ``recipes/master-recipe.schema.json``) are loaded into frozen, Decimal-only
dataclasses, checked beyond the schema with line-numbered problems, scaled into control
recipes with a content hash, and compared version to version for QA review. Nothing here
touches the database or Flask; the database-backed execution engine builds on it.

Quantities, units, exact conversion and durations are :mod:`mes.quantities` (shared with
materials and equipment). Modules: :mod:`~mes.recipes.formula` (safe calculation
formulas), :mod:`~mes.recipes.model` (the dataclasses), :mod:`~mes.recipes.schema` (the
JSON Schema), :mod:`~mes.recipes.loader` (YAML/dict to model,
:func:`~mes.recipes.loader.validate_file`), :mod:`~mes.recipes.checks` (rules beyond the
schema), :mod:`~mes.recipes.scaling` (control recipes and their hash),
:mod:`~mes.recipes.diff` (version comparison) and :mod:`~mes.recipes.errors`.
"""
