"""Run directories, atomic files, resumable JSONL, manifests and the stages' hash chain.

Layout: ``$CHARTER_HOME/runs/<run>/<stage>/``. A stage writes rows to JSONL as it goes (each row has an
``id``), commits them in chunks with fsync, and writes ``manifest.json`` last: a manifest means the stage
finished. After a crash, rows already on disk are kept, a torn last line is dropped, and only missing ids
are generated again.

Identity (a hash chain, like ``make`` with content hashes). Every stage records, when it starts, its config
hash and the *identity* of each stage it reads (``inputs``, in ``config.json``); when it finishes, its
manifest gets its own ``identity``: a hash of its config, its inputs' identities and its output (a digest of
its data files, or, for trained models, a fresh random token, since retraining is not bit-reproducible and
weights are too big to hash on every run). So:

- same config, same inputs, finished: the stage is skipped (rerunning ``charter train`` resumes);
- the *config* changed (you edited the YAML or an override) on an existing run: an error, because that is
  most likely a mistake; ``--force`` that stage (or use another run name) to replace its output;
- an *input* changed (an upstream stage was forced or redone, e.g. ``charter distill --force``): the stage
  is stale, so it is redone automatically, partial rows included, by ``charter train`` and by any stage
  command that reaches it; a warning says why. A redone data stage whose output is byte-identical keeps
  its identity, so nothing after it reruns;
- evaluations key their results on a model's stage identity (``eval/conditions.py``), so a retrained
  model is noticed there too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"  # written last into a stage's folder: its presence means the stage finished
INVOCATIONS = "invocations.json"  # each invocation's start (and an interrupted one's last write): total wall time


def manifest_path(stage_dir: Path) -> Path:
    """Where the manifest of the stage (or evaluation) whose folder is ``stage_dir`` lives."""
    return Path(stage_dir) / MANIFEST


def charter_home() -> Path:
    """Root of every artifact: ``$CHARTER_HOME`` or ``~/.charter``."""
    return Path(os.environ.get("CHARTER_HOME") or Path.home() / ".charter").expanduser()


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    write_text_atomic(path, "".join(lines))
    return len(lines)


class CorruptFile(ValueError):
    """A file charter wrote (a manifest, a stage's rows) cannot be read; the message names file and line."""


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFile(f"{path}: not UTF-8 text (byte {e.start})") from None


def read_json(path: Path, what: str = "", hint: str = "") -> Any:
    """A JSON file; a corrupt one is one clear error naming the file (and ``what`` it should hold)."""
    try:
        obj = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise CorruptFile(f"{path}: not valid JSON (line {e.lineno}: {e.msg}){hint}") from None
    if what and not isinstance(obj, dict):
        raise CorruptFile(f"{path}: expected {what} (a JSON object), got {type(obj).__name__}{hint}")
    return obj


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, row) of a JSONL file, ignoring a torn (unterminated, unparsable) last line left by a
    crash; any other bad line is an error naming the file and the line."""
    if not path.exists():
        return []
    rows = []
    lines = _read_text(path).split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append((i + 1, json.loads(line)))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # only the very last, unterminated line may be torn
                break
            raise CorruptFile(f"{path}: line {i + 1}: not valid JSON ({e.msg}); only a torn last line is "
                              "dropped on resume: fix or delete the line, or rerun with --force") from None
    return rows


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file, ignoring a torn (unterminated, unparsable) last line left by a crash."""
    return [row for _, row in _jsonl_rows(path)]


class RowLog:
    """An append-only JSONL of rows keyed by ``id``: resumable, never duplicating an id."""

    def __init__(self, path: Path):
        self.path = path
        numbered = _jsonl_rows(path)
        rows = [r for _, r in numbered]
        self.rows: dict[str, dict] = {}
        for line, r in numbered:
            if not isinstance(r, dict) or not isinstance(r.get("id"), (str, int)):
                raise CorruptFile(f"{path}: line {line}: expected a JSON object with an 'id'")
            self.rows.setdefault(r["id"], r)
        # Rewrite once if the file had a torn tail or duplicate ids, so appends start on a clean line.
        raw = path.read_bytes() if path.exists() else b""
        if len(rows) != len(self.rows) or (raw and not raw.endswith(b"\n")):
            write_jsonl_atomic(path, self.rows.values())

    def __contains__(self, row_id: str) -> bool:
        return row_id in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, rows: list[dict]) -> None:
        """Append rows whose ids are new, durably (one write + fsync per call)."""
        new = [r for r in rows if r["id"] not in self.rows]
        if not new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            f.flush()
            os.fsync(f.fileno())
        for r in new:
            self.rows[r["id"]] = r

    def ordered(self, ids: list[str]) -> list[dict]:
        return [self.rows[i] for i in ids if i in self.rows]


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("charter", "torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers",
                 "huggingface_hub", "lm_eval", "openai", "vllm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def machine_info() -> dict:
    """Device, CPU and the dtype ``auto`` resolved to, when a model ran in this process (torch is loaded);
    a stage that ran no model does not import torch just to say so."""
    if "torch" not in sys.modules:
        return {}
    from .hardware import machine

    return machine()


def identity_view(obj: Any, at: str = "") -> Any:
    """``obj`` (a stage's config as plain dicts and lists) as identities see it: the rules declared on the config
    fields (speed knobs at a fixed value, fields that never count or count only when they leave their "as before"
    value), applied by ``charter.config.identity``."""
    from .config.identity import identity_view as view

    return view(obj, at)


def identity_hash(obj: Any) -> str:
    """The hash of ``obj`` that identities use (see ``charter.config.identity``)."""
    return config_hash(identity_view(obj))


def config_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(paths: Iterable[Path]) -> str:
    """sha256 over the named files (folders: every file inside, in name order), names included."""
    h = hashlib.sha256()
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(p.parent)).encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def stage_identity(run: Path, name: str) -> str:
    """The identity of a finished stage of run folder ``run`` (see the module doc); RuntimeError when it has
    not finished. Manifests written before identities existed are identified by their content."""
    path = manifest_path(run / name)
    if not path.exists():
        raise RuntimeError(f"{run / name}: stage '{name}' has not finished (no manifest)")
    manifest = read_manifest(path)
    return manifest.get("identity") or config_hash(manifest)


@dataclass
class Stage:
    """One stage's folder; ``begin`` handles skip/force/config drift/stale inputs, ``finish`` writes the
    manifest last. ``inputs`` maps what the stage reads (usually upstream stage names) to their identities:
    use ``Stage.after`` to build it from upstream stages."""

    run_dir: Path
    name: str
    config: dict
    inputs: dict = field(default_factory=dict)
    started: float = field(default_factory=time.time)

    @classmethod
    def after(cls, run: Path, name: str, config: dict, upstream: Iterable[str] = (), **other_inputs: str) -> Stage:
        """A stage whose inputs are the finished ``upstream`` stages of the same run (plus ``other_inputs``)."""
        inputs = {u: stage_identity(run, u) for u in upstream}
        return cls(run, name, config, {**inputs, **other_inputs})

    @property
    def dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def manifest_path(self) -> Path:
        return manifest_path(self.dir)

    def __post_init__(self) -> None:
        problem = run_name_problem(self.name)
        if problem:  # a stage folder is one name inside the run folder, never a path
            raise ValueError(f"stage name: {problem}")

    def done(self) -> bool:
        return self.manifest_path.exists()

    def begin(self, force: bool = False) -> bool:
        """Prepare the folder. Returns False when the stage already finished and should be skipped.

        A changed config is an error (``--force`` replaces the output); changed inputs make the stage stale,
        and its folder is cleared so it is redone."""
        if force and self.dir.exists():
            # Only ever the stage folder itself, a real folder directly inside the run folder.
            if self.dir.is_symlink() or self.dir.resolve().parent != Path(self.run_dir).resolve():
                raise RuntimeError(f"{self.dir}: not a stage folder inside {self.run_dir}; not deleting it")
            shutil.rmtree(self.dir)
        cfg_path = self.dir / "config.json"
        h = identity_hash(self.config)
        if cfg_path.exists():
            saved = read_json(cfg_path, "a stage config", FORCE_HINT)
            # Compared through the saved config itself, so folders made before speed knobs were left out of
            # the hash still match when only those knobs differ.
            before = identity_hash(saved["config"]) if isinstance(saved.get("config"), dict) else saved.get("hash")
            if before != h:
                raise RuntimeError(
                    f"{self.dir}: existing output was made with a different config; rerun with --force to "
                    "replace it, or use another run name"
                )
            before = saved.get("inputs", {})
            if before != self.inputs:
                changed = sorted(k for k in {*before, *self.inputs} if before.get(k) != self.inputs.get(k))
                log.warning("%s: redoing this stage: its inputs changed since it was made (%s redone)",
                            self.dir, ", ".join(changed))
                shutil.rmtree(self.dir)
        if self.done():
            self.manifest()  # a corrupt manifest is an error here, not a skipped stage that fails later
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        if not cfg_path.exists():
            write_json_atomic(cfg_path, {"hash": h, "config": self.config, "inputs": self.inputs})
        self.started = time.time()
        self._note_invocation()
        return True

    def _note_invocation(self) -> None:
        """Record this invocation's start beside the earlier, unfinished ones, so a stage resumed after a crash
        or a kill reports the wall time of all its invocations, not just the last one. An interrupted
        invocation never wrote its end; it is taken as the newest file write in the folder, since nothing has
        written there since it stopped."""
        path = self.dir / INVOCATIONS
        past = read_json(path, "a stage's invocation log", FORCE_HINT)["invocations"] if path.exists() else []
        if past and "last_write" not in past[-1]:
            writes = [p.stat().st_mtime for p in self.dir.rglob("*") if p.is_file() and p.name != INVOCATIONS]
            past[-1]["last_write"] = round(max(writes, default=past[-1]["started"]), 2)
        write_json_atomic(path, {"invocations": [*past, {"started": round(self.started, 2)}]})

    def _seconds_all_invocations(self, now: float) -> tuple[float, int]:
        path = self.dir / INVOCATIONS
        past = read_json(path, "a stage's invocation log", FORCE_HINT)["invocations"][:-1] if path.exists() else []
        earlier = sum(max(0.0, p.get("last_write", p["started"]) - p["started"]) for p in past)
        return round(earlier + now - self.started, 2), len(past) + 1

    def finish(self, counts: dict, outputs: Iterable[Path] | None = None, **extra: Any) -> dict:
        """Write the manifest. ``outputs``: the files whose content identifies the result (data stages);
        None: the result gets a fresh identity (trained models)."""
        digest = file_digest(outputs) if outputs is not None else os.urandom(8).hex()
        identity = config_hash({"config": identity_hash(self.config), "inputs": self.inputs, "output": digest})
        now = time.time()
        total, invocations = self._seconds_all_invocations(now)
        manifest = {
            "stage": self.name,
            "identity": identity,
            "inputs": self.inputs,
            "config": self.config,
            "counts": counts,
            "seconds": round(now - self.started, 2),  # this invocation
            "seconds_total": total,  # with the earlier, interrupted invocations of this stage
            "invocations": invocations,
            "versions": package_versions(),
            "machine": machine_info(),
            "argv": sys.argv,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        write_json_atomic(self.manifest_path, manifest)
        return manifest

    def identity(self) -> str:
        return stage_identity(self.run_dir, self.name)

    def manifest(self) -> dict:
        return read_manifest(self.manifest_path)


def drop_rows(log: RowLog, stale: Callable[[dict], bool]) -> RowLog:
    """``log`` rewritten without the rows ``stale(row)`` picks (a condition whose model changed, say); the same
    log when none is picked."""
    keep = [r for r in log.rows.values() if not stale(r)]
    if len(keep) != len(log.rows):
        write_jsonl_atomic(log.path, keep)
        return RowLog(log.path)
    return log


def reusable(stage: Stage, force: bool, same: Callable[[dict], bool], report: Callable[[str], None] | None = None
             ) -> dict | None:
    """Skip-if-done for outputs whose identity is more than their config (an evaluation's models, conditions or
    scoring): the finished stage's manifest when ``same(manifest)`` says it still holds (``report`` gets the
    "already done" line), else None. A finished output that no longer holds loses only its manifest, so the
    caller resumes and reuses every log row that is still valid (its row logs key on their own identities)."""
    if not stage.done() or force:
        return None
    manifest = stage.manifest()
    if same(manifest):
        if report is not None:
            report(f"{stage.name}: already done (--force to redo): {stage.dir}")
        return manifest
    stage.manifest_path.unlink()
    return None


FORCE_HINT = "; rerun with --force to redo the stage"
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def read_manifest(path: Path) -> dict:
    """A stage's manifest.json; a corrupt one is one error naming the file."""
    return read_json(path, "a stage manifest", FORCE_HINT)


def run_name_problem(name: Any) -> str | None:
    """What is wrong with a run (or stage) name, or None: one folder name, never a path."""
    if not isinstance(name, str) or not name:
        return f"expected a non-empty name, got {name!r}"
    if ".." in name or not RUN_NAME_RE.match(name) or len(name) > 128:
        return (f"expected at most 128 letters, digits, '.', '_' or '-', starting with a letter or digit (no "
                f"'/', no '..'), got {name!r}")
    return None


def is_run_name(name: Any) -> bool:
    return run_name_problem(name) is None


def run_dir(name: str) -> Path:
    """``$CHARTER_HOME/runs/<name>``; a name that could leave that folder is a ValueError."""
    problem = run_name_problem(name)
    if problem:
        raise ValueError(f"run name: {problem}")
    return charter_home() / "runs" / name


def _path_like(ref: str) -> bool:
    return "/" in ref or ref.startswith("~") or ref in (".", "..")


def find_run(ref: str | Path) -> Path | None:
    """The run folder ``ref`` names, or None: a run name under ``$CHARTER_HOME/runs`` (preferred), else a
    folder that holds a run's stage folders (one with a manifest or a model's config.json). The one resolver of
    run references: ``charter report``, ``export``, ``chat`` and ``blend`` all read runs through it."""
    ref = str(ref)
    if is_run_name(ref) and run_dir(ref).is_dir():
        return run_dir(ref)
    p = Path(ref).expanduser()
    if p.is_dir() and (any(p.glob(f"*/{MANIFEST}")) or any(p.glob("*/config.json"))):
        return p
    return None


def resolve_run(ref: str | Path, what: str = "RUN") -> Path:
    """``find_run``, or an error saying what ``ref`` is not."""
    found = find_run(ref)
    if found is not None:
        return found
    ref = str(ref)
    if _path_like(ref):
        raise FileNotFoundError(f"{what} {ref}: not a run folder (expected a run name, or a folder holding stage "
                                f"folders such as distill/ with a {MANIFEST})")
    problem = run_name_problem(ref)
    if problem:
        raise ValueError(f"{what}: {problem}")
    raise FileNotFoundError(f"{what} {ref}: no such run (looked for {run_dir(ref)})")


def derive_seed(*parts: Any) -> int:
    """A stable 31-bit seed from a run seed and names (same inputs, same seed, on every machine)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def silent(_line: str) -> None:
    """The default ``report`` of library functions: they say nothing unless the caller (the CLI) listens."""
