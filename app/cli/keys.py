"""`distillery keys create | list | revoke`, and the dev key `distillery up` prints."""

import secrets
from typing import Annotated

import typer
from rich.table import Table

from app.cli.common import console, current_settings

keys_cli = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@keys_cli.command("create")
def keys_create(tenant: Annotated[str, typer.Argument(help="tenant name (created if new)")],
                name: Annotated[str, typer.Option(help="a label for the key")] = "default",
                admin: Annotated[bool, typer.Option("--admin", help="may manage keys over the API")] = False) -> None:
    """Create an API key for a new or existing tenant and print it (shown only once)."""
    from app.auth import create_api_key
    from app.db import session_scope

    with session_scope(current_settings().resolved_database_url) as db:
        row, plain = create_api_key(db=db, tenant_name=tenant, key_name=name, is_admin=admin)
        console.print(f"[green]created key {row.id} ({row.prefix}…) for tenant {tenant!r}"
                      f"{' with admin scope' if admin else ''}[/green]", highlight=False)
    print(plain)


@keys_cli.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None) -> None:
    """List API keys (their ids and prefixes, never the keys)."""
    from app.auth import list_api_keys
    from app.db import session_scope

    table = Table()
    for col in ("id", "tenant", "name", "prefix", "admin", "created", "revoked"):
        table.add_column(col)
    with session_scope(current_settings().resolved_database_url) as db:
        for k in list_api_keys(db=db, tenant_name=tenant):
            table.add_row(k.id, k.tenant.name, k.name, k.prefix + "…", "yes" if k.is_admin else "",
                          f"{k.created_at:%Y-%m-%d %H:%M}", f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    console.print(table)


@keys_cli.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="the key's id (see `keys list`)")]) -> None:
    """Revoke an API key; it stops working at once."""
    from app.auth import revoke_api_key
    from app.db import session_scope

    with session_scope(current_settings().resolved_database_url) as db:
        row = revoke_api_key(db=db, key_id=key_id)
    if row is None:
        console.print(f"[red]no key {key_id}[/red]")
        raise typer.Exit(1)
    console.print(f"key {key_id} revoked")


def ensure_dev_key() -> tuple[str, bool]:
    """Return the dev API key and whether it was just created (with DATA_DIR/dev-api-key)."""
    from app.auth import register_api_key
    from app.db import session_scope

    settings = current_settings()
    key_file = settings.data_dir / "dev-api-key"
    plain = settings.dev_api_key or (key_file.read_text().strip() if key_file.exists() else None)
    created = not plain
    if created:
        plain = "dk_" + secrets.token_urlsafe(32)
    key_file.write_text(plain + "\n")
    key_file.chmod(0o600)
    with session_scope(settings.resolved_database_url) as db:
        register_api_key(db=db, tenant_name="dev", plain_key=plain)
    return plain, created
