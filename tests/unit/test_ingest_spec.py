"""Pipeline files: validation into PipelineSpec, line-numbered errors, config hashes."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from actors.ingest.pipeline_errors import PipelineConfigError
from actors.ingest.spec import (
    CastOp,
    FilesSourceConfig,
    FreshnessRule,
    LakeSourceConfig,
    LookupOp,
    MaskOp,
    PipelineSpec,
    RabbitMQSourceConfig,
    SqlSourceConfig,
    canonical_json,
    config_hash,
    load_pipeline,
    parse_pipeline,
)
from cluster.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

FULL = textwrap.dedent(
    """\
    name: orders
    description: every section and option
    source:
      type: files
      path: data/orders/*.csv.gz
      format: auto
      compression: auto
      csv:
        delimiter: ";"
        header: false
        encoding: latin-1
    transforms:
      - op: select
        columns: [id, email, qty, price, status, customer_id, ts]
      - op: rename
        mapping: {qty: quantity}
      - op: cast
        columns: {quantity: long, price: "decimal(10, 2)", ts: timestamptz}
      - op: derive
        column: total
        expr: quantity * price
      - op: filter
        expr: status <> 'test'
      - op: dedupe
        keys: [id]
        keep: last
      - op: lookup
        table: ref.customers
        on: [customer_id]
        columns: [segment]
        how: inner
      - op: mask
        columns: [email]
        method: hash
        salt_env: EMAIL_SALT
    expectations:
      - rule: not_null
        column: id
        action: quarantine
      - rule: unique
        columns: [id]
        action: fail
      - rule: range
        column: total
        min: 0
        max: 100000
        action: quarantine
      - rule: regex
        column: email
        pattern: "^[0-9a-f]{64}$"
        action: warn
      - rule: allowed_values
        column: segment
        values: [retail, NO, wholesale]
        action: quarantine
      - rule: row_count
        min: 1
        max: 1000000
        action: warn
      - rule: freshness
        column: ts
        max_age_s: 86400
        action: fail
      - rule: sql
        name: positive_quantity
        predicate: quantity > 0
        action: quarantine
    sink:
      table: sales.orders
      mode: upsert
      key_columns: [id]
      partition_by: [day(ts)]
      create_if_missing: true
    schema_evolution: add_columns
    on_drift: quarantine
    """
)

MINIMAL = textwrap.dedent(
    """\
    name: orders
    source:
      type: files
      path: data/orders/*.csv
    transforms:
      - op: select
        columns: [a, b]
      - op: filter
        expr: a > 0
    expectations:
      - rule: not_null
        column: a
    sink:
      table: sales.orders
    """
)


def _error(text: str) -> PipelineConfigError:
    with pytest.raises(PipelineConfigError) as info:
        parse_pipeline(text, source="orders.yaml", env={})
    return info.value


def _line(text: str, marker: str) -> int:
    """1-based line of the first line of ``text`` containing ``marker``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if marker in line)


# ---------------------------------------------------------------- valid files


def test_full_example_validates_every_section() -> None:
    spec = parse_pipeline(FULL, env={})
    assert isinstance(spec.source, FilesSourceConfig)
    assert spec.source.csv.delimiter == ";" and spec.source.csv.header is False
    assert [t.op for t in spec.transforms] == [
        "select",
        "rename",
        "cast",
        "derive",
        "filter",
        "dedupe",
        "lookup",
        "mask",
    ]
    lookup = spec.transforms[6]
    assert isinstance(lookup, LookupOp) and lookup.on == ["customer_id"]  # YAML 1.2: on is a key
    assert isinstance(spec.transforms[2], CastOp)
    assert isinstance(spec.transforms[7], MaskOp) and spec.transforms[7].salt_env == "EMAIL_SALT"
    labels = [e.label for e in spec.expectations]
    assert labels[:2] == ["not_null(id)", "unique(id)"] and labels[-1] == "positive_quantity"
    assert spec.expectations[4].values == ["retail", "NO", "wholesale"]  # type: ignore[union-attr]
    assert isinstance(spec.expectations[6], FreshnessRule)
    assert spec.sink.mode == "upsert" and spec.sink.key_columns == ["id"]
    assert spec.drift_policy == "add_columns"
    assert spec.quarantine_table == "sales.orders__quarantine"


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("{type: sql, url: 'postgresql://u:pw@db/shop', table: orders}", SqlSourceConfig),
        (
            "{type: sql, url: 'sqlite:///x.db', query: 'SELECT * FROM t', "
            "incremental_column: updated_at}",
            SqlSourceConfig,
        ),
        (
            "{type: rabbitmq, queue: orders, max_messages: 500, wait_s: 2, format: arrow}",
            RabbitMQSourceConfig,
        ),
        ("{type: lake, table: raw.orders, snapshot_id: 42}", LakeSourceConfig),
        ("{type: lake, table: raw.orders, as_of: '2026-01-02T03:04:05'}", LakeSourceConfig),
    ],
)
def test_each_source_type_validates(source: str, kind: type) -> None:
    text = MINIMAL.replace("  type: files\n  path: data/orders/*.csv\n", "").replace(
        "source:\n", f"source: {source}\n"
    )
    spec = parse_pipeline(text, env={})
    assert isinstance(spec.source, kind)
    if isinstance(spec.source, LakeSourceConfig) and spec.source.as_of is not None:
        assert spec.source.as_of == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # naive = UTC


def test_defaults_of_a_minimal_file() -> None:
    spec = parse_pipeline(MINIMAL, env={})
    assert spec.sink.mode == "append" and spec.sink.create_if_missing
    assert spec.schema_evolution == "none" and spec.drift_policy == "fail"
    assert spec.expectations[0].action == "fail"
    assert spec.quarantine_table == "sales.orders__quarantine"


def test_example_pipeline_in_configs_loads() -> None:
    spec = load_pipeline(REPO / "configs/pipelines/orders.yaml", env={})
    assert isinstance(spec.source, FilesSourceConfig) and spec.source.path == "data/orders/*.csv"
    ops = [t.op for t in spec.transforms]
    assert {"derive", "filter", "mask"} <= set(ops)
    rules = {(e.rule, e.action) for e in spec.expectations}
    assert {("not_null", "quarantine"), ("range", "quarantine")} <= rules
    assert spec.sink.table == "sales.orders"


def test_env_references_are_substituted() -> None:
    text = MINIMAL.replace("sales.orders", "${SINK_TABLE}")
    assert parse_pipeline(text, env={"SINK_TABLE": "prod.orders"}).sink.table == "prod.orders"
    error = _error(text)
    assert f"line {_line(text, 'SINK_TABLE')}, sink.table" in error.message
    assert "SINK_TABLE" in error.message and "export" in error.message


def test_load_pipeline_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_pipeline(tmp_path / "nope.yaml", env={})


def test_load_pipeline_reports_the_path_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "orders.yaml"
    path.write_text(MINIMAL.replace("op: select", "op: selekt"), encoding="utf-8")
    with pytest.raises(PipelineConfigError, match=r"^pipeline .*orders\.yaml line 6, "):
        load_pipeline(path, env={})


# ---------------------------------------------------------------- errors: line and key


@pytest.mark.parametrize(
    ("old", "new", "marker", "key", "words"),
    [
        ("op: select", "op: renam", "op: renam", "transforms[0].op", "did you mean 'rename'?"),
        (
            "    columns: [a, b]",
            "    colums: [a, b]",
            "colums",
            "transforms[0].colums",
            "'columns'",
        ),
        (
            "  path: data/orders/*.csv",
            "  path: x.csv\n  format: xml",
            "format",
            "source.format",
            "'xml'",
        ),
        (
            "expr: a > 0",
            "expr: a > (SELECT 1 FROM other)",
            "expr:",
            "transforms[1].expr",
            "subquer",
        ),
        ("expr: a > 0", "expr: read_csv('/etc/passwd')", "expr:", "transforms[1].expr", "read_csv"),
        ("expr: a > 0", "expr: a > 0; DROP TABLE t", "expr:", "transforms[1].expr", "';'"),
        ("  type: files", "  type: ftp", "type: ftp", "source.type", "files, sql, rabbitmq, lake"),
        ("  - rule: not_null", "  - rule: notnull", "notnull", "expectations[0].rule", "not_null"),
        (
            "  table: sales.orders",
            "  table: sales.orders.x",
            "table: sales",
            "sink.table",
            "namespace.table",
        ),
        (
            "    column: a\n",
            "    column: a\n    action: explode\n",
            "explode",
            "expectations[0].action",
            "warn, quarantine, fail",
        ),
    ],
)
def test_invalid_value_names_its_line_and_key_path(
    old: str, new: str, marker: str, key: str, words: str
) -> None:
    text = MINIMAL.replace(old, new, 1)
    assert text != MINIMAL
    error = _error(text)
    assert error.message.startswith(f"pipeline orders.yaml line {_line(text, marker)}, {key}: ")
    assert words in error.message
    assert "; fix: " in error.message
    assert "\n" not in error.message


def test_unknown_op_lists_the_ops() -> None:
    text = MINIMAL.replace("op: select", "op: renam")
    error = _error(text)
    assert "'renam' is not one of select, rename, cast, derive, filter, dedupe, lookup, mask" in (
        error.message
    )
    assert error.fields["line"] == _line(text, "renam")
    assert error.code == "invalid_pipeline"


def test_missing_required_field_names_the_parent_and_the_key() -> None:
    text = MINIMAL.replace("    columns: [a, b]\n", "")
    error = _error(text)
    assert f"line {_line(text, 'op: select')}, transforms[0].columns: is required" in error.message
    assert "add columns:" in error.message


def test_missing_section_points_at_the_top() -> None:
    text = MINIMAL.replace("sink:\n  table: sales.orders\n", "")
    assert "line 1, sink: is required but missing" in _error(text).message


def test_missing_discriminator_lists_choices() -> None:
    text = MINIMAL.replace("  - op: select\n    columns", "  - columns")
    error = _error(text)
    assert "transforms[0].op: is missing" in error.message
    assert "add op: one of select, rename" in error.message


def test_missing_value_in_a_dict_key_points_at_that_key() -> None:
    text = MINIMAL.replace(
        "  - op: select\n    columns: [a, b]\n",
        "  - op: cast\n    columns:\n      a: long\n      b: varchar2\n",
    )
    error = _error(text)
    assert f"line {_line(text, 'b: varchar2')}, transforms[0].columns.b:" in error.message
    assert "'varchar2'" in error.message


def test_cross_field_rules_name_values_and_fix() -> None:
    cases = {
        "  table: sales.orders\n": "  table: sales.orders\n  mode: upsert\n",
        "    column: a\n": "    column: a\n    action: quarantine\n  - rule: row_count\n"
        "    min: 1\n    action: quarantine\n",
    }
    for old, new in cases.items():
        message = _error(MINIMAL.replace(old, new)).message
        assert "; fix: " in message
    assert "needs key_columns" in _error(MINIMAL.replace(*next(iter(cases.items())))).message


def test_duplicate_keys_are_refused_not_overwritten() -> None:
    text = MINIMAL.replace("  path: data/orders/*.csv\n", "  path: a.csv\n  path: b.csv\n")
    error = _error(text)
    assert f"line {_line(text, 'b.csv')}, source.path: the key appears twice" in error.message
    assert f"first on line {_line(text, 'a.csv')}" in error.message


def test_yaml_syntax_error_names_its_line() -> None:
    text = MINIMAL.replace("columns: [a, b]", "columns: [a, b")
    error = _error(text)
    assert "(yaml)" in error.message and "line " in error.message


def test_a_file_that_is_not_a_mapping() -> None:
    assert "not a mapping" in _error("- 1\n- 2\n").message


def test_url_passwords_never_reach_error_messages() -> None:
    text = MINIMAL.replace(
        "  type: files\n  path: data/orders/*.csv\n",
        "  type: rabbitmq\n  url: http://user:hunter2@mq/\n  queue: q\n",
    )
    message = _error(text).message
    assert "hunter2" not in message and "source.url" in message


def test_more_problems_are_counted() -> None:
    text = MINIMAL.replace("op: select", "op: renam").replace("sales.orders", "a.b.c")
    assert "(and 1 more problem)" in _error(text).message


def test_spec_is_immutable() -> None:
    spec = parse_pipeline(MINIMAL, env={})
    with pytest.raises(ValueError, match="frozen"):
        spec.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- config hash


REORDERED = textwrap.dedent(
    """\
    sink:
      table: sales.orders
    expectations:
      - column: a
        rule: not_null
    transforms:
      - columns: [a, b]
        op: select
      - expr: a > 0
        op: filter
    source:
      path: data/orders/*.csv
      type: files
    name: orders
    """
)


def test_config_hash_is_stable_across_key_order_and_defaults() -> None:
    first = config_hash(parse_pipeline(MINIMAL, env={}))
    assert first == config_hash(parse_pipeline(REORDERED, env={}))
    explicit = MINIMAL.replace("  table: sales.orders", "  table: sales.orders\n  mode: append")
    assert first == config_hash(parse_pipeline(explicit, env={}))
    assert len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("a > 0", "a > 1"),
        ("columns: [a, b]", "columns: [b, a]"),
        ("sales.orders", "sales.orders2"),
        ("name: orders", "name: orders2"),
    ],
)
def test_config_hash_changes_with_content(old: str, new: str) -> None:
    base = config_hash(parse_pipeline(MINIMAL, env={}))
    assert config_hash(parse_pipeline(MINIMAL.replace(old, new), env={})) != base


def test_secrets_are_not_in_the_hash_input() -> None:
    sql = MINIMAL.replace(
        "  type: files\n  path: data/orders/*.csv\n",
        "  type: sql\n  url: postgresql://etl:s3cret-pw@db:5432/shop\n  table: orders\n",
    )
    spec = parse_pipeline(sql, env={})
    assert isinstance(spec.source, SqlSourceConfig)
    assert spec.source.url.get_secret_value().endswith("@db:5432/shop")
    text = canonical_json(spec)
    assert "s3cret-pw" not in text
    assert "postgresql://etl:***@db:5432/shop" in text  # the host still identifies the source
    rotated = parse_pipeline(sql.replace("s3cret-pw", "n3w-pw"), env={})
    assert config_hash(rotated) == config_hash(spec)
    other_db = parse_pipeline(sql.replace("@db:5432", "@db2:5432"), env={})
    assert config_hash(other_db) != config_hash(spec)


def test_spec_round_trips_through_its_json() -> None:
    spec = parse_pipeline(FULL, env={})
    again = PipelineSpec.model_validate_json(spec.model_dump_json())
    assert config_hash(again) == config_hash(spec)
