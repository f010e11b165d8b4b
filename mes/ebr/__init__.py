"""The electronic batch record: generated at release, frozen, signed (PAdES), verifiable."""
