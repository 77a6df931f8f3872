"""``cpr-zarr``: list, inspect, verify, clean up and open results, without Prefect running."""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cpr_zarr import __version__
from cpr_zarr.errors import CprZarrError

# Only the standard library and click load with this module, so that `--help` and
# `--version` answer in a blink: each command imports what it needs (zarr, pandas, Dask,
# tifffile) when it runs. tests/test_imports.py keeps it so.
if TYPE_CHECKING:
    from collections.abc import Callable

    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = ["main"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip
_AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 result``, ``2 results``, ``0 entries`` (``many`` for irregular plurals)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def human_bytes(n: float | None) -> str:
    if n is None or n != n:  # not known (a table has no raw size), or NaN
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``500M``, ``2GiB``, ``1.5G``, ``1000`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]i?)?b?\s*", text.lower())
    if m is None:
        raise click.BadParameter(f"{text!r} is not a size; use e.g. 500M, 2GiB or 1000000.")
    return int(float(m[1]) * _UNITS[m[2] or ""])


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` -> seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smhdw]?)\s*", text.lower())
    if m is None:
        raise click.BadParameter(f"{text!r} is not an age; use e.g. 30d, 12h, 90m or 45s.")
    return float(m[1]) * _AGES[m[2] or "s"]


def parse_since(text: str) -> datetime:
    """An ISO date/time (UTC unless given) or an age such as ``2d`` (meaning: 2 days ago)."""
    try:
        return datetime.now(UTC) - timedelta(seconds=parse_age(text))
    except click.BadParameter:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(
            f"{text!r} is neither a date (2026-11-23, 2026-11-23T14:00) nor an age (2d, 12h)."
        ) from exc
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _parsed(parse: Callable[[str], Any], text: str, hint: str) -> Any:
    """``parse(text)``, its error naming the option it came from."""
    try:
        return parse(text)
    except click.BadParameter as exc:
        exc.param_hint = hint
        raise


def _open(url: str, mode: str = "r") -> ResultStore:
    from cpr_zarr.store import ResultStore

    try:
        # commands that write (gc --yes, rm, verify --repair) never create a missing store:
        # it is opened read-only first, which fails if there is none
        store = ResultStore(url, mode="r")
        return store if mode == "r" else ResultStore(url, mode="a")
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc


def _target(store: ResultStore, ref: str) -> ZarrTarget:
    try:
        return store.open(ref)
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
# the version of this package as a constant: asking importlib.metadata costs more than the
# whole rest of `cpr-zarr --version` (tests/test_imports.py checks that both agree)
@click.version_option(version=__version__, prog_name="cpr-zarr")
def main() -> None:
    """Inspect a cpr_zarr result store: list, show, verify, remove, clean up and open results.

    STORE is a folder path or URL (s3://...). REF is a content hash, a unique hash prefix
    (6+ hex digits), a group path such as denoise-0d4e01f1... or a result name.
    """


@main.command("ls")
@click.argument("store")
@click.option("--name", "pattern", help="Only names matching this glob, e.g. 'label*'.")
@click.option("--since", help="Only results produced since a date (2026-11-01) or age (2d).")
@click.option(
    "--last",
    type=click.IntRange(min=1),
    help="Only the N newest of the results listed (after --name and --since).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result.")
def ls_command(
    store: str, pattern: str | None, since: str | None, last: int | None, as_json: bool
) -> None:
    """List the committed results in STORE, oldest first."""
    import fnmatch

    from cpr_zarr.core.inventory import result_rows

    limit = _parsed(parse_since, since, "'--since'") if since else None
    rs = _open(store)
    try:
        rows, damaged = result_rows(rs.storage)  # plain rows: pandas would take longer to import
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc
    for message in damaged:
        click.echo(f"DAMAGED {message}", err=True)
    if pattern:
        rows = [r for r in rows if fnmatch.fnmatchcase(r["name"], pattern)]
    if limit is not None:
        rows = [r for r in rows if r["last_produced"] and _utc(r["last_produced"]) >= limit]
    matched = rows
    if last is not None:
        rows = rows[-last:]
    if as_json:
        for row in rows:
            click.echo(json.dumps({k: _json_value(v) for k, v in row.items()}))
        return
    if not rows:
        click.echo("no results" + (" match" if pattern or since else " in this store"))
        return
    table = [
        (
            r["name"],
            r["hash"][:12],
            "labels" if "/labels/" in r["group_path"] else r["kind"],
            "x".join(map(str, r["shape"])),
            r["dtype"],
            human_bytes(r["stored_bytes"]),
            _cell(r["ratio"], "{:.2f}"),
            _cell(r["last_produced"] and _utc(r["last_produced"]), "{:%Y-%m-%d %H:%M}"),
            _cell(r["last_task"]),
        )
        for r in rows
    ]
    header = ("NAME", "HASH", "KIND", "SHAPE", "DTYPE", "STORED", "RATIO", "PRODUCED", "TASK")
    widths = [max(len(str(line[i])) for line in [header, *table]) for i in range(len(header))]
    for line in [header, *table]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    total = sum(int(r["stored_bytes"]) for r in matched)
    shown = "" if len(rows) == len(matched) else f" (the newest {len(rows)} shown)"
    click.echo(f"{plural(len(matched), 'result')}, {human_bytes(total)} stored{shown}")


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return _utc(value).isoformat()
    if isinstance(value, tuple):
        return list(value)
    return None if value != value else value  # NaN -> null


def _cell(value: Any, form: str = "{}") -> str:
    """A table cell: ``-`` for what is not known (None, NaN, empty), else ``form``."""
    if value is None or value != value or value == "":  # NaN != NaN
        return "-"
    return form.format(value)


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@main.command("info")
@click.argument("store")
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print everything as one JSON document.")
def info_command(store: str, ref: str, as_json: bool) -> None:
    """Show a result: metadata, provenance, lineage and its OME-NGFF summary."""
    from cpr_zarr.core.integrity import load_document
    from cpr_zarr.core.inventory import result_row

    rs = _open(store)
    target = _target(rs, ref)
    # the checked, typed commit marker: every kind of result has these fields
    document = load_document(rs.storage, target.group_path, arrays=False)
    if document is None:
        raise click.ClickException(f"Result {target.group_path!r} was removed meanwhile.")
    cpr, ome = document.record, document.ome
    row = result_row(rs.storage, target)
    records = rs.provenance(target)
    lineage = rs.lineage(target)
    if as_json:
        out = {
            "target": target.to_dict(),
            "stored_bytes": row["stored_bytes"],
            "raw_bytes": row["raw_bytes"],
            "algorithm": cpr.algorithm,
            "kind": cpr.kind,
            # arrays: one digest per chunk; tables: one per stored column/index array
            "chunk_count": cpr.digest_count,
            "ome": ome,
            "provenance": records,
            "lineage": {k: [t.group_path for t in v] for k, v in lineage.items()},
        }
        click.echo(json.dumps(out, indent=2, default=str))
        return
    click.echo(f"{target.group_path}")
    click.echo(f"  store         {rs.url}")
    click.echo(f"  content hash  {target.content_hash} ({cpr.algorithm}, layout {cpr.layout})")
    is_table = cpr.kind == "table"
    if is_table:
        rows, columns = target.shape
        click.echo(f"  table         {plural(rows, 'row')} x {plural(columns, 'column')}, "
                   f"{plural(cpr.digest_count, 'stored array')}")  # fmt: skip
    else:
        click.echo(f"  array         {target.dtype}{list(target.shape)}, chunks {list(target.chunks)}, "
                   f"{plural(cpr.digest_count, 'chunk')}")  # fmt: skip
    if "/labels/" in target.group_path:
        click.echo(f"  label image   of {target.group_path.split('/labels/')[0]}")
    region = getattr(cpr, "region", None)
    if region is not None:  # stored with the image, in the Fractal/ngio layout
        click.echo(f"  feature table of label image {region}")
    ratio = row["ratio"]
    ratio_text = f" (ratio {ratio:.2f})" if isinstance(ratio, float) and ratio == ratio else ""
    raw = "" if row["raw_bytes"] is None else f"{human_bytes(row['raw_bytes'])} raw, "
    click.echo(f"  size          {raw}{human_bytes(row['stored_bytes'])} stored{ratio_text}")  # fmt: skip
    if ome:
        ms = ome["multiscales"][0]
        axes = ", ".join(f"{a['name']}({a.get('unit', a['type'])})" for a in ms["axes"])
        levels = [d["path"] for d in ms["datasets"]]
        scale = ms["datasets"][0]["coordinateTransformations"][0].get("scale")
        click.echo(f"  OME-NGFF      {ome['version']}: axes {axes}; levels {levels}; scale {scale}")
    if is_table:
        click.echo(f"  open with     cpr_zarr.read_table(cpr_zarr.ResultStore({rs.url!r})"
                   f".open({target.group_path!r}))")  # fmt: skip
    else:
        click.echo(
            f"  open with     zarr.open_array({rs.url!r}, path={target.group_path + '/0'!r})"
        )
    click.echo(f"provenance ({plural(len(records), 'record')}):")
    for r in records:
        who = (
            f"task {r['task_name']} run {r['task_run_name']}"
            if r.get("task_name")
            else "direct save"
        )
        flow = (
            f", flow run {r['flow_run_name']} ({r['flow_name']})" if r.get("flow_run_name") else ""
        )
        click.echo(f"  {r['created']}  {who}{flow} as {r['output']!r} on {r.get('host', '?')}")
        if r.get("worker"):
            click.echo(f"    written by  Dask worker {r['worker']} (pid {r.get('pid', '?')})")
        if r.get("parameters"):
            click.echo(f"    parameters  {json.dumps(r['parameters'], default=str)[:300]}")
        if r.get("source_hash"):
            click.echo(f"    source      {r['function']} (source hash {r['source_hash'][:12]})")
    for key in ("inputs", "outputs"):
        names = [t.group_path for t in lineage[key]]
        click.echo(f"{key} ({len(names)}): " + (", ".join(names) if names else "-"))


@main.command("verify")
@click.argument("store")
@click.argument("refs", nargs=-1)
@click.option("--threads", type=int, default=None, help="Chunks checked at once (default: cores).")
@click.option(
    "--repair",
    is_flag=True,
    help="Rebuild damaged commit records whose data still verifies (from the record copy, "
    "or from chunks that hash to the content hash), and stale label indexes.",
)
def verify_command(store: str, refs: tuple[str, ...], threads: int | None, repair: bool) -> None:
    """Check REFS (default: every result): commit records against their content hashes,
    array metadata against the records, every chunk of every pyramid level, tables, label
    indexes and provenance records.

    Exits with status 0 only if everything verifies; every problem is named.
    """
    rs = _open(store, mode="a" if repair else "r")
    try:
        report = rs.verify(refs, repair=repair, threads=threads)
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc
    for message in report.repaired:
        click.echo(f"REPAIRED {message}")
    for message in report.problems:
        click.echo(f"BAD {message}")
    arrays = report.results - report.tables
    tail = f" and {plural(report.tables, 'table')}" if report.tables else ""
    if report.problems:
        other = len(report.problems) - report.failed_chunks
        click.echo(
            f"{report.failed_chunks} of {plural(report.chunks, 'chunk')} failed verification"
            + (f"; {plural(other, 'other problem')} (damaged records or metadata)" if other else "")
            + "."
        )
        _print_remedies(rs.url, report.damaged_data, report.damaged_records, repaired=repair)
        sys.exit(1)
    click.echo(
        f"OK: {plural(report.chunks, 'chunk')} of {plural(arrays, 'result')}{tail} verified."
    )


def _print_remedies(
    url: str, damaged_data: list[str], damaged_records: list[str], *, repaired: bool
) -> None:
    """The commands that fix what verify found, ready to run as printed."""
    # a record --repair could not rebuild: its result can only be removed, like bad data
    remove = list(dict.fromkeys(damaged_data + (damaged_records if repaired else [])))
    rebuild = [] if repaired else [p for p in dict.fromkeys(damaged_records) if p not in remove]
    if not (remove or rebuild):
        return  # e.g. only damaged provenance records: their messages say what to do
    click.echo("To resolve:")
    step = 0
    if rebuild:
        step += 1
        click.echo(f"  {step}. Rebuild the damaged records (from their record copies, or from "
                   "chunks that still hash to the content hash):")  # fmt: skip
        click.echo(f"       cpr-zarr verify {shlex.quote(url)} --repair")
    if remove:
        step += 1
        what = "data or records" if repaired and damaged_records else "data"
        click.echo(f"  {step}. Remove the results whose {what} cannot be trusted (other results "
                   "are unaffected), then re-run the tasks that produced them:")  # fmt: skip
        paths = " ".join(shlex.quote(p) for p in remove)
        click.echo(f"       cpr-zarr rm {shlex.quote(url)} {paths} --yes")


@main.command("gc")
@click.argument("store")
@click.option(
    "--older-than", "older_than", help="Remove results last produced longer ago (30d, 12h)."
)
@click.option(
    "--max-size", "max_size", help="Remove least recently produced results beyond this total (50G)."
)
@click.option(
    "--keep-referenced",
    "keep_referenced",
    type=click.Path(exists=True, file_okay=False),
    help="Prefect result-storage folder: results its records point to are kept; alone, "
    "every other result is removed.",
)
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    help="With --keep-referenced: results produced less than this long ago are kept too "
    "(their Prefect record may not be written yet). E.g. 30m, 2h, 0.",
)
@click.option("--yes", is_flag=True, help="Really remove (default: dry run, print only).")
def gc_command(
    store: str,
    older_than: str | None,
    max_size: str | None,
    keep_referenced: str | None,
    grace: str,
    yes: bool,
) -> None:
    """Remove leftovers and unwanted results (a dry run unless --yes).

    Always removes staging leftovers and never-committed groups older than an hour. A
    removed result is a cache miss on the next flow run: the task runs again. Safe to run
    while flows write: anything a writer touches while gc runs is skipped.
    """
    # bad values are usage errors before anything is read
    if older_than:
        _parsed(parse_age, older_than, "'--older-than'")
    if max_size:
        _parsed(parse_size, max_size, "'--max-size'")
    run_gc(
        store, older_than, max_size, keep_referenced, _parsed(parse_age, grace, "'--grace'"), yes
    )


LEFTOVER_AGE = 3600.0


def run_gc(
    store: str,
    older_than: str | None,
    max_size: str | None,
    keep_referenced: str | None,
    grace: float,
    yes: bool,
) -> None:
    """``cpr-zarr gc``: plan, print, and with ``yes`` remove through the collector."""
    from cpr_zarr.core.collector import collect
    from cpr_zarr.core.inventory import gc_damage, plan_gc

    rs = _open(store, mode="a" if yes else "r")
    try:
        plan = plan_gc(
            rs.storage,
            older_than=parse_age(older_than) if older_than else None,
            max_size=parse_size(max_size) if max_size else None,
            keep_referenced=keep_referenced,
            leftover_age=LEFTOVER_AGE,
            grace=grace,
        )
        damaged = gc_damage(rs.storage, plan)
    except (CprZarrError, OSError) as exc:
        raise click.ClickException(f"Cannot plan the collection of {rs.url!r}: {exc}") from exc
    for damage in damaged:  # never removed: repair them (`verify --repair`) or delete
        click.echo(f"keeping damaged result {damage.group_path} ({damage.field}); "
                   "see `cpr-zarr verify`", err=True)  # fmt: skip
    kept = {damage.group_path for damage in damaged}
    plan = [item for item in plan if item.path not in kept]
    if not plan:
        click.echo("nothing to remove")
        return
    # an image's label images go with it: each is listed under its image
    with_inside = _and_inside(len(plan), [p for item in plan for p in item.inside])
    if not yes:
        for item in plan:
            click.echo(
                f"would remove  {human_bytes(item.nbytes):>10}  {item.path}  ({item.reason})"
            )
            _echo_inside(item.inside, "would remove")
        click.echo(
            f"would free {human_bytes(sum(i.nbytes for i in plan))} in "
            f"{plural(len(plan), 'entry', 'entries')}{with_inside}; "
            "run again with --yes to remove them"
        )
        return
    removed, freed, skipped = 0, 0, 0
    inside: list[str] = []
    try:
        for outcome in collect(rs.storage, plan, leftover_age=LEFTOVER_AGE):
            item = outcome.removal
            if outcome.removed:
                removed += 1
                freed += item.nbytes
                inside += item.inside
                click.echo(f"remove  {human_bytes(item.nbytes):>10}  {item.path}  ({item.reason})")
                _echo_inside(item.inside, "remove")
            else:
                skipped += 1
                click.echo(f"keep    {'':>10}  {item.path}  ({outcome.status})")
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc
    tail = f"; {skipped} kept (in use or already gone)" if skipped else ""
    with_inside = _and_inside(removed, inside)
    click.echo(
        f"removed {plural(removed, 'entry', 'entries')}{with_inside}, "
        f"freed {human_bytes(freed)}{tail}"
    )


def _and_inside(entries: int, paths: list[str]) -> str:
    """`` (and 1 label image and 1 table inside it)``: the label images and tables inside an
    image go with it, uncounted."""
    tables = sum("/tables/" in p for p in paths)
    kinds = [
        plural(n, what)
        for n, what in ((len(paths) - tables, "label image"), (tables, "table"))
        if n
    ]
    if not kinds:
        return ""
    return f" (and {' and '.join(kinds)} inside {'it' if entries == 1 else 'them'})"


def _inner_kind(path: str) -> str:
    return "a table" if "/tables/" in path else "a label image"


def _echo_inside(paths: tuple[str, ...] | list[str], verb: str) -> None:
    for path in paths:
        click.echo(f"{verb:<{len(verb) + 14}}{path}  ({_inner_kind(path)}, goes with its image)")


@main.command("rm")
@click.argument("store")
@click.argument("refs", nargs=-1, required=True)
@click.option("--dry-run", "dry_run", is_flag=True, help="Only show what would be removed.")
@click.option("--yes", is_flag=True, help="Remove without asking (for scripts).")
def rm_command(store: str, refs: tuple[str, ...], dry_run: bool, yes: bool) -> None:
    """Remove results REFS (hashes, hash prefixes, group paths or names) from STORE.

    First shows what goes and what depends on it: an image's label images go with it;
    results made from it (its downstream lineage) stay, but their provenance then names an
    input the store no longer holds. A removed result is a cache miss: the next flow run
    computes it again.

    At a terminal, asks before removing. When standard input is not a terminal (scripts,
    CI), nothing is removed without --yes: it prints the plan and exits with status 2.
    """
    if dry_run and yes:
        raise click.UsageError("--dry-run and --yes contradict each other; pass one of them.")
    rs = _open(store)
    plan = _plan_removal(rs, refs)
    verb = "would remove"
    for item in plan:
        _echo_removal(item, verb)
    nbytes = sum(item.nbytes for item in plan)
    what = plural(len(plan), "result") + _and_inside(
        len(plan), [p for item in plan for p in item.inside]
    )
    if dry_run:
        click.echo(f"dry run: would remove {what}, {human_bytes(nbytes)}; nothing was removed")
        return
    if not yes:
        if not sys.stdin.isatty():
            raise click.UsageError(
                f"Nothing was removed: standard input is not a terminal, so rm cannot ask. "
                f"Pass --yes to remove the {what} listed above, or --dry-run to only list them."
            )
        click.confirm(f"Remove {what}?", abort=True)
    rs = _open(store, mode="a")
    done: list[str] = []
    for item in plan:
        try:
            rs.delete(item.path)
        except CprZarrError as exc:
            gone = ", ".join(done) or "nothing"
            raise click.ClickException(f"{exc} (Removed before this error: {gone}.)") from exc
        done.append(item.path)
        click.echo(f"removed  {item.path}")
        for path in item.inside:
            click.echo(f"removed  {path}  ({_inner_kind(path)}, went with its image)")
    click.echo(f"removed {what}, freed {human_bytes(nbytes)}")


@dataclass
class _Doomed:
    """One result ``rm`` removes: its path, size, the label images and tables inside it,
    and what depends on it."""

    path: str
    nbytes: int
    inside: list[str]
    damaged: str | None  # the damaged field, if its record cannot be trusted
    downstream: list[str] = field(default_factory=list)


def _plan_removal(rs: ResultStore, refs: tuple[str, ...]) -> list[_Doomed]:
    """Resolve every ref first: one unknown or ambiguous ref and nothing is removed."""
    from cpr_zarr.core.inventory import stored_bytes
    from cpr_zarr.errors import IntegrityError

    paths: dict[str, str | None] = {}  # group path -> why it is damaged (None: intact)
    for ref in refs:
        try:
            paths.setdefault(rs.open(ref).group_path, None)
        except IntegrityError as exc:  # damaged: its record cannot be trusted, but it can go
            paths.setdefault(exc.group_path, exc.field)
        except CprZarrError as exc:
            raise click.ClickException(
                f"{exc} Nothing was removed; `cpr-zarr ls {shlex.quote(rs.url)}` lists the results."
            ) from exc
    committed = [t.group_path for t in rs.targets()]
    # a label image or table whose image goes too is listed under its image
    plan = [
        _Doomed(
            path,
            stored_bytes(rs.storage, path),
            [p for p in committed if p.startswith((f"{path}/labels/", f"{path}/tables/"))],
            damaged,
        )
        for path, damaged in paths.items()
        if "/" not in path or path.split("/", 1)[0] not in paths
    ]
    going = {p for item in plan for p in (item.path, *item.inside)}
    for item in plan:
        downstream: dict[str, None] = {}
        for path in (item.path, *item.inside):
            if path == item.path and item.damaged:
                continue  # its record is not trusted: its lineage is unknown
            for target in rs.lineage(path)["outputs"]:
                if target.group_path not in going:
                    downstream.setdefault(target.group_path)
        item.downstream = list(downstream)
    return plan


def _echo_removal(item: _Doomed, verb: str) -> None:
    note = f"  (damaged: {item.damaged})" if item.damaged else ""
    if "/" in item.path:
        note += f"  ({_inner_kind(item.path)}; its image stays)"
    click.echo(f"{verb}  {human_bytes(item.nbytes):>10}  {item.path}{note}")
    _echo_inside(item.inside, verb)
    if item.downstream:
        click.echo(
            f"  downstream, kept: {', '.join(item.downstream)} (made from it: they stay, but "
            "their provenance will name an input the store no longer holds)"
        )
    elif item.damaged:
        click.echo("  downstream: not known (its damaged record cannot be trusted)")
    else:
        click.echo("  downstream, kept: none (no result in the store was made from it)")


@main.command("export")
@click.argument("store")
@click.argument("ref")
@click.argument("dest", type=click.Path(dir_okay=True, writable=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["ome-tiff", "ngff-v04", "csv"]),
    help="Default: from DEST (.tif/.tiff: OME-TIFF, .zarr: NGFF 0.4 on zarr v2, .csv: table).",
)
def export_command(store: str, ref: str, dest: str, fmt: str | None) -> None:
    """Export a result to OME-TIFF, an NGFF 0.4 / zarr v2 copy (Fiji, MoBIE) or CSV.

    Arrays and label images export to OME-TIFF or NGFF 0.4; tables to CSV.
    """
    if fmt is None:
        fmt = _format_of(dest)
        if fmt is None:
            raise click.BadParameter(
                f"cannot tell the format from {dest!r}; end it in .ome.tif, .zarr or .csv, "
                "or pass --format.",
                param_hint="DEST",
            )
    folder = Path(dest.rstrip("/") or "/").parent
    if not folder.is_dir():
        raise click.BadParameter(
            f"folder {str(folder)!r} does not exist; create it first or export elsewhere.",
            param_hint="DEST",
        )
    rs = _open(store)
    target = _target(rs, ref)
    is_table = target.dtype == "table"
    name = f"Cannot export {target.group_path!r} as {_FORMATS[fmt]}: it is"
    if not is_table and not 2 <= len(target.shape) <= 5:  # no file format fits it
        code = (
            f"import cpr_zarr; print(cpr_zarr.ResultStore({json.dumps(rs.url)}, "
            f'mode="r").open({json.dumps(target.group_path)}).to_numpy())'
        )
        raise click.UsageError(
            f"{name} a {len(target.shape)}-D array ({target.dtype}{list(target.shape)}), "
            "neither a table (CSV) nor an image (2-D to 5-D: OME-TIFF, NGFF). Read it "
            f"in Python instead: python -c {shlex.quote(code)}"
        )
    if is_table != (fmt == "csv"):
        if is_table:
            fix = f"a table ({plural(target.shape[0], 'row')}), which exports to CSV (.csv)"
            example = _replace_suffix(dest, ".csv")
        else:
            fix = (
                f"an array ({target.dtype}{list(target.shape)}), not a table, which exports "
                "to OME-TIFF (.ome.tif) or NGFF 0.4 (.zarr)"
            )
            example = _replace_suffix(dest, ".ome.tif")
        command = shlex.join(["cpr-zarr", "export", rs.url, target.group_path, example])
        raise click.UsageError(f"{name} {fix}. For example: {command}")
    from cpr_zarr.core.export import to_ngff_v04, to_ome_tiff
    from cpr_zarr.core.table import to_csv

    try:
        if fmt == "ome-tiff":
            to_ome_tiff(target, dest)
        elif fmt == "ngff-v04":
            to_ngff_v04(target, dest)
        else:
            to_csv(target, dest)
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # no permission, disk full, DEST is a folder
        raise click.ClickException(
            f"Cannot write {dest!r}: {exc.strerror or exc}. Nothing was exported there; "
            "choose a writable DEST."
        ) from exc
    click.echo(f"exported {target.group_path} to {dest} ({fmt})")


_FORMATS = {"ome-tiff": "OME-TIFF", "ngff-v04": "NGFF 0.4 (zarr v2)", "csv": "CSV"}
_SUFFIXES = {".ome.tiff": "ome-tiff", ".ome.tif": "ome-tiff", ".tiff": "ome-tiff",
             ".tif": "ome-tiff", ".zarr": "ngff-v04", ".csv": "csv"}  # fmt: skip


def _format_of(dest: str) -> str | None:
    lowered = dest.lower().rstrip("/")
    return next((f for suffix, f in _SUFFIXES.items() if lowered.endswith(suffix)), None)


def _replace_suffix(dest: str, suffix: str) -> str:
    stem = dest.rstrip("/")
    for known in _SUFFIXES:
        if stem.lower().endswith(known):
            return stem[: -len(known)] + suffix
    return stem + suffix


@main.command("open")
@click.argument("store")
@click.argument("refs", nargs=-1)
def open_command(store: str, refs: tuple[str, ...]) -> None:
    """Open REFS (default: the newest image of each result name) in napari, images with
    their label images, if napari is installed; else print how to view them."""
    from cpr_zarr.layers import recent_images, store_layers

    rs = _open(store)
    targets = [_target(rs, ref) for ref in refs] or recent_images(rs)
    if not targets:
        raise click.ClickException(f"Store {rs.url!r} holds no image results to open.")
    reason = _napari_unavailable()
    if reason is None:
        import napari

        try:
            viewer: Any = napari.Viewer()
            for data, kwargs, kind in store_layers(rs, targets):
                getattr(viewer, f"add_{kind}")(data, **kwargs)
        except Exception as exc:  # no Qt: say so and fall back to instructions
            reason = f"napari could not open a window ({type(exc).__name__}: {exc})"
        else:
            napari.run()
            return
    what = "this store" if not refs else "this result" if len(refs) == 1 else "these results"
    click.echo(f"{reason}. To view {what}:")
    click.echo("  pip install 'napari[all]'   # cpr_zarr's reader plugin comes with cpr_zarr")
    click.echo(f"  napari --plugin cpr-zarr {rs.url}   # the newest image of each result name")
    for target in targets:
        click.echo(f"  napari --plugin cpr-zarr {rs.url}/{target.group_path}")
    target = targets[0]
    click.echo(
        f'  python -c "import cpr_zarr; print(cpr_zarr.ResultStore({rs.url!r}).open('
        f'{target.content_hash[:12]!r}).to_numpy())"'
    )


def _napari_unavailable() -> str | None:
    import importlib.util
    import os

    if importlib.util.find_spec("napari") is None:
        return "napari is not installed here"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        return "napari is installed but there is no display (DISPLAY is not set)"
    return None


_WEB_OPTIONS = [
    click.option("--host", default="127.0.0.1", show_default=True,
                 help="Address to listen on; 0.0.0.0 for every interface (no login: trusted "
                 "networks only)."),
    click.option("--port", type=int, default=8765, show_default=True,
                 help="Port to listen on (0: any free port)."),
]  # fmt: skip


def _web_options(fn: Any) -> Any:
    for option in reversed(_WEB_OPTIONS):
        fn = option(fn)
    return fn


def _run_web(store: str, host: str, port: int, refs: tuple[str, ...], index: bool) -> None:
    """Start the web server (``cpr_zarr.web``) and serve until Ctrl-C."""
    import time

    from cpr_zarr.web.server import missing_extra, start_server, view_url

    reason = missing_extra()
    if reason is not None:
        raise click.ClickException(reason)
    rs = _open(store)
    if refs:  # a bad reference fails here, not in the browser
        from cpr_zarr.web.view import plan_view

        try:
            plan_view(rs, list(refs))
        except (CprZarrError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
    try:
        web = start_server(rs, host=host, port=port, default_refs=refs, index=index)
    except OSError as exc:
        raise click.ClickException(
            f"Cannot listen on {host}:{port} ({exc}). Choose another port with --port "
            "(0 picks a free one)."
        ) from exc
    url = web.url.rstrip("/") + (view_url(refs) if refs else "/")
    bound_port = web.url.rstrip("/").rsplit(":", 1)[-1]
    click.echo(f"Serving {rs.url} at {url}")
    click.echo(
        f"From another machine: ssh -N -L {bound_port}:localhost:{bound_port} <this host>, "
        f"then open http://localhost:{bound_port}/{view_url(refs) if refs else ''}"
    )
    click.echo("Press Ctrl-C to stop.")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


@main.command("view")
@click.argument("store")
@click.argument("refs", nargs=-1, required=True)
@_web_options
def view_command(store: str, refs: tuple[str, ...], host: str, port: int) -> None:
    """Open results in neuroglancer, served from this machine (no internet needed).

    Images are image layers, their label images segmentation layers, at their physical
    scale; several REFs are shown side by side. Prints a URL to open in a browser. On a
    remote machine, forward the port over SSH first, e.g. `ssh -N -L 8765:localhost:8765
    user@host`, then open the printed URL on your computer. Needs `pip install
    'cpr_zarr[web]'`.
    """
    _run_web(store, host, port, refs, index=False)


@main.command("serve")
@click.argument("store")
@_web_options
def serve_command(store: str, host: str, port: int) -> None:
    """A web page of the whole store: thumbnails, filters, provenance, lineage.

    Each result is a card (images and label images as thumbnails, tables as their first
    rows); a result's page shows its metadata, provenance and lineage, and opens it in
    neuroglancer. Thumbnails are made on first view and cached in $CPR_ZARR_CACHE (default
    ~/.cache/cpr_zarr). On a remote machine, forward the port over SSH first, e.g. `ssh -N
    -L 8765:localhost:8765 user@host`. Needs `pip install 'cpr_zarr[web]'`.
    """
    _run_web(store, host, port, (), index=True)


@main.group("catalog")
def catalog_group() -> None:
    """The store's catalog: what `ls`, `info`, `open` and `gc` read instead of every group."""


@catalog_group.command("rebuild")
@click.argument("store")
def catalog_rebuild_command(store: str) -> None:
    """Rebuild the catalog of STORE from its result groups.

    Reads every result's commit record and provenance (one pass over the store), indexes
    every content hash and writes a new catalog snapshot. Saves and removals may run at the
    same time. Needed once for a store written before catalogs existed (until then
    listings read every group); afterwards only if the catalog was deleted or damaged.
    """
    from cpr_zarr.core.inventory import rebuild_catalog

    rs = _open(store, mode="a")
    try:
        count = rebuild_catalog(rs.storage)
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"catalog rebuilt: {plural(count, 'result')}")


if __name__ == "__main__":  # pragma: no cover
    main()
