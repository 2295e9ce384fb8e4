from turboctl.cli.main import run

run()
