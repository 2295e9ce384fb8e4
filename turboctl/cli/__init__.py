"""The command line: one thin module per command group; logic lives in turboctl.*."""
