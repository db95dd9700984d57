from ddpmcodec.cli import run

run()
