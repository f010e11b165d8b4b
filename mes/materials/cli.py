"""``mes trace LOT [--forward]``: a lot's genealogy as an indented tree with quantities.

Registered by :func:`register_cli` from ``mes/cli.py`` (reading only: like ``mes audit
verify`` it runs as the operator of the system, not as a named user).
"""

from __future__ import annotations

import click

from mes import quantities as q
from mes.materials.operations import MAX_TRACE_DEPTH, Trace, TraceLot, trace_backward, trace_forward


def _lot_text(lot: TraceLot) -> str:
    return f"{lot.lot_id}  {lot.item_code} {lot.item_name}  [{lot.status}]"


def render_tree(trace: Trace) -> str:
    """The trace as lines: the root, then each further lot indented one level deeper.

    Backward: ``<- LOT  ITEM name  [status]  12.5 kg used in batch B``;
    forward: ``-> LOT  ITEM name  [status]  took 12.5 kg in batch B``. A lot already shown
    with what lies beyond it is printed again marked ``(see above)``.
    """
    backward = trace.direction == "backward"
    arrow = "<-" if backward else "->"
    lines = []
    for level, link, lot, repeated in trace.walk():
        if link is None:
            lines.append(_lot_text(lot))
            continue
        qty = f"{q.to_text(link.qty)} {link.uom}"
        how = f"{qty} used in batch {link.batch_id}" if backward else f"took {qty} in batch {link.batch_id}"
        more = "  (see above)" if repeated and trace.next_links(lot.lot_id) else ""
        lines.append(f"{'  ' * level}{arrow} {_lot_text(lot)}  {how}{more}")
    lines.append(f"{len(trace.lots) - 1} lot(s) {'upstream' if backward else 'downstream'}, {len(trace.links)} link(s)")
    for wip in trace.work_in_progress:
        lines.append(f"in progress: batch {wip.batch_id} took {q.with_unit(wip.qty, wip.uom)} of lot {wip.lot_id} "
                     "and has made no lot yet")
    if trace.truncated:
        lines.append(f"depth limit {trace.max_depth} reached: lots further away are not shown (use --max-depth)")
    return "\n".join(lines)


def register_cli(main: click.Group) -> None:
    """Add ``mes trace`` to the ``mes`` command group."""
    from mes.cli import handle_errors, make_app, reachable

    @main.command("trace")
    @click.argument("lot_id")
    @click.option("--forward", is_flag=True, help="what the lot went into (default: what went into the lot)")
    @click.option("--max-depth", type=click.IntRange(1, 100), default=MAX_TRACE_DEPTH, show_default=True)
    @handle_errors
    def trace(lot_id: str, forward: bool, max_depth: int) -> None:
        """Print a lot's genealogy as an indented tree with quantities and batches."""
        app = make_app()
        reachable(app)
        with app.app_context():
            result = trace_forward(lot_id, max_depth) if forward else trace_backward(lot_id, max_depth)
            click.echo(render_tree(result))
