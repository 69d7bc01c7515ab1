"""The shared ``main`` of the runnable modules (``python -m pipelines.<job>``, ``python -m serve.deploy``).

It lives apart from :mod:`hitmodels.cli` because the CLI imports the jobs: a job importing the CLI back
would make a circle.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def module_main(doc: str, prog: str, add_arguments: Callable, main_from_args: Callable,
                argv: list[str] | None = None) -> int:
    """Parse ``argv`` with the job's own arguments (``doc`` is its ``--help``) and run it."""
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    from .outdir import OutputLocked

    try:
        return main_from_args(args)
    except OutputLocked as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # an unreachable MLflow server is one clear line, not a retry traceback
        from .tracking import is_outage, outage_message

        if not is_outage(exc):
            raise
        print(f"{prog}: error: {outage_message(getattr(args, 'tracking_uri', None))}", file=sys.stderr)
        return 2
