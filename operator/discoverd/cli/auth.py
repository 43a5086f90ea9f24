"""`discoverd auth bootstrap|add-server|add-admin|add-logs-reader`: etcd roles and users, one identity per server.

Run with etcd's root credentials (`--etcd-user root --etcd-password-file ...`).
A server's agent gets a user that reads its own server document and the
documents of the services and instances it lists, and writes only its own
status keys (`store/auth.py` `server_grants`): a compromised server can lie
about its own instances, but cannot change what any server runs nor read what
it does not run. The controller keeps the role in step as assignments change;
`sync` does it once, for a fleet without one.
Credentials are printed once, as `DISCOVERD_ETCD_USER=` and
`DISCOVERD_ETCD_PASSWORD=` lines an agent's environment file takes as they
are; etcd keeps only a hash.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from discoverd.cli import main
from discoverd.config import EtcdOptions
from discoverd.controller import roles
from discoverd.errors import StoreUnavailable
from discoverd.schema import keys
from discoverd.store import auth as auth_
from discoverd.store import client
from discoverd.store.typed import Store

__all__ = ["auth"]


def _server_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    reason = keys.segment_error(value)
    if reason is not None:
        raise click.BadParameter(f"{value!r} {reason}")
    return value


def _describe(grants: list[auth_.Grant]) -> str:
    return ", ".join(str(g) for g in grants)


@click.group()
def auth() -> None:
    """Create etcd roles and users for discoverd (needs etcd's root credentials)."""


@auth.command()
@click.option(
    "--root-password-file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    envvar="DISCOVERD_ETCD_ROOT_PASSWORD_FILE",
    help="File holding the password to give etcd's root user.",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=120,
    show_default=True,
    help="Seconds to wait for etcd to answer.",
)
@click.pass_context
def enable(ctx: click.Context, root_password_file: Path, wait: float) -> None:
    """Turn etcd's authentication on, with a root user of the given password (nothing if already on).

    Connects without credentials (etcd accepts none while authentication is off). The Helm chart runs
    it before its operator starts, for the etcd it bundles (etcd.server.enabled).
    """
    options = main.etcd_options(ctx).model_copy(update={"user": None, "password": None})
    try:
        password = root_password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as error:
        raise main.fail(f"--root-password-file: cannot read {root_password_file}: {error.strerror}") from None
    if not password:
        raise main.fail(f"--root-password-file: {root_password_file} is empty")

    async def run() -> bool:
        deadline = time.monotonic() + wait
        while True:  # the chart starts etcd and the operator (this, its init container) together
            try:
                c = await client.connect(options)
                break
            except StoreUnavailable as error:
                if "unreachable" not in str(error) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        try:
            return await auth_.enable(c, password)
        except StoreUnavailable as error:
            if "authentication is enabled" in str(error):  # etcd answers a client with no user so once it is on
                return False
            raise
        finally:
            await c.close()

    if main.run_async(run()):
        click.echo("etcd authentication enabled: user root")
    else:
        click.echo("etcd authentication was already enabled: nothing changed")


@auth.command()
@click.pass_context
def bootstrap(ctx: click.Context) -> None:
    """Create the admin role (the operator, the controller, `apply`): read and write the whole prefix."""
    options = main.etcd_options(ctx)

    async def run() -> bool:
        c = await client.connect(options)
        try:
            await auth_.ensure_role(c, auth_.admin_role(options.prefix), auth_.admin_grants(options.prefix))
            return await auth_.enabled(c)
        finally:
            await c.close()

    on = main.run_async(run())
    role = auth_.admin_role(options.prefix)
    click.echo(f"role {role}: {_describe(auth_.admin_grants(options.prefix))}")
    click.echo("Add a server's agent with: discoverd auth add-server ID")
    if not on:
        click.echo("warning: etcd does not check users yet: add its root user and run `etcdctl auth enable`", err=True)


async def _add_user(options: EtcdOptions, user: str, role: str, grants: list[auth_.Grant]) -> str:
    c = await client.connect(options)
    try:
        await auth_.ensure_role(c, role, grants)
        return await auth_.add_user(c, user, role)
    finally:
        await c.close()


def _print_credentials(user: str, password: str) -> None:
    click.echo(f"DISCOVERD_ETCD_USER={user}")
    click.echo(f"DISCOVERD_ETCD_PASSWORD={password}")
    click.echo("These credentials are shown once: keep them in the agent's environment file (mode 0600).", err=True)


@auth.command("add-server")
@click.argument("server_id", metavar="ID", callback=_server_id)
@click.pass_context
def add_server(ctx: click.Context, server_id: str) -> None:
    """Create server ID's etcd user (reads its configuration, writes only its status); prints it once."""
    options = main.etcd_options(ctx)
    role = auth_.server_role(options.prefix, server_id)
    grants, password = main.run_async(_add_server(options, server_id))
    click.echo(f"user {role}: {_describe(grants)}", err=True)
    _print_credentials(role, password)


async def _add_server(options: EtcdOptions, server_id: str) -> tuple[list[auth_.Grant], str]:
    """Server `server_id`'s role, granted what its server document lists now, and its user; (grants, password)."""
    c = await client.connect(options)
    try:
        role = auth_.server_role(options.prefix, server_id)
        grants = await auth_.current_server_grants(Store(c), server_id)
        await auth_.ensure_role(c, role, grants)
        return grants, await auth_.add_user(c, role, role)
    finally:
        await c.close()


@auth.command("sync")
@click.pass_context
def sync(ctx: click.Context) -> None:
    """Bring every server's role in step with its server document now (what the controller does on its own)."""
    options = main.etcd_options(ctx)

    async def run() -> int | None:
        store = Store(await client.connect(options))
        try:
            return await roles.sync_once(store)
        finally:
            await store.close()

    changed = main.run_async(run())
    if changed is None:
        click.echo("warning: etcd does not check users: nothing to do", err=True)
    else:
        click.echo(f"Updated {changed} server role{'' if changed == 1 else 's'}")


@auth.command("add-admin")
@click.argument("name")
@click.pass_context
def add_admin(ctx: click.Context, name: str) -> None:
    """Create user NAME with the admin role (for the operator and the controller); prints it once."""
    options = main.etcd_options(ctx)
    role = auth_.admin_role(options.prefix)
    password = main.run_async(_add_user(options, name, role, auth_.admin_grants(options.prefix)))
    click.echo(f"user {name}: {_describe(auth_.admin_grants(options.prefix))}", err=True)
    _print_credentials(name, password)


@auth.command("add-logs-reader")
@click.argument("name")
@click.pass_context
def add_logs_reader(ctx: click.Context, name: str) -> None:
    """Create user NAME with the logs role (`discoverd logs`: find instances, write grants); prints it once."""
    options = main.etcd_options(ctx)
    role = auth_.logs_role(options.prefix)
    grants = auth_.logs_grants(options.prefix)
    password = main.run_async(_add_user(options, name, role, grants))
    click.echo(f"user {name}: {_describe(grants)}", err=True)
    _print_credentials(name, password)
