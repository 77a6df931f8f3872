"""``cpr-zarr``: list, inspect, verify, clean up and open results, without Prefect running."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from cpr_zarr.errors import CprZarrError

if TYPE_CHECKING:
    from cpr_zarr.store import ResultStore
    from cpr_zarr.target import ZarrTarget

__all__ = ["main"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}  # fmt: skip
_AGES = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


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


def _open(url: str, mode: str = "r") -> ResultStore:
    from cpr_zarr.store import ResultStore

    try:
        return ResultStore(url, mode=mode)  # type: ignore[arg-type]
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc


def _target(store: ResultStore, ref: str) -> ZarrTarget:
    try:
        return store.open(ref)
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="cpr_zarr")
def main() -> None:
    """Inspect a cpr_zarr result store: list, show, verify, clean up and open results.

    STORE is a folder path or URL (memory://, s3://...). REF is a content hash, a unique
    hash prefix (6+ hex digits) or a group path such as denoise-0d4e01f1...
    """


@main.command("ls")
@click.argument("store")
@click.option("--name", "pattern", help="Only names matching this glob, e.g. 'label*'.")
@click.option("--since", help="Only results produced since a date (2026-11-01) or age (2d).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result.")
def ls_command(store: str, pattern: str | None, since: str | None, as_json: bool) -> None:
    """List the committed results in STORE, oldest first."""
    import fnmatch

    frame = _open(store).list()
    for message in frame.attrs.get("damaged", []):
        click.echo(f"DAMAGED {message}", err=True)
    if pattern:
        frame = frame[[fnmatch.fnmatchcase(n, pattern) for n in frame["name"]]]
    if since:
        limit = parse_since(since)
        frame = frame[frame["last_produced"].notna() & (frame["last_produced"] >= limit)]
    if as_json:
        for row in frame.to_dict(orient="records"):
            row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            row = {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()}
            row = {k: (None if v != v else v) for k, v in row.items()}  # NaN/NaT -> null
            click.echo(json.dumps(row))
        return
    if frame.empty:
        click.echo("no results" + (" match" if pattern or since else " in this store"))
        return
    table = [
        (
            r["name"], r["hash"][:12], r["kind"], "x".join(map(str, r["shape"])), r["dtype"],
            human_bytes(r["stored_bytes"]), "-" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}",
            r["last_produced"].strftime("%Y-%m-%d %H:%M") if r["last_produced"] == r["last_produced"] else "-",
            r["last_task"] or "-",
        )
        for _, r in frame.iterrows()
    ]  # fmt: skip
    header = ("NAME", "HASH", "KIND", "SHAPE", "DTYPE", "STORED", "RATIO", "PRODUCED", "TASK")
    widths = [max(len(str(row[i])) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    total = int(frame["stored_bytes"].sum())
    click.echo(f"{len(frame)} result{'s' * (len(frame) != 1)}, {human_bytes(total)} stored")


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
        click.echo(f"  table         {rows} row{'s' * (rows != 1)} x {columns} column"
                   f"{'s' * (columns != 1)}, {cpr.digest_count} stored arrays")  # fmt: skip
    else:
        click.echo(f"  array         {target.dtype}{list(target.shape)}, chunks {list(target.chunks)}, "
                   f"{cpr.digest_count} chunks")  # fmt: skip
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
    click.echo(f"provenance ({len(records)} record{'s' * (len(records) != 1)}):")
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
    tail = f" and {report.tables} tables" if report.tables else ""
    if report.problems:
        other = len(report.problems) - report.failed_chunks
        click.echo(
            f"{report.failed_chunks} of {report.chunks} chunks failed verification"
            + (f"; {other} other problems (damaged records or metadata)" if other else "")
            + "."
        )
        sys.exit(1)
    click.echo(f"OK: {report.chunks} chunks of {arrays} results{tail} verified.")


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
    run_gc(store, older_than, max_size, keep_referenced, parse_age(grace), yes)


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
    from cpr_zarr.core.inventory import plan_gc

    rs = _open(store, mode="a" if yes else "r")
    for damage in rs.damaged():  # never removed: repair them (`verify --repair`) or delete
        click.echo(f"keeping damaged result {damage.group_path} ({damage.field}); "
                   "see `cpr-zarr verify`", err=True)  # fmt: skip
    try:
        plan = plan_gc(
            rs.storage,
            older_than=parse_age(older_than) if older_than else None,
            max_size=parse_size(max_size) if max_size else None,
            keep_referenced=keep_referenced,
            leftover_age=LEFTOVER_AGE,
            grace=grace,
        )
    except (CprZarrError, OSError) as exc:
        raise click.ClickException(f"Cannot plan the collection of {rs.url!r}: {exc}") from exc
    if not plan:
        click.echo("nothing to remove")
        return
    if not yes:
        for item in plan:
            click.echo(
                f"would remove  {human_bytes(item.nbytes):>10}  {item.path}  ({item.reason})"
            )
        click.echo(
            f"would free {human_bytes(sum(i.nbytes for i in plan))} in {len(plan)} entries; "
            "run again with --yes to remove them"
        )
        return
    removed, freed, skipped = 0, 0, 0
    try:
        for outcome in collect(rs.storage, plan, leftover_age=LEFTOVER_AGE):
            item = outcome.removal
            if outcome.removed:
                removed += 1
                freed += item.nbytes
                click.echo(f"remove  {human_bytes(item.nbytes):>10}  {item.path}  ({item.reason})")
            else:
                skipped += 1
                click.echo(f"keep    {'':>10}  {item.path}  ({outcome.status})")
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc
    tail = f"; {skipped} kept (in use or already gone)" if skipped else ""
    click.echo(f"removed {removed} entries, freed {human_bytes(freed)}{tail}")


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
    """Export a result to OME-TIFF, an NGFF 0.4 / zarr v2 copy (Fiji, MoBIE) or CSV."""
    from cpr_zarr.core.export import to_ngff_v04, to_ome_tiff
    from cpr_zarr.core.table import to_csv

    target = _target(_open(store), ref)
    if fmt is None:
        lowered = dest.lower().rstrip("/")
        fmt = (
            "ome-tiff" if lowered.endswith((".tif", ".tiff")) else
            "ngff-v04" if lowered.endswith(".zarr") else
            "csv" if lowered.endswith(".csv") else None
        )  # fmt: skip
        if fmt is None:
            raise click.BadParameter(
                f"cannot tell the format from {dest!r}; end it in .ome.tif, .zarr or .csv, "
                "or pass --format.",
                param_hint="DEST",
            )
    try:
        if fmt == "ome-tiff":
            to_ome_tiff(target, dest)
        elif fmt == "ngff-v04":
            to_ngff_v04(target, dest)
        else:
            to_csv(target, dest)
    except CprZarrError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"exported {target.group_path} to {dest} ({fmt})")


@main.command("open")
@click.argument("store")
@click.argument("ref")
def open_command(store: str, ref: str) -> None:
    """Open a result in napari if it is installed, else print how to view it."""
    rs = _open(store)
    target = _target(rs, ref)
    location = f"{rs.url}/{target.group_path}"
    reason = _napari_unavailable()
    if reason is None:
        import napari

        try:
            viewer: Any = napari.Viewer()
            viewer.open(location, plugin="napari-ome-zarr")
        except Exception as exc:  # no Qt, no plugin: say so and fall back to instructions
            reason = f"napari could not open a window ({type(exc).__name__}: {exc})"
        else:
            napari.run()
            return
    click.echo(f"{reason}. To view this result:")
    click.echo("  pip install 'napari[all]' napari-ome-zarr")
    click.echo(f"  napari --plugin napari-ome-zarr {location}")
    click.echo(f"  ome_zarr view {location}   # serves it for OME-Zarr web viewers")
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


if __name__ == "__main__":  # pragma: no cover
    main()
