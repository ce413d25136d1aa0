-- Down: 20250113100000_create_jurisdiction_configs
drop trigger if exists jurisdiction_configs_audit on public.jurisdiction_configs;
drop table if exists public.jurisdiction_configs;
drop table if exists public.config_audit;
drop function if exists public.audit_config_change();
