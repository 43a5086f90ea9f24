"""The `discoverd` command: one entry point, shared connection options, one-line errors.

Each subcommand lives in its own module and is wired here. Every command takes
the etcd options, also from `DISCOVERD_*` environment variables. Bad input
ends with one line naming what is wrong and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

# gRPC's C core prints its own lines to stderr (a failed TLS handshake, say); we say it in one
# line ourselves. Set before grpc is first imported.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click
import pydantic

from discoverd import __version__
from discoverd.config import DEFAULT_ENDPOINT, EtcdOptions
from discoverd.errors import DiscoverdError
from discoverd.schema import keys

__all__ = ["cli", "etcd_options", "fail", "hoist_options", "main", "parse_duration", "run_async"]

T = TypeVar("T")


class Failure(click.ClickException):
    """A one-line error with exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.message}", err=True)


def fail(message: str) -> Failure:
    return Failure(message)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; DiscoverdError becomes a one-line error."""
    try:
        return asyncio.run(coro)
    except DiscoverdError as error:
        raise fail(str(error)) from None


_FLAGS = {
    "endpoints": "etcd-endpoints",
    "ca_file": "etcd-cacert",
    "cert_file": "etcd-cert",
    "key_file": "etcd-key",
    "user": "etcd-user",
    "password": "etcd-password",
    "allow_plaintext_password": "etcd-allow-plaintext-password",
    "timeout": "etcd-timeout",
}


def etcd_options(ctx: click.Context) -> EtcdOptions:
    """The connection options given to the top-level command."""
    params = ctx.find_root().params
    password = params["etcd_password"]
    password_file = params.get("etcd_password_file")
    if password_file:
        if password is not None:
            raise fail("give --etcd-password or --etcd-password-file, not both")
        try:
            with open(password_file, encoding="utf-8") as f:
                mode = os.fstat(f.fileno()).st_mode
                if mode & 0o077:  # checked on the file opened, wherever a link pointed
                    raise fail(
                        f"--etcd-password-file: {password_file} is open to group or others "
                        f"(mode {stat.S_IMODE(mode):04o}): chmod 600 it, as ssh requires of a private key"
                    )
                password = f.read().rstrip("\r\n")
        except OSError as error:
            raise fail(f"--etcd-password-file: cannot read {password_file}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise fail(f"--etcd-password-file: {password_file} is not UTF-8 text") from None
        if not password:
            raise fail(f"--etcd-password-file: {password_file} is empty")
    try:
        return EtcdOptions(
            endpoints=params["etcd_endpoints"],
            prefix=params["prefix"],
            ca_file=params["etcd_cacert"],
            cert_file=params["etcd_cert"],
            key_file=params["etcd_key"],
            user=params["etcd_user"],
            password=password,
            allow_plaintext_password=params["etcd_allow_plaintext_password"],
            timeout=params["etcd_timeout"],
        )
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        reason = first["msg"].removeprefix("Value error, ")
        if not field:  # a rule about several options at once
            raise fail(reason) from None
        flag = _FLAGS.get(field, field.replace("_", "-"))
        raise fail(f"--{flag}: {reason}") from None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`90s`, `10m`, `1h30m`, `1.5h`, `2d`, `500ms` (Go's form, plus days) -> seconds; ValueError naming the forms.

    The one parser of the durations the commands take (`logs --since`, `drain --deadline`)."""
    if not text or _DURATION.sub("", text):
        raise ValueError(f"{text!r} is not a duration such as 90s, 10m or 1h30m")
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))


def metrics_address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback: `--metrics-address` is HOST:PORT or ""."""
    from discoverd import metrics

    try:
        metrics.parse_address(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return value


def _configure_logging(verbose: int, log_format: str) -> None:
    from discoverd import logs

    logs.configure(level=logging.DEBUG if verbose else logging.INFO, json_format=log_format == "json")


def _option_names(command: click.Command) -> set[str]:
    """Every option name `command` and the commands under it take."""
    names = {o for p in command.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            names |= _option_names(sub)
    return names


def hoist_options(group: click.Group, ctx: click.Context, args: list[str]) -> list[str]:
    """`args` with the group's own options moved before the subcommand, wherever they were given.

    `discoverd get instances --etcd-endpoints URL` becomes `discoverd --etcd-endpoints URL get
    instances`. An option the subcommand defines itself stays where it is, and so does everything
    after `--`.
    """
    takes_value = {
        o: not (p.is_flag or p.count)
        for p in group.params
        if isinstance(p, click.Option)
        for o in (*p.opts, *p.secondary_opts)
    }
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        name = args[i].split("=", 1)[0]
        i += 2 if takes_value.get(name) and "=" not in args[i] else 1
    if i >= len(args) or args[i] == "--":
        return args
    sub = group.get_command(ctx, args[i])
    if sub is None:
        return args
    own = _option_names(sub)
    moved: list[str] = []
    kept: list[str] = []
    rest = args[i + 1 :]
    j = 0
    while j < len(rest):
        token = rest[j]
        if token == "--":
            kept += rest[j:]
            break
        name = token.split("=", 1)[0]
        if name in takes_value and name not in own:
            width = 2 if takes_value[name] and "=" not in token and j + 1 < len(rest) else 1
            moved += rest[j : j + width]
            j += width
            continue
        kept.append(token)
        j += 1
    return [*args[:i], *moved, args[i], *kept]


_COMMANDS: dict[str, tuple[str, str]] = {
    "apply": ("apply", "apply"),
    "validate": ("apply", "validate"),
    "get": ("get", "get"),
    "auth": ("auth", "auth"),
    "describe": ("describe", "describe"),
    "agent": ("agent", "agent"),
    "up": ("up", "up"),
    "operator": ("operator", "operator"),
    "controller": ("controller", "controller"),
    "rollout": ("rollout", "rollout"),
    "restart": ("restart", "restart"),
    "drain": ("drain", "drain"),
    "undrain": ("drain", "undrain"),
    "logs": ("logs", "logs"),
    "dashboard": ("dashboard", "dashboard"),
}
"""Command name -> (module under discoverd.cli, attribute). A module is imported only when its command
runs (or `--help` lists them all): `discoverd get` does not pay for the agent's imports (about 0.6 s of
CPU per call). A module that is not installed (a build without the agent or the operator) has no command."""


def _present(module: str) -> bool:
    return importlib.util.find_spec(f"discoverd.cli.{module}") is not None


class _Root(click.Group):
    """Takes the connection and logging options before or after the subcommand, as kubectl and nomad do;
    imports a subcommand's module only when that command is asked for."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_options(self, ctx, args))

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, (module, _) in _COMMANDS.items() if _present(module)]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in _COMMANDS:
            module, attribute = _COMMANDS[cmd_name]
            try:
                imported = importlib.import_module(f"discoverd.cli.{module}")
            except ModuleNotFoundError as error:
                if error.name != f"discoverd.cli.{module}":
                    raise
                return None
            self.add_command(getattr(imported, attribute), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=_Root,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "DISCOVERD"},
)
@click.version_option(__version__, prog_name="discoverd")
@click.option(
    "--etcd-endpoints",
    default=DEFAULT_ENDPOINT,
    show_default=True,
    envvar="DISCOVERD_ETCD_ENDPOINTS",
    help="Comma-separated etcd URLs (http:// or https://).",
)
@click.option(
    "--prefix", default=keys.DEFAULT_PREFIX, show_default=True, envvar="DISCOVERD_PREFIX", help="etcd key prefix."
)
@click.option("--etcd-cacert", envvar="DISCOVERD_ETCD_CACERT", help="CA bundle that signed etcd's certificate.")
@click.option("--etcd-cert", envvar="DISCOVERD_ETCD_CERT", help="Client certificate for etcd (TLS client auth).")
@click.option("--etcd-key", envvar="DISCOVERD_ETCD_KEY", help="Key of the client certificate.")
@click.option("--etcd-user", envvar="DISCOVERD_ETCD_USER", help="etcd user name (auth enabled).")
@click.option(
    "--etcd-password",
    envvar="DISCOVERD_ETCD_PASSWORD",
    help="etcd password (visible in process listings: prefer --etcd-password-file).",
)
@click.option(
    "--etcd-password-file",
    envvar="DISCOVERD_ETCD_PASSWORD_FILE",
    help="File holding the etcd password (one line), so it appears in no process listing; mode 600 or 400.",
)
@click.option(
    "--etcd-allow-plaintext-password",
    is_flag=True,
    envvar="DISCOVERD_ETCD_ALLOW_PLAINTEXT_PASSWORD",
    help="Send the password over http:// endpoints (no TLS); only where the network is trusted (loopback).",
)
@click.option(
    "--etcd-timeout",
    default=5.0,
    show_default=True,
    envvar="DISCOVERD_ETCD_TIMEOUT",
    type=float,
    help="Seconds to wait for etcd to answer.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="DISCOVERD_LOG_FORMAT",
    show_default=True,
)
@click.option("-v", "--verbose", count=True, help="More detail in logs.")
@click.pass_context
def cli(ctx: click.Context, /, verbose: int, log_format: str, **_: Any) -> None:
    """discoverd deploys and upgrades services on servers from configuration in etcd.

    The options above are taken before or after the command (`discoverd get instances --prefix /p`).
    """
    _configure_logging(verbose, log_format)


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(discoverd completion bash)" in ~/.bashrc."""
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None
    click.echo(complete(cli, {}, "discoverd", "_DISCOVERD_COMPLETE").source())


cli.add_command(completion)


def _one_line_errors(entry: Callable[[], None]) -> Callable[[], None]:
    @functools.wraps(entry)
    def wrapped() -> None:
        try:
            entry()
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as error:  # the last line of defence: one line, not a traceback
            if os.environ.get("DISCOVERD_DEBUG"):
                raise
            click.echo(
                f"error: unexpected {type(error).__name__}: {error} (DISCOVERD_DEBUG=1 shows the traceback)", err=True
            )
            sys.exit(1)

    return wrapped


@_one_line_errors
def main() -> None:
    cli(prog_name="discoverd")
