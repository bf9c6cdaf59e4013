"""`ghosttrack verify STORE`: re-read every committed chunk and name each damaged one."""
from __future__ import annotations

import click

from ghosttrack.cli.options import config_command_options
from ghosttrack.config_fields import from_options
from ghosttrack.run_config import VerifyRun
from ghosttrack.store.errors import StoreError


@click.command()
@config_command_options(VerifyRun)
def verify(**options) -> None:
    """Check every committed chunk of STORE: present, full size, CRC-32C bound to what the chunk is
    (array, index, dtype, shape), finite values.

    Prints a summary and exits 0 when the store is healthy; lists every damaged chunk and exits 2
    otherwise (repair them with ghosttrack extract ... --resume --repair).
    """
    from ghosttrack.store.reader import REPAIR_COMMAND
    from ghosttrack.store.verify import upgrade_store, verify_store

    cfg = from_options(VerifyRun, options)
    store = cfg.store
    if cfg.upgrade:
        click.echo(upgrade_store(store, progress=cfg.progress))
        return
    report = verify_store(store, progress=cfg.progress)
    click.echo(report.summary())
    if not report.healthy:
        raise StoreError(f"store {store} has {len(report.damaged)} damaged chunk file(s) in chunk(s) "
                         f"{', '.join(map(str, report.damaged_chunks))}; re-extract them with {REPAIR_COMMAND}")
