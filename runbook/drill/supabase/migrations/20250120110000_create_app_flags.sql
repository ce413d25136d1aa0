-- Application-wide switches (maintenance_mode), audited like jurisdiction configs.
create table public.app_flags (
  name text primary key,
  enabled boolean not null default false,
  description text,
  updated_at timestamptz not null default now()
);

create trigger app_flags_audit
  after insert or update or delete on public.app_flags
  for each row execute function public.audit_config_change('name');

insert into public.app_flags (name, enabled, description)
values ('maintenance_mode', false, 'Serve a maintenance page on every route but /api/health');
