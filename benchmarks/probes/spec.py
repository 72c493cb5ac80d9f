"""What a probe is (files, commands, an expected outcome), how one runs, and how its verdict is reached.

A probe runs in a fresh folder: its `files` are written there, its `setup` (if any) prepares the rest (a copy
of a finished run, a truncated checkpoint), its `before` commands run and must exit 0, then `cmd` runs as a
subprocess of the real `adapt` CLI and is judged by `expect`:

- `Refuse(...)`: exit 2, exactly one line `error: ...` on stderr naming what it must name, no traceback, and
  nothing written: the output folder absent if it was absent, unchanged if it held a run.
- `Succeed(check)`: exit 0, no traceback, and `check(ctx)` finds the RIGHT value (not merely some value).
- `Either(a, b)`: whichever of two acceptable outcomes the exit code selects.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

PROGRESS = re.compile(r"\d+%\|.*\|\s*\d+/\d+|^\s*(Map|Filter|Saving|Loading|Generating)\b.*(examples/s|it/s)")


@dataclass
class Result:
    code: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def lines(self, stream: str = "stderr") -> list[str]:
        """Non-empty lines of a stream, progress bars (datasets' `Map: 100%|...`) left out."""
        text = getattr(self, stream)
        return [line for line in re.split(r"[\r\n]+", text) if line.strip() and not PROGRESS.search(line)]

    def error_lines(self) -> list[str]:
        return [line.strip() for line in self.lines() if line.startswith("error: ")]

    def other_lines(self) -> list[str]:
        """stderr lines that are neither the error nor an informational `note:` line."""
        return [line for line in self.lines() if not line.startswith(("error: ", "note: "))]

    @property
    def first_line(self) -> str:
        """What a user reads first: the `error:` line of a failure (any `note:` lines aside), else the result
        on stdout (JSON compacted onto one line), else the first line on stderr."""
        if self.code != 0 and self.error_lines():
            return self.error_lines()[0]
        try:
            return json.dumps(json.loads(self.stdout), ensure_ascii=False)
        except (json.JSONDecodeError, TypeError):
            pass
        lines = self.lines("stdout") or self.lines("stderr")
        return lines[0].strip() if lines else ""


@dataclass
class Ctx:
    """What a setup, command template or check sees."""

    dir: Path  # the probe's own folder (the command's working directory)
    fx: Any  # fixtures.Fixtures
    fmt: dict  # placeholders for command templates
    result: Result | None = None
    before_snapshot: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.dir / "out"

    def json_out(self) -> Any:
        """The command's stdout parsed as JSON (for `--json`), or None."""
        try:
            return json.loads(self.result.stdout)
        except (json.JSONDecodeError, TypeError):
            return None

    def jsonl_out(self) -> list[dict]:
        rows = []
        for line in self.result.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return rows


Check = Callable[[Ctx], tuple[bool, str]]


class Refuse:
    """exit 2 + one line `error: ...` containing every fragment (a tuple = any one of its strings) and none
    of the `forbid` phrases + nothing written. Informational `note:` lines beside the error are tolerated and reported. `written` relaxes
    "nothing": "no-final-model" allows an output folder without final weights (a run stopped in training)."""

    def __init__(self, *fragments, written: str = "nothing", forbid: tuple = ()):
        self.fragments = fragments
        self.written = written
        self.forbid = forbid  # phrases of a message that blames the wrong cause
        self.label = "exit 2 + one line + nothing written"

    def judge(self, ctx: Ctx) -> tuple[bool, str]:
        r = ctx.result
        if r.code != 2:
            return False, f"exit {r.code}, expected 2"
        ok, detail = one_error_line(r)
        if not ok:
            return False, detail
        message = r.error_lines()[0].lower()
        for fragment in self.fragments:
            options = fragment if isinstance(fragment, tuple) else (fragment,)
            if not any(str(o).format_map(ctx.fmt).lower() in message for o in options):
                return False, f"message lacks {' or '.join(repr(o) for o in options)}"
        wrong = [phrase for phrase in self.forbid if phrase.lower() in message]
        if wrong:
            return False, f"message blames the wrong cause ({wrong[0]!r})"
        ok, written = judge_written(ctx, self.written)
        return ok, written + detail


def one_error_line(r: Result) -> tuple[bool, str]:
    """(exactly one `error:` line and nothing else but `note:` lines, a remark on the notes)."""
    errors, others = r.error_lines(), r.other_lines()
    if len(errors) != 1 or others:
        return False, f"{len(errors)} 'error:' lines and {len(others)} other stderr lines, expected one 'error:' line"
    notes = len(r.lines()) - 1
    return True, f" (+{notes} 'note:' line{'s' if notes > 1 else ''} before/after the error)" if notes else ""


def judge_written(ctx: Ctx, written: str) -> tuple[bool, str]:
    out = ctx.out
    if ctx.before_snapshot is not None:  # the output folder held something before: it must be untouched
        after = snapshot(out)
        if after != ctx.before_snapshot:
            changed = sorted(set(after.items()) ^ set(ctx.before_snapshot.items()))
            return False, f"old output changed: {', '.join(sorted({c[0] for c in changed})[:4])}"
        return True, "old output intact"
    if written == "no-final-model":
        final = [p.name for p in out.glob("*.safetensors")] if out.exists() else []
        return (not final), ("final weights written: " + ", ".join(final)) if final else "no final weights"
    if out.exists():
        return False, f"{out.name}/ was written ({describe_dir(out)})"
    return True, "nothing written"


@dataclass
class Succeed:
    """exit 0, no traceback, and `check` finds the right value."""

    check: Check | None = None
    label: str = "exit 0"

    def judge(self, ctx: Ctx) -> tuple[bool, str]:
        if ctx.result.code != 0:
            return False, f"exit {ctx.result.code}, expected 0"
        if self.check is None:
            return True, "exit 0"
        try:
            return self.check(ctx)
        except Exception as err:  # a check that cannot find its value is a failed probe, not a harness crash
            return False, f"check failed: {type(err).__name__}: {str(err)[:160]}"


@dataclass
class Either:
    """Two acceptable outcomes (e.g. a one-line refusal or the right result); exit 0 selects `ok`."""

    ok: Succeed
    refuse: Refuse

    @property
    def label(self) -> str:
        return f"{self.ok.label} OR {self.refuse.label}"

    def judge(self, ctx: Ctx) -> tuple[bool, str]:
        return (self.ok if ctx.result.code == 0 else self.refuse).judge(ctx)


@dataclass
class Custom:
    """Any exit code; `check` judges the whole outcome (signals, concurrent runs, what ran)."""

    check: Check
    label: str

    def judge(self, ctx: Ctx) -> tuple[bool, str]:
        try:
            return self.check(ctx)
        except Exception as err:
            return False, f"check failed: {type(err).__name__}: {str(err)[:160]}"


@dataclass
class Probe:
    name: str
    kind: str  # A-G, the kinds of issue 15
    what: str  # one line: the bad input or fault
    cmd: list[str]  # the probed command; "{adapt}", "{bert}", ... are filled from the fixtures
    expect: Refuse | Succeed | Either | Custom
    files: dict[str, str | bytes] = field(default_factory=dict)
    setup: Callable[[Ctx], None] | None = None
    before: list = field(default_factory=list)  # commands that must exit 0 first, or callables(ctx)
    timeout: int = 180
    shell: bool = False  # cmd[0] is a bash script (signals, concurrency, umask)
    extra: bool = False  # only with --all: more variants of a kind the default table already covers


def snapshot(folder: Path) -> dict:
    """relative path -> (size, mtime_ns) of every file under `folder` (empty if absent)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def left_on_disk(ctx: Ctx) -> str:
    """The output folder after the command: "nothing", "old output intact/changed", or a listing."""
    if ctx.before_snapshot is not None:
        after = snapshot(ctx.out)
        if after == ctx.before_snapshot:
            return "old output intact"
        changed = sorted({k for k, _ in set(after.items()) ^ set(ctx.before_snapshot.items())})
        return f"old output changed: {', '.join(changed[:4])}" + (f" +{len(changed) - 4}" if len(changed) > 4 else "")
    return describe_dir(ctx.out)


def describe_dir(folder: Path, limit: int = 6) -> str:
    if not folder.exists():
        return "nothing"
    if not folder.is_dir():
        return f"{folder.name} (a file)"
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not names:
        return f"{folder.name}/ (empty)"
    shown = ", ".join(names[:limit]) + (f", +{len(names) - limit} more" if len(names) > limit else "")
    return f"{folder.name}/: {shown}"


def fill(template: str, fmt: dict) -> str:
    return template.format_map(fmt) if "{" in template else template


def execute(argv: list[str], cwd: Path, env: dict, timeout: int) -> Result:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
        return Result(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)
    except subprocess.TimeoutExpired as err:
        def text(value):
            return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")

        return Result(None, text(err.stdout), text(err.stderr) + f"\n[harness] timed out after {timeout}s",
                      time.perf_counter() - start)


def run_probe(probe: Probe, folder: Path, fx, fmt: dict, env: dict) -> dict:
    """Set up, run and judge one probe in `folder`; returns its table row."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ctx = Ctx(dir=folder, fx=fx, fmt=fmt)
    row = {"name": probe.name, "kind": probe.kind, "what": probe.what, "expected": probe.expect.label}
    try:
        for rel, content in probe.files.items():
            path = folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        if probe.setup:
            probe.setup(ctx)
        for step in probe.before:
            if callable(step):  # a set-up step between commands (e.g. remove the newest checkpoint)
                step(ctx)
                continue
            argv = [fill(a, fmt) for a in step]
            pre = execute(argv, folder, env, probe.timeout)
            if pre.code != 0:
                raise RuntimeError(f"set-up command `{shlex.join(argv)}` exited {pre.code}: {pre.first_line[:200]}")
    except Exception as err:
        row.update(command="", exit=None, first_line="", traceback=False, left="", verdict="ERROR",
                   detail=f"set-up failed: {str(err)[:300]}", seconds=0.0)
        return row
    argv = [fill(a, fmt) for a in probe.cmd]
    if probe.shell:
        argv = ["bash", "-c", argv[0]]
    ctx.before_snapshot = snapshot(ctx.out) if ctx.out.exists() else None
    ctx.result = execute(argv, folder, env, probe.timeout)
    traceback = "Traceback (most recent call last)" in ctx.result.output
    ok, detail = probe.expect.judge(ctx)
    if traceback:
        ok, detail = False, "traceback printed; " + detail
    if ctx.result.code is None:
        ok = False
    shown = argv[2] if probe.shell else shlex.join(argv)
    row.update(command=shown.replace(str(folder) + "/", "").replace(fmt["adapt"], "adapt"),
               exit=ctx.result.code, first_line=ctx.result.first_line[:300], traceback=traceback,
               left=left_on_disk(ctx), verdict="PASS" if ok else "FAIL", detail=detail,
               seconds=round(ctx.result.seconds, 1))
    (folder / "stdout.txt").write_text(ctx.result.stdout)
    (folder / "stderr.txt").write_text(ctx.result.stderr)
    return row


def markdown(rows: list[dict]) -> str:
    """The probe table: one row per probe."""
    def cell(value) -> str:
        text = str(value if value is not None else "—")
        return text.replace("|", "\\|").replace("\n", " ")[:220]

    head = ["#", "probe", "kind", "command", "exit", "first line printed", "traceback", "left on disk",
            "expected", "verdict", "detail"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, 1):
        out.append("| " + " | ".join(cell(v) for v in (
            i, r["name"], r["kind"], f"`{r['command']}`" if r["command"] else "", r["exit"], r["first_line"],
            "yes" if r["traceback"] else "no", r["left"], r["expected"], r["verdict"], r["detail"])) + " |")
    passed = sum(r["verdict"] == "PASS" for r in rows)
    out.append("")
    out.append(f"{passed} of {len(rows)} probes pass.")
    return "\n".join(out) + "\n"


def env_for(root: Path) -> dict:
    env = dict(os.environ)
    env.update(ADAPT_CACHE=str(root / "adapt_cache"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", COLUMNS="200", NO_COLOR="1", TERM="dumb")
    return env
