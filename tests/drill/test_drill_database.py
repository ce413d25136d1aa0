"""The drill database: Supabase-shaped schemas, migration history as the CLI records it, seed data, SQL splitting."""

from __future__ import annotations

from runbook.drill import DrillStack
from runbook.drill.database import list_migrations, split_statements


def _columns(stack: DrillStack, schema: str, table: str) -> set[str]:
    rows = stack.query("select column_name from information_schema.columns where table_schema = $1 "
                       "and table_name = $2", schema, table)
    return {r["column_name"] for r in rows}


def test_auth_users_has_supabase_columns(stack: DrillStack) -> None:
    """auth.users has id, email, encrypted_password and created_at."""
    assert {"id", "email", "encrypted_password", "created_at"} <= _columns(stack, "auth", "users")


def test_profiles_reference_auth_users(stack: DrillStack) -> None:
    """public.profiles has a foreign key to auth.users."""
    rows = stack.query("select confrelid::regclass::text as target from pg_constraint "
                       "where conrelid = 'public.profiles'::regclass and contype = 'f'")
    assert [r["target"] for r in rows] == ["auth.users"]


def test_seed_has_matching_users_and_profiles(stack: DrillStack) -> None:
    """Every one of the 300 seeded profiles has its auth user."""
    rows = stack.query("select count(*) as n, count(u.id) as with_user from public.profiles p "
                       "left join auth.users u on u.id = p.id")
    assert rows == [{"n": 300, "with_user": 300}]


def test_jurisdiction_configs_are_seeded(stack: DrillStack) -> None:
    """jurisdiction_configs holds CA, TX, NY enabled and FL disabled, with jsonb features."""
    rows = stack.query("select jurisdiction, enabled, features->>'exam_engine' as engine "
                       "from public.jurisdiction_configs order by jurisdiction")
    assert {r["jurisdiction"]: r["enabled"] for r in rows} == {"CA": True, "FL": False, "NY": True, "TX": True}
    assert all(r["engine"] for r in rows)


def test_maintenance_flag_is_off(stack: DrillStack) -> None:
    """app_flags holds maintenance_mode, disabled."""
    rows = stack.query("select name, enabled from public.app_flags")
    assert {"name": "maintenance_mode", "enabled": False} in rows


def test_stripe_events_processed_has_an_event_id_key(stack: DrillStack) -> None:
    """stripe_events_processed is keyed by event id."""
    rows = stack.query("select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid "
                       "and a.attnum = any(i.indkey) where i.indrelid = 'public.stripe_events_processed'::regclass "
                       "and i.indisprimary")
    assert [r["attname"] for r in rows] == ["id"]


def test_schema_migrations_matches_the_folder(stack: DrillStack) -> None:
    """schema_migrations has one row per migration file: version, name and its statements."""
    files = list_migrations(stack.migrations_dir)
    rows = stack.query("select version, name, statements from supabase_migrations.schema_migrations order by version")
    assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in files]
    assert all(r["statements"] == split_statements(m.path.read_text()) for r, m in zip(rows, files, strict=True))


def test_config_changes_are_audited(stack: DrillStack) -> None:
    """An update of jurisdiction_configs writes old and new values to config_audit."""
    stack.execute("update public.jurisdiction_configs set enabled = false where jurisdiction = 'TX'")
    rows = stack.query("select operation, old_value->>'enabled' as old, new_value->>'enabled' as new "
                       "from public.config_audit where row_key = 'TX' and operation = 'UPDATE'")
    assert rows == [{"operation": "UPDATE", "old": "true", "new": "false"}]


def test_split_statements_respects_quotes_and_dollar_bodies() -> None:
    """Semicolons inside strings, comments and $$ bodies do not split a statement."""
    sql = ("-- a; comment\ncreate function f() returns int language sql as $$ select 1; $$;\n"
           "insert into t values ('a;b'); /* c; d */ select 2;\n-- trailing only\n")
    assert split_statements(sql) == [
        "-- a; comment\ncreate function f() returns int language sql as $$ select 1; $$",
        "insert into t values ('a;b')",
        "/* c; d */ select 2",
    ]


def test_list_migrations_ignores_down_scripts_and_other_files(tmp_path) -> None:
    """Only top-level <digits>_<name>.sql files are migrations, like the Supabase CLI's `^([0-9]+)_(.*)\\.sql$`."""
    (tmp_path / "down").mkdir()
    (tmp_path / "20250101000000_a.sql").write_text("select 1;")
    (tmp_path / "down" / "20250101000000_a.down.sql").write_text("select 1;")
    (tmp_path / "seed.sql").write_text("select 1;")
    (tmp_path / "v2025_bad.sql").write_text("select 1;")
    (tmp_path / "2025_short version.sql").write_text("select 1;")
    assert [(m.version, m.name) for m in list_migrations(tmp_path)] == [
        ("20250101000000", "a"), ("2025", "short version")]
