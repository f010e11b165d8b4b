"""Witnesses of the audit log (spec §6, C2SP tlog-witness): the server (``mes witness``)
and the MES's client that sends it every checkpoint."""
