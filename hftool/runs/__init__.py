"""Run layer: one module per command, wiring the library pieces together behind the thin CLI."""
