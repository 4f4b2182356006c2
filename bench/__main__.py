"""``python -m bench``: the benchmark suite (docs/performance.md).

    .venv/bin/python -m bench --quick          # under 5 minutes
    .venv/bin/python -m bench                  # the full run
    .venv/bin/python -m bench --only filestore-sqlite,aiohttp-durable --workloads 64MiB
    .venv/bin/python -m bench --quick --profile filestore-sqlite/4KiB

Starts every target itself on 127.0.0.1, alternates them run by run,
stops them by PID, prints the Markdown report and writes it with
results.json and throughput.png to --out (default bench/results/<time>/).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench import suite
from bench.workloads import ALL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small repeat counts, no 1 GiB, no 100k purges (< 5 min)",
    )
    parser.add_argument(
        "--only", metavar="TARGET,...", help=f"targets to run (of {', '.join(suite.TARGETS)})"
    )
    parser.add_argument(
        "--workloads",
        metavar="NAME,...",
        help=f"workloads (of {', '.join(ALL)}; also e.g. 256KiB, small-20, purge-2000)",
    )
    parser.add_argument("--out", type=Path, help="output directory (default bench/results/<time>)")
    parser.add_argument(
        "--repeat", type=int, help="runs per target and workload (default 5; 3 with --quick)"
    )
    parser.add_argument(
        "--profile",
        metavar="TARGET/WORKLOAD",
        help="record the target's server with py-spy during that workload",
    )
    parser.add_argument(
        "--profile-format", choices=["flamegraph", "speedscope", "raw"], default="flamegraph"
    )
    parser.add_argument("--cache", type=Path, help="where npm ci installs the tus peer")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    targets = list(suite.TARGETS)
    if args.only:
        targets = [t.strip() for t in args.only.split(",") if t.strip()]
        unknown = [t for t in targets if t not in suite.TARGETS]
        if unknown:
            parser.error(
                f"unknown target(s) {', '.join(unknown)}; known: {', '.join(suite.TARGETS)}"
            )
    try:
        if args.workloads:
            workloads = [
                suite.parse_workload(w.strip(), quick=args.quick)
                for w in args.workloads.split(",")
                if w.strip()
            ]
        else:
            workloads = suite.quick_workloads() if args.quick else suite.all_workloads()
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    profile = None
    if args.profile:
        target, _, label = args.profile.partition("/")
        if target not in targets or not label:
            parser.error("--profile takes TARGET/WORKLOAD, with TARGET among those run")
        profile = (target, label)
    repeat = args.repeat or (3 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    options = suite.Options(
        out=args.out or suite.default_out(),
        targets=targets,
        workloads=workloads,
        repeat=repeat,
        quick=args.quick,
        profile=profile,
        profile_format=args.profile_format,
        command="python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
    )
    if args.cache:
        options.cache = args.cache
    try:
        outcome = suite.run(options)
    except KeyboardInterrupt:
        print("interrupted: every server started was stopped", file=sys.stderr)
        return 130
    print(outcome.markdown)
    if outcome.plot_note:
        print(outcome.plot_note, file=sys.stderr)
    print(
        f"written to {outcome.out}/ (results.md, results.json"
        f"{'' if outcome.plot_note else ', throughput.png'})",
        file=sys.stderr,
    )
    if outcome.survivors:
        print(f"PIDs still running after the stop: {outcome.survivors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
