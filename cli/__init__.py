"""The `cvm` command line: one module per sub-command, above the packages it calls
(`model`, `synth`, `service`, `storage`). Nothing below imports this package."""
