-- Down: 20250106090000_create_profiles
drop table if exists public.profiles;
