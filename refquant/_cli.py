"""What every refquant command line shares: one line on stderr and exit 2 for a bad argument."""
from __future__ import annotations

import argparse
import sys


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument gives one line on stderr (``error: ...``, as every other
    refquant error) and exit code 2, instead of the usage text followed by the message."""

    def error(self, message: str):
        message = " ".join(message.split())   # argparse's messages may hold newlines
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
