from mes.quantities import (  # noqa: F401  re-exported until callers move
    LIMIT,
    QUANTUM,
    SCALE,
    STORAGE_UNIT,
    Quantity,
    QuantityError,
    as_json,
    convert,
    fmt,
    result_converter,
    storable,
    storage_unit,
    to_storage,
)
from mes.quantities import MATERIAL_UNITS as UNITS  # noqa: F401  re-exported until callers move
from mes.quantities import material_dimension as dimension  # noqa: F401  re-exported until callers move
from mes.quantities import parse_quantity as parse  # noqa: F401  re-exported until callers move
from mes.quantities import with_unit as text  # noqa: F401  re-exported until callers move
