-- Down: 20250120110000_create_app_flags
drop table if exists public.app_flags;
