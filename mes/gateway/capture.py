"""The link rule for captured weights: never a weight from a device the gateway does not hear.

A reading's age alone cannot tell a quiet, healthy scale from a pulled cable: for a few
seconds after the cable goes, the last reading is still "recent". The gateway therefore
marks the device's link lost the moment the device falls silent (within the driver's
``timeout_s``), and :func:`device_link_refusal` — called by the weigh step's capture before
any other check of the value — refuses a reading unless the link is up *and* the reading
was taken on that link (same gateway run, not before the link came back).
"""

from __future__ import annotations

from mes.gateway.store import CapturedReading, ReadingStore

__all__ = ["device_link_refusal"]


def device_link_refusal(readings: ReadingStore, reading: CapturedReading, label: str) -> str | None:
    """Why ``reading`` must not be captured because of the device's link, or None when it may.

    Refused: the gateway has never reported the link, reports it lost, the reading is from
    another gateway run (a restart in between), or from before the link last came back.
    ``label`` names the scale for the operator.
    """
    link = readings.link(reading.device_id)
    if link is None:
        return (f"The device gateway has not reported the link to {label}. Check that the scale is "
                "connected, then weigh again.")
    if not link.connected:
        why = f" ({link.reason.rstrip('.')})" if link.reason else ""
        return (f"{label} is not connected{why}; its last reading cannot be used. Check the cable and the "
                "scale, wait until it shows a weight again, then weigh again.")
    if link.epoch != reading.epoch:
        return (f"The last reading of {label} was taken before the device gateway restarted. Wait until "
                "the scale shows a weight again, then weigh again.")
    if reading.at < link.since:
        return (f"The last reading of {label} was taken before its link came back. Wait until the scale "
                "shows a weight again, then weigh again.")
    return None
