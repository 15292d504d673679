"""The results records, below ``analysis`` and ``pipeline``: the tables' schema
(:mod:`records.schema`), run identity (:mod:`records.identity`), and reading and writing the
Parquet tables (:mod:`records.tables`). Needs pyarrow and ``sobolev``'s settings and result
fields, not torch, numba, Ray or MLflow."""
