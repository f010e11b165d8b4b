"""Device gateway: runs the configured drivers and hands their readings to the MES.

The gateway never decides anything about a batch. It keeps the latest reading of each
device in a :mod:`~mes.gateway.store` (the server's capture rules read it from there, so a
browser can never supply a weight) and pushes every reading to the kiosks over Socket.IO.
"""
