"""Imports a dependency that is not installed: loading this plugin must fail alone."""

import mes_no_such_vendor_sdk  # noqa: F401

BrokenScale = None
