"""OEE per line, shift and product: availability × performance × quality from the line's
PackML states and counters, with supervisors' downtime reasons and configured ideal rates."""
