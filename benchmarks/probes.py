"""The probe table of issue 15: bad inputs and faults, each run through the real `adapt` CLI.

    python benchmarks/probes.py --out runs/probes [--only NAME,...] [--kind A,B] [--all] [--list]

Each probe (benchmarks/probes/catalog.py) sets up its files in a fresh folder under <out>/work/, runs one
`adapt` command as a subprocess and records the exit code, the first line printed, whether a traceback was
printed, what was left in the output folder, and a verdict against the outcome it declares (exit 2 + one
line + nothing written, or exit 0 with the RIGHT value). Tiny random models are built once into
<out>/fixtures/. Writes <out>/probes.md and <out>/probes.json and prints the table; a run with --only or
--kind updates just its rows of the table already there. Exit code: 0 when every probe run passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "probes"))

from catalog import BUILDERS, PROBES  # noqa: E402
from fixtures import Fixtures  # noqa: E402
from spec import env_for, markdown, run_probe  # noqa: E402


class Placeholders(dict):
    """Command placeholders; a model name ({llama}, {bart}, ...) builds that tiny model on first use."""

    def __init__(self, fx: Fixtures, adapt: str):
        super().__init__(adapt=adapt, py=sys.executable, data=str(REPO.parent / "shared" / "data"))
        self.fx = fx

    def __missing__(self, key: str) -> str:
        self[key] = value = str(self.fx.path(key))
        return value


def adapt_command() -> str:
    beside = Path(sys.executable).with_name("adapt")
    return str(beside) if beside.exists() else str(REPO / ".venv" / "bin" / "adapt")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/probes", help="folder for the table, fixtures and probe folders")
    parser.add_argument("--only", help="comma-separated probe names (or prefixes) to run")
    parser.add_argument("--kind", help="comma-separated kinds (A-G) to run")
    parser.add_argument("--all", action="store_true", help="also the extra variants (catalog.EXTRA)")
    parser.add_argument("--list", action="store_true", help="list the probes and exit")
    args = parser.parse_args(argv)

    probes = PROBES if args.all or args.only else [p for p in PROBES if not p.extra]
    names = [p.name for p in PROBES]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate probe names in catalog.py")
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if not any(p.name.startswith(w) for p in PROBES)]
        if unknown:
            raise SystemExit(f"--only: no probe named {', '.join(unknown)} (see --list)")
        probes = [p for p in probes if any(p.name.startswith(w) for w in wanted)]
    if args.kind:
        kinds = {k.strip().upper() for k in args.kind.split(",")}
        probes = [p for p in probes if p.kind in kinds]
    if args.list:
        for p in probes:
            print(f"{p.kind}  {p.name:40s} {'(extra) ' if p.extra else ''}{p.what}")
        print(f"{len(probes)} probes")
        return 0

    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    # probe folders sit beside a link to ../shared, so recipes' default data paths resolve as from the repo
    link = work / "shared"
    if not link.exists() and (REPO.parent / "shared").exists():
        os.symlink(REPO.parent / "shared", link)
    fx = Fixtures(out / "fixtures")
    fx.env = env_for(out)
    fx.builders = dict(BUILDERS)
    fmt = Placeholders(fx, adapt_command())

    rows = []
    started = time.perf_counter()
    for number, probe in enumerate(probes, 1):
        row = run_probe(probe, work / probe.name, fx, fmt, fx.env)
        rows.append(row)
        print(f"[{number}/{len(probes)}] {row['verdict']:5s} {probe.kind} {probe.name} "
              f"(exit {row['exit']}, {row['seconds']}s): {row['detail'][:150]}", flush=True)
    elapsed = time.perf_counter() - started
    fresh_rows = list(rows)
    previous = out / "probes.json"
    if (args.only or args.kind) and previous.exists():  # a partial re-run updates its rows of the last table
        fresh = {r["name"]: r for r in rows}
        kept = {r["name"]: r for r in json.loads(previous.read_text())["probes"]}
        kept.update(fresh)
        order = [p.name for p in PROBES]
        rows = sorted(kept.values(), key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
        print(f"updated {len(fresh)} rows of the table in {previous}")
    table = markdown(rows)
    (out / "probes.md").write_text(f"# adapt probe table (issue 15)\n\n{table}\n"
                                   f"Wall time of the last run ({len(fresh_rows)} probes): {elapsed:.0f} s.\n")
    (out / "probes.json").write_text(json.dumps({"probes": rows, "wall_seconds": round(elapsed, 1)}, indent=2,
                                                ensure_ascii=False) + "\n")
    print()
    print(table)
    print(f"written to {out / 'probes.md'} and {out / 'probes.json'} ({elapsed:.0f} s)")
    return 0 if all(r["verdict"] == "PASS" for r in fresh_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
