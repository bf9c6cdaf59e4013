"""`ghosttrack verify STORE`: re-read every committed chunk and name each damaged one."""
from __future__ import annotations

import click

from ghosttrack.store.errors import StoreError


@click.command()
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option("--upgrade", is_flag=True,
              help="Store written before bound checksums (format 1/2): check every chunk, then bind each to its "
                   "array, index, dtype and shape so that reads accept it.")
def verify(store: str, progress: bool, upgrade: bool) -> None:
    """Check every committed chunk of STORE: present, full size, CRC-32C bound to what the chunk is
    (array, index, dtype, shape), finite values.

    Prints a summary and exits 0 when the store is healthy; lists every damaged chunk and exits 2
    otherwise (repair them with ghosttrack extract ... --resume --repair).
    """
    from ghosttrack.store.reader import REPAIR_COMMAND
    from ghosttrack.store.verify import upgrade_store, verify_store

    if upgrade:
        click.echo(upgrade_store(store, progress=progress))
        return

    report = verify_store(store, progress=progress)
    click.echo(report.summary())
    if not report.healthy:
        raise StoreError(f"store {store} has {len(report.damaged)} damaged chunk file(s) in chunk(s) "
                         f"{', '.join(map(str, report.damaged_chunks))}; re-extract them with {REPAIR_COMMAND}")
