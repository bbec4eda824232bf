"""``/api/v1/lake``: Iceberg tables over REST, each route checked for its permission.

Uploads are streamed to a spool file in the data directory and appended from there in
batches, so a large CSV or Parquet body is never held whole in the gateway's memory.
Query results are encoded as JSON (default), CSV, Parquet or Arrow IPC (``format``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import uuid
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

import pyarrow as pa
import pyarrow.types as pat
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field
from pyiceberg.io.pyarrow import schema_to_pyarrow

from actors.lake.errors import SchemaMismatchError
from actors.lake.formats import encode
from actors.lake.service import LakeService
from actors.lake.specs import parse_type
from cluster.errors import DatapunkError, InvalidInputError
from cluster.security import grants
from cluster.security.ratelimit import PayloadTooLargeError
from serve_apps.gateway import access
from serve_apps.gateway.audit_middleware import READ_ONLY
from serve_apps.gateway.auth import permission
from serve_apps.gateway.bodies import StrictBody
from serve_apps.gateway.decrypt import may_decrypt, may_decrypt_sql

ResultFormat = Literal["json", "csv", "parquet", "arrow"]
READ_PERMISSION = "lake.table:read"
WRITE_PERMISSION = "lake.table:write"
READ = Depends(permission(READ_PERMISSION))
WRITE = Depends(permission(WRITE_PERMISSION))
MAX_UPLOAD_BYTES = 2 * 1024**3
_UPLOAD_TYPES = {
    "text/csv": "csv",
    "application/x-ndjson": "jsonl",
    "application/jsonl": "jsonl",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
    "application/vnd.apache.arrow.file": "arrow",
}


class ColumnSpec(StrictBody):
    name: str = Field(min_length=1)
    type: str = Field(
        description="long, int, double, float, string, boolean, date, "
        "timestamp, timestamptz, binary, decimal(p,s)"
    )
    required: bool = False


class Namespace(StrictBody):
    name: str = Field(min_length=1, examples=["sales"])
    exist_ok: bool = False


class CreateTable(StrictBody):
    name: str = Field(description="namespace.table (namespace 'default' when omitted)")
    columns: list[ColumnSpec] = Field(min_length=1)
    partition_by: list[str] = Field(default_factory=list, examples=[["day(ts)", "bucket(16, id)"]])
    sort_by: list[str] = Field(default_factory=list, examples=[["ts", "id desc"]])
    properties: dict[str, str] = Field(default_factory=dict)


class ScanQuery(StrictBody):
    columns: list[str] | None = None
    filter: str | None = Field(None, examples=["amount > 10 and region = 'eu'"])
    snapshot_id: int | None = None
    as_of: str | None = Field(None, description="ISO 8601 time: the snapshot current then.")
    limit: int | None = Field(None, ge=1)
    format: ResultFormat = "json"


class SqlQuery(StrictBody):
    query: str = Field(
        min_length=1, examples=["SELECT region, sum(amount) FROM sales.orders GROUP BY region"]
    )
    limit: int | None = Field(None, ge=1)
    format: ResultFormat = "json"


class Rows(StrictBody):
    filter: str = Field(min_length=1, description="Rows matching this are deleted.")


class Rollback(StrictBody):
    snapshot_id: int


class Maintenance(StrictBody):
    compact: bool = True
    expire_older_than_s: float | None = Field(None, ge=0)
    retain_last: int = Field(1, ge=1)
    remove_orphans: bool = False
    orphan_older_than_s: float | None = Field(None, ge=0)
    dry_run: bool = False


# What a query answers, by its ``format``: documented so the OpenAPI says all four.
RESULT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The rows, encoded as `format` asks; X-Row-Count says how many.",
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            "application/vnd.apache.arrow.stream": {
                "schema": {"type": "string", "format": "binary"}
            },
        },
    }
}


def _arrow_schema(columns: list[ColumnSpec]) -> pa.Schema:
    fields = []
    for column in columns:
        ice = parse_type(column.type, field=f"columns.{column.name}.type")
        fields.append(pa.field(column.name, schema_to_pyarrow(ice), not column.required))
    return pa.schema(fields)


def _result(table: pa.Table, fmt: ResultFormat) -> Response:
    body, media_type = encode(table, fmt)
    return Response(body, media_type=media_type, headers={"X-Row-Count": str(table.num_rows)})


def _open_spool_file(folder: Path, suffix: str) -> tuple[Path, BinaryIO]:
    # Small synchronous file-system calls on a local disk; a thread hop per call (aiofiles)
    # would cost more than it saves.
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.{suffix}"
    return path, path.open("wb")


async def _spool(request: Request, folder: Path, suffix: str) -> Path:
    """Stream the request body to a file; refuse bodies over ``MAX_UPLOAD_BYTES``.

    Whatever ends the upload early (too large, the client gone, cancellation) removes
    the partial file: the spool holds only uploads being appended.
    """
    path, out = _open_spool_file(folder, suffix)
    size = 0
    try:
        with out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:  # the gateway's limits middleware may be stricter
                    raise PayloadTooLargeError(
                        limit_bytes=MAX_UPLOAD_BYTES,
                        setting="the gateway's upload ceiling",
                        fix="split the upload into smaller appends",
                    )
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _about_the_body(exc: DatapunkError, path: Path) -> DatapunkError:
    """``exc`` naming "the request body" instead of the spool file (a server-side path)."""
    where = str(path)
    if where not in exc.message:
        return exc
    said = "the request body"
    clone = copy.copy(exc)
    clone.message = exc.message.replace(repr(where), said).replace(where, said)
    clone.fields = {k: said if v == where else v for k, v in exc.fields.items()}
    clone.args = (clone.message,)
    return clone


async def _json_payload(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError as exc:  # UnicodeDecodeError included
        raise InvalidInputError(field="body", value=str(exc), allowed="JSON") from None


async def _json_rows(lake: LakeService, name: str, request: Request) -> pa.Table:
    """The JSON body's rows as Arrow, typed by the table (which must exist: 404 first)."""
    payload = await _json_payload(request)
    rows = payload.get("rows") if isinstance(payload, dict) else payload
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise InvalidInputError(
            field="body",
            value=type(rows).__name__,
            allowed='a non-empty JSON list of row objects, or {"rows": [...]}',
        )
    columns = (await lake.describe(name))["schema"]
    return typed_rows(name, rows, columns)


def typed_rows(table: str, rows: list[dict[str, Any]], columns: list[dict[str, Any]]) -> pa.Table:
    """JSON rows as Arrow, typed by the table's ``columns`` where JSON cannot say the type.

    JSON has numbers, strings, booleans and null, and this API's own JSON results write
    timestamps and dates as ISO 8601 text and decimals as text. So such text becomes the
    column's type, an integer in a floating or decimal column becomes that type, and a
    column of nulls takes the table's type. Anything else is left to the write's schema
    check, which names the column and both types (a string into a long column, say).
    """
    try:
        data = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise InvalidInputError(
            field="rows", value=str(exc).splitlines()[0], allowed="one type per column"
        ) from None
    wanted = {column["name"]: column["type"] for column in columns}
    for index, field in enumerate(data.schema):
        target = _arrow_type(wanted.get(field.name))
        if target is None or field.type == target:
            continue
        if pat.is_null(field.type):
            data = data.set_column(index, field.name, pa.nulls(data.num_rows, target))
        elif _json_converts(field.type, target):
            try:
                column = data.column(index).cast(target)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaMismatchError(
                    table=table,
                    column=field.name,
                    table_type=wanted[field.name],
                    incoming_type=f"{field.type} values that do not convert "
                    f"({str(exc).splitlines()[0]})",
                    fix="send times and dates as ISO 8601 text (a zone offset for "
                    'timestamptz) and decimals as text such as "12.30"',
                ) from None
            data = data.set_column(index, field.name, column)
    return data


def _arrow_type(iceberg_type: str | None) -> pa.DataType | None:
    if iceberg_type is None:
        return None
    try:
        return schema_to_pyarrow(parse_type(iceberg_type))
    except InvalidInputError:  # nested: the JSON value has its shape already
        return None


def _json_converts(source: pa.DataType, target: pa.DataType) -> bool:
    if pat.is_string(source):
        return bool(pat.is_timestamp(target) or pat.is_date(target) or pat.is_decimal(target))
    return bool(pat.is_integer(source) and (pat.is_floating(target) or pat.is_decimal(target)))


def lake_router(lake: LakeService, spool_dir: Path) -> APIRouter:
    """Routes over ``lake`` (in-process or the actor pool); uploads spool in ``spool_dir``."""
    router = APIRouter(prefix="/lake", tags=["lake"])

    @router.get("/namespaces", dependencies=[READ], summary="Namespaces.")
    async def list_namespaces(request: Request) -> list[str]:
        principal = access.principal_of(request)
        names = await lake.list_namespaces()
        if not grants.is_restricted(principal):
            return names
        return [n for n in names if grants.allowed_within(principal, READ_PERMISSION, n)]

    @router.post("/namespaces", status_code=201, dependencies=[WRITE], summary="Create one.")
    async def create_namespace(body: Namespace, request: Request) -> dict[str, str]:
        access.check(request, WRITE_PERMISSION, grants.namespace(body.name))
        await lake.create_namespace(body.name, exist_ok=body.exist_ok)
        return {"namespace": body.name}

    @router.get("/tables", dependencies=[READ], summary="Tables, optionally of one namespace.")
    async def list_tables(request: Request, namespace: str | None = None) -> list[str]:
        principal = access.principal_of(request)
        if not grants.is_restricted(principal):
            return await lake.list_tables(namespace)
        if namespace is not None and not grants.allowed_within(
            principal, READ_PERMISSION, namespace
        ):
            access.check(request, READ_PERMISSION, grants.namespace(namespace))  # 404/403
        names = await lake.list_tables(namespace)
        return access.visible(request, READ_PERMISSION, names, grants.table)

    @router.post("/tables", status_code=201, dependencies=[WRITE], summary="Create a table.")
    async def create_table(body: CreateTable, request: Request) -> dict[str, Any]:
        access.check_table(request, WRITE_PERMISSION, body.name)
        return await lake.create_table(
            body.name,
            schema=_arrow_schema(body.columns),
            partition_by=body.partition_by,
            sort_by=body.sort_by,
            properties=body.properties,
        )

    @router.get("/tables/{name}", dependencies=[READ], summary="Schema, partitions, snapshots.")
    async def describe(name: str, request: Request) -> dict[str, Any]:
        access.check_table(request, READ_PERMISSION, name)
        return await lake.describe(name)

    @router.post(
        "/tables/{name}/append",
        dependencies=[WRITE],
        summary="Append JSON rows, or a CSV/JSON Lines/Parquet/Arrow upload.",
    )
    async def append(name: str, request: Request, evolve: bool = True) -> dict[str, Any]:
        access.check_table(request, WRITE_PERMISSION, name)
        media = request.headers.get("content-type", "application/json").split(";")[0].strip()
        if media == "application/json":
            rows = await _json_rows(lake, name, request)
            return await lake.append(name, rows, evolve=evolve)
        fmt = _UPLOAD_TYPES.get(media)
        if fmt is None:
            raise InvalidInputError(
                field="Content-Type",
                value=media,
                allowed="application/json or one of " + ", ".join(sorted(_UPLOAD_TYPES)),
            )
        await lake.describe(name)  # an unknown table is refused before the body is spooled
        path = await _spool(request, spool_dir, fmt)
        try:
            return await lake.append_file(name, str(path), fmt=fmt, evolve=evolve)
        except DatapunkError as exc:
            raise _about_the_body(exc, path) from None
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    @router.post(
        "/tables/{name}/upsert",
        dependencies=[WRITE],
        summary="Update rows matching on key columns, insert the rest.",
    )
    async def upsert(
        name: str,
        request: Request,
        key: Annotated[list[str], Query(min_length=1, description="Key column; repeat.")],
    ) -> dict[str, Any]:
        access.check_table(request, WRITE_PERMISSION, name)
        return await lake.upsert(name, await _json_rows(lake, name, request), key)

    @router.post("/tables/{name}/delete", dependencies=[WRITE], summary="Delete rows by filter.")
    async def delete(name: str, body: Rows, request: Request) -> dict[str, Any]:
        access.check_table(request, WRITE_PERMISSION, name)
        return await lake.delete(name, body.filter)

    @router.post(
        "/tables/{name}/query",
        dependencies=[READ],
        openapi_extra=READ_ONLY,
        summary="Columns and filter pushed down, optionally at a snapshot or time.",
        response_class=Response,
        responses=RESULT_RESPONSES,
    )
    async def query(name: str, body: ScanQuery, request: Request) -> Response:
        access.check_table(request, READ_PERMISSION, name)
        table = await lake.scan(
            name,
            columns=body.columns,
            filter=body.filter,
            snapshot_id=body.snapshot_id,
            as_of=body.as_of,
            limit=body.limit,
            decrypt=may_decrypt(request, [name]),  # else encrypted columns come masked
        )
        return _result(table, body.format)

    @router.post(
        "/sql",
        dependencies=[READ],
        openapi_extra=READ_ONLY,
        summary="Read-only SQL over Lake tables (DuckDB).",
        response_class=Response,
        responses=RESULT_RESPONSES,
    )
    async def sql(body: SqlQuery, request: Request) -> Response:
        access.check_sql(request, READ_PERMISSION, body.query)  # every table it reads
        decrypt = may_decrypt_sql(request, body.query)  # else encrypted columns come masked
        return _result(await lake.sql(body.query, limit=body.limit, decrypt=decrypt), body.format)

    @router.get("/tables/{name}/history", dependencies=[READ], summary="Snapshots, oldest first.")
    async def history(name: str, request: Request) -> list[dict[str, Any]]:
        access.check_table(request, READ_PERMISSION, name)
        return await lake.history(name)

    @router.post(
        "/tables/{name}/rollback", dependencies=[WRITE], summary="Make an earlier snapshot current."
    )
    async def rollback(name: str, body: Rollback, request: Request) -> dict[str, Any]:
        access.check_table(request, WRITE_PERMISSION, name)
        return await lake.rollback(name, body.snapshot_id)

    @router.post(
        "/tables/{name}/maintenance",
        dependencies=[WRITE],
        summary="Compact, expire snapshots, remove orphan files.",
    )
    async def maintain(name: str, body: Maintenance, request: Request) -> dict[str, Any]:
        access.check_table(request, WRITE_PERMISSION, name)
        return await lake.maintain(
            name,
            compact_files=body.compact,
            expire_older_than_s=body.expire_older_than_s,
            retain_last=body.retain_last,
            remove_orphans=body.remove_orphans,
            orphan_older_than_s=body.orphan_older_than_s,
            dry_run=body.dry_run,
        )

    return router
