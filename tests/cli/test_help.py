"""Every command's help reads as plain text: no RST backticks, no type-column residue."""

from __future__ import annotations

from typer.testing import CliRunner

from mlexec.cli import app


def _commands(group, prefix=()):  # type: ignore[no-untyped-def]
    import typer

    command = typer.main.get_command(app) if group is None else group
    for name, sub in getattr(command, "commands", {}).items():
        yield (*prefix, name)
        yield from _commands(sub, (*prefix, name))


def test_help_texts_carry_no_markup_residue():
    names = list(_commands(None))
    assert ("tail",) in names and ("monitor", "run") in names and ("init",) in names
    for name in [(), *names]:
        done = CliRunner().invoke(app, [*name, "--help"], env={"COLUMNS": "120"})
        assert done.exit_code == 0, (name, done.output)
        for residue in ("``", "<bool>", ":mod:", ":func:", "{", "TOPOLOGY <path>", "/ --no-f"):
            assert residue not in done.output, (name, residue, done.output)
        usage = done.output.splitlines()[0]
        if name and "TOPOLOGY" in done.output:  # arguments in capitals, as Unix tools write them
            assert (
                usage.split("[OPTIONS]")[-1].strip().upper() == usage.split("[OPTIONS]")[-1].strip()
            )
