"""Objects that are not acceptable drivers."""

NotADriver = "this is a string, not a devices.Driver subclass"


class Impostor:
    """Would shadow the built-in MT-SICS driver if the registry allowed it."""
