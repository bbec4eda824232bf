"""Ingestion and ETL: pipeline files that move rows from a source into a Lake table.

A pipeline is YAML validated into ``spec.PipelineSpec``: a source, transforms,
expectations and a sink. The pure pieces live here and are tested without Ray:

* ``spec`` (with ``spec_sources``, ``spec_steps``, ``yaml_lines``): the models,
  ``load_pipeline`` with line-numbered errors, and ``config_hash``;
* ``transforms``: ``apply_transforms`` over an Arrow batch (expressions run in the
  DuckDB sandbox of ``expressions``);
* ``expectations`` (rules in ``dq_rules``, quarantine columns in ``quarantine``):
  ``evaluate`` splits a batch into passed and quarantined rows;
* ``drift``: ``check_drift`` decides what new columns do.

Every run keeps: rows read = rows written + rows quarantined + rows filtered.
"""
