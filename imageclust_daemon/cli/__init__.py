"""The command line: its grammar (argparse) and its commands, the only code that prints."""
