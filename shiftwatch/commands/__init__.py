"""The operator commands behind `shiftwatch <command>` (check, serve, timeline), and severity
sweeps (`python -m shiftwatch.commands.sweep`)."""
