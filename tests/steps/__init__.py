"""Step kinds: the registry, a toy kind added from a test module alone, the architecture rule."""
