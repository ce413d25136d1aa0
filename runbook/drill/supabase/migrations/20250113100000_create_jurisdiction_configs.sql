-- Per-jurisdiction feature flags and settings, with an audit trail of every change.
create table public.jurisdiction_configs (
  jurisdiction text primary key check (jurisdiction ~ '^[A-Z]{2}$'),
  enabled boolean not null default true,
  features jsonb not null default '{}'::jsonb,
  settings jsonb not null default '{}'::jsonb,
  updated_at timestamptz not null default now()
);

create table public.config_audit (
  id bigint generated always as identity primary key,
  table_name text not null,
  row_key text not null,
  operation text not null,
  old_value jsonb,
  new_value jsonb,
  changed_by text not null default current_user,
  changed_at timestamptz not null default now()
);

create function public.audit_config_change() returns trigger
language plpgsql as $$
declare
  key_column text := tg_argv[0];
begin
  insert into public.config_audit (table_name, row_key, operation, old_value, new_value)
  values (
    tg_table_name,
    coalesce(to_jsonb(new), to_jsonb(old)) ->> key_column,
    tg_op,
    case when tg_op <> 'INSERT' then to_jsonb(old) end,
    case when tg_op <> 'DELETE' then to_jsonb(new) end
  );
  return coalesce(new, old);
end;
$$;

create trigger jurisdiction_configs_audit
  after insert or update or delete on public.jurisdiction_configs
  for each row execute function public.audit_config_change('jurisdiction');
