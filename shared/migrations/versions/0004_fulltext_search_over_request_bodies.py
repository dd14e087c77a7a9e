"""full-text search over request bodies

Revision ID: 0004
Revises: 0003

What is indexed is the text a person wrote or read: the string values of a JSON
body (prompts, answers, tool arguments, and the odd role or model name), not its
keys or escapes. A body that is not JSON is indexed as it is.

PostgreSQL: ``request_bodies.search_document``, a stored generated ``tsvector``
(``'simple'`` configuration: no stemming, no stop words, any language) with a GIN
index. Computing it never fails an insert: a body that does not parse as JSON is
indexed as plain text, and one too big for a ``tsvector`` is indexed by its
leading part.

SQLite: ``request_bodies_fts``, an FTS5 table whose external content is the view
``request_bodies_search_text`` (the extracted text of each body, keyed by
``request_bodies.rowid``), kept in step by triggers. ``VACUUM`` may renumber the
rowids of ``request_bodies``; rebuild the index after one
(``shared.search.rebuild_search_index``).

The full-text objects are not in ``shared.models``:
``shared.search.include_in_autogenerate`` keeps them out of autogenerate comparisons.
A later SQLite batch migration that recreates ``request_bodies`` drops the triggers
with it: recreate them there.

Also two indexes on ``request_records`` for the search filters by key and by end user
(each with ``created_at``, for newest-first pages).
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# One body, whatever it holds: JSON (its string values), else plain text (its leading part
# when too big for one tsvector). The slow path: the common one is in the function below.
PG_BODY_TSVECTOR = r"""
CREATE FUNCTION metergate_body_tsvector(body text) RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF body IS NULL OR body = '' THEN
        RETURN ''::tsvector;
    END IF;
    IF length(body) <= 200000 THEN
        BEGIN
            RETURN pg_catalog.to_tsvector('pg_catalog.simple', body::jsonb);
        EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                       OR program_limit_exceeded THEN
            NULL;  -- not JSON jsonb takes (a \u0000 escape), or too much text: plain text
        END;
    END IF;
    BEGIN
        RETURN pg_catalog.to_tsvector('pg_catalog.simple', left(body, 100000));
    EXCEPTION WHEN program_limit_exceeded THEN
        RETURN pg_catalog.to_tsvector('pg_catalog.simple', left(body, 10000));
    END;
END
$fn$
"""

# Both bodies of a record. Not PARALLEL SAFE: exception blocks need subtransactions. One
# block on the common path (two JSON bodies of reasonable size); anything else body by body.
PG_SEARCH_DOCUMENT = r"""
CREATE FUNCTION metergate_search_document(request_body text, response_body text)
RETURNS tsvector
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF length(request_body) + length(response_body) <= 200000 THEN
        BEGIN
            RETURN pg_catalog.to_tsvector('pg_catalog.simple', request_body::jsonb)
                || pg_catalog.to_tsvector('pg_catalog.simple', response_body::jsonb);
        EXCEPTION WHEN invalid_text_representation OR untranslatable_character
                       OR program_limit_exceeded THEN
            NULL;
        END;
    END IF;
    BEGIN
        RETURN metergate_body_tsvector(request_body) || metergate_body_tsvector(response_body);
    EXCEPTION WHEN program_limit_exceeded THEN
        RETURN metergate_body_tsvector(request_body);  -- together too big for one tsvector
    END;
END
$fn$
"""

# The text of one body: the string values of a JSON body, else the body itself. SQLite
# would cut a string at an escaped NUL ("\u0000"): the escape is read as a space.
_SQLITE_TEXT = (
    "CASE WHEN json_valid({clean}) "
    "THEN (SELECT group_concat(value, ' ') FROM json_tree({clean}) WHERE type = 'text') "
    "ELSE {body} END"
)


def _sqlite_text(body: str) -> str:
    return _SQLITE_TEXT.format(body=body, clean=f"replace({body}, '\\u0000', ' ')")


SQLITE_INDEX_ALL = (
    "INSERT INTO request_bodies_fts(rowid, request_text, response_text) "
    "SELECT body_rowid, request_text, response_text FROM request_bodies_search_text"
)

SQLITE_STATEMENTS = [
    f"""
    CREATE VIEW request_bodies_search_text AS
    SELECT rowid AS body_rowid,
           {_sqlite_text("request_body")} AS request_text,
           {_sqlite_text("response_body")} AS response_text
    FROM request_bodies
    """,
    """
    CREATE VIRTUAL TABLE request_bodies_fts USING fts5(
        request_text, response_text,
        content='request_bodies_search_text', content_rowid='body_rowid'
    )
    """,
    f"""
    CREATE TRIGGER request_bodies_fts_insert AFTER INSERT ON request_bodies BEGIN
        INSERT INTO request_bodies_fts(rowid, request_text, response_text)
        VALUES (new.rowid, {_sqlite_text("new.request_body")},
                {_sqlite_text("new.response_body")});
    END
    """,
    f"""
    CREATE TRIGGER request_bodies_fts_delete AFTER DELETE ON request_bodies BEGIN
        INSERT INTO request_bodies_fts(request_bodies_fts, rowid, request_text, response_text)
        VALUES ('delete', old.rowid, {_sqlite_text("old.request_body")},
                {_sqlite_text("old.response_body")});
    END
    """,
    f"""
    CREATE TRIGGER request_bodies_fts_update AFTER UPDATE ON request_bodies BEGIN
        INSERT INTO request_bodies_fts(request_bodies_fts, rowid, request_text, response_text)
        VALUES ('delete', old.rowid, {_sqlite_text("old.request_body")},
                {_sqlite_text("old.response_body")});
        INSERT INTO request_bodies_fts(rowid, request_text, response_text)
        VALUES (new.rowid, {_sqlite_text("new.request_body")},
                {_sqlite_text("new.response_body")});
    END
    """,
    # Bodies written before this migration. (FTS5's own 'rebuild' cannot read this view.)
    SQLITE_INDEX_ALL,
]


# Searching by key or end user, newest first, without walking the whole log.
RECORD_INDEXES = {
    "ix_request_records_key_created": ["key_id", "created_at"],
    "ix_request_records_end_user_created": ["end_user", "created_at"],
}


def upgrade() -> None:
    for name, columns in RECORD_INDEXES.items():
        op.create_index(name, "request_records", columns)
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_BODY_TSVECTOR)
        op.execute(PG_SEARCH_DOCUMENT)
        # Rewrites the table once, computing the document of every body already there.
        op.execute(
            "ALTER TABLE request_bodies ADD COLUMN search_document tsvector "
            "GENERATED ALWAYS AS (metergate_search_document(request_body, response_body)) STORED"
        )
        op.execute(
            "CREATE INDEX ix_request_bodies_search_document "
            "ON request_bodies USING gin (search_document)"
        )
    elif dialect == "sqlite":
        for statement in SQLITE_STATEMENTS:
            op.execute(statement)
    else:
        raise NotImplementedError(f"no full-text search for database dialect {dialect}")


def downgrade() -> None:
    for name in RECORD_INDEXES:
        op.drop_index(name, "request_records")
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_request_bodies_search_document")
        op.execute("ALTER TABLE request_bodies DROP COLUMN IF EXISTS search_document")
        op.execute("DROP FUNCTION IF EXISTS metergate_search_document(text, text)")
        op.execute("DROP FUNCTION IF EXISTS metergate_body_tsvector(text)")
    elif dialect == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS request_bodies_fts_{trigger}")
        op.execute("DROP TABLE IF EXISTS request_bodies_fts")
        op.execute("DROP VIEW IF EXISTS request_bodies_search_text")
