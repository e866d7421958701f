"""What every command module shares: the settings decorator, the error-mapping group, output helpers.

Imports nothing heavy: `lookalike --help` loads only click and these modules; each command
imports its library module when it runs.
"""

from __future__ import annotations

import functools

import click

from lookalike_cli.errors import LookalikeError, ParameterError
from lookalike_cli.files import disk_full_error, is_disk_full
from lookalike_cli.settings import Settings


class LookalikeGroup(click.Group):
    """Turns LookalikeError into a one-line `Error: ...` and exit 1, like ClickException.

    A ParameterError reads with the flags of the command that was run. Every group is a
    LookalikeGroup, so the one that catches it is the command's own group.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ParameterError as exc:
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            raise click.ClickException(exc.render(flags(command or self, exc.params))) from exc
        except LookalikeError as exc:
            raise click.ClickException(str(exc)) from exc
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            # A full disk or a file-size limit can hit any write (DuckDB, FAISS, Parquet, torch): one line, not a
            # traceback from wherever it struck. Other exceptions are bugs and keep their traceback.
            if is_disk_full(exc):
                raise click.ClickException(str(disk_full_error(exc))) from exc
            raise


def flags(command: click.Command, params) -> dict[str, str]:
    """How the command spells each library parameter: the longest `--` opt of the option with that
    param name, else `--` + the name with dashes (a library parameter the command has no option for)."""
    options = {option.name: max((opt for opt in option.opts if opt.startswith("--")), key=len)
               for option in command.params
               if isinstance(option, click.Option) and any(opt.startswith("--") for opt in option.opts)}
    return {param: options.get(param, "--" + param.replace("_", "-")) for param in params}


def pass_settings(func):
    """Pass the Settings the root group resolved (from --db and friends) as the first argument."""

    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, *args, **kwargs):
        return ctx.invoke(func, ctx.find_object(Settings), *args, **kwargs)

    return wrapper


def progress(message: str) -> None:
    """Progress of a long step: to stderr, so stdout stays the command's result."""
    click.echo(message, err=True)


def echo_table(table) -> None:
    """A plain fixed-width table (a pyarrow.Table): readable in a terminal and easy to grep."""
    rows = [table.column_names] + [["" if v is None else str(v) for v in row.values()] for row in table.to_pylist()]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(table.column_names))]
    for row in rows:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
